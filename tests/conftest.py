"""Test session set-up: 8 simulated CPU devices, compilation cache, absl.

Runs before any test imports JAX computations:
- `jax_num_cpu_devices = 8` so sharded paths run on a (2 x 4) mesh on a CPU;
- the persistent compilation cache (JAX_COMPILATION_CACHE_DIR, default
  ~/.cache/big_vl/jax_cache) with no minimum compile time or entry size;
- absl flags marked as parsed (grain worker processes read them).
The demo dataset is built once into the TFDS data dir ($TFDS_DATA_DIR or
~/tensorflow_datasets) on first use and reused afterwards.
A skip outside the `peer` marker fails the test (tests/skip_policy.py).
"""

import os
import sys

from absl import flags
import jax
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=g-import-not-at-top,wrong-import-position,unused-import
from skip_policy import pytest_make_collect_report
from skip_policy import pytest_runtest_makereport
# pylint: enable=g-import-not-at-top,wrong-import-position,unused-import

jax.config.update("jax_num_cpu_devices", 8)
_CACHE = os.environ.get(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.expanduser("~"), ".cache", "big_vl", "jax_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def demo_data():
  """Builds (once) and returns the demo dataset's data dir (None = default)."""
  from big_vl.data.builders import demo_shapes  # pylint: disable=g-import-not-at-top
  demo_shapes.prepare()
  return None


# XLA:CPU runs a program's independent collectives concurrently, and with 8
# simulated devices sharing 2 cores, collectives inside a scanned loop can
# wait for each other in different orders on different devices: after 40 s
# XLA aborts the whole process ("Termination timeout ... rendezvous"). Seen
# in about one full run of three for the scanned tensor-parallel model test;
# real TPUs/GPUs do not share a thread pool this way.
_CHILD_ENV = "BIG_VL_TEST_CHILD"
_DEADLOCK_SIGNS = ("may be stuck", "Termination timeout",
                   "Fatal Python error: Aborted")


@pytest.fixture
def run_in_child(request):
  """`run_in_child()` is True in the parent: the test then ran in a child.

  The parent reruns this one test in a child pytest process (retried up to
  twice if XLA:CPU's collective deadlock aborted it; any other failure
  fails the test) and returns
  True, so the test body returns; in the child it returns False and the
  body runs, asserting as usual. A crash then fails one test instead of
  aborting the session.
  """
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  def run():
    if os.environ.get(_CHILD_ENV):
      return False
    env = {**os.environ, _CHILD_ENV: "1",
           "JAX_COMPILATION_CACHE_DIR": _CACHE}
    # -s: XLA's own messages reach the captured stderr, not pytest's capture.
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-s", "-p",
           "no:cacheprovider", request.node.nodeid]
    root = str(request.config.rootpath)
    for attempt in range(3):
      out = subprocess.run(cmd, cwd=root, env=env, capture_output=True,
                           text=True, timeout=600)
      text = out.stdout + out.stderr
      if out.returncode == 0:
        return True
      if not any(sign in text for sign in _DEADLOCK_SIGNS):
        break
    pytest.fail(f"child run of {request.node.nodeid} failed (attempt "
                f"{attempt + 1}, exit {out.returncode}):\n{text[-6000:]}")
  return run
