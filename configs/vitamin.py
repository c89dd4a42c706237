r"""ViTamin (Chen et al. 2024) image towers in a CLIP-style two-tower model.

The image tower is big_vl's ViTamin (`big_vl/models/vitamin.py`): a
convolutional stem, two MBConv stages that downsample to 1/8, a strided
conv to 1/16, then pre-LN Transformer blocks with GeGLU MLPs, mean pooling
and a LayerNorm; its features equal timm's `vitamin_*` models on converted
weights (`big_vl.convert.timm_vitamin`, tested to 1e-6 against timm). The
text tower and embedding widths follow open_clip's ViTamin model configs:

  variant  image            embed  text (width / heads / layers)
  S        vitamin S, 224     384   384 /  6 / 12
  B        vitamin B, 224     512   512 /  8 / 12
  L        vitamin L, 224     768   768 / 12 / 12
  XL       vitamin XL, 256   1152  1152 / 16 / 27

Training follows CLIP's recipe (configs/clip.py: AdamW b2 0.98, wd 0.2,
cosine, softmax loss, learned temperature from 1/0.07), data and
evaluations: LAION-400M as img2dataset WebDataset shards (`data=SHARDS`,
see configs/clip.py), ImageNet zero-shot and COCO retrieval. The paper
trains on DataComp-1B, which is distributed in the same WebDataset layout:
`data=/path/to/datacomp/{00000000..NNNNNNNN}.tar` (its shard range).

Full run (a TPU pod):

    python -m big_vl.train --config=configs/vitamin.py:variant=S --workdir=W

Expected: the ViTamin paper reports ImageNet zero-shot top-1 of 62.2% (S)
and 68.9% (B) after 1.28B DataComp-1B samples; not reproduced here.

Local run on the demo data (2 CPU cores, about a minute, a tiny "mu"
ViTamin at 32 px):

    python -m big_vl.train --config=configs/vitamin.py:runlocal --workdir=/tmp/v

Expected locally (measured 2026-11-29): the loss goes from 3.44 at step 5
to 3.38 at step 20 (ln(32) = 3.47 is chance; 20 steps of a tiny tower only
show that it trains).
"""

import os

from big_vl import config as config_lib

# variant -> (embed width, text width, text heads, text layers, image size).
TOWERS = {
    "S": (384, 384, 6, 12, 224),
    "B": (512, 512, 8, 12, 224),
    "L": (768, 768, 12, 12, 224),
    "XL": (1152, 1152, 16, 27, 256),
}


def get_config(arg=None):
  """ViTamin config. Args: `variant=S|B|L|XL`, `batch`, `examples`,
  `data=SHARDS`, `imagenet=SPEC`, `coco=SPEC`, `runlocal`."""
  arg = config_lib.parse_arg(arg, variant="S", batch=32768,
                             examples=12_800_000_000,
                             data=config_lib.LAION400M_SHARDS,
                             imagenet=config_lib.IMAGENET_DATA,
                             coco=config_lib.COCO_DATA, runlocal=False)
  if arg.variant not in TOWERS:
    raise ValueError(f"configs/vitamin.py: variant must be one of "
                     f"{list(TOWERS)}.")
  out_dim, text_width, text_heads, text_depth, res = TOWERS[arg.variant]
  clip = config_lib.load_config_module(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip.py"))
  config = clip.get_config(
      f"batch={arg.batch},examples={arg.examples},res={res},data={arg.data},"
      f"imagenet={arg.imagenet},coco={arg.coco},runlocal={arg.runlocal}")
  config.model.image = dict(arch="vitamin", variant=arg.variant,
                            remat_policy="none", scan=False)
  config.model.text.update(width=text_width, num_heads=text_heads,
                           depth=text_depth, mlp_dim=4 * text_width,
                           act="gelu_exact")
  config.model.out_dim = out_dim
  if arg.runlocal:
    config.model.image.variant = "mu"
    config.model.text = dict(variant="mu", max_len=24, vocab_size=49408,
                             causal=True, pool_type="eot")
    config.model.out_dim = 64
  return config
