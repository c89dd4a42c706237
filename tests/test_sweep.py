"""Config sweeps: variants run like plain trainer runs, finished ones skip."""

import csv
import json
import os

import pytest

from big_vl import config as config_lib
from big_vl import metrics as metrics_lib
from big_vl import sweep
from big_vl import train as train_lib

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "configs", "demo.py")

SWEEP_CONFIG = f'''
from big_vl import config as config_lib

_demo = config_lib.load_config_module({DEMO!r})


def get_config(arg=None):
  config = _demo.get_config("runlocal")
  config.total_steps = 3
  config.warmup_steps = 1
  config.log_steps = 1
  config.ckpt_steps = 100
  return config


def get_sweep(arg=None):
  return [{{"lr": 1e-3}}, {{"lr": 3e-3}}]
'''


def _last_loss(workdir):
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return [r["train/loss"] for r in rows if "train/loss" in r][-1]


def test_variant_names_and_overrides():
  assert sweep.variant_name({"lr": 0.001, "loss.name": "sigmoid"}) == (
      "lr=0.001,loss.name=sigmoid")
  assert sweep.variant_name({}) == "base"
  config = config_lib.load_config_module(DEMO).get_config("runlocal")
  sweep.apply_overrides(config, {"lr": 0.5, "model.bias_init": -10.0})
  assert config.lr == 0.5 and config.model.bias_init == -10.0
  with pytest.raises(KeyError, match="no 'nope'"):
    sweep.apply_overrides(config, {"model.nope": 1})
  names = [n for n, _, _ in sweep.variants(DEMO + ":runlocal")]
  assert len(names) == 4 and len(set(names)) == 4


def test_config_without_get_sweep_is_an_error(tmp_path):
  path = tmp_path / "plain.py"
  path.write_text("def get_config(arg=None):\n  return None\n")
  with pytest.raises(ValueError, match="defines no get_sweep"):
    sweep.variants(str(path))


@pytest.mark.slow
def test_sweep_runs_tables_and_skips_finished_runs(demo_data, tmp_path):
  config_path = tmp_path / "swept.py"
  config_path.write_text(SWEEP_CONFIG)
  root = tmp_path / "sweep"
  rows = sweep.run(str(config_path), str(root), log=lambda *_: None)
  assert [r["name"] for r in rows] == ["lr=0.001", "lr=0.003"]
  assert [r["status"] for r in rows] == ["trained", "trained"]
  for r in rows:
    assert r["step"] == 3
    assert r["train/loss"] == _last_loss(root / r["name"])
    assert 0.0 <= r["zeroshot/demo_shapes/top1"] <= 1.0
  assert rows[0]["train/loss"] != rows[1]["train/loss"]

  # A variant is the plain trainer run of its config: same final loss.
  _, _, config = sweep.variants(str(config_path))[1]
  plain = train_lib.train(config, str(tmp_path / "plain"))
  assert plain["losses"][3] == rows[1]["train/loss"]

  with open(root / "sweep.csv") as f:
    table = list(csv.DictReader(f))
  assert [t["name"] for t in table] == ["lr=0.001", "lr=0.003"]
  assert float(table[1]["train/loss"]) == rows[1]["train/loss"]
  assert (root / "sweep.md").read_text().count("| lr=0.00") == 2
  assert (root / "sweep.png").stat().st_size > 10_000
  with open(root / "lr=0.003" / sweep.FINAL_FILE) as f:
    assert json.load(f)["overrides"] == {"lr": 0.003}

  def must_not_train(config, workdir):
    raise AssertionError(f"finished variant retrained in {workdir}")

  again = sweep.run(str(config_path), str(root), train_fn=must_not_train,
                    log=lambda *_: None)
  assert [r["status"] for r in again] == ["skipped", "skipped"]
  assert [r["train/loss"] for r in again] == [r["train/loss"] for r in rows]
