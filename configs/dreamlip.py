r"""DreamLIP (Zheng et al. 2024): long captions as several positives.

Every image has a long, multi-sentence caption. Each step samples K of its
sentences (`sample_sentences(K)`; the batch text is [B, K, L]) and trains
with DreamLIP's two losses (`big_vl/losses/dreamlip.py`): a multi-positive
contrastive loss (an image's K sub-captions are all positives among the
B * K) and the grouping loss, which matches each sub-caption with an
attention-pooled feature of its image's patch tokens
(`config.model.token_features`).

Data: the demo set's `long_caption` (one sentence per object, one for the
background: "There is a large red circle in the top left. A small blue
square is to the right of the red circle. The picture has a dark
background."); evaluation uses the demo's short captions and prompts, as
the demo config does. Other data: any source with a long-caption text
field, e.g. `data=jsonl:/data/pairs.jsonl,key=caption` for a JSONL file of
image paths and ShareGPT4V-style long captions.

The model and schedule are the demo's (configs/demo.py); the paper trains
ViT-B/16 CLIP models on CC3M to Merged-30M re-captioned by MLLMs, which
TFDS does not have.

Run (2 CPU cores, about 8 minutes like the demo):

    python -m big_vl.train --config=configs/dreamlip.py --workdir=workdirs/dreamlip

Local run (about a minute):

    python -m big_vl.train --config=configs/dreamlip.py:runlocal --workdir=/tmp/d

Expected locally (measured 2026-11-29): the total loss (contrastive +
grouping; chance (ln 96 + ln 32) / 2 + ln 96 = 8.58 for 32 images x 3
sub-captions) falls from 8.63 at step 5 to 8.12 at step 20 (contrastive
4.07 -> 3.82, grouping 4.56 -> 4.30).
"""

import os

import ml_collections

from big_vl import config as config_lib


def get_config(arg=None):
  """DreamLIP config. Args: `k`, `grouping_weight`, `data`, `key`,
  `steps`, `batch`, `runlocal`."""
  arg = config_lib.parse_arg(arg, k=3, grouping_weight=1.0,
                             data=config_lib.DEMO_DATA, key="long_caption",
                             steps=800, batch=128, runlocal=False)
  demo = config_lib.load_config_module(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
  config = demo.get_config(f"steps={arg.steps},batch={arg.batch},"
                           f"runlocal={arg.runlocal}")
  res = 32 if arg.runlocal else 64
  max_len = config.model.text.max_len
  config.input.data = arg.data
  config.input.pp = (
      f"decode|resize({res})|value_range(-1,1)|"
      f"sample_sentences({arg.k}, key='{arg.key}')|"
      f"tokenize(max_len={max_len}, key='texts', out='text')|"
      "keep('image','text')")
  config.model.token_features = True
  config.objectives = ml_collections.ConfigDict(dict(
      dreamlip=dict(loss="dreamlip", weight=1.0, impl="ring",
                    grouping_weight=arg.grouping_weight)))
  return config
