"""FILIP late interaction: similarities against a loop reference, padding,
the ring implementation against the dense one, the model's token features,
and a FILIP run of the trainer."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vl.losses import filip
from big_vl import losses
from big_vl import models
from big_vl import sharding

T = 8.0


def _tokens(b, n, l, d=8, seed=0):
  """Normalised image [b, n, d] and text [b, l, d] tokens, a padding mask."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, n, d))
  y = x[:, :l] + 1.2 * rng.normal(size=(b, l, d))
  x /= np.linalg.norm(x, axis=-1, keepdims=True)
  y /= np.linalg.norm(y, axis=-1, keepdims=True)
  lengths = 1 + np.arange(b) % l
  mask = np.arange(l)[None, :] < lengths[:, None]
  return x.astype(np.float32), y.astype(np.float32), mask


def test_similarities_match_a_loop_over_tokens():
  x, y, mask = _tokens(3, 5, 4)
  s_i2t, s_t2i = filip.late_similarities(x, y, mask)
  for i in range(3):
    for j in range(3):
      valid = y[j][mask[j]]
      dots = x[i] @ valid.T                      # [N, L_valid]
      np.testing.assert_allclose(s_i2t[i, j], dots.max(1).mean(), atol=1e-6)
      np.testing.assert_allclose(s_t2i[i, j], dots.max(0).mean(), atol=1e-6)


def test_padding_tokens_change_nothing():
  x, y, mask = _tokens(4, 6, 5)
  aux = {"t": jnp.float32(T), "img/ztokens": x, "txt/ztokens": y,
         "txt/mask": mask}
  loss, _ = filip.filip_loss(None, None, aux)
  y2 = np.where(mask[..., None], y, -y[::-1])    # garbage where padded
  loss2, _ = filip.filip_loss(None, None, {**aux,
                                                      "txt/ztokens": y2})
  np.testing.assert_allclose(loss, loss2, rtol=1e-6)
  # ... while a real token does change it.
  y3 = y.copy()
  y3[3, 0] = -y3[3, 0]
  loss3, _ = filip.filip_loss(None, None, {**aux,
                                                      "txt/ztokens": y3})
  assert abs(float(loss3) - float(loss)) > 1e-4


def _value_and_grad(impl, mesh):
  def f(x, y, t, mask):
    aux = {"t": t, "img/ztokens": x, "txt/ztokens": y, "txt/mask": mask}
    return filip.filip_loss(None, None, aux, mesh=mesh, impl=impl)
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.parametrize("mesh_config", [[("data", 8)], [("data", 2),
                                                          ("fsdp", 4)],
                                         [("data", 4), ("model", 2)]])
def test_ring_equals_dense(mesh_config):
  mesh = sharding.make_mesh(mesh_config)
  x, y, mask = _tokens(16, 6, 5, seed=1)
  t = jnp.float32(T)
  (want, want_m), want_g = _value_and_grad("dense", None)(x, y, t, mask)
  rows = sharding.batch_sharding(mesh)
  args = [jax.device_put(a, rows) for a in (x, y)]
  (got, got_m), got_g = _value_and_grad("ring", mesh)(
      *args, t, jax.device_put(mask, rows))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for k in want_m:
    np.testing.assert_allclose(got_m[k], want_m[k], err_msg=k)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(g, w, atol=1e-6)
  assert float(want) > 0 and np.abs(want_g[0]).sum() > 0


@pytest.mark.parametrize("impl,mesh_config", [("dense", None),
                                              ("ring", [("data", 8)])])
def test_naflex_padding_patches_change_nothing(impl, mesh_config):
  """NaFlex: images padded with 3 junk patches and their "img/mask" give
  the loss and gradients of the unpadded images, dense and on an 8-device
  ring; without the mask the junk would count."""
  mesh = mesh_config and sharding.make_mesh(mesh_config)
  x, y, mask = _tokens(16, 6, 5, seed=2)
  padded = np.concatenate([x, -np.roll(x, 1, axis=0)[:, :3]], axis=1)
  img_mask = np.broadcast_to(np.arange(9) < 6, (16, 9))
  t = jnp.float32(T)

  def f(tokens, y, t, mask, img_mask=None):
    aux = {"t": t, "img/ztokens": tokens, "txt/ztokens": y,
           "txt/mask": mask}
    if img_mask is not None:
      aux["img/mask"] = img_mask
    return filip.filip_loss(None, None, aux, mesh=mesh, impl=impl)[0]

  put = (lambda a: a) if mesh is None else (
      lambda a: jax.device_put(a, sharding.batch_sharding(mesh)))
  want, want_g = jax.jit(jax.value_and_grad(f))(put(x), put(y), t,
                                                put(mask))
  got, got_g = jax.jit(jax.value_and_grad(f))(put(padded), put(y), t,
                                              put(mask), put(img_mask))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(got_g)[:, :6], want_g, atol=1e-7)
  assert not np.asarray(got_g)[:, 6:].any()
  unmasked = jax.jit(f)(put(padded), put(y), t, put(mask))
  assert abs(float(unmasked) - float(want)) > 1e-3


