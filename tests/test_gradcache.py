"""GradCache accumulation and bf16 param compute against their plain twins.

Every comparison runs the trainer's own step (`train.build`) on the same
batch. The optimiser is Adam with lr = eps = 1e3, which at step 1 makes the
update `-g * 1e3 / (|g| + 1e3)`, i.e. almost exactly `-g`: unlike Adam's usual
sign-like first step, a wrong gradient (a temperature gradient counted k
times, a missing micro-batch) shows in the params after the step.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vl import checkpoint as ckpt_lib
from big_vl import config as config_lib
from big_vl import losses
from big_vl import metrics as metrics_lib
from big_vl import models
from big_vl import sharding
from big_vl import train as train_lib
from big_vl.train import gradcache

BATCH = 32
MESHES = {"one": [("data", 1)], "eight": [("data", 2), ("fsdp", 4)]}


def _rules(loss, mesh):
  """FSDP on the 8-device mesh (params and optimiser state sharded)."""
  del loss
  return [(".*", "fsdp")] if mesh == "eight" else [(".*", "replicate")]


def _config(loss="softmax", mesh="one", dropout=0.0, **overrides):
  """Tiny runlocal demo config with a gradient-linear first step."""
  config = config_lib.load_config_module("configs/demo.py").get_config(
      f"runlocal,loss={loss}")
  config.evals = ml_collections.ConfigDict()
  config.mesh, config.sharding_rules = MESHES[mesh], _rules(loss, mesh)
  config.model.image.depth = 1
  config.model.text.depth = 1
  config.model.image.dropout = dropout
  config.model.text.dropout = dropout
  config.lr = 1e3
  config.optim = dict(name="adam", b1=0.9, b2=0.999, eps=1e3)
  config.wd = 0.0
  config.grad_clip_norm = None
  config.schedule = dict(name="constant")
  config.warmup_steps = 0
  config.total_steps = 1
  config.log_steps = 1
  config.ckpt_steps = 1
  for k, v in overrides.items():
    config[k] = v
  return config


def _batch(seed=0, res=16, length=8):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(-1, 1, (BATCH, res, res, 3)).astype(np.float32),
          "text": rng.integers(1, 1000, (BATCH, length)).astype(np.int32)}


def _one_step(config, batch):
  """(params before, params after, metrics, state) of one trainer step."""
  n = int(np.prod([size for _, size in config.mesh]))
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:n])
  example = {"image": batch["image"][0], "text": batch["text"][0]}
  run = train_lib.build(config, mesh, example, 1, 0)
  state = run.init_state()
  before = jax.tree.map(np.array, state["params"])
  state, metrics = run.train_step(state, sharding.to_global(batch, mesh))
  after = jax.tree.map(np.array, state["params"])
  return before, after, jax.device_get(metrics), state


@pytest.fixture(scope="module")
def full_batch_steps():
  """`(loss, mesh) -> one k=1 float32 step`, each computed once."""
  cache = {}

  def get(loss, mesh):
    if (loss, mesh) not in cache:
      cache[loss, mesh] = _one_step(_config(loss, mesh), _batch())
    return cache[loss, mesh]

  return get


def _assert_close_trees(a, b, atol, rtol):
  paths = jax.tree.leaves(sharding.tree_paths(a))
  for path, x, y in zip(paths, jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=atol, rtol=rtol, err_msg=path)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["one", "eight"])
@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_accumulated_step_equals_full_batch_step(loss, mesh,
                                                 full_batch_steps):
  before, full, m_full, _ = full_batch_steps(loss, mesh)
  moved = jax.tree.map(lambda x, y: np.abs(x - y).max(), before, full)
  assert max(jax.tree.leaves(moved)) > 0.1  # A real, gradient-sized step.
  assert moved["t"] > 1e-3  # The temperature has a gradient.
  if loss == "sigmoid":
    assert moved["b"] > 1e-3
  # k = 2 on one device, k = 4 on eight (both losses see both counts).
  for k in ((2,) if mesh == "one" else (4,)):
    _, acc, m_acc, _ = _one_step(_config(loss, mesh, grad_accum_steps=k),
                                 _batch())
    _assert_close_trees(acc, full, atol=1e-5, rtol=1e-5)
    for key in ("train/loss", "train/grad_norm", "train/temperature",
                "train/param_norm"):
      np.testing.assert_allclose(m_acc[key], m_full[key], rtol=2e-6,
                                 err_msg=key)
    assert set(m_acc) == set(m_full)


@pytest.mark.slow
def test_bf16_param_compute_matches_fp32_and_keeps_fp32_master(
    full_batch_steps):
  before, full, m_full, _ = full_batch_steps("sigmoid", "eight")
  for k in (1, 2):
    config = _config("sigmoid", "eight", grad_accum_steps=k,
                     param_compute_dtype="bfloat16")
    _, bf16, m_bf16, state = _one_step(config, _batch())
    for leaf in jax.tree.leaves((state["params"], state["opt"])):
      if jnp.issubdtype(leaf.dtype, jnp.inexact):
        assert leaf.dtype == jnp.float32
    # The update (~ -grad) within bf16 tolerance, per tensor, in L2 norm.
    paths = jax.tree.leaves(sharding.tree_paths(before))
    for path, p0, p32, p16 in zip(paths, *map(jax.tree.leaves,
                                              (before, full, bf16))):
      u32, u16 = p32 - p0, p16 - p0
      scale = max(np.linalg.norm(u32), 1e-3)
      assert np.linalg.norm(u16 - u32) <= 2e-2 * scale, path
    np.testing.assert_allclose(m_bf16["train/loss"], m_full["train/loss"],
                               rtol=2e-2)


def _forward(model):
  """GradCache's `forward(params, batch, rng)` of the two-tower model."""
  outputs = models.outputs_fn("two_towers")
  return lambda p, b, rng: outputs(
      model, {"params": p}, b, train=True,
      rngs=None if rng is None else {"dropout": rng})


