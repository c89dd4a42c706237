"""Config parsing, durations and key checks."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from big_vl import config as config_lib
from big_vl import train


def test_parse_arg_types_and_flags():
  arg = config_lib.parse_arg("variant=S/32,batch=64,runlocal,lr=3e-4",
                             variant="B/16", batch=32768, runlocal=False,
                             lr=1e-3)
  assert (arg.variant, arg.batch, arg.runlocal, arg.lr) == ("S/32", 64, True,
                                                            3e-4)
  assert config_lib.parse_arg(None, a=1).a == 1
  assert config_lib.parse_arg("flag=false", flag=True).flag is False


def test_parse_arg_errors_name_the_key():
  with pytest.raises(ValueError, match="Unknown config arg 'bacth'"):
    config_lib.parse_arg("bacth=3", batch=1)
  with pytest.raises(ValueError, match="'batch' expects a int"):
    config_lib.parse_arg("batch=big", batch=1)


def test_durations_steps_epochs_examples():
  c = ml_collections.ConfigDict({"total_epochs": 2.0})
  assert config_lib.get_steps("total", c, num_examples=1000,
                              batch_size=100) == 20
  c = ml_collections.ConfigDict({"total_examples": 250})
  assert config_lib.get_steps("total", c, batch_size=100) == 2
  c = ml_collections.ConfigDict({"warmup_steps": 7})
  assert config_lib.get_steps("warmup", c) == 7
  assert config_lib.get_steps("log", c, default=50) == 50
  c = ml_collections.ConfigDict({"total_steps": 1, "total_epochs": 1})
  with pytest.raises(ValueError, match="only one"):
    config_lib.get_steps("total", c, num_examples=1, batch_size=1)
  c = ml_collections.ConfigDict({"total_epochs": 2.0})  # A stream: no length.
  with pytest.raises(ValueError, match="streaming.*total_steps or "
                     "config.total_examples"):
    config_lib.get_steps("total", c, num_examples=None, batch_size=100)


@pytest.mark.parametrize("name", ["demo", "clip", "siglip", "filip",
                                  "align", "vitamin", "dreamlip",
                                  "growclip"])
@pytest.mark.parametrize("runlocal", [False, True])
def test_configs_load_and_check(name, runlocal, tmp_path):
  module = config_lib.load_config_module(f"configs/{name}.py")
  arg = "runlocal" if runlocal else None
  if name == "align" and not runlocal:
    with pytest.raises(ValueError, match="vocab.txt"):
      module.get_config()
    (tmp_path / "vocab.txt").write_text("[PAD]\n[CLS]\n")
    arg = f"vocab={tmp_path}"
  config = module.get_config(arg)
  train.check_config(config)
  assert config.input.batch_size > 0
  if config.input.get("device_pp", None):  # values mapped once, not twice
    assert "value_range" not in config.input.pp
    assert name in ("clip", "siglip", "align", "filip", "vitamin")
  if runlocal:
    assert config.total_steps <= 100
    assert config.input.data == config_lib.DEMO_DATA


def test_unknown_key_in_config_is_named():
  module = config_lib.load_config_module("configs/demo.py")
  config = module.get_config("runlocal")
  config.warmup_step = 10  # Typo of warmup_steps.
  with pytest.raises(ValueError, match=r"config\.warmup_step\b.*warmup_steps"):
    train.check_config(config)
  config = module.get_config("runlocal")
  config.input.batchsize = 3
  with pytest.raises(ValueError, match=r"config\.input\.batchsize"):
    train.check_config(config)


def test_cli_rejects_unknown_override(tmp_path):
  """`--config.nope=1` on the command line fails naming the key."""
  result = subprocess.run(
      [sys.executable, "-m", "big_vl.train", "--config=configs/demo.py:runlocal",
       f"--workdir={tmp_path}", "--config.learning_rate=0.1"],
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "learning_rate" in result.stderr
  result = subprocess.run(
      [sys.executable, "-m", "big_vl.train", "--config=configs/demo.py:runlocal",
       f"--workdir={tmp_path}", "--config.lr=fast"],
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "lr" in result.stderr and "fast" in result.stderr


@pytest.mark.slow
def test_align_runlocal_trains_with_lamb_and_label_smoothing(tmp_path,
                                                             demo_data):
  del demo_data
  config = config_lib.load_config_module("configs/align.py").get_config(
      "runlocal")
  assert config.optim.name == "lamb" and (
      config.objectives.contrastive.label_smoothing == 0.1)
  config.total_steps, config.log_steps, config.evals = 10, 1, {}
  result = train.train(config, str(tmp_path))
  losses = [result["losses"][s] for s in range(1, 11)]
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vitamin", "growclip"])
def test_runlocal_trains(name, tmp_path, demo_data):
  del demo_data
  config = config_lib.load_config_module(f"configs/{name}.py").get_config(
      "runlocal")
  config.log_steps, config.evals = 1, {}
  result = train.train(config, str(tmp_path))
  losses = np.array([result["losses"][s] for s in range(1, 21)])
  assert np.all(np.isfinite(losses))
  assert losses[-5:].mean() < losses[:5].mean()


def test_config_diff_names_dotted_keys_and_which_may_change_on_resume():
  old = ml_collections.ConfigDict(dict(
      lr=1e-3, total_steps=10, mesh=(("data", -1),),
      model=dict(image=dict(width=64), out_dim=32),
      evals=dict(zeroshot=dict(every=5, data="a"))))
  # As a checkpoint keeps it: JSON, tuples as lists.
  saved = json.loads(old.to_json_best_effort())
  assert config_lib.config_diff(saved, old) == []
  new = ml_collections.ConfigDict(old.to_dict())
  new.model.image.width = 96
  new.total_steps = 20
  new.evals.zeroshot.every = 2
  new.evals.zeroshot.data = "b"
  with new.unlocked():
    new.model.text = dict(width=8)
  diff = config_lib.config_diff(saved, new)
  assert diff == [("evals.zeroshot.data", "a", "b"),
                  ("evals.zeroshot.every", 5, 2),
                  ("model.image.width", 64, 96),
                  ("model.text.width", "(absent)", 8),
                  ("total_steps", 10, 20)]
  ok, bad = config_lib.split_diff(diff, config_lib.RESUME_CHANGEABLE_KEYS)
  assert [k for k, _, _ in ok] == ["evals.zeroshot.every", "total_steps"]
  assert [k for k, _, _ in bad] == ["evals.zeroshot.data", "model.image.width",
                                    "model.text.width"]
  assert config_lib.format_diff(bad[1:2]) == (
      "  config.model.image.width: 64 -> 96")


PRINT_CONFIG = (
    "from absl import app\n"
    "from big_vl import train\n"
    "from big_vl.train import __main__ as train_main\n"
    "def main(argv):\n"
    "  c = train_main._CONFIG.value\n"
    "  train.check_config(c)\n"
    "  print(repr(c.input.data), repr(c.frozen), repr(c.get('total_epochs')),"
    " 'total_steps' in c)\n"
    "app.run(main)\n")


@pytest.mark.slow
def test_readme_overrides_work_on_the_demo_config():
  """The README's command-line forms, parsed by the trainer's own flags: a
  mixture for input.data, frozen rules, a duration in epochs (the config's
  `epochs` argument)."""
  def parsed(*args):
    proc = subprocess.run(
        [sys.executable, "-c", PRINT_CONFIG, *args], capture_output=True,
        text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]

  assert parsed(
      "--config=configs/demo.py:runlocal",
      "--config.input.data=(('tfds:big_vl_demo_shapes', 0.7), "
      "('jsonl:/data/pairs.jsonl', 0.3))",
      "--config.frozen=('img/.*',)") == (
          "(('tfds:big_vl_demo_shapes', 0.7), ('jsonl:/data/pairs.jsonl', "
          "0.3)) ('img/.*',) None True")
  assert parsed("--config=configs/demo.py:epochs=2.5") == (
      "'tfds:big_vl_demo_shapes' () 2.5 False")


def test_an_empty_default_equals_an_absent_key():
  """`config.frozen = ()` spelled out, as the demo config now does, equals a
  config without the key (resume and sweep comparisons)."""
  assert config_lib.config_diff({"frozen": [], "a": None, "b": {}}, {}) == []
  assert config_lib.config_diff({"frozen": ["img/.*"]}, {}) == [
      ("frozen", ["img/.*"], "(absent)")]
