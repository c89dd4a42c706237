"""Ring (shard_map + ppermute) contrastive losses against their dense twins.

On meshes of 1, 2, 4 and 8 simulated CPU devices, a 2-axis (data x fsdp)
mesh and a mesh with a non-batch "model" axis, the ring losses must give the
dense loss, metrics and gradients w.r.t. zimg, ztxt, t and b, also when each
ring step's block is cut into tiles (`block_size`, dividing B_local or not);
every row's gradient must arrive (open_clip issue #616); and the compiled
ring loss must hold O(B_local^2) temporaries, not O(B_global * B_local), and
with a fixed block_size temporaries linear in the batch.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vl import losses
from big_vl import sharding

LOSSES = ("sigmoid", "softmax")
MESHES = {
    "1": [("data", 1)],
    "2": [("data", 2)],
    "4": [("data", 4)],
    "8": [("data", 8)],
    "2x4": [("data", 2), ("fsdp", 4)],
    "4+model2": [("data", 4), ("model", 2)],
}
T, B = 10.0, -3.0  # Temperature and bias of the tests.


def _mesh(key):
  config = MESHES[key]
  n = int(np.prod([size for _, size in config]))
  return sharding.make_mesh(config, jax.devices()[:n])


def _embeddings(n, d=16, seed=0):
  """Normalised float32 [n, d] pairs; texts correlate with their images."""
  rng = np.random.default_rng(seed)
  zimg = rng.normal(size=(n, d))
  ztxt = zimg + 1.5 * rng.normal(size=(n, d))
  zimg /= np.linalg.norm(zimg, axis=1, keepdims=True)
  ztxt /= np.linalg.norm(ztxt, axis=1, keepdims=True)
  return zimg.astype(np.float32), ztxt.astype(np.float32)


def _value_and_grad(name, impl, mesh, **options):
  """jit(value_and_grad) of the loss w.r.t. (zimg, ztxt, t, b), with metrics."""
  loss_fn = losses.get(name, impl=impl, **options)

  def f(zimg, ztxt, t, b):
    return loss_fn(zimg, ztxt, {"t": t, "b": b}, mesh=mesh)

  return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))


def _place(mesh, *arrays):
  if mesh is None:
    return arrays
  return tuple(jax.device_put(a, sharding.batch_sharding(mesh))
               for a in arrays)


@functools.cache
def _dense_reference(name, n):
  """Dense loss, metrics and gradients in float64 (the exact reference)."""
  zimg, ztxt = _embeddings(n)
  with jax.enable_x64():
    (loss, metrics), grads = _value_and_grad(name, "dense", None)(
        zimg.astype(np.float64), ztxt.astype(np.float64), np.float64(T),
        np.float64(B))
    return (float(loss), {k: float(v) for k, v in metrics.items()},
            [np.asarray(g) for g in grads])


def _assert_grads_close(grads, ref, rtol, floor=1e-2):
  for name, g, r in zip(("zimg", "ztxt", "t", "b"), grads, ref):
    g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
    # d/db of softmax is exactly 0, up to the rounding of a sum of B^2
    # terms of size ~1/B: an absolute floor of the scale covers it.
    scale = max(np.max(np.abs(r)), floor)
    np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * scale,
                               err_msg=f"gradient w.r.t. {name}")


def _assert_matches_dense(name, n, loss, metrics, grads):
  """Loss, metrics and gradients equal the dense float64 reference (1e-5)."""
  ref_loss, ref_metrics, ref_grads = _dense_reference(name, n)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  assert set(metrics) == set(ref_metrics)
  for key, value in metrics.items():
    np.testing.assert_allclose(float(value), ref_metrics[key], rtol=1e-5,
                               err_msg=key)
  _assert_grads_close(grads, ref_grads, rtol=1e-5)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("mesh_key,n", [
    ("none", 24), ("1", 24), ("2", 24), ("4", 24), ("8", 24), ("2x4", 24),
    ("4+model2", 24), ("2", 40), ("8", 40), ("2x4", 40)])
def test_ring_matches_dense(name, mesh_key, n):
  mesh = None if mesh_key == "none" else _mesh(mesh_key)
  zimg, ztxt = _place(mesh, *_embeddings(n))
  (loss, metrics), grads = _value_and_grad(name, "ring", mesh)(
      zimg, ztxt, jnp.float32(T), jnp.float32(B))
  _assert_matches_dense(name, n, loss, metrics, grads)
  # Gradients come back sharded like the embeddings.
  if mesh is not None:
    assert grads[0].sharding.is_equivalent_to(
        sharding.batch_sharding(mesh), 2)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("mesh_key,n,block_size", [
    ("none", 12, 5),  # B_local 12: tiles of rows 0-4, 5-9 and 7-11.
    ("1", 12, 5),
    ("2", 24, 4),     # B_local 12: 3 x 3 tiles that divide it.
    ("2", 24, 16),    # block_size > B_local: one tile.
    ("8", 96, 5),     # B_local 12, ragged, over 8 devices.
    ("8", 40, 3),     # B_local 5: tiles of rows 0-2 and 2-4.
])
def test_tiled_ring_matches_dense_and_untiled_ring(name, mesh_key, n,
                                                  block_size):
  """block_size tiles each ring step's block: same results as one block."""
  mesh = None if mesh_key == "none" else _mesh(mesh_key)
  args = (*_place(mesh, *_embeddings(n)), jnp.float32(T), jnp.float32(B))
  (loss, metrics), grads = _value_and_grad(
      name, "ring", mesh, block_size=block_size)(*args)
  _assert_matches_dense(name, n, loss, metrics, grads)
  # Against the untiled ring in the same float32: only the order of the
  # sums changes (d/db of softmax, exactly 0, gets an absolute floor).
  (loss1, metrics1), grads1 = _value_and_grad(
      name, "ring", mesh, block_size=None)(*args)
  np.testing.assert_allclose(float(loss), float(loss1), rtol=1e-6)
  for key, value in metrics.items():
    np.testing.assert_allclose(float(value), float(metrics1[key]),
                               rtol=1e-6, err_msg=key)
  _assert_grads_close(grads, grads1, rtol=1e-6, floor=0.1)
  if mesh is not None:
    assert grads[1].sharding.is_equivalent_to(
        sharding.batch_sharding(mesh), 2)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("block_size", [None, 3])
