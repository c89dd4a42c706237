"""Named, weighted objectives (big_vl/objectives.py) and the v2 step.

The step's loss is `sum_k w_k * loss_k` of `config.objectives`; these tests
check it against the single objectives computed apart (values, gradients,
metrics' names), through GradCache, and the start-up checks (unknown
options, missing fields, bad weights, both spellings).
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vl import config as config_lib
from big_vl import models
from big_vl import objectives
from big_vl import registry
from big_vl import sharding
from big_vl import sweep
from big_vl import train as train_lib
from big_vl.train import gradcache

BATCH = 16


def _config(objs=None, **model):
  """A tiny demo config (depth 1) with `config.objectives = objs`."""
  config = config_lib.load_config_module("configs/demo.py").get_config(
      "runlocal")
  config.evals = ml_collections.ConfigDict()
  config.model.image.depth = 1
  config.model.text.depth = 1
  config.model.bias_init = -10.0
  for k, v in model.items():
    config.model[k] = v
  config.total_steps = 1
  config.warmup_steps = 0
  config.input.batch_size = BATCH
  config.mesh = (("data", 1),)
  if objs is not None:
    with config.unlocked():
      config.objectives = ml_collections.ConfigDict(objs)
  return config


def _old_spelling(config):
  """`config` with its one objective written as the `config.loss`
  shorthand (the spelling of configs before the v2 step)."""
  (block,) = config.objectives.to_dict().values()
  with config.unlocked():
    del config["objectives"]
    config.loss = ml_collections.ConfigDict(
        {"name": block.pop("loss"), **{k: v for k, v in block.items()
                                       if k != "weight"}})
  return config


def _batch(seed=0, res=32, length=24):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(-1, 1, (BATCH, res, res, 3)).astype(np.float32),
          "text": rng.integers(1, 1000, (BATCH, length)).astype(np.int32)}


def _loss_and_grads(config, params, batch):
  """(loss, metrics, grads) of the config's objectives at `params`."""
  model = train_lib.make_model(config)
  objective = train_lib.make_objective(config)
  outputs = models.outputs_fn("two_towers")

  def loss_of(p):
    return objective(outputs(model, {"params": p}, batch, train=True), batch)

  (loss, metrics), grads = jax.jit(jax.value_and_grad(
      loss_of, has_aux=True))(params)
  return loss, metrics, grads


def _assert_grads_close(got, want, tol):
  """Per tensor: ||got - want|| <= tol * ||want|| + 1e-7 (float32 rounding
  of separate backward passes is ~1e-7 relative; the floor covers tensors
  whose exact gradient is 0, e.g. attention key biases; a missing or
  doubled term is O(1) relative)."""
  for path, g, w in zip(jax.tree.leaves(sharding.tree_paths(want)),
                        jax.tree.leaves(got), jax.tree.leaves(want)):
    err = float(jnp.linalg.norm((g - w).ravel()))
    scale = float(jnp.linalg.norm(w.ravel()))
    assert err <= tol * scale + 1e-7, (path, err, scale)


def _params(config, batch):
  model = train_lib.make_model(config)
  return model.init({"params": jax.random.PRNGKey(0)}, batch["image"][:1],
                    batch["text"][:1])["params"]


@pytest.mark.parametrize("second", ["softmax", "filip"])
def test_two_objectives_are_the_weighted_sum_of_each(second):
  batch = jax.tree.map(jnp.asarray, _batch())
  model_kw = {"token_features": True} if second == "filip" else {}
  both = _config({"sig": {"loss": "sigmoid", "weight": 1.0},
                  "other": {"loss": second, "weight": 0.5}}, **model_kw)
  params = _params(both, batch)
  loss, metrics, grads = _loss_and_grads(both, params, batch)
  loss_a, _, grads_a = _loss_and_grads(
      _config({"a": {"loss": "sigmoid", "weight": 1.0}}, **model_kw),
      params, batch)
  loss_b, metrics_b, grads_b = _loss_and_grads(
      _config({"b": {"loss": second, "weight": 1.0}}, **model_kw),
      params, batch)
  np.testing.assert_allclose(loss, loss_a + 0.5 * loss_b, rtol=1e-6)
  assert abs(float(loss_b)) > 0.1 and abs(float(loss_a)) > 0.1
  want = jax.tree.map(lambda a, b: a + 0.5 * b, grads_a, grads_b)
  _assert_grads_close(grads, want, 1e-6)
  # The softmax / FILIP gradient is really in the sum (not only sigmoid's).
  diff = max(float(jnp.abs(g - a).max()) for g, a in zip(
      jax.tree.leaves(grads), jax.tree.leaves(grads_a)))
  assert diff > 1e-4
  assert set(metrics) == {"sig/loss", "sig/pos_prob", "sig/neg_prob",
                          "other/loss", *(f"other/{k[2:]}"
                                          for k in metrics_b if k != "b/loss")}
  np.testing.assert_allclose(metrics["other/loss"], loss_b, rtol=1e-6)


