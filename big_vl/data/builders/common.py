"""What every shipped TFDS builder needs: build once, under a lock.

    builder = build_once(lambda: DemoShapes(data_dir=d, config="full"),
                         lock_name="big_vl_demo_shapes.full",
                         message="building demo dataset into {root} (one-time)")

The builder is prepared as array_record (no TensorFlow needed) the first time
and reused afterwards; concurrent callers (test workers, several processes on
one host) wait on a file lock in the data dir instead of racing.
"""

import contextlib
import fcntl
import os
import time


def is_built(builder):
  """True if the builder's files are on disk.

  Like `builder.is_prepared()`, which also logs a warning when it is not.
  """
  return all((builder.data_path / name).exists()
             for name in ("dataset_info.json", "features.json"))


@contextlib.contextmanager
def file_lock(path):
  """An exclusive `fcntl` lock on `path` (created if missing)."""
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def build_once(make_builder, *, lock_name, message):
  """Returns a prepared builder, building it first if needed.

  Args:
    make_builder: `() -> tfds.core.DatasetBuilder`; called again after a
      build so the returned builder reads the written files.
    lock_name: file name stem of the lock in the data dir, e.g.
      "big_vl_demo_shapes.full".
    message: printed once before a build starts; "{root}" in it becomes
      the data dir.

  Returns:
    The prepared builder.
  """
  builder = make_builder()
  if is_built(builder):
    return builder
  root = builder.data_dir_root
  root.mkdir(parents=True, exist_ok=True)
  with file_lock(os.fspath(root / f".{lock_name}.lock")):
    builder = make_builder()
    if not is_built(builder):
      print(message.format(root=root), flush=True)
      start = time.time()
      builder.download_and_prepare(file_format="array_record")
      num = sum(s.num_examples for s in builder.info.splits.values())
      print(f"built {builder.info.full_name} ({num} examples) in "
            f"{time.time() - start:.1f} s", flush=True)
      builder = make_builder()
  return builder
