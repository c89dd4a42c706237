"""Checkpoints that do not load: the newest good one is resumed, or a clear
error lists every step and its failure."""

import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vl import checkpoint as ckpt_lib

# When one array read fails, Orbax's other pending reads are cancelled and
# pytest reports their coroutines as unraisable; that is expected here.
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")

_SHAPE = (64, 64)


def _state(step):
  return {"params": {"w": jax.random.normal(jax.random.PRNGKey(step),
                                            _SHAPE)},
          "step": jnp.int32(step)}


def _abstract():
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return {"params": {"w": jax.ShapeDtypeStruct(_SHAPE, jnp.float32,
                                               sharding=one)},
          "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=one)}


def _iterator():
  return iter(grain.MapDataset.range(1000).to_iter_dataset())


@pytest.fixture
def ckpt_dir(tmp_path):
  """Checkpoints 1, 2, 3; the data iterator is at 10 * step after each."""
  directory = str(tmp_path / "checkpoints")
  ckpt = ckpt_lib.Checkpointer(directory, max_to_keep=None, async_save=False)
  it = _iterator()
  for step in (1, 2, 3):
    for _ in range(10):
      next(it)
    ckpt.save(step, _state(step), data_iter=it, meta={"step": step})
  ckpt.close()
  return directory


def _restore_latest(directory, **kw):
  warnings = []
  ckpt = ckpt_lib.Checkpointer(directory, max_to_keep=None)
  it = _iterator()
  try:
    step, state, meta = ckpt.restore_latest(_abstract(), data_iter=it,
                                            log=warnings.append, **kw)
    return step, state, meta, next(it), warnings, ckpt.all_steps()
  finally:
    ckpt.close()


def _array_files(step_dir):
  """The state's chunk files (not metadata), largest first."""
  found = []
  for root, _, names in os.walk(os.path.join(step_dir, "state")):
    if os.sep + "d" in root:
      found += [os.path.join(root, n) for n in names]
  return sorted(found, key=os.path.getsize, reverse=True)


def _check_fell_back_to(directory, expected, result, bad_step, reason):
  step, state, meta, next_record, warnings, steps = result
  assert step == expected and meta == {"step": expected}
  np.testing.assert_array_equal(state["params"]["w"],
                                _state(expected)["params"]["w"])
  # The data position comes from the same (older) checkpoint.
  assert next_record == 10 * expected
  text = "\n".join(warnings)
  assert f"Checkpoint {bad_step} in {directory} does not load" in text
  assert reason in text, text
  # The bad step is moved aside (kept), so the run can save it again.
  assert steps == list(range(1, expected + 1))
  assert [n for n in os.listdir(directory)
          if n.startswith(f"{ckpt_lib.CORRUPT_PREFIX}{bad_step}_")]


def test_truncated_array_file_falls_back_to_the_previous_step(ckpt_dir):
  biggest = _array_files(os.path.join(ckpt_dir, "3"))[0]
  size = os.path.getsize(biggest)
  assert size > 4000  # The array's data, not metadata.
  with open(biggest, "r+b") as f:
    f.truncate(size // 2)
  result = _restore_latest(ckpt_dir)
  # The reason is TensorStore's own, without its multi-kB spec dump.
  _check_fell_back_to(ckpt_dir, 2, result, 3, "params.w")
  assert all(len(w) < 1500 for w in result[4])
  ckpt = ckpt_lib.Checkpointer(ckpt_dir, max_to_keep=None, async_save=False)
  ckpt.save(3, _state(3), meta={"step": 3})  # Step 3 can be saved again.
  assert ckpt.all_steps() == [1, 2, 3]
  ckpt.close()


@pytest.mark.parametrize("name,reason", [
    (os.path.join("meta", "metadata"), "FileNotFoundError"),
    (os.path.join("state", "manifest.ocdbt"), "does not exist"),
])
def test_deleted_metadata_file_falls_back(ckpt_dir, name, reason):
  os.remove(os.path.join(ckpt_dir, "3", name))
  _check_fell_back_to(ckpt_dir, 2, _restore_latest(ckpt_dir), 3, reason)


def test_empty_step_folder_from_a_killed_save_falls_back(ckpt_dir):
  os.makedirs(os.path.join(ckpt_dir, "4"))
  _check_fell_back_to(ckpt_dir, 3, _restore_latest(ckpt_dir), 4,
                      "the step folder is empty (a save was interrupted)")


def test_no_step_loads_is_one_error_listing_each(ckpt_dir):
  os.makedirs(os.path.join(ckpt_dir, "4"))
  os.remove(os.path.join(ckpt_dir, "3", "meta", "metadata"))
  os.remove(os.path.join(ckpt_dir, "2", "state", "manifest.ocdbt"))
  with open(_array_files(os.path.join(ckpt_dir, "1"))[0], "r+b") as f:
    f.truncate(10)
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    _restore_latest(ckpt_dir)
  lines = str(e.value).splitlines()
  assert lines[0] == f"No checkpoint in {ckpt_dir} loads:"
  assert lines[1] == ("  step 4: the step folder is empty (a save was "
                      "interrupted)")
  assert lines[2].startswith("  step 3: FileNotFoundError")
  assert lines[3].startswith("  step 2: ") and "does not exist" in lines[3]
  assert lines[4].startswith("  step 1: ") and "params.w" in lines[4]
  assert "Move the bad step folders away" in lines[5]
  # Nothing was moved: the folder is as it was, for inspection.
  assert sorted(os.listdir(ckpt_dir)) == ["1", "2", "3", "4"]


def test_check_meta_errors_propagate_without_fallback(ckpt_dir):
  def check_meta(step, meta):
    raise ValueError(f"config changed at {step} {meta}")
  with pytest.raises(ValueError, match=r"config changed at 3 \{'step': 3\}"):
    _restore_latest(ckpt_dir, check_meta=check_meta)
  assert sorted(os.listdir(ckpt_dir)) == ["1", "2", "3"]


def test_empty_folder_restores_nothing(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "none"))
  assert ckpt.restore_latest(_abstract()) is None
  ckpt.close()


def test_restore_params_of_a_bad_step_names_it_and_the_others(ckpt_dir):
  with open(_array_files(os.path.join(ckpt_dir, "3"))[0], "r+b") as f:
    f.truncate(10)
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"The params of checkpoint 3 in .* do not load: "
                     r".*params\.w.*Other steps there: \[1, 2\]"):
    ckpt_lib.restore_params(ckpt_dir, 3)
  np.testing.assert_array_equal(ckpt_lib.restore_params(ckpt_dir, 2)["w"],
                                _state(2)["params"]["w"])


