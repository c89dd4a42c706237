"""One run per workdir (big_vl/workdir_lock.py): a second run refuses at
once naming the holder; a lock left by a dead run is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from big_vl import config as config_lib
from big_vl import evaluate
from big_vl import sweep
from big_vl import train as train_lib
from big_vl import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MISSING_DATA = "tfds:no_such_dataset_anywhere"


def _config():
  """The demo config on data that does not exist: a run that got past the
  lock fails on the data, one that did not fails on the lock."""
  config = config_lib.load_config_module("configs/demo.py").get_config(
      "runlocal")
  config.input.data = MISSING_DATA
  return config


HOLDER = """
import sys, time
from big_vl import workdir_lock
workdir_lock.WorkdirLock(sys.argv[1], "big_vl.train").acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_second_run_refuses_until_the_holder_dies(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, workdir],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lock.WorkdirBusyError) as e:
      train_lib.train(_config(), workdir)
    message = str(e.value)
    assert f"in use by big_vl.train (pid {holder.pid} on host " in message
    assert socket.gethostname() in message and "another --workdir" in message
    assert not os.path.exists(os.path.join(workdir, "config.json"))
    # The holder is killed (no chance to clean up): its lock is stale.
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    capsys.readouterr()
    with pytest.raises(Exception) as e:  # Past the lock: the data is missing.
      train_lib.train(_config(), workdir)
    assert not isinstance(e.value, workdir_lock.WorkdirBusyError)
    assert "no_such_dataset_anywhere" in str(e.value)
    out = capsys.readouterr().out
    assert (f"Taking over the lock of {workdir} left by big_vl.train (pid "
            f"{holder.pid}") in out
    assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))
  finally:
    holder.kill()
    holder.wait(timeout=30)


def test_in_process_holders_exclude_each_other_and_release(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.hold(workdir, "first"):
    with open(os.path.join(workdir, workdir_lock.LOCK_NAME)) as f:
      record = json.load(f)
    assert record["command"] == "first" and record["pid"] == os.getpid()
    with pytest.raises(workdir_lock.WorkdirBusyError, match="in use by first"):
      workdir_lock.WorkdirLock(workdir, "second").acquire()
    with pytest.raises(workdir_lock.WorkdirBusyError, match="in use by first"):
      train_lib.train(_config(), workdir)
    with pytest.raises(workdir_lock.WorkdirBusyError, match="in use by first"):
      sweep.run(os.path.join(REPO, "configs", "demo.py") + ":runlocal",
                workdir, log=lambda _: None)
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))
  with workdir_lock.hold(workdir, "second") as lock:
    assert lock.record["command"] == "second"


def _write_lock(workdir, **record):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lock.LOCK_NAME), "w") as f:
    json.dump({"command": "big_vl.train", "pid": 4242, "started": time.time(),
               **record}, f)


def test_another_hosts_lock_is_stale_only_without_a_heartbeat(tmp_path):
  """On a shared file system another host's flock may not reach here: its
  heartbeat says whether it still runs."""
  workdir = str(tmp_path / "run")
  _write_lock(workdir, host="tpu-vm-7", heartbeat=time.time() - 5)
  with pytest.raises(workdir_lock.WorkdirBusyError,
                     match=r"pid 4242 on host tpu-vm-7"):
    workdir_lock.WorkdirLock(workdir, "big_vl.train").acquire()
  _write_lock(workdir, host="tpu-vm-7",
              heartbeat=time.time() - workdir_lock.STALE_AFTER_S - 60)
  warnings = []
  lock = workdir_lock.WorkdirLock(workdir, "big_vl.train",
                                  log=warnings.append).acquire()
  lock.release()
  assert warnings and "left by big_vl.train (pid 4242 on host tpu-vm-7" in (
      warnings[0])
  # The holder refreshes its heartbeat while it runs.
  lock = workdir_lock.WorkdirLock(workdir, "beating", heartbeat_s=0.05)
  lock.acquire()
  first = lock.record["heartbeat"]
  time.sleep(0.3)
  with open(os.path.join(workdir, workdir_lock.LOCK_NAME)) as f:
    assert json.load(f)["heartbeat"] > first
  lock.release()


def test_a_workdir_that_is_a_file_or_an_output_that_is_a_file(tmp_path):
  path = tmp_path / "afile"
  path.write_text("x")
  with pytest.raises(NotADirectoryError, match=r"afile is a file, not a "
                     r"folder; give another --workdir"):
    train_lib.train(_config(), str(path))
  eval_config = config_lib.load_config_module(
      os.path.join(REPO, "configs", "eval", "demo.py")).get_config("runlocal")
  with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
    evaluate.evaluate(eval_config, str(tmp_path / "no_checkpoint"),
                      output=str(path))


def test_gs_workdirs_hold_a_lease_object(tmp_path):
  import gcs_emulator  # pylint: disable=g-import-not-at-top
  from big_vl import storage  # pylint: disable=g-import-not-at-top
  with gcs_emulator.running(bucket="lockbkt") as url:
    workdir = f"{url}/runs/a"
    with workdir_lock.hold(workdir, "first") as lock:
      record = json.loads(storage.path(lock.path).read_text())
      assert record["command"] == "first"
      with pytest.raises(workdir_lock.WorkdirBusyError,
                         match=r"in use by first"):
        workdir_lock.WorkdirLock(workdir, "second").acquire()
    assert not storage.path(f"{workdir}/{workdir_lock.LOCK_NAME}").exists()
    # A lease left by a stopped host is taken over after its heartbeat ends.
    storage.write(f"{workdir}/{workdir_lock.LOCK_NAME}", json.dumps(
        {"command": "big_vl.train", "host": "gone", "pid": 1, "token": "t",
         "heartbeat": time.time() - workdir_lock.STALE_AFTER_S - 1}))
    warnings = []
    with workdir_lock.hold(workdir, "second", log=warnings.append):
      pass
    assert "left by big_vl.train (pid 1 on host gone" in warnings[0]
