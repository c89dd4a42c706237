"""Device pp ops equal their host twins; the trainer applies them in-step."""

import jax
import numpy as np
import pytest

from big_vl.data import device_pp
from big_vl.data import pp as pp_lib


@pytest.mark.parametrize("spec", [
    "value_range(0,1)|normalize",
    "value_range(-1,1)",
    "value_range(0, 2, in_min=10, in_max=200)|normalize(mean=0.5, std=0.25)",
])
def test_device_ops_equal_the_host_ops(spec):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, 5, 6, 3), np.uint8)
  host = pp_lib.build(spec)
  want = np.stack([host({"image": im})["image"] for im in images])
  got = jax.jit(device_pp.build(spec))({"image": images, "text": np.ones(4)})
  assert got["image"].dtype == np.float32
  np.testing.assert_allclose(np.asarray(got["image"]), want, rtol=0,
                             atol=2e-6)
  np.testing.assert_array_equal(np.asarray(got["text"]), np.ones(4))
  assert float(np.abs(want).max()) > 0.5  # the ops did something


def test_device_pp_errors_and_identity():
  with pytest.raises(ValueError, match="'decode' is not a device op"):
    device_pp.build("value_range(0,1)|decode")
  with pytest.raises(TypeError, match="put value_range"):
    device_pp.build("normalize")({"image": np.zeros((1, 2, 2, 3), np.uint8)})
  with pytest.raises(TypeError, match="remove value_range"):
    device_pp.build("value_range(-1,1)")(
        {"image": np.zeros((1, 2, 2, 3), np.float32)})
  batch = {"image": np.zeros((1, 2, 2, 3), np.uint8)}
  assert device_pp.build("")(batch) is batch
  assert device_pp.build(None)(batch) is batch
