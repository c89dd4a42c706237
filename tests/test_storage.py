"""`gs://` workdirs against a local GCS server (tests/gcs_emulator.py).

The trainer, the evaluator, pretrained loading and sweeps are run on URLs
exactly as on a TPU pod: Orbax writes checkpoints through TensorStore's GCS
driver, the rest goes through etils.epath and gcsfs.
"""

import json
import os
import sys

import jax
import ml_collections
import numpy as np
import pytest

from big_vl import checkpoint as ckpt_lib
from big_vl import config as config_lib
from big_vl import evaluate as evaluate_lib
from big_vl import metrics as metrics_lib
from big_vl import pretrained
from big_vl import storage
from big_vl import sweep
from big_vl import train as train_lib

sys.path.insert(0, os.path.dirname(__file__))
import gcs_emulator  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def bucket():
  with gcs_emulator.running(bucket="big-vl-test") as url:
    yield url


def _names(url):
  """Relative names of every object under `url`."""
  return storage.list_files(url)


def test_staged_dir_mirrors_changed_files_and_skips_excluded(bucket,
                                                             tmp_path):
  url = f"{bucket}/staged"
  staged = storage.StagedDir(url, staging_root=str(tmp_path / "a"))
  assert staged.staged and staged.local.startswith(str(tmp_path / "a"))
  with open(os.path.join(staged.local, "metrics.jsonl"), "w") as f:
    f.write('{"step": 1}\n')
  os.makedirs(os.path.join(staged.local, "tb"))
  with open(os.path.join(staged.local, "tb", "events"), "wb") as f:
    f.write(b"\x00\x01")
  os.makedirs(os.path.join(staged.local, "checkpoints", "5"))
  with open(os.path.join(staged.local, "checkpoints", "5", "x"), "w") as f:
    f.write("not mine")
  assert staged.sync() == ["metrics.jsonl", "tb/events"]
  assert staged.sync() == []  # Nothing changed.
  with open(os.path.join(staged.local, "metrics.jsonl"), "a") as f:
    f.write('{"step": 2}\n')
  assert staged.sync() == ["metrics.jsonl"]
  assert _names(url) == ["metrics.jsonl", "tb/events"]

  # A new staging copy (a restarted job on another machine) starts from what
  # the URL holds and keeps appending to it.
  again = storage.StagedDir(url, staging_root=str(tmp_path / "b"))
  assert metrics_lib.read_jsonl(
      os.path.join(again.local, "metrics.jsonl")) == [{"step": 1},
                                                       {"step": 2}]
  assert again.sync() == []
  assert metrics_lib.read_jsonl(f"{url}/metrics.jsonl") == [{"step": 1},
                                                           {"step": 2}]

  # A local target is used in place; nothing is copied.
  local = storage.StagedDir(str(tmp_path / "plain"))
  assert not local.staged and local.local == str(tmp_path / "plain")
  assert local.sync() == []


def test_staging_folders_are_private_per_run_and_never_deleted(bucket,
                                                                tmp_path):
  url = f"{bucket}/private"
  storage.write(f"{url}/metrics.jsonl", '{"step": 1}\n')
  root = tmp_path / "tmp"
  base = root / f"big_vl_staging-{os.getuid()}"
  first = storage.StagedDir(url, staging_root=str(root))
  with open(os.path.join(first.local, "mine.txt"), "w") as f:
    f.write("first run's, not yet uploaded")
  # Another run (or process) staging the same URL on this machine gets a
  # folder of its own and leaves the first one's files alone.
  second = storage.StagedDir(url, staging_root=str(root))
  inactive = storage.StagedDir(url, staging_root=str(root), active=False)
  assert len({first.local, second.local, inactive.local}) == 3
  for staged in (first, second, inactive):
    assert os.path.dirname(staged.local) == str(base)
    assert os.stat(staged.local).st_mode & 0o777 == 0o700
  assert os.stat(base).st_mode & 0o777 == 0o700
  with open(os.path.join(first.local, "mine.txt")) as f:
    assert f.read() == "first run's, not yet uploaded"
  assert sorted(os.listdir(second.local)) == ["metrics.jsonl"]
  assert os.listdir(inactive.local) == []

  # At exit a folder is removed only once all of it is uploaded.
  second._cleanup(os.getpid())  # pylint: disable=protected-access
  inactive._cleanup(os.getpid())  # pylint: disable=protected-access
  first._cleanup(os.getpid())  # pylint: disable=protected-access
  assert not os.path.exists(second.local)
  assert not os.path.exists(inactive.local)
  assert os.path.exists(os.path.join(first.local, "mine.txt"))
  assert first.sync() == ["mine.txt"]
  first._cleanup(os.getpid())  # pylint: disable=protected-access
  assert not os.path.exists(first.local)


def test_staging_base_must_be_this_users(tmp_path, monkeypatch):
  """A base another user could have planted is refused, not used."""
  import tempfile  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  # Default root: the temp dir; never the old shared /tmp/big_vl_staging.
  base = storage.private_base()
  assert base == str(tmp_path / f"big_vl_staging-{os.getuid()}")
  os.chmod(base, 0o755)  # Too open: tightened.
  assert storage.private_base() == base
  assert os.stat(base).st_mode & 0o777 == 0o700

  other = tmp_path / "elsewhere"
  other.mkdir()
  fake_uid = os.getuid() + 1
  monkeypatch.setattr(os, "getuid", lambda: fake_uid)
  planted = tmp_path / f"big_vl_staging-{fake_uid}"
  planted.symlink_to(other)
  with pytest.raises(PermissionError, match=r"is a symlink.*set TMPDIR"):
    storage.private_base()
  with pytest.raises(PermissionError, match="is a symlink"):
    storage.StagedDir("gs://b/run", active=False)
  planted.unlink()
  planted.mkdir()  # Owned by the real uid, i.e. not by "this" user.
  with pytest.raises(PermissionError,
                     match=rf"owned by uid \d+, not this user \(uid "
                     rf"{fake_uid}\)"):
    storage.private_base()
  assert os.listdir(other) == []