def test_ring_float64_is_exact(name, block_size):
  """In float64 the ring reorders sums only: agreement to ~1e-12.

  With block_size 3, B_local 5 is cut into ragged tiles (rows 0-2, 2-4): a
  tile overlap counted twice would show far above the tolerance.
  """
  mesh = _mesh("2x4")
  with jax.enable_x64():
    zimg, ztxt = _place(mesh, *(a.astype(np.float64)
                                for a in _embeddings(40)))
    fn = _value_and_grad(name, "ring", mesh, block_size=block_size)
    (loss, metrics), grads = fn(zimg, ztxt, np.float64(T), np.float64(B))
    assert loss.dtype == jnp.float64 and grads[0].dtype == jnp.float64
  ref_loss, ref_metrics, ref_grads = _dense_reference(name, 40)
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-12)
  for key, value in metrics.items():
    np.testing.assert_allclose(float(value), ref_metrics[key], rtol=1e-12)
  _assert_grads_close(grads, ref_grads, rtol=1e-10)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("mesh_key", ["4", "2x4"])
def test_every_row_gets_its_cross_device_gradient(name, mesh_key):
  """open_clip #616: embeddings sent to other devices must get gradients.

  The image block of the last device is zeroed, so its own (diagonal) block
  of logits is constant and that device's text rows get gradient only from
  the images of other devices, i.e. only through the ring. Likewise texts
  of device 0 are zeroed, so its image rows learn only from texts that
  travelled to it. A ring that dropped gradients of received blocks would
  give zero rows here.
  """
  mesh = _mesh(mesh_key)
  n_dev = sharding.batch_size_divisor(mesh)
  n = 24
  bl = n // n_dev
  zimg, ztxt = _embeddings(n, seed=3)
  last, first = slice(n - bl, n), slice(0, bl)
  zimg[last] = 0.0
  ztxt[first] = 0.0
  fn = _value_and_grad(name, "dense", None)
  with jax.enable_x64():
    _, ref = fn(zimg.astype(np.float64), ztxt.astype(np.float64),
                np.float64(T), np.float64(B))
    ref = [np.asarray(g) for g in ref]
    # Sanity of the set-up: the own blocks alone give these rows nothing.
    _, own = fn(zimg[last].astype(np.float64), ztxt[last].astype(np.float64),
                np.float64(T), np.float64(B))
    np.testing.assert_array_equal(np.asarray(own[1]), 0.0)
  _, grads = _value_and_grad(name, "ring", mesh)(
      *_place(mesh, zimg, ztxt), jnp.float32(T), jnp.float32(B))
  gimg, gtxt = np.asarray(grads[0]), np.asarray(grads[1])
  assert np.all(np.linalg.norm(gtxt[last], axis=1) > 1e-3)
  assert np.all(np.linalg.norm(gimg[first], axis=1) > 1e-3)
  scale = np.max(np.abs(ref[1]))
  np.testing.assert_allclose(gtxt[last], ref[1][last], rtol=1e-5,
                             atol=1e-5 * scale)
  np.testing.assert_allclose(gimg[first], ref[0][first], rtol=1e-5,
                             atol=1e-5 * np.max(np.abs(ref[0])))
  _assert_grads_close(grads, ref, rtol=1e-5)


