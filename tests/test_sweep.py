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

  # The same root with a longer run: its finished variants are not this
  # sweep's results; refused, naming the key.
  config_path.write_text(SWEEP_CONFIG.replace("total_steps = 3",
                                              "total_steps = 4"))
  with pytest.raises(ValueError, match=r"(?s)Refusing to run the sweep.*"
                     r"lr=0\.001 \(finished.*config\.total_steps: 3 -> 4"):
    sweep.run(str(config_path), str(root), train_fn=must_not_train,
              log=lambda *_: None)


def _fake_train(config, workdir):
  """Writes what the trainer writes first (config.json); 'finishes'."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  return {"step": config.total_steps, "losses": {1: 1.0},
          "final": {"zeroshot/demo_shapes/top1": 0.5}}


# The fake runs write no loss curves, so the plot's legend is empty.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:No artists with labels")
def test_sweep_refuses_variants_trained_with_another_config(tmp_path):
  root = str(tmp_path / "sweep")
  quiet = lambda *_: None
  rows = sweep.run(DEMO + ":runlocal", root, train_fn=_fake_train, log=quiet)
  assert [r["status"] for r in rows] == ["trained"] * 4

  def must_not_train(config, workdir):
    raise AssertionError(f"trained in {workdir} with another config")

  # The :runlocal root reused for the full sweep: refused before anything
  # runs, naming every variant and the keys that differ.
  with pytest.raises(ValueError) as e:
    sweep.run(DEMO, root, train_fn=must_not_train, log=quiet)
  message = str(e.value)
  assert message.startswith(f"Refusing to run the sweep in {root}: 4 "
                            "variant workdir(s)")
  first = os.path.join(root, "lr=0.001,loss.name=softmax,model.bias_init=None")
  assert ("  lr=0.001,loss.name=softmax,model.bias_init=None (finished, "
          f"{first}):\n") in message
  assert "    config.total_steps: 20 -> 800\n" in message
  assert "    config.model.out_dim: 64 -> 128\n" in message
  assert "delete those variant folders to retrain them" in message

  # Keys that cannot change results (here the log cadence) do not count:
  # the finished variants are reported as they are.
  path, _ = config_lib.parse_config_arg(DEMO)
  relogged = tmp_path / "relogged.py"
  relogged.write_text(
      f"from big_vl import config as config_lib\n"
      f"_demo = config_lib.load_config_module({path!r})\n"
      "get_sweep = _demo.get_sweep\n\n"
      "def get_config(arg=None):\n"
      "  config = _demo.get_config('runlocal')\n"
      "  config.log_steps = 7\n"
      "  return config\n")
  again = sweep.run(str(relogged), root, train_fn=must_not_train, log=quiet)
  assert [r["status"] for r in again] == ["skipped"] * 4

  # An interrupted variant (checkpoints, no final row) counts too.
  os.remove(os.path.join(first, sweep.FINAL_FILE))
  os.makedirs(os.path.join(first, "checkpoints", "10"))
  changed = tmp_path / "changed.py"
  changed.write_text(relogged.read_text().replace(
      "config.log_steps = 7", "config.wd = 0.5"))
  with pytest.raises(ValueError) as e:
    sweep.run(str(changed), root, train_fn=must_not_train, log=quiet)
  assert ("  lr=0.001,loss.name=softmax,model.bias_init=None (interrupted, "
          f"{first}):\n    config.wd: 0.1 -> 0.5\n") in str(e.value)


SPELLING_CONFIG = '''
import ml_collections
from big_vl import config as config_lib

_demo = config_lib.load_config_module(__DEMO__)
OLD = __OLD__


def get_config(arg=None):
  config = _demo.get_config("runlocal")
  config.total_steps = 2
  config.warmup_steps = 1
  config.log_steps = 1
  config.ckpt_steps = 100
  config.evals = ml_collections.ConfigDict()
  config.model.image.depth = config.model.text.depth = 1
  if OLD:  # The spelling of configs before config.objectives.
    block = config.objectives.contrastive.to_dict()
    with config.unlocked():
      del config["objectives"]
      config.loss = ml_collections.ConfigDict(dict(
          name=block["loss"], impl=block["impl"]))
  return config


def get_sweep(arg=None):
  key = "loss.name" if OLD else "objectives.contrastive.loss"
  return [{key: "softmax"}, {key: "sigmoid", "model.bias_init": -10.0}]
'''


@pytest.mark.slow
def test_a_finished_variant_is_not_rerun_for_the_spelling_alone(demo_data,
                                                               tmp_path):
  """Variants trained with `config.loss` / `loss.name` overrides are
  finished for the same sweep written with `config.objectives`."""
  del demo_data
  path = tmp_path / "sweep_cfg.py"
  path.write_text(SPELLING_CONFIG.replace("__DEMO__", repr(DEMO)).replace(
      "__OLD__", "True"))
  root = tmp_path / "root"
  first = sweep.run(str(path), str(root), log=lambda _: None)
  assert [r["status"] for r in first] == ["trained", "trained"]
  names = sorted(p.name for p in root.iterdir() if p.is_dir())
  path.write_text(SPELLING_CONFIG.replace("__DEMO__", repr(DEMO)).replace(
      "__OLD__", "False"))
  trained = []
  again = sweep.run(str(path), str(root), log=lambda _: None,
                    train_fn=lambda c, w: trained.append(w))
  assert not trained
  assert [r["status"] for r in again] == ["skipped", "skipped"]
  assert sorted(p.name for p in root.iterdir() if p.is_dir()) == names
  assert [r["train/loss"] for r in again] == [r["train/loss"] for r in first]


@pytest.mark.slow
def test_a_variant_resumed_after_its_last_step_keeps_its_loss(demo_data,
                                                              tmp_path):
  """A variant killed during its final evaluation (its last checkpoint
  written, no sweep_final.json) is rerun: that call trains no step, and its
  row's train/loss comes from the workdir's metrics.jsonl."""
  del demo_data
  path = tmp_path / "sweep_cfg.py"
  path.write_text(SWEEP_CONFIG)
  root = tmp_path / "root"
  (name, _, config), _ = sweep.variants(str(path))
  train_lib.train(config, str(root / name))   # as if killed after it
  rows = sweep.run(str(path), str(root), log=lambda _: None)
  assert rows[0]["name"] == name and rows[0]["status"] == "trained"
  assert rows[0]["step"] == 3
  assert rows[0]["train/loss"] == _last_loss(root / name)
  saved = json.loads((root / name / sweep.FINAL_FILE).read_text())
  assert saved["train/loss"] == rows[0]["train/loss"]
  with open(root / "sweep.csv") as f:
    table = list(csv.DictReader(f))
  assert float(table[0]["train/loss"]) == rows[0]["train/loss"]