def test_trainer_step_logs_each_objective_by_name():
  batch = _batch()
  config = _config({"sig": {"loss": "sigmoid", "weight": 1.0},
                    "soft": {"loss": "softmax", "weight": 0.5}})
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  run = train_lib.build(config, mesh, {k: v[0] for k, v in batch.items()},
                        1, 0)
  _, metrics = run.train_step(run.init_state(),
                              sharding.to_global(batch, mesh))
  metrics = jax.device_get(metrics)
  for key in ("train/loss", "train/sig/loss", "train/soft/loss",
              "train/sig/pos_prob", "train/soft/img2txt_acc",
              "train/temperature", "train/bias", "train/lr"):
    assert key in metrics, (key, sorted(metrics))
  np.testing.assert_allclose(
      metrics["train/loss"],
      metrics["train/sig/loss"] + 0.5 * metrics["train/soft/loss"],
      rtol=1e-6)


def test_grad_cache_runs_several_objectives_in_one_pass():
  """k = 4 micro-batches give the k = 1 gradient of a two-objective sum."""
  batch = jax.tree.map(jnp.asarray, _batch(seed=2))
  config = _config({"sig": {"loss": "sigmoid", "weight": 1.0},
                    "tok": {"loss": "filip", "weight": 0.5}},
                   token_features=True)
  params = _params(config, batch)
  model = train_lib.make_model(config)
  objective = train_lib.make_objective(config)
  outputs = models.outputs_fn("two_towers")
  forward = lambda p, b, rng: outputs(model, {"params": p}, b, train=True)
  loss, _, grads = _loss_and_grads(config, params, batch)
  (loss_acc, (metrics, out)), grads_acc = jax.jit(
      lambda p: gradcache.value_and_grad(forward, objective, p, batch,
                                          jax.random.PRNGKey(0), steps=4))(
                                              params)
  np.testing.assert_allclose(loss_acc, loss, rtol=1e-6)
  _assert_grads_close(grads_acc, grads, 1e-5)
  assert {"sig/loss", "tok/loss"} <= set(metrics)
  # Only what some objective read was cached.
  assert {"zimg", "ztxt", "img/ztokens", "txt/ztokens"} <= set(out)
  assert "img/tokens" not in out


def test_grad_cache_refuses_an_objective_it_cannot_split():
  """An output that is neither per example nor parameter-only (here a
  [D, D] Gram matrix of the whole batch) cannot be assembled from
  micro-batches: the error names the objective."""
  batch = jax.tree.map(jnp.asarray, _batch())
  config = _config()
  params = _params(config, batch)
  model = train_lib.make_model(config)
  outputs = models.outputs_fn("two_towers")

  def forward(p, b, rng):
    del rng
    out = outputs(model, {"params": p}, b, train=True)
    if "zimg" in out:
      out["gram"] = out["zimg"].T @ out["zimg"]
    return out

  def gram_loss(out, b, *, mesh=None):
    del b, mesh
    return jnp.sum(out["gram"] ** 2), {}

  objective = objectives.Combined(
      [objectives.Objective("spread", "gram", 1.0, gram_loss)])
  with pytest.raises(ValueError, match=r"objective 'spread' \(loss 'gram'\) "
                     r"reads the model output 'gram' of shape \(64, 64\)"):
    gradcache.value_and_grad(forward, objective, params, batch,
                              jax.random.PRNGKey(0), steps=2)
  # k = 1 needs no split: the plain gradient works.
  value = jax.grad(lambda p: objective(forward(p, batch, None), batch)[0])(
      params)
  assert jax.tree.leaves(value)
  # The trainer refuses it at start-up (in `build`, before any data or
  # device work), and only with accumulation.
  def outputs_with_gram(model_, variables, b, *, train=False, rngs=None):
    del rngs
    return forward(variables["params"], b, None) if train else None

  example = {k: v[0] for k, v in _batch().items()}
  abstract = jax.eval_shape(lambda: params)
  mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
  check = lambda c: train_lib.check_objective_fields(
      objective, model, outputs_with_gram, abstract, example, c, mesh)
  check(config)
  config.grad_accum_steps = 2
  with pytest.raises(ValueError, match=r"config.grad_accum_steps=2: "
                     r"objective 'spread' \(loss 'gram'\) reads the model "
                     r"output 'gram' of shape \(64, 64\)"):
    check(config)


