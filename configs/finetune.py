r"""Contrastive fine-tuning of both towers from a checkpoint, then WiSE-FT.

The recipe of robust fine-tuning (FLYP / WiSE-FT): start from a trained or
converted model (`config.model_init`, every parameter loaded), fine-tune
image and text towers with the same contrastive loss on a new image-text
dataset, with layer-wise learning-rate decay per tower
(`config.layer_decay`: block i of D gets decay^(D - i), embeddings
decay^(D + 1), heads 1), a low learning rate and a short warm-up; then mix
the zero-shot and fine-tuned weights with `big_vl.interpolate`.

Default: the LiT Fashion-MNIST model (configs/lit_fashion_mnist.py; its
MiniLM text tower unlocked here) fine-tuned on the demo shapes' captions (a
new domain: coloured shapes), evaluated zero-shot on the demo shapes (the
target) and on Fashion-MNIST (the model's first task):

    python -m big_vl.train --config=configs/finetune.py \
        --workdir=workdirs/finetune_shapes
    python -m big_vl.interpolate --a=workdirs/lit_fashion_mnist \
        --b=workdirs/finetune_shapes --alphas=0,0.25,0.5,0.75,1 \
        --out=workdirs/wise_ft_shapes --eval_config=configs/finetune.py:eval

Expected (measured 2026-11-29 on 2 CPU cores, 4.5 minutes for 300 steps of
64, then 3 minutes for the sweep; bench/RESULTS.md, "Fine-tuning and
WiSE-FT"): demo-shapes zero-shot top-1 3.2% -> 25.9% (top-5 14.6% ->
91.4%) while Fashion-MNIST falls 83.9% -> 78.4%; alpha 0.5 gives 10.3% /
82.9%, alpha 0.75 17.6% / 80.9% (table and plot in
workdirs/wise_ft_shapes/wise_ft.{md,png}).

`:runlocal,init=DIR` fine-tunes a `configs/demo.py:runlocal` model for 6
steps on the demo data (what the tests run). Args: `init=DIR` (the starting
checkpoint), `text=DIR` (the converted text tower whose tokenizer the model
uses; default workdirs/minilm), `steps`, `batch`, `lr`, `decay` (layer-wise
decay for both towers, 1: none), `freeze=` ("img" or "txt": lock a tower),
`eval` (the evaluation config for `big_vl.evaluate`/`interpolate`),
`runlocal`.
"""

import ml_collections

from big_vl import config as config_lib
from big_vl import pretrained

FASHION = "tfds:big_vl_mnist_idx/fashion_mnist"


def _evals(res, tokenize, runlocal):
  img = f"decode|resize({res})|value_range(-1,1)|keep('image','label')"
  split = "test[:256]" if runlocal else "test"
  evals = dict(
      shapes=dict(type="zeroshot", data=config_lib.DEMO_DATA, split=split,
                  pp_img=img, pp_txt=tokenize, templates="demo_shapes",
                  batch_size=64 if runlocal else 500, name="demo_shapes"))
  if not runlocal:
    evals["fashion_mnist"] = dict(
        type="zeroshot", data=FASHION, split="test", pp_img=img,
        pp_txt=tokenize, templates="fashion_mnist",
        class_names="fashion_mnist", batch_size=500, name="fashion_mnist")
  return ml_collections.ConfigDict(evals)


def get_config(arg=None):
  """Args: `init`, `text`, `steps`, `batch`, `lr`, `decay`, `freeze`,
  `eval`, `runlocal`."""
  arg = config_lib.parse_arg(arg, init="", text="workdirs/minilm", steps=300,
                             batch=64, lr=1e-4, decay=0.75, freeze="",
                             eval=False, runlocal=False)
  if arg.runlocal:
    init = arg.init or "/tmp/d"
    res, tokenize = 32, "tokenize(max_len=24)"
  else:
    init = arg.init or "workdirs/lit_fashion_mnist"
    lit = config_lib.load_config_module("configs/lit_fashion_mnist.py")
    res, (_, tokenize) = 28, lit.text_tower(arg.text)
  if arg.eval:
    return ml_collections.ConfigDict(dict(
        evals=_evals(res, tokenize, arg.runlocal)))
  _, _, start = pretrained.read_config(init)

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.input = ml_collections.ConfigDict(dict(
      data=config_lib.DEMO_DATA, split="train", data_dir=None,
      batch_size=arg.batch,
      pp=(f"decode|resize({res})|value_range(-1,1)|"
          f"choice(key='captions', out='text')|{tokenize}|"
          "keep('image','text')"),
      workers=0, read_threads=4, shuffle=True))
  # The model is the checkpoint's, every parameter loaded from it.
  config.model_name = start.get("model_name", "two_towers")
  config.model = ml_collections.ConfigDict(start.model.to_dict())
  config.model_init = init
  config.model_load = ml_collections.ConfigDict(dict(dont_load=()))
  config.frozen = (f"{arg.freeze}/.*",) if arg.freeze else ()
  config.layer_decay = ml_collections.ConfigDict(
      {} if arg.decay == 1 else {t: arg.decay for t in ("img", "txt")
                                 if t != arg.freeze})
  config.objectives = ml_collections.ConfigDict(dict(
      contrastive=dict(loss="softmax", weight=1.0, impl="dense")))

  config.total_steps = arg.steps
  config.warmup_steps = max(arg.steps // 20, 1)
  config.log_steps = 25
  config.ckpt_steps = arg.steps
  config.keep_ckpts = 1
  config.lr = arg.lr
  config.wd = 0.1
  config.wd_mode = "coupled"
  config.schedule = dict(name="cosine", end_frac=0.0)
  config.optim = dict(name="adamw", b1=0.9, b2=0.98, eps=1e-6)
  config.grad_clip_norm = 1.0
  config.mesh = (("data", -1),)
  config.sharding_rules = ((".*", "replicate"),)
  config.evals = _evals(res, tokenize, arg.runlocal)
  if arg.runlocal:
    config.input.batch_size = 32
    config.total_steps = 6
    config.warmup_steps = 1
    config.log_steps = 1
    config.ckpt_steps = 6
  return config