def test_dropout_passes_share_rngs(full_batch_steps):
  """With dropout, GradCache equals the plain gradient of the same function.

  Flax draws one dropout mask per call, so micro-batch i (rows i::k, rng
  fold_in(rng, i)) gets other masks than the full batch: a k-step update is
  not the k=1 update. It must still be the exact gradient of the loss of the
  embeddings computed with those per-micro-batch rngs, which needs the same
  rng in both passes of each micro-batch.
  """
  del full_batch_steps
  k = 2
  config = _config("softmax", dropout=0.2)
  model = train_lib.make_model(config)
  objective = train_lib.make_objective(config)
  loss_fn = lambda zimg, ztxt, aux: objective(
      {**aux, "zimg": zimg, "ztxt": ztxt}, {})
  batch = jax.tree.map(jnp.asarray, _batch())
  params = model.init({"params": jax.random.PRNGKey(0)}, batch["image"][:1],
                      batch["text"][:1])["params"]
  rng = jax.random.PRNGKey(7)

  def plain(p):
    zimg = jnp.zeros((BATCH, config.model.out_dim))
    ztxt = jnp.zeros((BATCH, config.model.out_dim))
    for i in range(k):
      zi, zt, aux = model.apply(
          {"params": p}, batch["image"][i::k], batch["text"][i::k],
          train=True, rngs={"dropout": jax.random.fold_in(rng, i)})
      zimg, ztxt = zimg.at[i::k].set(zi), ztxt.at[i::k].set(zt)
    return loss_fn(zimg, ztxt, aux)

  def one_pass_rng(p):  # What a single full-batch pass would compute.
    zimg, ztxt, aux = model.apply({"params": p}, batch["image"],
                                  batch["text"], train=True,
                                  rngs={"dropout": rng})
    return loss_fn(zimg, ztxt, aux)

  (loss_ref, _), g_ref = jax.jit(jax.value_and_grad(plain, has_aux=True))(
      params)
  (loss_acc, _), g_acc = jax.jit(lambda p: gradcache.value_and_grad(
      _forward(model), objective, p, batch, rng, steps=k))(params)
  np.testing.assert_allclose(loss_acc, loss_ref, rtol=1e-6)
  _assert_close_trees(g_acc, g_ref, atol=1e-5, rtol=1e-5)
  loss_one, _ = jax.jit(one_pass_rng)(params)
  assert abs(float(loss_one) - float(loss_ref)) > 1e-4  # Dropout is active.