def test_ring_holds_one_token_block_per_device():
  # Per device, dense (partitioned by XLA) holds at least its
  # [B_global / 8, B_global, N, L] share of the token similarities; the ring
  # a few [B_local, B_local, N, L] blocks (forward, its recomputation and
  # gradient in the backward pass), each 8x smaller than that share here.
  mesh = sharding.make_mesh([("data", 8)])
  b, n, l = 128, 16, 8
  x, y, mask = _tokens(b, n, l)
  rows = sharding.batch_sharding(mesh)
  args = (jax.device_put(x, rows), jax.device_put(y, rows), jnp.float32(T),
          jax.device_put(mask, rows))
  temp = {impl: _value_and_grad(impl, mesh).lower(*args).compile()
          .memory_analysis().temp_size_in_bytes for impl in ("dense", "ring")}
  share = (b // 8) * b * n * l * 4
  block = (b // 8) ** 2 * n * l * 4
  assert temp["dense"] >= share, temp
  assert temp["ring"] <= 5 * block < share, temp


def test_model_token_features_and_selection():
  config = {"name": "two_towers", "out_dim": 16, "token_features": True,
            "image": {"variant": "mu/8"},
            "text": {"variant": "mu", "max_len": 8, "vocab_size": 100}}
  image = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)),
                      jnp.float32)
  text = jnp.asarray([[5, 6, 7, 0, 0, 0, 0, 0], [5, 9, 0, 0, 0, 0, 0, 0]])
  model = models.get(config)
  params = model.init(jax.random.key(0), image, text)["params"]
  assert {"img_token_head", "txt_token_head"} <= set(params)
  _, _, aux = model.apply({"params": params}, image, text)
  assert aux["img/ztokens"].shape == (2, 16, 16)       # 4x4 patches
  assert aux["txt/ztokens"].shape == (2, 8, 16)
  np.testing.assert_allclose(jnp.linalg.norm(aux["img/ztokens"], axis=-1),
                             1, rtol=1e-5)
  half = models.get({**config, "token_keep": 0.5})
  _, _, aux_half = half.apply({"params": params}, image, text)
  assert aux_half["img/ztokens"].shape == (2, 8, 16)
  # The kept tokens are those with the largest projected norm.
  proj = jnp.einsum("bnw,wd->bnd", aux["img/tokens"],
                    params["img_token_head"]["kernel"]) + params[
                        "img_token_head"]["bias"]
  norms = np.asarray(jnp.linalg.norm(proj, axis=-1))
  top = np.sort(np.argsort(-norms, axis=1)[:, :8], axis=1)
  want = np.take_along_axis(np.asarray(aux["img/ztokens"]), top[..., None],
                            axis=1)
  got = np.asarray(aux_half["img/ztokens"])
  for i in range(2):  # same set of tokens (top_k orders them by norm)
    np.testing.assert_allclose(
        sorted(map(tuple, np.round(got[i], 5))),
        sorted(map(tuple, np.round(want[i], 5))), atol=1e-4)


def test_missing_token_features_is_a_clear_error():
  with pytest.raises(ValueError, match="token_features = True"):
    losses.get("filip")(None, None, {"t": 1.0})


@pytest.mark.slow
def test_filip_config_trains_the_same_ring_dense_and_accumulated(tmp_path,
                                                          demo_data):
  del demo_data
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl import train  # pylint: disable=g-import-not-at-top
  # The ring equals the dense loss in values and gradients on two meshes
  # (the loss-level tests above); here the trainer runs the dense loss and
  # the ring with GradCache (2 micro-batches), which must train the same.
  losses_by_impl = {}
  for impl in ("dense", "ring_accum2"):
    config = config_lib.load_config_module(os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "configs", "filip.py")).get_config("runlocal,token_keep=0.5")
    config.total_steps, config.log_steps = 8, 1
    config.evals = {}
    config.objectives.filip.impl = impl.split("_")[0]
    if impl.endswith("accum2"):   # GradCache: 2 micro-batches per step
      config.grad_accum_steps = 2
    result = train.train(config, str(tmp_path / impl))
    losses_by_impl[impl] = [result["losses"][s] for s in range(1, 9)]
  np.testing.assert_allclose(losses_by_impl["ring_accum2"],
                             losses_by_impl["dense"], rtol=1e-4)
  assert losses_by_impl["dense"][-1] < losses_by_impl["dense"][0]
