"""A typo at any depth of a config is an error naming its dotted path, raised
before any data or device work (train.check_config, evaluate, adapt)."""

import re

import ml_collections
import pytest

from big_vl import config as config_lib
from big_vl import evaluate
from big_vl import train
from big_vl.adapt import run as adapt_run

MISSING_DATA = "tfds:no_such_dataset_anywhere"

# (block, the typo to make, the dotted path the error must name, a known key
# it must suggest).
TYPOS = [
    ("objectives", lambda c: setattr(c.objectives.contrastive, "temprature",
                                     2.0),
     "config.objectives.contrastive.temprature", "impl"),
    ("model.image", lambda c: setattr(c.model.image, "widht", 64),
     "config.model.image.widht", "width"),
    ("model.text", lambda c: setattr(c.model.text, "vocab_sise", 10),
     "config.model.text.vocab_sise", "vocab_size"),
    ("model", lambda c: setattr(c.model, "outdim", 8),
     "config.model.outdim", "out_dim"),
    ("optim", lambda c: c.optim.update(beta1=0.9),
     "config.optim.beta1", "b1"),
    ("schedule", lambda c: c.schedule.update(end_fraction=0.1),
     "config.schedule.end_fraction", "end_frac"),
    ("evals", lambda c: setattr(c.evals.zeroshot, "templtes", "x"),
     "config.evals.zeroshot.templtes", "templates"),
    ("model_load", lambda c: setattr(c, "model_load",
                                     ml_collections.ConfigDict(
                                         {"dontload": ("img/.*",)})),
     "config.model_load.dontload", "dont_load"),
]


def _config():
  config = config_lib.load_config_module("configs/demo.py").get_config(
      "runlocal")
  # Data that does not exist: the check must come first.
  config.input.data = MISSING_DATA
  return config


@pytest.mark.parametrize("block,typo,where,known", TYPOS,
                         ids=[t[0] for t in TYPOS])
def test_a_typo_in_each_block_names_its_dotted_path(block, typo, where, known,
                                                    tmp_path):
  del block
  config = _config()
  train.check_config(config)  # The unmodified config is fine.
  typo(config)
  pattern = rf"{re.escape(where)}: unknown config key.*{known}"
  with pytest.raises(ValueError, match=pattern):
    train.check_config(config)
  # train() checks before reading data (which does not exist) or devices.
  with pytest.raises(ValueError, match=pattern):
    train.train(config, str(tmp_path / "run"))


def test_unknown_names_and_missing_keys_in_blocks():
  config = _config()
  config.objectives.contrastive.loss = "sigmoidd"
  with pytest.raises(ValueError, match=r"config\.objectives\.contrastive\."
                     r"loss: Unknown loss 'sigmoidd'"):
    train.check_config(config)
  config = _config()
  config.optim.name = "sgd"
  with pytest.raises(ValueError, match=r"config\.optim\.name: unknown "
                     r"optimiser 'sgd'"):
    train.check_config(config)
  config = _config()
  del config.evals.zeroshot["split"]
  with pytest.raises(ValueError, match=r"config\.evals\.zeroshot: missing "
                     r"required key\(s\) split"):
    train.check_config(config)
  config = _config()
  config.evals.zeroshot.type = "zeroshoot"
  with pytest.raises(ValueError, match=r"config\.evals\.zeroshot: unknown "
                     r"evaluator type 'zeroshoot'"):
    train.check_config(config)
  config = _config()
  config.model.image.arch = "vitamn"
  with pytest.raises(ValueError, match=r"config\.model\.image\.arch"):
    train.check_config(config)
  config = _config()
  config.schedule.end_frac = 0.1
  config.schedule.name = "constant"
  with pytest.raises(ValueError, match=r"end_frac=0\.1 has no effect"):
    train.check_config(config)


def test_evaluate_config_typos_are_named_before_the_checkpoint(tmp_path):
  config = config_lib.load_config_module("configs/eval/demo.py").get_config(
      "runlocal")
  config.evals.zeroshot.pp_imgg = "decode"
  with pytest.raises(ValueError, match=r"config\.evals\.zeroshot\.pp_imgg: "
                     r"unknown config key.*pp_img"):
    evaluate.evaluate(config, str(tmp_path / "no_checkpoint"))
  config = config_lib.load_config_module("configs/eval/demo.py").get_config(
      "runlocal")
  config.model = ml_collections.ConfigDict(
      {"image": {"variant": "mu/8", "pool": "gap"}, "text": {}})
  with pytest.raises(ValueError, match=r"config\.model\.image\.pool: "
                     r"unknown config key.*pool_type"):
    evaluate.evaluate(config, str(tmp_path / "no_checkpoint"))


