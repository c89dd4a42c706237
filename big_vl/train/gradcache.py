"""Gradient accumulation that equals the big batch (GradCache).

Contrastive losses couple every pair of the global batch, so summing the
gradients of per-micro-batch losses is NOT the full-batch gradient. GradCache
(Gao et al., 2021, https://arxiv.org/abs/2101.06983) gets the exact
full-batch gradient with the activation memory of one micro-batch:

1. Run the model on every micro-batch without a gradient tape (a `lax.map`
   over micro-batches) and assemble the full-batch outputs the objectives
   read (`zimg`, `ztxt`, token features, ...).
2. Compute the objectives on the full batch and their gradient with respect
   to those outputs and to the parameter-only outputs (temperature `t`,
   bias `b`, ...), which are the model's outputs for an empty batch.
3. Re-run each micro-batch's forward pass under `jax.vjp` with the cached
   output gradients as cotangents and sum the parameter gradients (a
   `lax.scan`, so one micro-batch of activations is alive at a time). The
   gradient of the parameter-only outputs is pulled back once, through the
   empty-batch forward, so `t` and `b` are counted exactly once.

Several objectives (`objectives.Combined`) share the one cached pass. An
objective that reads an output that is neither per example nor
parameter-only (say, a `[L, V]` table computed from the whole batch) cannot
be split this way and is refused with an error naming it.

Micro-batch `i` holds rows `i::k` of the global batch. With the batch sharded
contiguously over the devices along dimension 0, that takes `1/k` of every
device's rows, so every micro-batch stays evenly spread over the mesh and
splitting and reassembling move no data between devices. `k` must divide the
per-device batch.

Dropout: micro-batch `i` uses the dropout rng `fold_in(rng, i)` in both of
its passes, so the two passes see the same masks. The masks differ from
those of a single full-batch pass (Flax draws one mask for the whole input),
so with dropout > 0 a k-step update is a different (equally valid) sample,
not bit-equal to the k=1 update; with dropout 0 they agree to float
rounding.

Example (inside a jitted train step; `forward(p, batch, rng)` gives the
model's outputs dict, `objective(outputs, batch, *, mesh)` the loss):

    (loss, (metrics, outputs)), grads = gradcache.value_and_grad(
        forward, objective, params, batch, rng, steps=4, mesh=mesh)
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from big_vl import objectives
from big_vl import sharding


def per_device_batch(global_batch, mesh):
  """Examples of the global batch on each data shard of `mesh` (None: 1)."""
  div = 1 if mesh is None else sharding.batch_size_divisor(mesh)
  return global_batch // div


def check_steps(global_batch, steps, mesh=None):
  """Raises a clear error unless `steps` micro-batches split the batch evenly.

  Args:
    global_batch: the global batch size.
    steps: the number of micro-batches (`config.grad_accum_steps`).
    mesh: the Mesh the batch is sharded over (None: one device).

  Raises:
    ValueError: if `steps` is not a positive int dividing the per-device
      batch.
  """
  if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
    raise ValueError(f"config.grad_accum_steps must be a positive int, got "
                     f"{steps!r}.")
  per_device = per_device_batch(global_batch, mesh)
  if per_device % steps:
    shards = 1 if mesh is None else sharding.batch_size_divisor(mesh)
    raise ValueError(
        f"config.grad_accum_steps={steps} does not divide the per-device "
        f"batch of {per_device} (config.input.batch_size={global_batch} over "
        f"{shards} data shards); every micro-batch must keep the same number "
        "of rows on every device. Choose grad_accum_steps dividing "
        f"{per_device}, or change the batch size or config.mesh.")


def _is_float(x):
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _partition_float(d):
  """Splits a dict into (floating entries, other entries)."""
  return ({k: v for k, v in d.items() if _is_float(v)},
          {k: v for k, v in d.items() if not _is_float(v)})


def _micro_spec(mesh, ndim, axis):
  """PartitionSpec: batch axes on `axis`, other dims free (rest of mesh)."""
  spec = [P.UNCONSTRAINED] * ndim
  spec[axis] = sharding.batch_axes(mesh) or None
  if axis == 1:
    spec[0] = None
  return P(*spec)


def split(x, steps, mesh=None):
  """`[B, ...] -> [steps, B/steps, ...]`; micro-batch i holds rows i::steps.

  Args:
    x: an array with the global batch on dimension 0.
    steps: the number of micro-batches.
    mesh: if given, dimension 1 of the result is constrained to the batch
      axes, so each micro-batch is spread over the mesh like the batch.

  Returns:
    The micro-batches stacked on a new leading axis.
  """
  b = x.shape[0]
  y = jnp.swapaxes(jnp.reshape(x, (b // steps, steps, *x.shape[1:])), 0, 1)
  if mesh is not None:
    y = jax.lax.with_sharding_constraint(
        y, NamedSharding(mesh, _micro_spec(mesh, y.ndim, 1)))
  return y


def merge(y, mesh=None):
  """Inverse of `split`: `[steps, B/steps, ...] -> [B, ...]` in row order."""
  steps, m = y.shape[:2]
  x = jnp.reshape(jnp.swapaxes(y, 0, 1), (steps * m, *y.shape[2:]))
  if mesh is not None:
    x = jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, _micro_spec(mesh, x.ndim, 0)))
  return x


def splittable_reads(objective, outputs, param_only, batch, *, rows, steps,
                     mesh=None):
  """The output keys `objective` reads, each one GradCache can assemble.

  Args:
    objective: an `objectives.Combined` (its parts are checked one by one)
      or a bare `fn(outputs, batch, *, mesh)`.
    outputs: the full batch's outputs (ShapeDtypeStructs).
    param_only: keys of the outputs that depend on the params only.
    batch: the full batch (ShapeDtypeStructs).
    rows: the global batch size.
    steps: `config.grad_accum_steps`, for the message.
    mesh: the Mesh (ring losses trace over it).

  Returns:
    The set of output keys read (traced abstractly, nothing computed).

  Raises:
    ValueError: naming the objective and the output, for an output that
      neither leads with the batch dimension nor is parameter-only.
    objectives.MissingFieldError: for a field the outputs or batch lack.
  """
  read = set()
  for part in getattr(objective, "parts", None) or (objective,):
    keys, _ = objectives.fields_read(part, outputs, batch, mesh)
    for key in sorted(keys):
      shape = outputs[key].shape
      if key not in param_only and shape[:1] != (rows,):
        who = (f"objective {part.name!r} (loss {part.loss!r})"
               if isinstance(part, objectives.Objective) else "the objective")
        raise ValueError(
            f"config.grad_accum_steps={steps}: {who} reads the model output "
            f"{key!r} of shape {shape}, which neither leads with the batch "
            f"({rows}) nor depends on the params only, so GradCache cannot "
            "assemble it from micro-batches. Use grad_accum_steps=1 for this "
            "objective.")
    read |= keys
  return read


def value_and_grad(forward, objective, params, batch, rng, *, steps,
                   mesh=None):
  """Full-batch loss and parameter gradient from `steps` micro-batches.

  Equals `jax.value_and_grad(loss_of, has_aux=True)(params)` with
  `loss_of(p) = objective(forward(p, batch, rng), batch, mesh=mesh)` on the
  whole batch, up to float rounding (and dropout masks, see the module
  docstring), while keeping the activations of only one micro-batch alive.

  Args:
    forward: `(params, batch, rng) -> outputs dict`, the model's outputs
      (`big_vl.models.outputs_fn`) in training mode with dropout rng `rng`;
      `forward(params, {}, None)` must give the entries that depend on the
      params only ("t", "b", ...).
    objective: `(outputs, batch, *, mesh) -> (loss, metrics)`, e.g. an
      `objectives.Combined` (several objectives share one cached pass).
    params: the parameters to differentiate (any float dtype; gradients are
      summed over micro-batches in float32 or wider).
    batch: dict of arrays with the global batch on dimension 0 ("image",
      "text", ...).
    rng: the step's dropout rng; micro-batch i uses `fold_in(rng, i)`.
    steps: number of micro-batches k; must divide the per-device batch.
    mesh: the Mesh the batch is sharded over, or None.

  Returns:
    `((loss, (metrics, outputs)), grads)` like `jax.value_and_grad(...,
    has_aux=True)`: loss and metrics of the full batch, the outputs with
    the parameter-only entries and the per-example entries the objective
    read, and grads shaped like `params`, accumulated and returned in
    float32 (or the params' dtype if wider), e.g. float32 gradients for
    bfloat16 params.

  Raises:
    ValueError: if `steps` does not divide the per-device batch, or an
      objective reads an output that is neither per example (leading batch
      dimension) nor parameter-only (it cannot be split; the error names
      the objective).
  """
  global_batch = jax.tree.leaves(batch)[0].shape[0]
  check_steps(global_batch, steps, mesh)
  micro = jax.tree.map(lambda x: split(x, steps, mesh), batch)
  index = jnp.arange(steps)

  def forward_micro(p, mb, i):
    """One micro-batch's outputs with its own dropout rng."""
    return forward(p, mb, jax.random.fold_in(rng, i))

  def param_outputs(p):
    """The outputs that depend on the params only ("t", "b", ...)."""
    return forward(p, {}, None)

  # Which per-example outputs the objective needs: shapes only, no compute.
  scalar_keys = set(jax.eval_shape(param_outputs, params))
  mb0 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                     micro)
  out_s = jax.eval_shape(forward_micro, params, mb0, 0)
  m = global_batch // steps
  full_shape = lambda s: jax.ShapeDtypeStruct((global_batch, *s.shape[1:]),
                                              s.dtype)
  example_s = {k: v for k, v in out_s.items() if k not in scalar_keys}
  batched = lambda v: bool(v.shape) and v.shape[0] == m
  full_out_s = {**{k: v for k, v in out_s.items() if k in scalar_keys},
                **{k: full_shape(v) for k, v in example_s.items()
                   if batched(v)},
                **{k: v for k, v in example_s.items() if not batched(v)}}
  batch_s = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                         batch)
  read = splittable_reads(objective, full_out_s, scalar_keys, batch_s,
                          rows=global_batch, steps=steps, mesh=mesh)
  example_keys = sorted(k for k in example_s if k in read)

  def embed(p, mb, i):
    """(float outputs to differentiate, other outputs) of one micro-batch."""
    out = forward_micro(p, mb, i)
    return _partition_float({k: out[k] for k in example_keys})

  # 1. Outputs of every micro-batch, without a gradient tape.
  ex_float, ex_other = jax.lax.map(
      lambda xs: embed(params, xs[0], xs[1]), (micro, index))
  ex_float, ex_other = jax.tree.map(lambda y: merge(y, mesh),
                                    (ex_float, ex_other))

  # 2. Full-batch loss; gradient w.r.t. the outputs and param-only entries.
  p_out, param_vjp, p_other = jax.vjp(
      lambda p: _partition_float(param_outputs(p)), params, has_aux=True)

  def full_loss(exf, paf):
    return objective({**p_other, **paf, **ex_other, **exf}, batch, mesh=mesh)

  (loss, metrics), (g_ex, g_pa) = jax.value_and_grad(
      full_loss, argnums=(0, 1), has_aux=True)(ex_float, p_out)

  # 3. Re-run each micro-batch with its cached cotangents; sum the grads.
  cotangents = jax.tree.map(lambda g: split(g, steps, mesh), g_ex)
  acc_dtype = lambda x: jnp.promote_types(x.dtype, jnp.float32)
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, acc_dtype(x)), params)

  def body(acc, xs):
    mb, i, ct = xs
    _, vjp_fn, _ = jax.vjp(lambda p: embed(p, mb, i), params, has_aux=True)
    (g,) = vjp_fn(ct)
    return jax.tree.map(lambda a, b: a + b.astype(a.dtype), acc, g), None

  acc, _ = jax.lax.scan(body, zeros, (micro, index, cotangents))
  (g_params_out,) = param_vjp(g_pa)
  grads = jax.tree.map(lambda a, b: a + b.astype(a.dtype), acc, g_params_out)
  outputs = {**p_other, **p_out, **ex_other, **ex_float}
  return (loss, (metrics, outputs)), grads
