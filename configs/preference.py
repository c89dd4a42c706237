r"""Preference scorers: a CLIP fine-tuned so that its image-text scores rank
candidates as human raters do (HPS v2, Wu et al. 2023; a caption reward
model as in Compress & Align).

Start from a trained or converted two-tower model (`init=DIR`, every
parameter loaded), unlock the last `unfreeze` blocks of each tower (and the
final norms and heads; everything else is `config.frozen`), and train the
`preference` loss (`big_vl/losses/preference.py`): for each record, the
softmax over its K candidates' scores t * cos(image, text), cross-entropy
with the raters' choice.

* `kind=images` (HPS v2): K generated images per prompt, batch
  [B, K, H, W, 3] images and [B, L] prompts;
* `kind=captions` (Compress & Align's reward model): K captions per image,
  [B, H, W, 3] images and [B, K, L] captions. `big_vl.curate --reward=`
  then keeps the pairs this model scores high.

Demo (`big_vl_demo_prefs`: 4,000 prompts with 4 candidates each, a noisy
synthetic rater, the defect "extra" held out of training):

    python -m big_vl.train --config=configs/demo.py --workdir=workdirs/demo
    python -m big_vl.train --config=configs/preference.py:init=workdirs/demo \
        --workdir=workdirs/hps_demo
    python -m big_vl.score --checkpoint=workdirs/hps_demo \
        --prompt="a red circle and a blue star" --images=a.png,b.png,c.png

The evaluation (`preference` evaluator on the test split, unseen prompts)
reports pairwise accuracy against the rater, choice accuracy, Spearman and
Kendall correlations, and pairwise accuracy per defect (the held-out one
included); `big_vl.evaluate` with this config's `evals` scores the
starting model the same way (zero-shot CLIPScore). bench/preference.py
compares the two over seeds (its results go to bench/RESULTS.md,
"Preference scorers in miniature"; not yet run at its defaults).

No full-size variant yet: HPS v2 fine-tunes open_clip's ViT-H-14 on HPD v2
(798k human choices between images of one prompt), which no big_vl source
reads
(the jsonl/csv sources hold one image and one caption per row, a
WebDataset sample one image); a TFDS builder over HPD v2's released folder
would. HPS v2's training script (its configs/HPSv2.sh) starts from
laion2B-s32B-b79K, unlocks 20 image groups and 11 text layers (about
`frozen_rules(32, 24, 19, 11)` here: open_clip counts the final norm and
projection as a group), lr 3.3e-6, wd 0.35, 500 warm-up steps. The
model, loss, pp and evaluator here take any records with a prompt, K
encoded images and ratings.

The preprocessing is the starting checkpoint's (its `preprocessing`, or
its zero-shot evaluator's), applied to each candidate; without one, the
demo's at `res` with CLIP BPE at the text tower's length.

Args: `init=DIR`, `kind=images|captions`, `unfreeze=N` (blocks per tower),
`steps`, `batch` (records; each has K candidates), `lr`, `res`,
`runlocal` (6 steps of the small data, 32 px: the tests).
"""

import ml_collections

from big_vl import config as config_lib
from big_vl import predict
from big_vl import pretrained
from big_vl.data import pp as pp_lib
from big_vl.models import common
from big_vl.data.builders import demo_prefs


def frozen_rules(image_depth, text_depth, unfreeze_image, unfreeze_text):
  """`config.frozen` regexes locking all but the last blocks of each tower.

  Args:
    image_depth, text_depth: the towers' block counts.
    unfreeze_image, unfreeze_text: how many final blocks stay trainable
      (with the final norms and heads, never frozen here).

  Returns:
    A tuple of regexes over parameter paths ("img/..." and "txt/...").
  """
  rules = []
  for tower, blocks, depth, keep in (
      ("img", "Transformer", image_depth, unfreeze_image),
      ("txt", "Encoder_0", text_depth, unfreeze_text)):
    locked = depth - min(keep, depth)
    if locked > 0:
      rules.append(f"{tower}/{blocks}/encoderblock_("
                   + "|".join(str(i) for i in range(locked)) + ")/.*")
    if keep < depth:  # Embeddings lock with the first block.
      rules.append(f"{tower}/(embedding|pos_embedding|Embed_0)(/.*)?")
  return tuple(rules)


