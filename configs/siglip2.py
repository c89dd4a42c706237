r"""SigLIP 2 (Tschannen et al. 2025): sigmoid loss + LocCa decoder +
self-distillation and masked prediction against an EMA teacher, optionally
on NaFlex sequences.

One two-tower model (`two_towers.Model` with a `decoder` and an
`ssl_head`): the image and text towers trained with SigLIP's pairwise
sigmoid loss, and a LocCa decoder (`big_vl/data/locca.py`) cross-attending
to the image tower's patch tokens, trained on captions (full size: the
alt-text; on the demo data: LocCa's captioning, referring-expression and
grounded-captioning rows) with the `caption` loss. Both see the plain
image. For the last 20% of training (the paper's schedule,
`start_frac=0.8`) two self-supervised objectives against the student's EMA
(`config.teacher.ema`) join, on extra views that the `multi_crop` pp op
draws (SILC's 2 global crops of 40-100% of the area and 8 local crops of
5-40%): `self_distillation`, SILC's local-to-global loss (DINO's head and
cross-entropy from the teacher's global views to the student's other
views, `big_vl/losses/self_distillation.py`), and `masked_prediction`,
TIPS's masked objective (the student's global views have half their patch
embeddings replaced by a mask token, `mask_ratio`, and regress the
teacher's patch features there; the cosine-regression form,
docs/design_notes.md). Before that step the train step runs neither the
views nor the teacher (`big_vl/train/state.py`, two compiled phases). With
`naflex` images keep their aspect ratio: the `naflex` pp op cuts them into
at most `patches` patches (256 in the paper) and the ViT resizes its 16x16
position grid to each image (`big_vl/models/naflex.py`). The decoder, the
self-distillation head and the mask token are dropped when the encoder is
exported (`big_vl.convert.big_vision.to_npz_dict`).

The paper's numbers used here: batch 32,768, 40B examples, cosine schedule
with 20,000 warm-up steps, patch 16 at 256 px (256 patches), 64 text
tokens, the decoder objective throughout and the self-supervised ones in
the last 20% with weights 1 (self-distillation) and 0.25 (masked
prediction) beside the sigmoid loss's 1; Adam at lr 1e-3 with decoupled
weight decay 1e-4 and gradient clipping 1.0 as SigLIP (configs/siglip.py);
FSDP over every device. SILC's multi-crop (2 global, 8 local views; local
views at 96 px as DINO's) and DINO's head (65,536 prototypes, 2048 hidden,
256 bottleneck) and temperatures (student 0.1, teacher 0.04). Choices of
ours where the sources read do not give the value: the decoder (4 layers
at the image tower's width), the mask ratio (0.5), the EMA momentum
(0.999) and the teacher's centring on the batch mean
(docs/design_notes.md). Substitutions: WebLI -> LAION-400M WebDataset
shards (`data=`, as configs/siglip.py); Gemma's 256k SentencePiece
tokenizer -> CLIP BPE (both towers and the decoder); the decoder's
full-size targets are the alt-text only (LocCa's box tasks need region
annotations LAION lacks).

Full run (a TPU pod):

    python -m big_vl.train --config=configs/siglip2.py:variant=B/16 \
        --workdir=W                  # add ,naflex for the NaFlex variant

Not reproduced here (no accelerator pod); the paper reports 78.2% ImageNet
zero-shot for B/16 at 256 px (Table 1).

Local run on the demo data (2 CPU cores, about two minutes), every
objective, NaFlex on:

    python -m big_vl.train --config=configs/siglip2.py:runlocal,naflex \
        --workdir=/tmp/siglip2

Metrics: train/contrastive/loss, train/caption/{loss, token_acc},
train/self_distillation/{loss, active, teacher_entropy, agreement} and
train/masked/{loss, active, cosine} (active from 80% of the steps, 0
before), zero-shot and retrieval on the demo test split, captions
(captioning/demo_shapes/cider) and LocCa localisation
(locca/demo_shapes/grounding_acc). Measured
2026-12-07 (2 CPU cores; tests/test_siglip2.py trains it): the command
takes 1 min 22 s; the 20 steps run every objective (the self-supervised
ones in steps 17-20: self_distillation 6.23, masked 0.79 at step 20) and
every evaluator; at that length the metrics are those of an untrained
model (zero-shot 3.5%, chance 2.9%). bench/siglip2.py compares the recipe
with SigLIP's at 300 steps (bench/RESULTS.md: inside the seed noise).

Args (after the colon): `variant=B/16|L/16|So400m/16`, `naflex`,
`patches=N` (NaFlex budget), `batch=N`, `examples=N`, `res=N`,
`max_len=N`, `data=SHARDS`, `imagenet=SPEC`, `coco=SPEC`,
`local_res=N` and `local_views=N` (the local crops), `runlocal`, `steps=N`
(runlocal).
"""