def _config(**overrides):
  config = config_lib.load_config_module("configs/demo.py").get_config(
      "runlocal")
  config.log_steps = 1
  config.total_steps = 8
  config.ckpt_steps = 100
  config.sync_every_s = 0  # Upload after every step.
  for k, v in overrides.items():
    config[k] = v
  return config


def _metrics(final):
  """The evaluation's metrics without its timings."""
  return {k: v for k, v in final.items() if not k.startswith("eval_time/")}


@pytest.mark.slow
def test_training_on_a_gs_workdir_resumes_and_equals_a_local_run(
    demo_data, bucket, tmp_path):
  config = _config()
  local = train_lib.train(config, str(tmp_path / "local"))
  url = f"{bucket}/runs/demo"
  first = train_lib.train(config, url, stop_after_steps=3)
  assert first["step"] == 3 and first["final"] is None
  # Checkpoint (Orbax -> TensorStore) and files (staged, uploaded) are in
  # the bucket while the run is stopped; nothing is needed from local disk.
  assert ckpt_lib.latest_step(f"{url}/checkpoints")[0] == 3
  assert sorted(r["step"] for r in metrics_lib.read_jsonl(
      f"{url}/metrics.jsonl") if "train/loss" in r) == [1, 2, 3]
  second = train_lib.train(config, url)
  assert {**first["losses"], **second["losses"]} == local["losses"]
  assert _metrics(second["final"]) == pytest.approx(
      _metrics(local["final"]), rel=1e-5)
  rows = metrics_lib.read_jsonl(f"{url}/metrics.jsonl")
  assert {r["step"]: r["train/loss"] for r in rows
          if "train/loss" in r} == local["losses"]

  names = _names(url)
  for name in ("config.json", "curves.png", "retrieval.png",
               "metrics.jsonl"):
    assert name in names
  assert any(n.startswith("tb/events.out.tfevents") for n in names)
  results = [n for n in names if n.startswith("results/")]
  # Named after the workdir ("demo-step8" here, "local-step8" there).
  assert results and results == sorted(
      "results/" + n.replace("_local-step8_", "_demo-step8_")
      for n in os.listdir(tmp_path / "local" / "results"))
  assert any(n.startswith("checkpoints/8/") for n in names)
  png = storage.path(f"{url}/curves.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"

  # The final params read back from the bucket equal the local run's.
  for a, b in zip(
      jax.tree.leaves(ckpt_lib.restore_params(f"{url}/checkpoints", 8)),
      jax.tree.leaves(ckpt_lib.restore_params(
          str(tmp_path / "local" / "checkpoints"), 8))):
    np.testing.assert_array_equal(a, b)

  # The evaluator reads the gs:// run and writes its output to the bucket.
  eval_config = ml_collections.ConfigDict({"evals": config.evals.to_dict()})
  out = evaluate_lib.evaluate(eval_config, url, output=f"{url}/eval",
                              progress=False)
  assert out["step"] == 8
  assert _metrics(out["metrics"]) == pytest.approx(_metrics(local["final"]),
                                                 rel=1e-5)
  written = json.loads(storage.path(f"{url}/eval/metrics.json").read_text())
  assert written["step"] == 8
  assert all(f.startswith(f"{url}/eval/results/") for f in out["files"])
  assert all(storage.path(f).exists() for f in out["files"])

  # Pretrained loading (config.model_init) reads the gs:// run too.
  model_config, params = pretrained.load(url)
  assert model_config["name"] == "two_towers"
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(
      ckpt_lib.restore_params(str(tmp_path / "local" / "checkpoints"), 8))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sweep_on_a_gs_root_writes_tables_and_skips_finished_runs(
    bucket, tmp_path):
  config_path = tmp_path / "swept.py"
  config_path.write_text(
      "from big_vl import config as config_lib\n"
      "def get_config(arg=None):\n"
      "  return config_lib.load_config_module('configs/demo.py')"
      ".get_config('runlocal')\n"
      "def get_sweep(arg=None):\n"
      "  return [{'lr': 1e-3}, {'lr': 3e-3}]\n")
  root = f"{bucket}/sweep"
  trained = []

  def train_fn(config, workdir):
    # What the trainer leaves in a URL workdir that matters to the sweep.
    trained.append(workdir)
    loss = 10 * config.lr
    storage.write(f"{workdir}/metrics.jsonl",
                  json.dumps({"step": 1, "train/loss": loss}) + "\n")
    return {"step": 1, "losses": {1: loss},
            "final": {"zeroshot/demo_shapes/top1": loss}}

  rows = sweep.run(str(config_path), root, train_fn=train_fn,
                   log=lambda *_: None)
  assert trained == [f"{root}/lr=0.001", f"{root}/lr=0.003"]
  assert [r["train/loss"] for r in rows] == [0.01, 0.03]
  names = storage.list_files(root)
  for name in ("sweep.csv", "sweep.md", "sweep.png", f"lr=0.001/{sweep.FINAL_FILE}",
               f"lr=0.003/{sweep.FINAL_FILE}"):
    assert name in names, names
  assert storage.path(f"{root}/sweep.md").read_text().count("| lr=0.00") == 2
  again = sweep.run(str(config_path), root, train_fn=None,
                    log=lambda *_: None)  # None would train: must skip.
  assert [r["status"] for r in again] == ["skipped", "skipped"]