def _depth(tower):
  """A tower's block count (from `depth` or its `variant`); a scanned
  tower's blocks are one stacked parameter, which block rules cannot
  split."""
  if tower.get("scan", False):
    raise ValueError("preference: `unfreeze` locks blocks by name, and a "
                     "scanned tower stacks them; start from an unscanned "
                     "model (or set unfreeze >= depth).")
  return tower.get("depth", None) or common.parse_variant(
      tower.get("variant"))["depth"]


def _op_string(name, args, kwargs):
  inner = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
  return f"{name}({', '.join(inner)})"


def _pp(kind, image, text, keep=("image", "text", "choice")):
  """The pp of preference records from the model's image pp (str) and
  text pp (its ops, the tokenizer's last, which gets the field to read)."""
  name, args, kwargs = text[-1]
  field = "prompt" if kind == "images" else "captions"
  tokenize = "|".join(
      [_op_string(*op) for op in text[:-1]]
      + [_op_string(name, args, {**kwargs, "key": field, "out": "text"})])
  pick = (f"each({image!r}, key='images', out='image')" if kind == "images"
          else image)
  return (f"{pick}|{tokenize}|unnest('hidden')|"
          f"keep({', '.join(repr(k) for k in keep)})")


def model_pp(start, res):
  """(image pp, text pp ops) the starting checkpoint's config names (its
  preprocessing or zero-shot evaluator), else the demo's at `res` with
  CLIP BPE at the text tower's length."""
  pp_img, pp_txt = predict.default_pp(start)
  pp_img = pp_img or f"decode|resize({res})|value_range(-1,1)"
  pp_txt = pp_txt or f"tokenize(max_len={start.model.text.max_len})"
  return pp_img, pp_lib.parse(pp_txt)


def get_config(arg=None):
  """Args: init, kind, unfreeze, steps, batch, lr, res, runlocal."""
  arg = config_lib.parse_arg(arg, init="workdirs/demo", kind="images",
                             unfreeze=2, steps=400, batch=32, lr=1e-5,
                             res=64, runlocal=False)
  if arg.kind not in ("images", "captions"):
    raise ValueError(f"kind={arg.kind!r}: 'images' or 'captions'.")
  data = f"tfds:{demo_prefs.NAME}/{arg.kind}" + ("_small" if arg.runlocal
                                                 else "")
  _, _, start = pretrained.read_config(arg.init)
  model = start.model
  image, text = model_pp(start, arg.res if not arg.runlocal else 32)

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.input = ml_collections.ConfigDict(dict(
      data=data, split="train", data_dir=None, batch_size=arg.batch,
      pp=_pp(arg.kind, image, text), workers=0, read_threads=4,
      shuffle=True))
  config.model_name = start.get("model_name", "two_towers")
  config.model = ml_collections.ConfigDict(model.to_dict())
  config.model_init = arg.init
  config.model_load = ml_collections.ConfigDict(dict(dont_load=()))
  config.frozen = frozen_rules(_depth(model.image), _depth(model.text),
                               arg.unfreeze, arg.unfreeze)
  config.objectives = ml_collections.ConfigDict(dict(
      preference=dict(loss="preference", weight=1.0)))
  config.total_steps = arg.steps
  config.warmup_steps = max(arg.steps // 8, 1)
  config.log_steps = max(arg.steps // 20, 1)
  config.ckpt_steps = arg.steps
  config.keep_ckpts = 1
  config.lr = arg.lr
  config.wd = 0.1
  config.schedule = dict(name="cosine", end_frac=0.0)
  config.optim = dict(name="adamw", b1=0.9, b2=0.98, eps=1e-6)
  config.grad_clip_norm = 1.0
  config.mesh = (("data", -1),)
  config.sharding_rules = ((".*", "replicate"),)
  config.evals = ml_collections.ConfigDict(dict(preference=dict(
      type="preference", data=data, split="test",
      pp=_pp(arg.kind, image, text,
             keep=("image", "text", "ratings", "defects")),
      defect_names=(demo_prefs.IMAGE_DEFECTS if arg.kind == "images"
                    else demo_prefs.CAPTION_DEFECTS),
      batch_size=32, name=f"demo_prefs_{arg.kind}")))
  if arg.runlocal:
    config.input.batch_size = 8
    config.total_steps = 6
    config.warmup_steps = 1
    config.log_steps = 1
    config.ckpt_steps = 6
  return config

