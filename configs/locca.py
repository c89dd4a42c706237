r"""LocCa (Wan et al. 2024): a location-aware captioner, on the demo shapes
data.

The CapPa captioner's model (`big_vl/models/captioner.py`) trained on three
tasks per image, each a token sequence after a task token
(`big_vl/data/locca.py`): captioning ("<cap> caption"), automatic
referring expression ("<aref> box <sep> description") and grounded
captioning ("<gcap> description <sep> box"). A region is one of the
image's objects (drawn per example), described by its class name ("red
circle"); its box is 4 coordinate tokens of 64 bins (one per pixel of the
64x64 demo images), appended to the CLIP BPE vocabulary with the task and
separator tokens (49,408 + 68 ids). The image is encoded once and its
three rows are decoded from that encoding; the loss is the token
cross-entropy of every token after the task token (`weights_key`), the
three tasks weighted alike. Decoding is autoregressive only
(`parallel_fraction` 0): CapPa's parallel prediction would mask the task
token that says what to write.

Run (the demo data is built on first use):

    python -m big_vl.train --config=configs/locca.py --workdir=workdirs/locca
    python -m big_vl.train --config=configs/locca.py:runlocal \
        --workdir=/tmp/locca    # 20 steps, 32x32 images, tiny towers

Metrics: train/caption/loss, token_acc, perplexity (over all three
tasks); at the end, greedy "<cap>" captions of the test split scored
against their references (captioning/demo_shapes/cider, bleu_*;
captions.jsonl/.png) and the localisation evaluation of every object of
its first 200 (runlocal: 32) images (`big_vl/evaluators/locca.py`):
locca/demo_shapes/grounding_acc (the decoded box of a described object
has IoU >= 0.5 with the true one), grounding_miou, grounding_invalid and
region_caption_acc (the decoded description of a boxed object is its
class name); locca.jsonl/.png draw the true and decoded boxes.

No full-size variant: LocCa pre-trains on WebLI with region boxes and
descriptions from an open-vocabulary detector (OWL-ViT), and no public
image-text corpus carries such annotations (COCO's boxes are 118k images,
a fine-tuning set, and its TFDS builder needs TensorFlow). Making one means
running a detector over a web corpus, a curation job (issue #21); the
model, pp op and evaluator here take any records with `objects`
({"label", "bbox"}) and `captions`. Not yet here (issue #19): a measured
result.

Args (after the colon): `runlocal`, `steps=N`, `batch=N` (with
`runlocal` too: its sizes, trained longer), `bins=N`
(coordinate bins), `uncond=F` (uncond_prob), `res=N`, `max_len=N`.
"""

import ml_collections

from big_vl import config as config_lib
from big_vl.data import locca
from big_vl.data.builders import demo_shapes


def get_config(arg=None):
  """The LocCa demo config."""
  arg = config_lib.parse_arg(arg, runlocal=False, steps=0, batch=0,
                             bins=64, uncond=0.0, res=64, max_len=24)
  arg.steps = arg.steps or (20 if arg.runlocal else 800)
  arg.batch = arg.batch or (32 if arg.runlocal else 128)
  res = 32 if arg.runlocal else arg.res
  layout = locca.Layout(text_vocab=49408, num_bins=arg.bins)
  config = ml_collections.ConfigDict()
  config.seed = 0
  image_pp = f"decode|resize({res})|{config_lib.DEMO_DEVICE_PP}"
  tasks = (f"locca_tasks({arg.max_len}, classes={demo_shapes.CLASS_NAMES!r}, "
           f"num_bins={arg.bins}")
  config.input = ml_collections.ConfigDict(dict(
      data=config_lib.data_field(config_lib.DEMO_DATA), split="train",
      data_dir=None, batch_size=arg.batch,
      pp=f"{image_pp}|{tasks})|keep('image','text','text_weights')",
      workers=0, read_threads=4, shuffle=True))

  config.model_name = "captioner"
  image = (dict(variant="mu/8") if arg.runlocal else
           dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=8))
  decoder = (dict(width=64, depth=2, mlp_dim=256, num_heads=2)
             if arg.runlocal else
             dict(width=128, depth=4, mlp_dim=512, num_heads=4))
  config.model = ml_collections.ConfigDict(dict(
      image=dict(pool_type="gap", **image), decoder=decoder,
      vocab_size=layout.vocab_size, max_len=arg.max_len,
      parallel_fraction=0.0, uncond_prob=arg.uncond, mask_token=0,
      dtype="float32"))
  config.objectives = ml_collections.ConfigDict(dict(
      caption=dict(loss="caption", weight=1.0, label_smoothing=0.0,
                   weights_key="text_weights")))

  config.total_steps = arg.steps
  config.warmup_steps = max(arg.steps // 10, 1) if arg.runlocal else 100
  config.log_steps = 5 if arg.runlocal else 25
  config.ckpt_steps = config.total_steps
  config.keep_ckpts = 2
  config.lr = 1e-3
  config.wd = 1e-4
  config.wd_mode = "coupled"
  config.schedule = dict(name="cosine", end_frac=0.0)
  config.optim = dict(name="adamw", b1=0.9, b2=0.999, eps=1e-8)
  config.grad_clip_norm = 1.0
  config.mesh = (("data", -1),)
  config.sharding_rules = ((".*", "replicate"),)
  batch = 32 if arg.runlocal else 200
  config.evals = ml_collections.ConfigDict(dict(
      # "<cap>" captions of the test split, scored against its references.
      captioning=dict(
          type="captioning", data=config_lib.DEMO_DATA,
          split="test[:64]" if arg.runlocal else "test[:1000]",
          pp=f"{image_pp}|keep('image')", captions_key="captions",
          batch_size=batch, beam=1, prefix=[layout.task_id("cap")]),
      # Every object of the first test images: description -> box
      # (grounding) and box -> description.
      locca=dict(
          type="locca", data=config_lib.DEMO_DATA,
          split="test[:32]" if arg.runlocal else "test[:200]",
          pp=(f"{image_pp}|{tasks}, tasks=('aref', 'gcap'))|"
              "keep('image','text')"),
          num_bins=arg.bins, batch_size=batch)))
  return config