import re

import ml_collections

from big_vl import config as config_lib
from big_vl.data import locca
from big_vl.data.builders import demo_shapes
from big_vl.models import vit

VARIANTS = {"B/16": 768, "L/16": 1024, "So400m/16": 1152}
VIEW_FIELDS = "'views_global','views_local'"
# The main image and the views to [-1, 1] in the train step.
DEVICE_PP = ("value_range(-1,1)|value_range(-1,1,key='views_global')|"
             "value_range(-1,1,key='views_local')")


def _naflex(spec, patches, patch):
  """A pp string with its square resize replaced by the `naflex` op (and
  the patch positions kept)."""
  spec = re.sub(r"resize\(\d+\)", f"naflex({patches}, {patch})", spec)
  return spec.replace("keep('image'", "keep('image','image_pos'")


def get_config(arg=None):
  """The SigLIP 2 config (module docstring)."""
  arg = config_lib.parse_arg(arg, variant="B/16", naflex=False, patches=256,
                             batch=32768, examples=40_000_000_000, res=256,
                             max_len=64, data=config_lib.LAION400M_SHARDS,
                             imagenet=config_lib.IMAGENET_DATA,
                             coco=config_lib.COCO_DATA, runlocal=False,
                             steps=20, local_res=96, local_views=8)
  if arg.variant not in VARIANTS:
    raise ValueError(f"configs/siglip2.py: variant must be one of "
                     f"{sorted(VARIANTS)}.")
  config = ml_collections.ConfigDict()
  config.seed = 0
  image_pp = f"decode|resize({arg.res})"
  tokenize = f"tokenize(max_len={arg.max_len})"
  # The decoder's targets: the alt-text again, as caption ids.
  caption = f"tokenize(max_len={arg.max_len}, out='caption')"
  # The self-supervised objectives' views: SILC's 2 global and 8 local
  # crops, drawn from the decoded image; the main image stays as it is.
  views = f"multi_crop({arg.res}, {arg.local_res}, 2, {arg.local_views})"
  config.input = ml_collections.ConfigDict(dict(
      data=config_lib.shards_spec(arg.data), split="train", data_dir=None,
      batch_size=arg.batch,
      pp=(f"decode|{views}|resize({arg.res})|{caption}|{tokenize}|"
          f"keep('image','text','caption',{VIEW_FIELDS})"),
      device_pp=DEVICE_PP,
      workers=8, read_threads=16, shuffle=True))

  width = VARIANTS[arg.variant]
  config.model_name = "two_towers"
  config.model = ml_collections.ConfigDict(dict(
      image=dict(variant=arg.variant, pool_type="map", posemb="learn",
                 mask_ratio=0.5, remat_policy="none", scan=False),
      text=dict(variant=arg.variant.split("/")[0], vocab_size=49408,
                max_len=arg.max_len, causal=False, pool_type="last",
                mask_pad=False, remat_policy="none", scan=False),
      out_dim=width, temperature_init=10.0, bias_init=-10.0,
      token_features=True,
      decoder=dict(width=width, depth=4, mlp_dim=4 * width,
                   num_heads=width // 64),
      vocab_size=49408, max_len=arg.max_len, dtype="bfloat16",
      ssl_head=dict(prototypes=65536, hidden_dim=2048, bottleneck_dim=256)))
  config.teacher = ml_collections.ConfigDict(dict(ema=0.999))
  config.objectives = ml_collections.ConfigDict(dict(
      contrastive=dict(loss="sigmoid", weight=1.0, impl="ring"),
      caption=dict(loss="caption", weight=1.0, text_key="caption"),
      self_distillation=dict(loss="self_distillation", weight=1.0,
                             start_frac=0.8),
      masked=dict(loss="masked_prediction", weight=0.25, start_frac=0.8)))

  config.total_examples = arg.examples
  config.warmup_examples = 20_000 * arg.batch
  config.log_steps = 50
  config.ckpt_steps = 1000
  config.lr = 1e-3
  config.wd = 1e-4
  config.wd_mode = "decoupled"
  config.schedule = dict(name="cosine", end_frac=0.0)
  config.optim = dict(name="adamw", b1=0.9, b2=0.95, eps=1e-8)
  config.grad_clip_norm = 1.0
  config.mesh = (("fsdp", -1),)
  config.sharding_rules = ((".*", "fsdp"),)
  config.evals = config_lib.fullsize_evals(
      image_pp, tokenize, every=5000, imagenet=arg.imagenet, coco=arg.coco)

  if arg.runlocal:
    _runlocal(config, arg)
  if arg.naflex:
    grid = (32 if arg.runlocal else arg.res) // _patch(config)
    # runlocal: the square demo images fill a 4x4 grid; 4 padding slots.
    patches = grid * grid + 4 if arg.runlocal else arg.patches
    config.model.image.posemb_grid = grid
    config.input.pp = _naflex(config.input.pp, patches, _patch(config))
    for block in config.evals.values():
      for key in ("pp", "pp_img"):
        if key in block:
          block[key] = _naflex(block[key], patches, _patch(config))
  return config


def _patch(config):
  """The image tower's patch size (from its variant or patch_size)."""
  return int(vit.ViT(**config.model.image.to_dict()).dims()["patch_size"])


def _runlocal(config, arg):
  """The demo data, tiny towers, LocCa's three tasks, 20 steps."""
  config_lib.runlocal_on_demo(config, steps=arg.steps)
  config.input.device_pp = DEVICE_PP
  config.model.dtype = "float32"
  config.model.ssl_head = dict(prototypes=256, hidden_dim=64,
                               bottleneck_dim=32)
  config.objectives.contrastive.impl = "dense"
  config.objectives.caption.weights_key = "caption_weights"
  layout = locca.Layout(text_vocab=49408, num_bins=64)
  tasks = (f"locca_tasks(24, classes={demo_shapes.CLASS_NAMES!r}, "
           "num_bins=64")
  config.input.pp = config.input.pp.replace(
      "keep('image','text')",
      f"{tasks}, out='caption', weights_out='caption_weights')|"
      f"keep('image','text','caption','caption_weights',{VIEW_FIELDS})"
  ).replace("decode|", "decode|multi_crop(32, 16, 2, 4)|", 1)
  config.model.decoder = dict(width=64, depth=2, mlp_dim=256, num_heads=2)
  config.model.vocab_size = layout.vocab_size
  config.model.max_len = 24
  image_pp = f"decode|resize(32)|{config_lib.DEMO_DEVICE_PP}"
  config.evals.captioning = dict(
      type="captioning", data=config_lib.DEMO_DATA, split="test[:32]",
      pp=f"{image_pp}|keep('image')", captions_key="captions",
      batch_size=32, beam=1, prefix=[layout.task_id("cap")])
  config.evals.locca = dict(
      type="locca", data=config_lib.DEMO_DATA, split="test[:16]",
      pp=(f"{image_pp}|{tasks}, tasks=('aref', 'gcap'))|"
          "keep('image','text')"),
      num_bins=64, batch_size=32)
