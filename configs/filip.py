r"""FILIP (Yao et al. 2021): token-wise late-interaction contrastive training.

The CLIP two-tower model (configs/clip.py) with FILIP's loss: every image
patch token and text token is projected to the shared space
(`config.model.token_features`), and an image-text similarity is the mean
over patches of the best-matching word (image -> text) or the mean over
words of the best-matching patch (text -> image); padding never counts. The
ring implementation passes text token blocks around the batch devices, so
no device holds more than a `[B_local, B_local, patches, words]` block
(`big_vl/losses/filip.py`). `token_keep=0.5` keeps the half of the patch
tokens with the largest projected norm (FILIP's token reduction, which the
paper uses to save memory); `global_weight=w` adds w times the pooled CLIP
loss.

Hyper-parameters: CLIP's ViT-B/32 recipe (configs/clip.py) with the
FILIP-base shared-space width of 256, and its data (LAION-400M WebDataset
shards, `data=SHARDS`) and evaluations (ImageNet zero-shot, COCO
retrieval); the paper trains with LAMB on FILIP300M + CC3M/CC12M/YFCC100M
(its Tables 8-9).
The built-in zero-shot and retrieval evaluators score the pooled
embeddings, which the FILIP loss alone does not train: use
`global_weight>0` to have them measure something, or read the loss and its
in-batch accuracies (`train/img2txt_acc`, `train/txt2img_acc`).

Full run (a TPU pod):

    python -m big_vl.train --config=configs/filip.py:variant=B/32 --workdir=W

Local run on the demo data (2 CPU cores, about a minute):

    python -m big_vl.train --config=configs/filip.py:runlocal --workdir=/tmp/f

Expected locally (measured 2026-11-29): the FILIP loss falls from 3.56 at
step 5 to 3.41 at step 20 (ln(32) = 3.47 is chance); the pooled-embedding
evaluations stay at chance, as said above.
"""

import os

import ml_collections

from big_vl import config as config_lib


def get_config(arg=None):
  """FILIP config. Args: those of configs/clip.py (`variant`, `batch`,
  `examples`, `res`, `data=SHARDS`, `imagenet=SPEC`, `coco=SPEC`,
  `runlocal`), `token_keep`, `global_weight`."""
  arg = config_lib.parse_arg(arg, variant="B/32", batch=32768,
                             examples=12_800_000_000, res=224,
                             data=config_lib.LAION400M_SHARDS,
                             imagenet=config_lib.IMAGENET_DATA,
                             coco=config_lib.COCO_DATA, runlocal=False,
                             token_keep=1.0, global_weight=0.0)
  clip = config_lib.load_config_module(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip.py"))
  config = clip.get_config(
      f"variant={arg.variant},batch={arg.batch},examples={arg.examples},"
      f"res={arg.res},data={arg.data},imagenet={arg.imagenet},"
      f"coco={arg.coco},runlocal={arg.runlocal}")
  config.model.out_dim = 64 if arg.runlocal else 256
  config.model.token_features = True
  config.model.token_keep = arg.token_keep
  config.objectives = ml_collections.ConfigDict(dict(
      filip=dict(loss="filip", weight=1.0, impl="ring",
                 global_weight=arg.global_weight)))
  return config