def test_adapt_config_typos_are_named_before_the_checkpoint(tmp_path):
  config = config_lib.load_config_module("configs/adapt/demo.py").get_config(
      f"runlocal,ckpt={tmp_path / 'no_checkpoint'}")
  adapt_run.check_config(config)
  config.hparams.coop.stpes = 3
  with pytest.raises(ValueError, match=r"config\.hparams\.coop\.stpes: "
                     r"unknown config key.*steps"):
    adapt_run.run(config, str(tmp_path / "adapt"))
  config = config_lib.load_config_module("configs/adapt/demo.py").get_config(
      f"runlocal,ckpt={tmp_path / 'no_checkpoint'}")
  config.hparams.coopp = {"steps": 3}
  with pytest.raises(ValueError, match=r"config\.hparams\.coopp: unknown "
                     r"config key.*coop"):
    adapt_run.run(config, str(tmp_path / "adapt"))
  config = config_lib.load_config_module("configs/adapt/demo.py").get_config(
      f"runlocal,ckpt={tmp_path / 'no_checkpoint'}")
  config.base_to_new.shot = 2
  with pytest.raises(ValueError, match=r"config\.base_to_new\.shot: unknown "
                     r"config key.*shots"):
    adapt_run.run(config, str(tmp_path / "adapt"))


def test_signature_check_helper():
  def factory(predict_fn, *, mesh, data, batch_size=8):
    del predict_fn, mesh, data, batch_size
  config_lib.check_signature({"data": "x"}, factory, "config.evals.e",
                             skip=("predict_fn", "mesh"))
  with pytest.raises(ValueError, match=r"config\.evals\.e\.batchsize: "
                     r"unknown config key\. Did you mean batch_size\?"):
    config_lib.check_signature({"data": "x", "batchsize": 1}, factory,
                               "config.evals.e", skip=("predict_fn", "mesh"))
  with pytest.raises(ValueError, match=r"config\.evals\.e: missing required "
                     r"key\(s\) data"):
    config_lib.check_signature({}, factory, "config.evals.e",
                               skip=("predict_fn", "mesh"))
  with pytest.raises(TypeError, match=r"\*\*kwargs"):
    config_lib.check_signature({}, lambda **kwargs: None, "config.x")


# (override, value, the message's start): values outside their domain.
BAD_VALUES = [
    ("input.batch_size", 0, "config.input.batch_size=0 must be a positive "
     "integer"),
    ("input.batch_size", -4, "config.input.batch_size=-4 must be a positive "
     "integer"),
    ("total_steps", -5, "config.total_steps=-5 must be a positive integer"),
    ("total_steps", 0, "config.total_steps=0 must be a positive integer"),
    ("warmup_steps", -1, "config.warmup_steps=-1 must be an integer >= 0"),
    ("log_steps", 0, "config.log_steps=0 must be a positive integer"),
    ("lr", -1.0, "config.lr=-1.0 must be a number >= 0"),
    ("lr", float("nan"), "config.lr=nan must be a number >= 0"),
    ("wd", -0.1, "config.wd=-0.1 must be a number >= 0"),
    ("grad_clip_norm", 0.0, "config.grad_clip_norm=0.0 must be a number > 0"),
    ("keep_ckpts", 0, "config.keep_ckpts=0 must be a positive integer"),
    ("input.workers", -1, "config.input.workers=-1 must be an integer >= 0"),
    ("model.out_dim", 0, "config.model.out_dim=0 must be a positive integer"),
    ("model.image.depth", -2, "config.model.image.depth=-2 must be a "
     "positive integer"),
    ("model.text.dropout", 1.5, "config.model.text.dropout=1.5 must be a "
     "number in [0, 1)"),
    ("model.temperature_init", 0.0, "config.model.temperature_init=0.0 must "
     "be a number > 0"),
    ("optim.b2", 1.0, "config.optim.b2=1.0 must be a number in [0, 1)"),
    ("optim.eps", 0.0, "config.optim.eps=0.0 must be a number > 0"),
    ("schedule.end_frac", 2.0, "config.schedule.end_frac=2.0 must be a "
     "number in [0, 1]"),
    ("evals.zeroshot.batch_size", 0, "config.evals.zeroshot.batch_size=0 "
     "must be a positive integer"),
    ("evals.zeroshot.every", -10, "config.evals.zeroshot.every=-10 must be "
     "an integer >= 0"),
    ("objectives.contrastive.label_smoothing", 1.0,
     "config.objectives.contrastive.label_smoothing=1.0 must be a number in "
     "[0, 1)"),
]


@pytest.mark.parametrize("key,value,message", BAD_VALUES,
                         ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_values_outside_their_domain_are_refused_at_start_up(key, value,
                                                             message,
                                                             tmp_path):
  config = _config()
  *parents, leaf = key.split(".")
  block = config
  for part in parents:
    block = block[part]
  with config.unlocked():
    block[leaf] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    train.check_config(config)
  # Before any data (which does not exist) or device work.
  with pytest.raises(ValueError, match=re.escape(message)):
    train.train(config, str(tmp_path / "run"))