@registry.register("loss", "test_reads_labels")
def _reads_labels(outputs, batch, *, mesh=None, scale=1.0):
  """A v2-form loss (outputs, batch) that reads a batch field."""
  del mesh
  return scale * jnp.mean(outputs["zimg"][:, 0] * batch["labels"]), {}


def test_an_objective_reading_a_missing_field_fails_at_start_up():
  batch = _batch()
  example = {k: v[0] for k, v in batch.items()}
  mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
  # A model output: FILIP's token features without model.token_features.
  config = _config({"main": {"loss": "softmax", "weight": 1.0},
                    "tokens": {"loss": "filip", "weight": 0.3}})
  with pytest.raises(objectives.MissingFieldError) as e:
    train_lib.build(config, mesh, example, 1, 0)
  message = str(e.value)
  assert "config.objectives.tokens (loss 'filip')" in message
  assert "model output field 'img/ztokens'" in message
  assert "'zimg'" in message  # What the outputs do have.
  # A batch field: a v2-form loss reading batch["labels"].
  config = _config({"main": {"loss": "softmax", "weight": 1.0},
                    "labels": {"loss": "test_reads_labels", "weight": 1.0}})
  with pytest.raises(objectives.MissingFieldError,
                     match=r"config.objectives.labels \(loss "
                     r"'test_reads_labels'\) reads the batch field 'labels'"):
    train_lib.build(config, mesh, example, 1, 0)
  # With the field in the batch it builds and trains.
  example["labels"] = np.float32(1.0)
  run = train_lib.build(config, mesh, example, 1, 0)
  batch["labels"] = np.ones(BATCH, np.float32)
  _, metrics = run.train_step(run.init_state(),
                              sharding.to_global(batch, mesh))
  assert "train/labels/loss" in metrics



def test_a_late_objective_counts_from_its_step_on():
  """start_frac: the term is computed and logged from the start, and joins
  the total at step round(start_frac * total_steps) (0-based), in the
  trainer's step too."""
  batch = _batch()
  config = _config({"sig": {"loss": "sigmoid", "weight": 1.0},
                    "late": {"loss": "softmax", "weight": 0.5,
                             "start_frac": 0.5}})
  objs = objectives.from_config(config)
  with pytest.raises(ValueError, match="total steps"):
    objectives.combine(objs)
  combined = objectives.combine(objs, total_steps=5)
  assert {o.name: combined.start_step(o) for o in objs} == {"sig": 0,
                                                            "late": 2}
  outputs = {"zimg": jnp.eye(BATCH, 8), "ztxt": jnp.eye(BATCH, 8),
             "t": jnp.float32(5.0), "b": jnp.float32(-2.0)}
  for step, active in ((0, 0.0), (1, 0.0), (2, 1.0), (4, 1.0)):
    loss, metrics = combined(outputs, batch, step=jnp.int32(step))
    assert float(metrics["late/active"]) == active
    np.testing.assert_allclose(
        loss, metrics["sig/loss"] + active * 0.5 * metrics["late/loss"],
        rtol=1e-6)
    assert float(metrics["late/loss"]) > 0.1
  with pytest.raises(ValueError, match="with the step"):
    combined(outputs, batch)
  # The trainer passes its step: 4 steps, the late term from the 3rd.
  config.total_steps = 4
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  run = train_lib.build(config, mesh, {k: v[0] for k, v in batch.items()},
                        4, 0)
  state = run.init_state()
  gbatch = sharding.to_global(batch, mesh)
  for step in range(4):
    state, metrics = run.train_step(state, gbatch)
    metrics = jax.device_get(metrics)
    assert float(metrics["train/late/active"]) == float(step >= 2)
    np.testing.assert_allclose(
        metrics["train/loss"], metrics["train/sig/loss"]
        + float(step >= 2) * 0.5 * metrics["train/late/loss"], rtol=1e-6)