def _temp_bytes(name, impl, n_dev, n, d=16, **options):
  """Per-device temporary bytes of the compiled loss value-and-grad."""
  mesh = _mesh(str(n_dev))
  loss_fn = losses.get(name, impl=impl, **options)
  spec = jax.ShapeDtypeStruct((n, d), jnp.float32,
                              sharding=sharding.batch_sharding(mesh))

  def f(zimg, ztxt):
    return loss_fn(zimg, ztxt, {"t": jnp.float32(T), "b": jnp.float32(B)},
                   mesh=mesh)[0]

  compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(
      spec, spec).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("name", LOSSES)
def test_ring_temporaries_are_local_block_sized(name):
  """Fixed B_local, 2 -> 8 devices: ring temp stays flat, dense grows.

  B_local 128 is below the default block_size: one tile per ring step.

  (At a fixed device count doubling B_global doubles B_local too, so both
  grow about 4x; the growth that tells them apart is with the device count.)
  """
  bl, d = 128, 16
  block = bl * bl * 4  # One f32 [B_local, B_local] block of logits.
  ring = {k: _temp_bytes(name, "ring", k, k * bl, d) for k in (2, 8)}
  dense = {k: _temp_bytes(name, "dense", k, k * bl, d) for k in (2, 8)}
  assert ring[8] <= 1.1 * ring[2], ring  # Flat (XLA keeps 2 blocks at n=2).
  assert max(ring.values()) <= 4 * block + 16 * bl * d * 4, ring
  # Dense holds at least its [B_global, B_local] share of the logits.
  assert dense[8] >= 8 * block and dense[8] >= 3 * dense[2], dense
  assert dense[8] >= 3 * ring[8], (dense, ring)