def test_loss_reading_per_example_aux_gets_the_full_batch_gradient():
  """A loss that reads tower features (as FILIP does) gets them assembled."""
  config = _config("softmax")
  model = train_lib.make_model(config)
  batch = jax.tree.map(jnp.asarray, _batch(seed=1))
  batch["text"] = batch["text"].at[::3, 5:].set(0)  # Some padding.

  def loss_fn(zimg, ztxt, aux, *, mesh=None):
    loss, metrics = losses.softmax_loss(zimg, ztxt, aux, mesh=mesh)
    feats = aux["txt/pre_logits"] * aux["txt/mask"].sum(1, keepdims=True)
    reg = jnp.mean(feats ** 2) + jnp.mean(aux["img/pre_logits"][:, :3])
    return loss + reg, metrics

  params = model.init({"params": jax.random.PRNGKey(0)}, batch["image"][:1],
                      batch["text"][:1])["params"]

  def plain(p):
    return loss_fn(*model.apply({"params": p}, batch["image"], batch["text"],
                                train=True))

  (loss_ref, _), g_ref = jax.jit(jax.value_and_grad(plain, has_aux=True))(
      params)
  objective = lambda out, b, mesh=None: loss_fn(out["zimg"], out["ztxt"], out,
                                                mesh=mesh)
  (loss_acc, (_, aux)), g_acc = jax.jit(lambda p: gradcache.value_and_grad(
      _forward(model), objective, p, batch, jax.random.PRNGKey(0),
      steps=4))(params)
  np.testing.assert_allclose(loss_acc, loss_ref, rtol=1e-6)
  _assert_close_trees(g_acc, g_ref, atol=1e-5, rtol=1e-5)
  assert aux["txt/mask"].shape == batch["text"].shape  # Assembled, in order.
  np.testing.assert_array_equal(aux["txt/mask"], batch["text"] != 0)
  assert "img/tokens" not in aux  # Not read by the loss: never cached.


def test_grad_accum_steps_must_divide_the_per_device_batch():
  with pytest.raises(ValueError, match=r"grad_accum_steps=3 does not divide "
                     r"the per-device batch of 4 .*batch_size=32 over 8"):
    _one_step(_config(mesh="eight", grad_accum_steps=3), _batch())
  with pytest.raises(ValueError, match="positive int"):
    gradcache.check_steps(32, 0)
  with pytest.raises(ValueError, match="param_compute_dtype='int8'"):
    train_lib.check_config(_config(param_compute_dtype="int8"))


@pytest.mark.slow
def test_trainer_accumulates_to_the_full_batch_update(demo_data, tmp_path):
  """`train()` end to end: k=4 on (2 x 4) FSDP equals k=1, loss included."""
  for k in (1, 4):
    config = _config("sigmoid", "eight", grad_accum_steps=k)
    train_lib.train(config, str(tmp_path / str(k)))
  params, losses = [], []
  for k in (1, 4):
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / str(k) / "checkpoints"))
    state, _ = ckpt.restore(ckpt.latest_step(), None)
    ckpt.close()
    params.append(jax.tree.map(np.asarray, state["params"]))
    rows = metrics_lib.read_jsonl(
        os.path.join(tmp_path, str(k), "metrics.jsonl"))
    losses.append([r["train/loss"] for r in rows if "train/loss" in r])
  _assert_close_trees(params[1], params[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(losses[1], losses[0], rtol=2e-6)
  with pytest.raises(ValueError, match="grad_accum_steps=8 does not divide"):
    train_lib.train(_config("sigmoid", "eight", grad_accum_steps=8),
                    str(tmp_path / "bad"))
