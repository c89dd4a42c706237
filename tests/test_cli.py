"""Entry points end a user's mistake with one sentence (big_vl/cli.py): a
workdir that is a file, a full disk while checkpointing; bugs keep their
traceback."""

import os
import subprocess
import sys

import jax
import pytest

from big_vl import cli
from big_vl import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raise(fn):
  try:
    fn()
  except Exception as e:  # pylint: disable=broad-except
    return e
  raise AssertionError("no exception")


def test_raised_on_purpose_tells_big_vl_errors_from_bugs():
  # A ValueError big_vl raises with a message for the user.
  ours = _raise(lambda: config_lib.parse_arg("bogus=1", res=0))
  assert isinstance(ours, ValueError) and cli.raised_on_purpose(ours)
  # The same type raised outside big_vl (here: this test), or a TypeError
  # from a bad call into big_vl, is not.
  def bad():
    raise ValueError("not big_vl's")
  assert not cli.raised_on_purpose(_raise(bad))
  assert not cli.raised_on_purpose(
      _raise(lambda: config_lib.parse_arg(1, 2, 3)))


def _cli(args, *, cwd=None, file_limit=None, timeout=300):
  """Runs `python -m ARGS...`; `file_limit` (bytes) makes bigger writes
  fail with EFBIG, as a full disk fails them with ENOSPC (set by the shell:
  `ulimit -f`, with SIGXFSZ ignored so that the write fails, not the
  process)."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=(
      jax.config.jax_compilation_cache_dir or ""))
  command = [sys.executable, "-m", *args]
  if file_limit:
    command = ["bash", "-c", f'trap "" XFSZ; ulimit -f {file_limit // 1024};'
               ' exec "$@"', "bash", *command]
  return subprocess.run(command, cwd=cwd or REPO, env=env,
                        capture_output=True, text=True, timeout=timeout,
                        check=False)


def _last_line(out):
  return out.stderr.strip().splitlines()[-1]


def test_a_workdir_that_is_a_file_is_one_sentence(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("not a workdir")
  out = _cli(["big_vl.train", "--config=configs/demo.py:runlocal",
              f"--workdir={path}"])
  assert out.returncode == 1
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  assert _last_line(out) == (f"ERROR: The workdir {path} is a file, not a "
                             "folder; give another --workdir.")
  assert path.read_text() == "not a workdir"


@pytest.mark.slow
def test_full_disk_while_checkpointing_keeps_the_last_good_one(
    demo_data, tmp_path):
  del demo_data
  workdir = tmp_path / "run"
  args = ["big_vl.train", "--config=configs/demo.py:runlocal",
          f"--workdir={workdir}", "--config.total_steps=4",
          "--config.ckpt_steps=2", "--config.keep_ckpts=1",
          "--config.evals={}"]
  first = _cli(args + ["--stop_after_steps=2"])
  assert first.returncode == 0, first.stderr[-3000:]
  # Checkpoint 4's array files (several MiB) cannot be written.
  full = _cli(args, file_limit=4 << 20)
  assert full.returncode == 1, full.stderr[-3000:]
  checkpoints = workdir / "checkpoints"
  last = _last_line(full)
  assert last.startswith(f"ERROR: Checkpoint 4 could not be written to "
                         f"{checkpoints}/4: File too large ("), last
  assert " free there). The last good checkpoint is step 2 (" in last
  assert f"({checkpoints}/2), kept" in last
  assert os.listdir(checkpoints) == ["2"]  # no half-written step 4
  # With room again, the same command resumes from step 2 and finishes.
  again = _cli(args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resuming from step 2" in again.stderr + again.stdout
  assert os.listdir(checkpoints) == ["4"]


# -- Entry points import the library, never the trainer's CLI (issue 31) --

def _entry_modules():
  """Every module of big_vl that is both a library and an entry point (a
  `__main__` guard): importable next to each other, so their flags must
  not collide (`__main__.py` files are run, never imported)."""
  found = []
  for root, _, names in os.walk(os.path.join(REPO, "big_vl")):
    for name in names:
      path = os.path.join(root, name)
      if not name.endswith(".py"):
        continue
      with open(path) as f:
        text = f.read()
      if name != "__main__.py" and 'if __name__ == "__main__"' in text:
        found.append(os.path.relpath(path, REPO)[:-3].replace(os.sep, "."))
  return tuple(sorted(found))


ENTRY_POINTS = tuple(dict.fromkeys((
    "big_vl.train", "big_vl.evaluate", "big_vl.export", "big_vl.sweep",
    "big_vl.predict", "big_vl.interpolate", "big_vl.results",
    "big_vl.adapt.run", "big_vl.convert") + _entry_modules()))
TRAINER_FLAGS = ("workdir", "stop_after_steps", "allow_config_change",
                 "distributed", "coordinator", "num_processes", "process_id",
                 "init_timeout", "heartbeat_timeout")


def test_entry_points_do_not_load_the_trainer_cli():
  # All in one fresh interpreter: no flag is defined twice either.
  code = (
      "import sys\n"
      "from absl import flags\n"
      f"for name in {ENTRY_POINTS!r}:\n"
      "  __import__(name)\n"
      "print('big_vl.train.__main__' in sys.modules)\n"
      f"print(sorted(set({TRAINER_FLAGS!r}) & set(flags.FLAGS)))\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == ["False", "[]"], out.stdout
