r"""The embedded default: a CLIP-style model trained on the demo shapes data.

Data: `big_vl_demo_shapes` (built on first use, ~30 s, no download): 64x64
images of coloured shapes with 5 captions each; the test split holds
colour+shape combinations never seen in training.

Run (2 CPU cores: ~30 s to build the data once, ~7 minutes to train 800
steps of 128 pairs at ~2 steps/s, plus two evaluations of ~10 s):

    python -m big_vl.train --config=configs/demo.py --workdir=workdirs/demo

Expected result (measured 2026-11-29, 2 CPU cores, seed 0, 7m49s for the whole
README command in a fresh clone, data build included): on the test split, zero-shot
top-1 over the 35 colour+shape classes 45.9% (chance 1/35 = 2.9%, so 16x
chance; 36% at step 400), top-5 99.5%; retrieval image->text R@1/5/10
18.2/42.1/57.4%, text->image 6.5/20.6/31.6% (2,000 images, 10,000 captions;
ties count against the hit, and many captions fit several images). Re-check
a trained run with `python -m big_vl.evaluate --config=configs/eval/demo.py
--checkpoint=workdirs/demo --output=workdirs/demo/eval`.
Colour is learnt first (top-5 near 100% early), shape later.

Local smoke run (what the tests run, about a minute):

    python -m big_vl.train --config=configs/demo.py:runlocal --workdir=/tmp/d

Sweep (`get_sweep`: 2 learning rates x softmax / sigmoid loss, 4 runs; with
runlocal under a minute on 2 CPU cores, the full-size one about 30):

    python -m big_vl.sweep --config=configs/demo.py:runlocal \
        --workdir=workdirs/demo_sweep

writes workdirs/demo_sweep/sweep.{md,csv,png} (final loss and evaluation of
each variant). Expected with runlocal: each variant's loss falls below its
start; the sigmoid runs' zero-shot top-1 is not comparable after 20 steps.

FLIP patch dropout (`patch_keep=F`, `config.model.image.patch_keep`): in
training each image keeps a random fraction of its patch tokens;
evaluation sees all of them.

    python -m big_vl.train --config=configs/demo.py:patch_keep=0.5 \
        --workdir=workdirs/demo_flip

Measured in miniature (bench/patch_dropout.py, bench/RESULTS.md "Patch
dropout in miniature", 2026-12-07: 32 px so 16 patches, 400 steps of 64,
3 seeds): zero-shot top-1 35.4% +- 0.9% at keep 1, 26.6% +- 1.1% at 0.5,
24.0% +- 0.2% at 0.25; steps 0.85x and 0.80x as long (noisy, +-0.07: the
text tower and the loss do not shrink at this size). At ViT-B/16 (196
patches, batch 8, the same bench) the trainer's step takes 0.57x the time
at keep 0.5 and 0.39x at 0.25.

Distillation (`teacher=PATH`: a trained run or converted folder as a frozen
teacher, plus the `distill` objective next to the contrastive one; see
README "Objectives"):

    python -m big_vl.train --config=configs/demo.py:teacher=workdirs/demo \
        --workdir=workdirs/demo_student

(the student is this config's model unless overridden, e.g.
`--config.model.image.depth=2 --config.model.text.depth=2`).

Measured in miniature (bench/distill.py, bench/RESULTS.md "Distillation in
miniature", 2026-12-07, 3 seeds, a student with towers 64 wide x 2 blocks,
400 steps, taught by this config's 32 px model trained 800 steps): image->
text retrieval R@1 12.8% +- 0.6% alone, 14.8% +- 0.7% distilled (+2.1
points paired, higher in each seed); zero-shot top-1 32.6% vs 32.8%, the
difference (+0.3 +- 2.7) inside the seed spread.
"""

import ml_collections
from ml_collections import config_dict

from big_vl import config as config_lib


def get_config(arg=None):
  """The demo config. Args: `runlocal`, `steps=N` (or `epochs=X`),
  `batch=N`, `loss=NAME`, `patch_keep=F` (FLIP patch dropout),
  `teacher=PATH` (distillation from a frozen teacher), `caption=KEY`
  (the training records' caption field: "caption" for one caption per
  record, as the noisy demo crawl or a curated subset of it)."""
  arg = config_lib.parse_arg(arg, runlocal=False, steps=800, epochs=0.0,
                             batch=128, loss="softmax", res=64, max_len=24,
                             patch_keep=1.0, teacher="", caption="captions")
  config = ml_collections.ConfigDict()
  config.seed = 0
  pp = config_lib.demo_pp(arg.res, arg.max_len, arg.caption)
  config.input = ml_collections.ConfigDict(dict(
      # A spec or a mixture ((spec, weight), ...), also on the command line.
      data=config_lib.data_field(config_lib.DEMO_DATA),
      split="train", data_dir=None,
      batch_size=arg.batch, pp=pp.train, workers=0, read_threads=4,
      shuffle=True))

  config.model_name = "two_towers"
  config.model = ml_collections.ConfigDict(dict(
      image=dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=8,
                 pool_type="gap", remat_policy="none", scan=False),
      text=dict(width=128, depth=4, mlp_dim=512, num_heads=4,
                max_len=arg.max_len, vocab_size=49408, causal=True,
                pool_type="eot", remat_policy="none", scan=False),
      out_dim=128, temperature_init=10.0, bias_init=None,
      dtype="float32"))
  # What the step minimises: named, weighted objectives (big_vl/
  # objectives.py); metrics train/loss (the sum), train/contrastive/loss, ...
  config.objectives = ml_collections.ConfigDict(dict(
      contrastive=dict(loss=arg.loss, weight=1.0, impl="dense")))
  if arg.loss == "sigmoid":
    config.model.bias_init = -10.0
  if arg.patch_keep != 1.0:
    config.model.image.patch_keep = arg.patch_keep
  if arg.teacher:
    config.teacher = ml_collections.ConfigDict(dict(path=arg.teacher))
    config.objectives.distill = dict(loss="distill", weight=1.0,
                                     impl="dense")

  if arg.epochs:
    config.total_epochs = arg.epochs
  else:
    config.total_steps = arg.steps
  config.warmup_steps = 100
  config.log_steps = 25
  config.ckpt_steps = 500
  config.keep_ckpts = 2
  config.lr = 1e-3
  config.wd = 0.1
  config.wd_mode = "coupled"
  config.schedule = dict(name="cosine", end_frac=0.0)
  config.optim = dict(name="adamw", b1=0.9, b2=0.98, eps=1e-6)
  # Scale knobs (see README): GradCache micro-batches per step, and a
  # compute dtype for the params (fp32 master weights stay in the state).
  config.grad_accum_steps = 1
  config.param_compute_dtype = config_dict.placeholder(str)
  config.grad_clip_norm = 1.0
  # Regexes of parameters that do not train, e.g. ('img/.*',) (LiT).
  config.frozen = ()

  config.mesh = (("data", -1),)
  config.sharding_rules = ((".*", "replicate"),)
  config.evals = config_lib.demo_evals(arg.res, arg.max_len, every=400)

  if arg.runlocal:
    config_lib.runlocal_on_demo(config, res=32, max_len=arg.max_len,
                                caption=arg.caption)
  return config


def get_sweep(arg=None):
  """Variants for `python -m big_vl.sweep`: lr x loss (4 runs)."""
  del arg
  return [{"lr": lr, "objectives.contrastive.loss": loss,
           "model.bias_init": bias}
          for lr in (1e-3, 3e-3)
          for loss, bias in (("softmax", None), ("sigmoid", -10.0))]