@pytest.mark.parametrize("objs,match", [
    ({"c": {"loss": "softmax", "temprature": 2.0}},
     r"config.objectives.c.temprature: unknown config key"),
    ({"c": {"loss": "softmaxx"}},
     r"config.objectives.c.loss: Unknown loss 'softmaxx'"),
    ({"c": {"weight": 1.0}}, r"config.objectives.c.loss is missing"),
    ({"c": {"loss": "softmax", "weight": float("nan")}},
     r"config.objectives.c.weight=nan must be a finite number"),
    ({"c": {"loss": "softmax", "weight": "1"}},
     r"config.objectives.c.weight='1' must be a finite number"),
    ({}, r"config.objectives is empty"),
    ({"c": {"loss": "softmax", "start_frac": 1.0}},
     r"config.objectives.c.start_frac=1.0: a fraction of training"),
])
def test_objective_blocks_are_checked(objs, match):
  with pytest.raises(ValueError, match=match):
    train_lib.check_config(_config(objs))


def test_old_spelling_errors_name_config_loss():
  config = _old_spelling(_config())
  train_lib.check_config(config)
  config.loss.temprature = 1.0
  with pytest.raises(ValueError, match=r"config.loss.temprature: unknown"):
    train_lib.check_config(config)
  config = _old_spelling(_config())
  config.loss.name = "sigmoidd"
  with pytest.raises(ValueError, match=r"config.loss.name: Unknown loss "
                     r"'sigmoidd'"):
    train_lib.check_config(config)
  config = _old_spelling(_config())
  with config.unlocked():
    config.objectives = {"c": {"loss": "softmax"}}
  with pytest.raises(ValueError, match="both set"):
    train_lib.check_config(config)


def test_normalize_config_turns_the_shorthand_into_one_objective():
  config = _old_spelling(_config())
  assert config.loss.to_dict() == {"name": "softmax", "impl": "dense"}
  new = objectives.normalize_config(config)
  assert "loss" not in new and "loss" in config  # A copy.
  assert new.objectives.to_dict() == {
      "contrastive": {"loss": "softmax", "weight": 1.0, "impl": "dense"}}
  # The migrated demo config is the normalised old one.
  assert config_lib.config_diff(
      json.loads(new.to_json_best_effort()),
      json.loads(_config().to_json_best_effort())) == []
  assert objectives.normalize_config(new) is new
  saved = json.loads(config.to_json_best_effort())
  assert objectives.normalize_config(saved)["objectives"] == (
      new.objectives.to_dict())
  assert config_lib.config_diff(
      objectives.normalize_config(saved),
      json.loads(new.to_json_best_effort())) == []


def test_sweep_keys_work_in_either_spelling_and_name_the_same_folder():
  long = {"lr": 0.001, "objectives.contrastive.loss": "sigmoid"}
  short = {"lr": 0.001, "loss.name": "sigmoid"}
  assert sweep.variant_name(long) == sweep.variant_name(short) == (
      "lr=0.001,loss.name=sigmoid")
  for spelling in (_old_spelling, lambda c: c):
    for overrides in (long, short):
      out = sweep.apply_overrides(spelling(_config()), overrides)
      assert objectives.normalize_config(out).objectives.contrastive.loss == (
          "sigmoid")


@pytest.mark.slow
def test_old_and_new_spelling_train_and_resume_identically(demo_data,
                                                           tmp_path):
  """The demo config with `config.loss` and with `config.objectives` is one
  run; a checkpoint saved under the old spelling resumes under the new
  one, bit-identically, without --allow_config_change."""
  del demo_data

  def config(new):
    c = config_lib.load_config_module("configs/demo.py").get_config(
        "runlocal")
    c.total_steps = c.ckpt_steps = 4
    c.evals = ml_collections.ConfigDict()
    c.model.image.depth = c.model.text.depth = 1
    return c if new else _old_spelling(c)

  old = train_lib.train(config(False), str(tmp_path / "old"))
  new = train_lib.train(config(True), str(tmp_path / "new"))
  assert old["losses"] == new["losses"] and len(old["losses"]) == 4
  first = train_lib.train(config(False), str(tmp_path / "resumed"),
                          stop_after_steps=2)
  assert sorted(first["losses"]) == [1, 2]
  second = train_lib.train(config(True), str(tmp_path / "resumed"))
  assert sorted(second["losses"]) == [3, 4]
  assert {**first["losses"], **second["losses"]} == old["losses"]
  saved = json.loads((tmp_path / "resumed" / "config.json").read_text())
  assert "loss" not in saved and saved["objectives"]["contrastive"][
      "loss"] == "softmax"
  assert not [p for p in os.listdir(tmp_path / "resumed")
              if p.startswith("config.until_step")]
