"""Test session set-up: 8 simulated CPU devices, compilation cache, absl.

Runs before any test imports JAX computations:
- `jax_num_cpu_devices = 8` so sharded paths run on a (2 x 4) mesh on a CPU;
- the persistent compilation cache (JAX_COMPILATION_CACHE_DIR, default
  ~/.cache/big_vl/jax_cache) with no minimum compile time or entry size;
- absl flags marked as parsed (grain worker processes read them).
The demo dataset is built once into the TFDS data dir ($TFDS_DATA_DIR or
~/tensorflow_datasets) on first use and reused afterwards.
"""

import os

from absl import flags
import jax
import pytest

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
