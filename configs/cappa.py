r"""CapPa (Tschannen et al. 2023): an image captioner trained with parallel
prediction, on the demo shapes data.

A ViT encodes the image; a transformer decoder predicts the caption from
its patch tokens. 75% of the examples (the paper's `parallel_fraction`)
are predicted in parallel: every decoder input is the mask token and the
causal mask is off, so each word must come from the image; the rest are
teacher-forced. `uncond_prob` (default 0) drops the image for a fraction
of examples so that the model also learns p(caption), for classifier-free
guidance at decoding.

Run (the demo data is built on first use):

    python -m big_vl.train --config=configs/cappa.py --workdir=workdirs/cappa
    python -m big_vl.train --config=configs/cappa.py:runlocal \
        --workdir=/tmp/cappa    # 20 steps, 32x32 images, tiny towers

Metrics: train/caption/loss, train/caption/token_acc,
train/caption/perplexity; at the end, greedy captions of the test split
(64 images with `runlocal`, 1,000 otherwise) scored against their 5
references: captioning/demo_shapes/cider, bleu_1 ... bleu_4.

Not yet here (issue #19): CLIPScore, self-retrieval, guidance sweeps and
the full-size (WebLI-scale) recipe.

Args (after the colon): `runlocal`, `steps=N`, `batch=N`, `parallel=F`
(parallel_fraction), `uncond=F` (uncond_prob).
"""

import ml_collections

from big_vl import config as config_lib


def get_config(arg=None):
  """The CapPa demo config."""
  arg = config_lib.parse_arg(arg, runlocal=False, steps=800, batch=128,
                             parallel=0.75, uncond=0.0, res=64, max_len=24)
  res = 32 if arg.runlocal else arg.res
  config = ml_collections.ConfigDict()
  config.seed = 0
  pp = config_lib.demo_pp(res, arg.max_len)
  config.input = ml_collections.ConfigDict(dict(
      data=config_lib.data_field(config_lib.DEMO_DATA), split="train",
      data_dir=None, batch_size=32 if arg.runlocal else arg.batch,
      pp=pp.train, workers=0, read_threads=4, shuffle=True))

  config.model_name = "captioner"
  image = (dict(variant="mu/8") if arg.runlocal else
           dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=8))
  decoder = (dict(width=64, depth=2, mlp_dim=256, num_heads=2)
             if arg.runlocal else
             dict(width=128, depth=4, mlp_dim=512, num_heads=4))
  config.model = ml_collections.ConfigDict(dict(
      image=dict(pool_type="gap", **image), decoder=decoder,
      vocab_size=49408, max_len=arg.max_len,
      parallel_fraction=arg.parallel, uncond_prob=arg.uncond,
      mask_token=0, dtype="float32"))
  config.objectives = ml_collections.ConfigDict(dict(
      caption=dict(loss="caption", weight=1.0, label_smoothing=0.0)))

  config.total_steps = 20 if arg.runlocal else arg.steps
  config.warmup_steps = 2 if arg.runlocal else 100
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
  # Greedy captions of the test split, scored against its 5 references.
  config.evals = ml_collections.ConfigDict(dict(captioning=dict(
      type="captioning", data=config_lib.DEMO_DATA,
      split="test[:64]" if arg.runlocal else "test[:1000]",
      pp=pp.zeroshot_img.replace("|keep('image','label')", "|keep('image')"),
      captions_key="captions", batch_size=32 if arg.runlocal else 250,
      beam=1)))
  return config
