"""The train step: `(state, batch) -> (state, metrics)`, to be jitted.

Device pp, the model kind's outputs, the weighted objectives, gradients
(plain, or GradCache over micro-batches: `gradcache.py`), the optimiser
update, an optional EMA and the step's metrics.

Imports: models (outputs functions), optim, optax and `train.gradcache`.
"""

import jax
import jax.numpy as jnp
import optax

from big_vl import models
from big_vl import objectives as objectives_lib
from big_vl import optim
from big_vl.train import gradcache
from big_vl.train import teacher as teacher_lib


def cast_floating(tree, dtype):
  """A copy of `tree` with its floating leaves cast to `dtype` (None: as is)."""
  if dtype is None:
    return tree
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x, tree)


def make_train_step(model, objective, tx, schedule, mesh, frozen, *,
                    outputs_fn=None, grad_accum_steps=1, compute_dtype=None,
                    ema_momentum=None, device_pp=None, teacher=None,
                    views=False):
  """The pure train step `(state, batch) -> (state, metrics)`.

  The batch goes through device pp, the model kind's outputs function and
  the objectives: `train/loss` is their weighted sum, `train/NAME/loss` and
  `train/NAME/METRIC` each objective's own numbers.

  Args:
    model: the linen model.
    objective: `(outputs, batch, *, mesh) -> (loss, metrics)`, e.g.
      `make_objective(config)`.
    tx: the optax transformation.
    schedule: `step -> lr`, for the metrics.
    mesh: the Mesh the batch is sharded over.
    frozen: pytree of bools, True for frozen params (grad norm metric).
    outputs_fn: the model kind's `outputs(model, variables, batch, *,
      train, rngs)` (default: two_towers').
    grad_accum_steps: k > 1 computes the full-batch gradient from k
      micro-batches with `gradcache.value_and_grad` (GradCache).
    compute_dtype: if set (e.g. bfloat16), the forward and backward passes
      use a copy of the params with floating leaves cast to it; gradients are
      cast back and applied to the (float32) master params.
    ema_momentum: if set, the state's "ema" params follow the params as
      `ema = m * ema + (1 - m) * params` (growth's parameter inheritance).
    device_pp: if set, `fn(batch) -> batch` applied first, inside the step
      (`big_vl.data.device_pp`, from `config.input.device_pp`: e.g. uint8
      images to normalised float32 on the accelerator).
    teacher: a `teacher.Teacher` (its model and outputs function): its
      outputs on the batch, from the state's frozen "teacher" params (or
      the "ema" ones, before this step's update), join the student's as
      "teacher/KEY" for the objectives (`big_vl/train/teacher.py`).
    views: the model (and the teacher) also run the extra views that the
      self-supervised objectives read (`two_towers.outputs(...,
      views=True)`); the trainer builds this step for the phase where one
      of them counts (`objectives.views_from`).

  Returns:
    The train step function (to be jitted).
  """

  outputs_fn = outputs_fn or models.outputs_fn("two_towers")
  view_kw = {"views": True} if views else {}

  def forward(params, batch, rng):
    return outputs_fn(model, {"params": params}, batch, train=True,
                      rngs=None if rng is None else {"dropout": rng},
                      **view_kw)

  def train_step(state, batch):
    if device_pp is not None:
      batch = device_pp(batch)
    step_rng = jax.random.fold_in(state["rng"], state["step"])
    compute_params = cast_floating(state["params"], compute_dtype)
    objective_ = objectives_lib.at_step(objective, state["step"])
    if teacher is not None:
      # Once per step on the whole batch (GradCache's objective sees the
      # whole batch's outputs too).
      taught = teacher_lib.outputs(teacher, state[teacher.state_key], batch,
                                   views=views)
      at_step = objective_
      objective_ = lambda out, b, *, mesh: at_step({**out, **taught}, b,
                                                   mesh=mesh)

    def loss_of(params):
      out = forward(params, batch, step_rng)
      loss, metrics = objective_(out, batch, mesh=mesh)
      return loss, (metrics, out)

    if grad_accum_steps == 1:
      (loss, (loss_metrics, out)), grads = jax.value_and_grad(
          loss_of, has_aux=True)(compute_params)
    else:
      (loss, (loss_metrics, out)), grads = gradcache.value_and_grad(
          forward, objective_, compute_params, batch, step_rng,
          steps=grad_accum_steps, mesh=mesh)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads,
                         state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optim.trainable_global_norm(grads, frozen)
    param_norm = optax.tree.norm(params)
    metrics = {
        "train/loss": loss,
        "train/lr": schedule(state["step"]),
        "train/grad_norm": grad_norm,
        "train/param_norm": param_norm,
        "finite": (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
                   & jnp.isfinite(param_norm)),
    }
    if "t" in out:
      metrics["train/temperature"] = out["t"]
    if "b" in out:
      metrics["train/bias"] = out["b"]
    metrics.update({f"train/{k}": v for k, v in loss_metrics.items()})
    new_state = {"params": params, "opt": opt, "step": state["step"] + 1,
                 "rng": state["rng"]}
    if "teacher" in state:  # A frozen teacher (an EMA one is "ema").
      new_state["teacher"] = state["teacher"]
    if ema_momentum is not None:
      new_state["ema"] = jax.tree.map(
          lambda e, p: ema_momentum * e + (1.0 - ema_momentum) * p,
          state["ema"], params)
    return new_state, metrics

  return train_step
