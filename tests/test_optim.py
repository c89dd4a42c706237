"""The optax chain: schedules, weight-decay rules, frozen params, lr rules."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from big_vl import optim


def _params():
  return {"img": {"head": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,))},
                  "LayerNorm_0": {"scale": jnp.ones((3,))}},
          "txt": {"Embed_0": {"embedding": jnp.ones((4, 3))}},
          "t": jnp.full((), 2.0, jnp.float32)}


def _config(**kw):
  base = dict(lr=0.1, wd=0.0, schedule=dict(name="constant"),
              optim=dict(name="adamw"))
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_warmup_then_cosine_schedule():
  config = _config(schedule=dict(name="cosine"))
  _, sched = optim.make(config, _params(), total_steps=110, warmup_steps=10)
  np.testing.assert_allclose(sched(0), 0.0)
  np.testing.assert_allclose(sched(5), 0.05, rtol=1e-6)
  np.testing.assert_allclose(sched(10), 0.1, rtol=1e-6)
  np.testing.assert_allclose(sched(60), 0.05, rtol=1e-5)  # cosine midpoint
  np.testing.assert_allclose(sched(110), 0.0, atol=1e-7)
  _, rsqrt = optim.make(_config(schedule=dict(name="rsqrt", timescale=100)),
                        _params(), 1000, 0)
  np.testing.assert_allclose(rsqrt(300), 0.1 / 2, rtol=1e-6)
  with pytest.raises(ValueError,
                     match="config.schedule.name: unknown schedule"):
    optim.make(_config(schedule=dict(name="steps")), _params(), 10, 0)


def _one_update(config, grads_value=0.0):
  params = _params()
  tx, _ = optim.make(config, params, 100, 0)
  grads = jax.tree.map(lambda p: jnp.full_like(p, grads_value), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_weight_decay_only_on_kernels_and_embeddings():
  # Zero gradient: the update is pure decay -lr * wd * p (coupled).
  up = _one_update(_config(wd=0.5, wd_mode="coupled"))
  np.testing.assert_allclose(up["img"]["head"]["kernel"], -0.1 * 0.5)
  np.testing.assert_allclose(up["txt"]["Embed_0"]["embedding"], -0.05)
  np.testing.assert_allclose(up["img"]["head"]["bias"], 0.0)
  np.testing.assert_allclose(up["img"]["LayerNorm_0"]["scale"], 0.0)
  np.testing.assert_allclose(up["t"], 0.0)
  # Decoupled: -(lr_t / lr) * wd * p, independent of the lr's size.
  up = _one_update(_config(wd=0.5, wd_mode="decoupled"))
  np.testing.assert_allclose(up["img"]["head"]["kernel"], -0.5)


def test_frozen_params_never_move_and_lr_rules_scale():
  config = _config(frozen=["img/.*"], lr_rules=[("txt/.*", 0.5)])
  up = _one_update(config, grads_value=1.0)
  for leaf in jax.tree.leaves(up["img"]):
    np.testing.assert_array_equal(leaf, 0.0)
  # Adam's first step is -lr * sign(g): 0.1, halved for txt by the lr rule.
  np.testing.assert_allclose(up["txt"]["Embed_0"]["embedding"], -0.05,
                             rtol=1e-5)
  np.testing.assert_allclose(up["t"], -0.1, rtol=1e-5)


def test_grad_clipping_ignores_frozen_params():
  params = _params()
  frozen = optim.frozen_mask(_config(frozen=["img/.*"]), params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)
  norm = optim.trainable_global_norm(grads, frozen)
  np.testing.assert_allclose(norm, 3.0 * np.sqrt(12 + 1), rtol=1e-6)
  assert optax.tree.norm(grads) > norm


def _assert_same_updates(ours, ref, params, rng, *, steps, atol):
  """`steps` updates of random gradients agree (rtol 1e-5); the params
  after them."""
  s_ours, s_ref = ours.init(params), ref.init(params)
  for _ in range(steps):
    grads = jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    u_ours, s_ours = ours.update(grads, s_ours, params)
    u_ref, s_ref = ref.update(grads, s_ref, params)
    for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_ref)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)
    params = optax.apply_updates(params, u_ref)
  return params


def test_lamb_equals_optax_lamb():
  # Weight decay on every parameter (as optax.lamb without a mask), three
  # steps of random gradients: the same updates as optax's own LAMB.
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), _params())
  config = _config(optim=dict(name="lamb", b1=0.9, b2=0.99, eps=1e-6),
                   wd=0.01, wd_rules=((".*", 1.0),))
  ours, _ = optim.make(config, params, 100, 0)
  ref = optax.lamb(0.1, b1=0.9, b2=0.99, eps=1e-6, weight_decay=0.01)
  params = _assert_same_updates(ours, ref, params, rng, steps=3, atol=1e-7)
  with pytest.raises(ValueError, match="adamw or lamb"):
    optim.make(_config(optim=dict(name="sgd")), params, 10, 0)


def test_adafactor_equals_optax_adafactor_and_caps_beta2():
  """Without the cap (beta2_cap=1) big_vision's Adafactor is optax's with
  no parameter scaling and no clipping; a factored [40, 48] kernel, a
  vector and a scalar, five steps of random gradients."""
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(40, 48)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(48,)), jnp.float32),
            "t": jnp.asarray(1.5, jnp.float32)}
  config = _config(optim=dict(name="adafactor", beta2_cap=1.0,
                              momentum_dtype="float32"))
  ours, _ = optim.make(config, params, 100, 0)
  ref = optax.adafactor(0.1, min_dim_size_to_factor=32,
                        multiply_by_parameter_scale=False,
                        clipping_threshold=None, momentum=0.9,
                        dtype_momentum=jnp.float32)
  _assert_same_updates(ours, ref, params, rng, steps=5, atol=1e-8)
  # The decay 1 - t^-0.8 passes 0.999 after step 5,623 (t = 5,624): capped.
  rates = optim.adafactor_decay_rate(np.array([0, 9, 5622, 5623, 10**6]),
                                     0.8, 0.999)
  np.testing.assert_allclose(
      rates, [0.0, 1 - 10 ** -0.8, 1 - 5623 ** -0.8, 0.999, 0.999],
      rtol=1e-6)
  # Step 1 by hand for the scalar: decay 0, so v = g^2 and the update is
  # sign(g); momentum without debiasing gives 0.1 * sign(g); times -lr.
  config = _config(optim=dict(name="adafactor"))
  tx, _ = optim.make(config, {"t": jnp.asarray(1.0)}, 100, 0)
  update, state = tx.update({"t": jnp.asarray(-3.0)},
                            tx.init({"t": jnp.asarray(1.0)}),
                            {"t": jnp.asarray(1.0)})
  np.testing.assert_allclose(update["t"], 0.1 * 0.1, rtol=1e-2)  # bf16 mom.
  assert jnp.dtype(jnp.bfloat16) in {l.dtype for l in jax.tree.leaves(state)}


def _tower_params(scan):
  """A real two-tower model's params (ViT + text, depth 3 each)."""
  from big_vl.models import two_towers  # pylint: disable=g-import-not-at-top
  model = two_towers.Model(
      image={"variant": "mu/8", "depth": 3, "scan": scan},
      text={"variant": "mu", "depth": 3, "vocab_size": 50, "max_len": 8,
            "scan": scan}, out_dim=8)
  return two_towers.init_params(model, jax.random.key(0), (1, 16, 16, 3),
                                (1, 8))