# -- Checkpoints that cannot be written (issue 33, item 7) --


def test_a_save_without_room_is_refused_and_the_last_good_one_kept(
    ckpt_dir):
  # The free space is real; the reserve asks for more than the disk has.
  free = ckpt_lib.free_bytes(ckpt_dir)
  assert free is not None and free > 0
  ckpt = ckpt_lib.Checkpointer(ckpt_dir, max_to_keep=1,
                               reserve_bytes=free + (1 << 30))
  try:
    with pytest.raises(ckpt_lib.CheckpointWriteError) as info:
      ckpt.save(4, _state(4), data_iter=_iterator())
  finally:
    ckpt.close()
  message = str(info.value)
  assert message.startswith(f"Checkpoint 4 could not be written to "
                            f"{ckpt_dir}/4: it needs about 16.0 KiB")
  assert "free there" in message and "GiB free" in message
  assert (f"The last good checkpoint is step 3 ({ckpt_dir}/3), kept"
          in message)
  # Nothing was written, nothing rotated away (max_to_keep=1).
  assert sorted(os.listdir(ckpt_dir)) == ["1", "2", "3"]
  step, state, *_ = _restore_latest(ckpt_dir)
  assert step == 3
  np.testing.assert_array_equal(state["params"]["w"],
                                _state(3)["params"]["w"])


_WRITE_FAILS = r"""
import resource, signal, sys
import jax, numpy as np
from big_vl import checkpoint as ckpt_lib
# Writes past 1 MiB fail with EFBIG, as a full disk fails with ENOSPC.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE,
                   (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
ckpt = ckpt_lib.Checkpointer(sys.argv[1], max_to_keep=1)
ckpt.save(1, {"w": jax.numpy.ones((16, 16))})
ckpt.wait()
ckpt.save(2, {"w": jax.random.normal(jax.random.PRNGKey(0), (1024, 1024))})
try:
  ckpt.wait()
except ckpt_lib.CheckpointWriteError as e:
  print("ERROR:", e)
  sys.exit(3)
"""


def test_a_write_that_fails_midway_names_the_step_and_keeps_the_last(
    tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  directory = str(tmp_path / "checkpoints")
  out = subprocess.run([sys.executable, "-c", _WRITE_FAILS, directory],
                       capture_output=True, text=True, timeout=300,
                       check=False)
  assert out.returncode == 3, out.stderr[-3000:]
  assert out.stdout.startswith(
      f"ERROR: Checkpoint 2 could not be written to {directory}/2: File too "
      "large ("), out.stdout
  assert (f"The last good checkpoint is step 1 ({directory}/1), kept"
          in out.stdout)
  # Orbax's own tracebacks of the failure are not logged.
  assert "Failed to run" not in out.stderr, out.stderr[-3000:]
  # The half-written step is gone; step 1 is intact.
  assert os.listdir(directory) == ["1"]
  ckpt = ckpt_lib.Checkpointer(directory)
  state, _ = ckpt.restore(1, {"w": jax.ShapeDtypeStruct(
      (16, 16), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(
          jax.devices()[0]))})
  ckpt.close()
  np.testing.assert_array_equal(state["w"], np.ones((16, 16)))
