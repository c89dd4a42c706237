"""Losses against plain numpy computations, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vl import losses
from big_vl import registry


def _embeddings(n=6, d=5, seed=0):
  rng = np.random.default_rng(seed)
  zimg = rng.normal(size=(n, d))
  ztxt = rng.normal(size=(n, d))
  zimg /= np.linalg.norm(zimg, axis=1, keepdims=True)
  ztxt /= np.linalg.norm(ztxt, axis=1, keepdims=True)
  return zimg.astype(np.float32), ztxt.astype(np.float32)


def _np_log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def numpy_softmax_loss(zimg, ztxt, t):
  logits = t * zimg.astype(np.float64) @ ztxt.astype(np.float64).T
  n = len(logits)
  i2t = -_np_log_softmax(logits, 1)[np.arange(n), np.arange(n)].mean()
  t2i = -_np_log_softmax(logits, 0)[np.arange(n), np.arange(n)].mean()
  return (i2t + t2i) / 2


def numpy_sigmoid_loss(zimg, ztxt, t, b):
  logits = t * zimg.astype(np.float64) @ ztxt.astype(np.float64).T + b
  labels = 2 * np.eye(len(logits)) - 1
  return np.sum(np.log1p(np.exp(-labels * logits))) / len(logits)


@pytest.mark.parametrize("n", [1, 6, 13])
def test_softmax_matches_numpy(n):
  zimg, ztxt = _embeddings(n)
  loss, metrics = losses.softmax_loss(zimg, ztxt, {"t": jnp.float32(7.5)})
  np.testing.assert_allclose(loss, numpy_softmax_loss(zimg, ztxt, 7.5),
                             rtol=1e-5)
  assert 0.0 <= metrics["img2txt_acc"] <= 1.0


@pytest.mark.parametrize("n", [1, 6, 13])
def test_sigmoid_matches_numpy(n):
  zimg, ztxt = _embeddings(n, seed=1)
  aux = {"t": jnp.float32(10.0), "b": jnp.float32(-3.0)}
  loss, metrics = losses.sigmoid_loss(zimg, ztxt, aux)
  np.testing.assert_allclose(loss, numpy_sigmoid_loss(zimg, ztxt, 10., -3.),
                             rtol=1e-5)
  assert 0.0 < metrics["pos_prob"] < 1.0


def test_perfect_alignment_is_low_loss():
  zimg, _ = _embeddings(8, d=16)
  eye = np.eye(8, 16, dtype=np.float32)
  soft, m = losses.softmax_loss(eye, eye, {"t": jnp.float32(100.0)})
  assert soft < 1e-6 and m["img2txt_acc"] == 1.0
  shuffled, _ = losses.softmax_loss(eye, eye[::-1], {"t": jnp.float32(100.)})
  assert shuffled > 50.0


def test_gradients_match_finite_differences():
  zimg, ztxt = _embeddings(5, seed=2)
  zimg, ztxt = zimg.astype(np.float64), ztxt.astype(np.float64)
  with jax.enable_x64():
    for name, ref in (("softmax", lambda a, b, t: numpy_softmax_loss(a, b, t)),
                      ("sigmoid",
                       lambda a, b, t: numpy_sigmoid_loss(a, b, t, -2.0))):
      fn = registry.get("loss", name)
      aux_of = lambda t: {"t": t, "b": jnp.float64(-2.0)} if name == \
          "sigmoid" else {"t": t}
      grad = jax.grad(lambda a, t: fn(a, ztxt, aux_of(t))[0], argnums=(0, 1))
      g_img, g_t = grad(jnp.asarray(zimg), jnp.float64(3.0))
      eps = 1e-6
      bumped = zimg.copy()
      bumped[1, 2] += eps
      fd = (ref(bumped, ztxt, 3.0) - ref(zimg, ztxt, 3.0)) / eps
      np.testing.assert_allclose(g_img[1, 2], fd, rtol=1e-4)
      fd_t = (ref(zimg, ztxt, 3.0 + eps) - ref(zimg, ztxt, 3.0)) / eps
      np.testing.assert_allclose(g_t, fd_t, rtol=1e-4)


def test_registry_names():
  assert registry.get("loss", "softmax") is losses.softmax_loss
  assert registry.get("loss", "sigmoid") is losses.sigmoid_loss
  with pytest.raises(KeyError, match="Unknown loss 'sigmoidd'"):
    registry.get("loss", "sigmoidd")


def test_label_smoothing_matches_smoothed_cross_entropy():
  import optax  # pylint: disable=g-import-not-at-top
  from big_vl import sharding  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  n, eps, t = 16, 0.1, 7.0
  zimg = rng.normal(size=(n, 8))
  ztxt = zimg + rng.normal(size=(n, 8))
  zimg /= np.linalg.norm(zimg, axis=1, keepdims=True)
  ztxt /= np.linalg.norm(ztxt, axis=1, keepdims=True)
  zimg, ztxt = zimg.astype(np.float32), ztxt.astype(np.float32)
  logits = t * zimg @ ztxt.T
  targets = (1 - eps) * np.eye(n) + eps / n
  want = (optax.softmax_cross_entropy(logits, targets).mean()
          + optax.softmax_cross_entropy(logits.T, targets).mean()) / 2
  aux = {"t": jnp.float32(t)}
  got, _ = losses.softmax_loss(zimg, ztxt, aux, label_smoothing=eps)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  plain, _ = losses.softmax_loss(zimg, ztxt, aux)
  assert float(got) > float(plain)
  # The ring gives the same value and gradients.
  mesh = sharding.make_mesh([("data", 8)])
  rows = sharding.batch_sharding(mesh)

  def f(impl, zi, zt):
    return losses.softmax_loss(zi, zt, aux, mesh=mesh, impl=impl,
                               label_smoothing=eps)[0]

  dense = jax.value_and_grad(lambda a, b: f("dense", a, b), (0, 1))(
      zimg, ztxt)
  ring = jax.jit(jax.value_and_grad(lambda a, b: f("ring", a, b), (0, 1)))(
      jax.device_put(zimg, rows), jax.device_put(ztxt, rows))
  np.testing.assert_allclose(ring[0], dense[0], rtol=1e-5)
  for g_ring, g_dense in zip(ring[1], dense[1]):
    np.testing.assert_allclose(g_ring, g_dense, atol=1e-6)
  with pytest.raises(ValueError, match="label_smoothing"):
    losses.softmax_loss(zimg, ztxt, aux, label_smoothing=1.0)
