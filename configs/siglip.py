r"""SigLIP (Zhai et al. 2023): pairwise sigmoid loss image-text pre-training.

The paper's hyper-parameters for ViT-B/32 and ViT-B/16 from scratch: global
batch 32,768; AdamW-style Adam with b2 = 0.95 (for stability at large batch),
peak lr 1e-3, weight decay 1e-4 decoupled from the lr (big_vision style),
gradient clipping at 1.0, linear warm-up (5% of training here; the
paper does not pin its length) then cosine decay; image 224 px with a
MAP-pooled ViT; text: bidirectional B-size transformer, 16 tokens, last-token
pooling; logit temperature initialised to 10 (log t' = log 10) and bias to
-10. WebLI is private: the data is LAION-400M as img2dataset WebDataset
shards (`data=SHARDS`, default /data/laion400m/{00000..41455}.tar; how to
download them: configs/clip.py), tokenised with the CLIP BPE vocabulary.
Evaluation as in configs/clip.py (`big_vl.config.fullsize_evals`): ImageNet
zero-shot (`imagenet=SPEC`) and COCO Karpathy-test retrieval (`coco=SPEC`).

Full run (a TPU pod):

    python -m big_vl.train --config=configs/siglip.py:variant=B/16 --workdir=W

Expected: the paper reports 73.4% ImageNet zero-shot for B/16 after 9B WebLI
examples (Table 3, at 32k batch; `zeroshot/imagenet/top1` here);
LAION-400M runs are lower. Not reproduced here (no accelerator pod).

Local run on the embedded demo data (2 CPU cores, about a minute):

    python -m big_vl.train --config=configs/siglip.py:runlocal --workdir=/tmp/s

Expected locally: the loss falls from about 10 (all 32x32 pairs near
sigmoid(-10)) in 20 steps.
"""

import ml_collections
from ml_collections import config_dict

from big_vl import config as config_lib

VARIANTS = ("B/32", "B/16")


def get_config(arg=None):
  """SigLIP config. Args: `variant=B/32|B/16`, `batch=N`, `examples=N`,
  `res`, `max_len`, `data=SHARDS`, `imagenet=SPEC`, `coco=SPEC`,
  `runlocal`."""
  arg = config_lib.parse_arg(arg, variant="B/16", batch=32768,
                             examples=9_000_000_000, res=224, max_len=16,
                             data=config_lib.LAION400M_SHARDS,
                             imagenet=config_lib.IMAGENET_DATA,
                             coco=config_lib.COCO_DATA, runlocal=False)
  if arg.variant not in VARIANTS:
    raise ValueError(f"configs/siglip.py: variant must be one of {VARIANTS}.")
  config = ml_collections.ConfigDict()
  config.seed = 0
  image_pp = f"decode|resize({arg.res})"
  tokenize = f"tokenize(max_len={arg.max_len})"
  config.input = ml_collections.ConfigDict(dict(
      # WebDataset samples: "image" (encoded) and "text" (KEY.txt).
      data=config_lib.shards_spec(arg.data), split="train", data_dir=None,
      batch_size=arg.batch,
      pp=f"{image_pp}|{tokenize}|keep('image','text')",
      # uint8 from the host; [-1, 1] inside the train step.
      device_pp="value_range(-1,1)",
      workers=8, read_threads=16, shuffle=True))

  config.model_name = "two_towers"
  config.model = ml_collections.ConfigDict(dict(
      image=dict(variant=arg.variant, pool_type="map", posemb="learn",
                 remat_policy="none", scan=False),
      text=dict(variant="B", vocab_size=49408, max_len=arg.max_len,
                causal=False, pool_type="last", mask_pad=False,
                remat_policy="none", scan=False),
      out_dim=768, temperature_init=10.0, bias_init=-10.0,
      dtype="bfloat16"))
  config.objectives = ml_collections.ConfigDict(dict(
      contrastive=dict(loss="sigmoid", weight=1.0, impl="ring")))

  config.total_examples = arg.examples
  config.warmup_examples = arg.examples // 20
  config.log_steps = 50
  config.ckpt_steps = 1000
  config.lr = 1e-3
  config.wd = 1e-4
  config.wd_mode = "decoupled"
  config.schedule = dict(name="cosine", end_frac=0.0)
  config.optim = dict(name="adamw", b1=0.9, b2=0.95, eps=1e-8)
  # Scale knobs (see README): GradCache micro-batches per step, and a
  # compute dtype for the params (fp32 master weights stay in the state).
  config.grad_accum_steps = 1
  config.param_compute_dtype = config_dict.placeholder(str)
  # Start from pretrained weights (a `python -m big_vl.convert` output or
  # another run): --config.model_init=DIR, and regexes of params that keep
  # their init, e.g. --config.model_load.dont_load="('img/head/.*',)".
  config.model_init = config_dict.placeholder(str)
  config.model_load = ml_collections.ConfigDict(dict(dont_load=()))
  config.grad_clip_norm = 1.0

  # FSDP (ZeRO-3): params and optimiser moments split over every device,
  # which also share the batch (`fsdp` is a batch axis of big_vl.sharding).
  config.mesh = (("fsdp", -1),)
  config.sharding_rules = ((".*", "fsdp"),)
  config.evals = config_lib.fullsize_evals(
      image_pp, tokenize, every=5000, imagenet=arg.imagenet, coco=arg.coco)

  if arg.runlocal:
    config_lib.runlocal_on_demo(config, max_len=arg.max_len)
    config.model.dtype = "float32"
  return config
