"""Resuming a run: the config must match the checkpoint's, a bad latest
checkpoint falls back to the previous one (state and data position)."""

import json
import os
import shutil

import ml_collections
import pytest

from big_vl import config as config_lib
from big_vl import train as train_lib

pytestmark = pytest.mark.slow


def _config(**overrides):
  config = config_lib.load_config_module("configs/demo.py").get_config(
      "runlocal")
  config.evals = ml_collections.ConfigDict()
  config.log_steps = 1
  config.total_steps = 4
  config.ckpt_steps = 2
  for k, v in overrides.items():
    config[k] = v
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_data):
  """A finished 4-step run (checkpoints 2 and 4) and its losses."""
  del demo_data
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  result = train_lib.train(_config(), workdir)
  assert sorted(result["losses"]) == [1, 2, 3, 4]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
      "2", "4"]
  return workdir, result["losses"]


def _copy(trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  return workdir


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")  # See test_checkpoint.
def test_truncated_latest_checkpoint_resumes_from_the_previous(
    trained, tmp_path, capsys):
  workdir = _copy(trained, tmp_path)
  state_dir = os.path.join(workdir, "checkpoints", "4", "state")
  chunks = [os.path.join(root, n) for root, _, names in os.walk(state_dir)
            if os.sep + "d" in root for n in names]
  biggest = max(chunks, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  capsys.readouterr()
  result = train_lib.train(_config(), workdir)
  out = capsys.readouterr().out
  assert "WARNING: Checkpoint 4 in" in out and "does not load" in out
  assert "Resuming from step 2 in" in out
  # Steps 3 and 4 again, from step 2's state and data position: the same
  # losses, bit for bit, as the run that wrote the checkpoints.
  assert result["losses"] == {s: trained[1][s] for s in (3, 4)}
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  assert "4" in names and any(n.startswith("corrupt_step_4_") for n in names)


# Orbax may cancel its background reads when a restore is refused; the
# cancelled futures' warnings are timing-dependent noise (as in
# test_checkpoint.py).
@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")
def test_resume_with_a_changed_config(trained, tmp_path, capsys):
  workdir = _copy(trained, tmp_path)
  # A different model: an error naming each key (old -> new), before any
  # data or device work; the workdir is untouched.
  wide = _config()
  wide.model.out_dim = 96
  wide.model.image.width = 256
  with pytest.raises(ValueError) as e:
    train_lib.train(wide, workdir)
  message = str(e.value)
  assert "checkpoint 4 in" in message
  assert "  config.model.out_dim: 64 -> 96\n" in message
  assert "  config.model.image.width: '(absent)' -> 256\n" in message
  assert "--allow_config_change" in message
  with pytest.raises(ValueError, match=r"config\.lr: 0\.001 -> 0\.003"):
    train_lib.train(_config(lr=3e-3), workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["lr"] == 1e-3
  with pytest.raises(ValueError, match=r"Checkpoint 4 in .* is past the "
                     r"run's duration \(3 steps\): nothing to train"):
    train_lib.train(_config(total_steps=3), workdir)

  # Durations may change: logged, and the old config.json is kept.
  capsys.readouterr()
  longer = train_lib.train(_config(total_steps=6), workdir,
                           stop_after_steps=1)
  assert sorted(longer["losses"]) == [5]
  assert "  config.total_steps: 4 -> 6\n" in capsys.readouterr().out
  with open(os.path.join(workdir, "config.until_step_4.json")) as f:
    assert json.load(f)["total_steps"] == 4
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["total_steps"] == 6

  # Any other change resumes only with allow_config_change (the flag
  # --allow_config_change), and is logged.
  changed = _config(total_steps=6)
  changed.model.temperature_init = 5.0
  with pytest.raises(ValueError,
                     match=r"config\.model\.temperature_init: 10\.0 -> 5\.0"):
    train_lib.train(changed, workdir)
  result = train_lib.train(changed, workdir, allow_config_change=True)
  assert sorted(result["losses"]) == [6]
  out = capsys.readouterr().out
  assert ("The config differs from the checkpoint's (--allow_config_change)"
          ":\n  config.model.temperature_init: 10.0 -> 5.0\n") in out
  assert os.path.exists(os.path.join(workdir, "config.until_step_5.json"))


def _tb_events(workdir):
  """Every TensorBoard event (tensorboardX protos) under workdir/tb."""
  import struct  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = []
  tb = os.path.join(workdir, "tb")
  for name in sorted(os.listdir(tb)):
    with open(os.path.join(tb, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):  # TFRecords: length, crc, payload, crc.
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[pos + 12:pos + 12 + length])
      events.append(event)
      pos += 12 + length + 4
  return events


def test_a_resume_logs_every_step_once(trained, tmp_path, capsys):
  """A run killed after logging steps 3-4 but before checkpoint 4 was
  written resumes from step 2: steps 3 and 4 are logged again, once."""
  workdir = _copy(trained, tmp_path)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
  capsys.readouterr()
  result = train_lib.train(_config(), workdir)
  assert sorted(result["losses"]) == [3, 4]
  assert "dropped 2 rows logged after step 2" in capsys.readouterr().out
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  assert {r["step"]: r["train/loss"] for r in train_rows} == trained[1]
  # TensorBoard: the resumed writer purges what the old files hold from
  # step 3 on (a SessionLog START at step 3), so each step shows once.
  starts = [e.step for e in _tb_events(workdir)
            if e.HasField("session_log") and e.session_log.status == 1]
  assert 3 in starts
  # A fresh start over the rows of an attempt that saved no checkpoint.
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  again = train_lib.train(_config(), workdir)
  assert sorted(again["losses"]) == [1, 2, 3, 4]
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