@pytest.mark.parametrize("scan", [False, True])
def test_layer_decay_scales_each_block_by_its_depth(scan):
  params = _tower_params(scan)
  rate = 0.5
  config = _config(lr=1.0, layer_decay={"img": rate, "txt": 0.9})
  assert optim.tower_depth(params, "img") == 3
  tx, _ = optim.make(config, params, 10, 0)
  # Adam's first step moves every parameter by lr * sign(grad) (up to eps),
  # so the update's size is the multiplier itself.
  grads = jax.tree.map(jnp.ones_like, params)
  up, _ = tx.update(grads, tx.init(params), params)
  size = lambda x: np.abs(np.asarray(x))
  img = up["img"]
  block = "encoderblock" if scan else None
  for i in range(3):
    kernel = (img["Transformer"][block]["MlpBlock_0"]["Dense_0"]["kernel"][i]
              if scan else img["Transformer"][f"encoderblock_{i}"][
                  "MlpBlock_0"]["Dense_0"]["kernel"])
    np.testing.assert_allclose(size(kernel), rate ** (3 - i), rtol=1e-5)
  np.testing.assert_allclose(size(img["embedding"]["kernel"]), rate ** 4,
                             rtol=1e-5)
  np.testing.assert_allclose(size(img["pos_embedding"]), rate ** 4, rtol=1e-5)
  np.testing.assert_allclose(size(img["head"]["kernel"]), 1.0, rtol=1e-5)
  np.testing.assert_allclose(
      size(img["Transformer"]["encoder_norm"]["scale"]), 1.0, rtol=1e-5)
  np.testing.assert_allclose(size(up["txt"]["Embed_0"]["embedding"]),
                             0.9 ** 4, rtol=1e-5)
  np.testing.assert_allclose(size(up["t"]), 1.0, rtol=1e-5)  # Not a tower.
  with pytest.raises(ValueError, match="no transformer blocks under 'b'"):
    optim.make(_config(layer_decay={"b": 0.5}), {"b": {"w": jnp.ones(())}},
               10, 0)