@pytest.mark.parametrize("name", LOSSES)
def test_tiled_ring_temporaries_grow_linearly_in_batch(name):
  """2 devices, block_size 32, B x4: ring temp about x3-4, dense x16."""
  bs, d, n_dev = 32, 16, 2
  ring = {bl: _temp_bytes(name, "ring", n_dev, n_dev * bl, d, block_size=bs)
          for bl in (128, 512)}
  dense = {bl: _temp_bytes(name, "dense", n_dev, n_dev * bl, d)
           for bl in (128, 512)}
  assert ring[512] <= 5 * ring[128], ring
  assert dense[512] >= 12 * dense[128], dense
  # A few tiles and a few [B_local, D] buffers, no [B_local, B_local] one.
  for bl, temp in ring.items():
    assert temp <= 8 * bs * bs * 4 + 4 * bl * d * 4, ring
  assert ring[512] < 512 * 512 * 4  # One untiled f32 block.


@pytest.mark.parametrize("impl", ["dense", "ring"])
def test_sigmoid_traces_beyond_int32_pair_count(impl):
  """B * (B - 1) > 2^31 at B = 65,536: the metric divisor must not overflow."""
  spec = jax.ShapeDtypeStruct((65536, 4), jnp.float32)
  out = jax.eval_shape(
      lambda a, c: losses.get("sigmoid", impl=impl)(
          a, c, {"t": jnp.float32(1), "b": jnp.float32(0)}), spec, spec)
  assert out[1]["neg_prob"].dtype == jnp.float32


def test_unknown_impl_is_a_clear_error():
  with pytest.raises(ValueError, match=r"Unknown impl 'chunked'.*dense.*ring"):
    losses.get("sigmoid", impl="chunked")
  zimg, ztxt = _embeddings(4)
  with pytest.raises(ValueError, match=r"Unknown impl 'Ring'"):
    losses.softmax_loss(zimg, ztxt, {"t": 1.0}, impl="Ring")


@pytest.mark.parametrize("block_size", [0, -4, 2.5, True, "64"])
def test_bad_block_size_is_a_clear_error(block_size):
  with pytest.raises(ValueError, match=r"block_size must be a positive int"):
    losses.get("softmax", impl="ring", block_size=block_size)
  zimg, ztxt = _embeddings(4)
  with pytest.raises(ValueError, match=r"block_size must be a positive int"):
    losses.sigmoid_loss(zimg, ztxt, {"t": 1.0, "b": 0.0}, impl="ring",
                        block_size=block_size)


def test_numpy_int_block_size_is_accepted():
  zimg, ztxt = _embeddings(6)
  aux = {"t": jnp.float32(T), "b": jnp.float32(B)}
  loss, _ = losses.get("sigmoid", impl="ring", block_size=np.int64(4))(
      zimg, ztxt, aux)
  ref, _ = losses.sigmoid_loss(zimg, ztxt, aux)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)


def test_batch_not_divisible_by_ring_is_a_clear_error():
  zimg, ztxt = _embeddings(20)
  with pytest.raises(ValueError, match=r"batch size 20 is not divisible"):
    losses.get("sigmoid", impl="ring")(zimg, ztxt, {"t": 1.0, "b": 0.0},
                                       mesh=_mesh("8"))


def test_ring_softmax_without_bias_and_eager():
  """No "b" in aux (CLIP); the loss also runs eagerly, outside jit."""
  mesh = _mesh("4")
  zimg, ztxt = _embeddings(24)
  aux = {"t": jnp.float32(T)}
  ring_fn = losses.get("softmax", impl="ring")
  loss, metrics = ring_fn(*_place(mesh, zimg, ztxt), aux, mesh=mesh)
  ref_loss, ref_metrics = losses.softmax_loss(zimg, ztxt, aux)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for key, value in ref_metrics.items():
    np.testing.assert_allclose(metrics[key], value, rtol=1e-5)
  grad = lambda fn, **kw: jax.jit(jax.grad(
      lambda a, c: fn(a, c, aux, **kw)[0], argnums=(0, 1)))
  grads = grad(ring_fn, mesh=mesh)(*_place(mesh, zimg, ztxt))
  ref_grads = grad(losses.softmax_loss)(zimg, ztxt)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * np.abs(r).max())
