r"""The trainer: config -> data -> sharded state -> jitted step -> ckpt/eval.

One trainer serves every method; methods differ by config only.

    python -m big_vl.train --config=configs/demo.py:runlocal \
        --workdir=/tmp/demo [--config.lr=1e-3 ...]

A workdir that already holds a checkpoint is resumed from it, on any mesh
and any number of processes: from the newest checkpoint that loads (a
corrupt or truncated one is reported and moved aside), and only if the
config matches the one it was saved with, except for durations, log/ckpt/
eval cadence and outputs (those changes are logged; anything else is an
error naming the keys unless `--allow_config_change`). Multi-process
(multi-host) runs start one process per host with the same command; see
`big_vl/distributed.py`:

    python -m big_vl.train --config=... --workdir=... \
        --coordinator=10.0.0.2:12345 --num_processes=4 --process_id=$I

(on TPU VMs and under SLURM `jax.distributed` is joined automatically).
Only process 0 writes logs, metrics, plots and results; all processes write
the checkpoint together. Outputs:
  workdir/config.json      the resolved config (a resume with a changed
                           config keeps the old one as
                           config.until_step_N.json)
  workdir/metrics.jsonl    one JSON row per logged step / evaluation
  workdir/tb/              TensorBoard event files
  workdir/checkpoints/     Orbax checkpoints (state, data position, meta)
  workdir/curves.png       loss and eval metrics over steps
  workdir/retrieval.png    text queries and their top retrieved images
  workdir/results/         final metrics, CLIP_benchmark JSON files per
                           dataset and task (config.results_dir; "": none)

The workdir may be a URL (`--workdir=gs://bucket/runs/clip`): Orbax writes
the checkpoints there directly, and process 0 writes its other files into a
local staging copy that is uploaded after each checkpoint, evaluation and at
most every `config.sync_every_s` seconds (default 60) while training
(`big_vl/storage.py`). `gs://` needs gcsfs, which requirements.txt installs.
"""

import json
import os
import time
from typing import Any, NamedTuple

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax

from big_vl import accumulate
from big_vl import checkpoint as ckpt_lib
from big_vl import cli
from big_vl import config as config_lib
from big_vl import distributed
from big_vl import growth
from big_vl import metrics as metrics_lib
from big_vl import models
from big_vl import objectives as objectives_lib
from big_vl import optim
from big_vl import paths
from big_vl import plots
from big_vl import pretrained
from big_vl import registry
from big_vl import results as results_lib
from big_vl import sharding
from big_vl import storage
from big_vl import workdir_lock
from big_vl.data import device_pp as device_pp_lib
from big_vl.data import pipeline
from big_vl.data import pp as pp_lib
from big_vl.data import sources

# Keys the trainer reads; anything else in a config is a typo and an error.
KNOWN_KEYS = {
    "seed", "mesh", "sharding_rules", "input", "model_name", "model", "loss",
    "objectives",
    "lr", "wd", "wd_mode", "wd_rules", "lr_rules", "frozen", "grad_clip_norm",
    "schedule", "optim", "evals", "keep_ckpts", "retrieval_png",
    "grad_accum_steps", "param_compute_dtype", "results_dir", "model_init",
    "model_load", "growth", "growth_ema", "sync_every_s",
    "layer_decay",
    *(f"{p}_{u}" for p in ("total", "warmup", "log", "ckpt")
      for u in ("steps", "epochs", "examples")),
}
KNOWN_INPUT_KEYS = {"data", "split", "data_dir", "batch_size", "pp",
                    "device_pp", "workers", "read_threads", "shuffle"}
EVAL_META_KEYS = {"type", "every"}


class NonFiniteLossError(FloatingPointError):
  """Raised when a train step produces a NaN/inf loss, gradient or params."""


def check_config(config):
  """Checks every block of a training config before anything expensive.

  Each block is checked against the signature of what consumes it, before
  any data or device work: the top level and `config.input` against the
  keys the trainer reads, `config.model` (and its `image` / `text` blocks)
  against the model's fields (`models.check_config`), each of
  `config.objectives` (or the shorthand `config.loss`) against its loss's
  options and weight (`objectives.from_config`), `config.optim` /
  `config.schedule` against the optimiser's / schedule's
  (`optim.check_config`), each `config.evals`
  block against its evaluator's constructor (`check_evals`),
  `config.model_load` against `pretrained.merge`, and `config.growth`.

  Raises:
    ValueError: naming the dotted key (e.g. `config.loss.temprature` or
      `config.objectives.NAME.temprature`), with the closest known keys.
  """
  config_lib.check_keys(config, KNOWN_KEYS)
  # Sizes, counts, durations, rates, probabilities, fractions, cadences.
  config_lib.check_domains(config)
  param_compute_dtype(config)
  config_lib.check_keys(config.input, KNOWN_INPUT_KEYS, "config.input")
  device_pp_lib.build(config.input.get("device_pp", None))  # Unknown ops.
  check_model(config)
  objectives_lib.from_config(config)
  optim.check_config(config)
  config_lib.check_signature(config.get("model_load", None), pretrained.merge,
                             "config.model_load", skip=("fresh", "loaded"))
  growth.events(config)
  check_evals(config)


def check_model(config):
  """Checks `config.model` (all depths) against `config.model_name`'s model.
  """
  if config.get("model", None) is None:
    raise ValueError("config.model is missing.")
  models.check_config(config.get("model_name", "two_towers"), config.model)


def check_evals(config, where="config.evals"):
  """Checks each `config.evals` block against its evaluator's constructor
  (minus `predict_fn` / `mesh`, plus the meta keys `type` and `every`)."""
  for name, block in (config.get("evals", None) or {}).items():
    kind = block.get("type", name)
    if kind not in registry.names("evaluator"):
      raise ValueError(f"{where}.{name}: unknown evaluator type "
                       f"{kind!r}; known: {registry.names('evaluator')}.")
    config_lib.check_signature(
        block, registry.get("evaluator", kind), f"{where}.{name}",
        skip=("predict_fn", "mesh"), extra=EVAL_META_KEYS)


def make_model(config):
  return models.get({"name": config.get("model_name", "two_towers"),
                     **config.model.to_dict()})


def params_initializer(model, example):
  """`rng -> params` of `model` for inputs shaped like one `example`.

  Args:
    model: the linen model (`make_model`).
    example: one preprocessed example (arrays or ShapeDtypeStructs) with
      "image" [H, W, C] and "text" [L] (or [K, L]).

  Returns:
    A function of a PRNG key; `jax.eval_shape` of it gives the params'
    layout without computing anything.
  """
  image0 = jnp.zeros((1, *np.shape(example["image"])), jnp.float32)
  text0 = jnp.zeros((1, *np.shape(example["text"])), jnp.int32)
  return lambda rng: model.init({"params": rng}, image0, text0)["params"]


MODEL_LOAD_KEYS = {"dont_load"}


def init_from_pretrained(state, config, state_shardings):
  """The state with params from `config.model_init` (if set) put in.

  Loads a converted checkpoint or another run's params (see
  `big_vl.pretrained`) into the freshly initialised state, on its
  shardings; `config.model_load.dont_load` regexes name the params that keep
  their init. Optimiser moments start at zero either way.

  Args:
    state: the fresh, sharded train state.
    config: the run's ConfigDict.
    state_shardings: the state's shardings.

  Returns:
    The state (unchanged without `model_init`).
  """
  path = config.get("model_init", None)
  if not path:
    return state
  load_cfg = dict(config.get("model_load", None) or {})
  unknown = set(load_cfg) - MODEL_LOAD_KEYS
  if unknown:
    raise ValueError(f"Unknown keys {sorted(unknown)} in config.model_load; "
                     f"known: {sorted(MODEL_LOAD_KEYS)}.")
  _, loaded = pretrained.load(path)
  params, report = pretrained.merge(
      state["params"], loaded, tuple(load_cfg.get("dont_load", None) or ()))
  _log(f"Initialised {len(report['loaded'])} params from {path} "
       f"({len(report['kept'])} kept at init"
       + (f", adapted: {report['adapted']}" if report["adapted"] else "")
       + (f", {len(report['unused'])} checkpoint params not in the model"
          if report["unused"] else "") + ")")

  return {**state, "params": place_on(params, state_shardings["params"])}


def place_on(tree, shardings):
  """Host arrays of `tree` as global jax.Arrays with `shardings` (every
  process holds the same full values); jax.Arrays are kept as they are."""
  def place(value, sharding_):
    if isinstance(value, jax.Array):
      return value
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding_,
                                        lambda index: value[index])
  return jax.tree.map(place, tree, shardings)


def make_objective(config):
  """`(outputs, batch, *, mesh) -> (loss, metrics)`: the weighted sum of the
  config's objectives (`objectives.Combined`; either spelling)."""
  return objectives_lib.combine(objectives_lib.from_config(config))


def model_outputs_fn(config):
  """The outputs function of `config.model_name`'s model kind."""
  return models.outputs_fn(config.get("model_name", "two_towers"))


def make_predict_fn(model, model_name="two_towers"):
  """`(params, image=None, text=None) -> (zimg, ztxt, outputs)` for
  evaluators, through the model kind's outputs function."""
  outputs_fn = models.outputs_fn(model_name)

  def predict_fn(params, image=None, text=None):
    batch = {k: v for k, v in (("image", image), ("text", text))
             if v is not None}
    out = outputs_fn(model, {"params": params}, batch, train=False)
    return out.get("zimg"), out.get("ztxt"), out
  return predict_fn


def make_evaluators(config, model, mesh):
  """[(name, every_steps or None, evaluator)] from config.evals."""
  evaluators = []
  predict_fn = make_predict_fn(model, config.get("model_name", "two_towers"))
  for name, block in (config.get("evals", None) or {}).items():
    block = dict(block)
    kind = block.pop("type", name)
    every = block.pop("every", None)
    ev = registry.get("evaluator", kind)(predict_fn, mesh=mesh, **block)
    evaluators.append((name, every, ev))
  return evaluators


def param_compute_dtype(config):
  """The dtype `config.param_compute_dtype` names (None: the params' own).

  Args:
    config: the run's ConfigDict.

  Returns:
    A floating numpy dtype, or None.

  Raises:
    ValueError: for a name that is not a floating dtype.
  """
  name = config.get("param_compute_dtype", None)
  if name is None:
    return None
  try:
    dtype = jnp.dtype(name)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"config.param_compute_dtype={name!r} is not a floating "
                     "dtype; use e.g. 'bfloat16', or None to compute in the "
                     "params' own dtype.")
  return dtype


def grad_accum_steps(config):
  """`config.grad_accum_steps` (None or absent: 1, no accumulation)."""
  steps = config.get("grad_accum_steps", None)
  return 1 if steps is None else steps


def cast_floating(tree, dtype):
  """A copy of `tree` with its floating leaves cast to `dtype` (None: as is)."""
  if dtype is None:
    return tree
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x, tree)


def make_train_step(model, objective, tx, schedule, mesh, frozen, *,
                    outputs_fn=None, grad_accum_steps=1, compute_dtype=None,
                    ema_momentum=None, device_pp=None):
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
      micro-batches with `accumulate.value_and_grad` (GradCache).
    compute_dtype: if set (e.g. bfloat16), the forward and backward passes
      use a copy of the params with floating leaves cast to it; gradients are
      cast back and applied to the (float32) master params.
    ema_momentum: if set, the state's "ema" params follow the params as
      `ema = m * ema + (1 - m) * params` (growth's parameter inheritance).
    device_pp: if set, `fn(batch) -> batch` applied first, inside the step
      (`big_vl.data.device_pp`, from `config.input.device_pp`: e.g. uint8
      images to normalised float32 on the accelerator).

  Returns:
    The train step function (to be jitted).
  """

  outputs_fn = outputs_fn or models.outputs_fn("two_towers")

  def forward(params, batch, rng):
    return outputs_fn(model, {"params": params}, batch, train=True,
                      rngs=None if rng is None else {"dropout": rng})

  def train_step(state, batch):
    if device_pp is not None:
      batch = device_pp(batch)
    step_rng = jax.random.fold_in(state["rng"], state["step"])
    compute_params = cast_floating(state["params"], compute_dtype)

    def loss_of(params):
      out = forward(params, batch, step_rng)
      loss, metrics = objective(out, batch, mesh=mesh)
      return loss, (metrics, out)

    if grad_accum_steps == 1:
      (loss, (loss_metrics, out)), grads = jax.value_and_grad(
          loss_of, has_aux=True)(compute_params)
    else:
      (loss, (loss_metrics, out)), grads = accumulate.value_and_grad(
          forward, objective, compute_params, batch, step_rng,
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
    if ema_momentum is not None:
      new_state["ema"] = jax.tree.map(
          lambda e, p: ema_momentum * e + (1.0 - ema_momentum) * p,
          state["ema"], params)
    return new_state, metrics

  return train_step


class Run(NamedTuple):
  """What `build` makes for a run: model, optimiser, state and step.

  Attributes:
    model: the linen model.
    tx: the optax transformation.
    schedule: `step -> lr`.
    abstract_state: ShapeDtypeStructs of the train state.
    state_shardings: NamedShardings of the train state.
    init_state: `() -> state`, the freshly initialised, sharded state.
    train_step: the jitted `(state, global_batch) -> (state, metrics)`; it
      donates `state`.
  """
  model: Any
  tx: Any
  schedule: Any
  abstract_state: Any
  state_shardings: Any
  init_state: Any
  train_step: Any


def build(config, mesh, example, total_steps, warmup_steps):
  """Builds the model, optimiser, state initialiser and jitted train step.

  Args:
    config: the run's ConfigDict.
    mesh: the Mesh.
    example: one preprocessed example (arrays or shapes) with "image"
      [H, W, C] and "text" [L], to initialise the model.
    total_steps: training length in steps (for the schedule).
    warmup_steps: warm-up length in steps.

  Returns:
    A `Run`.
  """
  model = make_model(config)
  objective = make_objective(config)
  outputs_fn = model_outputs_fn(config)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(
      config.get("seed", 0)))
  init_params = params_initializer(model, example)
  abstract_params = jax.eval_shape(init_params, init_rng)
  # Every rule list must match the params (big_vl/paths.py), before any
  # device work.
  paths.check_config_rules(config, abstract_params)
  # Every objective's fields exist (an abstract trace, no device work).
  check_objective_fields(objective, model, outputs_fn, abstract_params,
                         example, config, mesh)
  tx, schedule = optim.make(config, abstract_params, total_steps,
                            warmup_steps)
  frozen = optim.frozen_mask(config, abstract_params)

  ema_momentum = config.get("growth_ema", None)

  def init_state(rng):
    params = init_params(rng)
    state = {"params": params, "opt": tx.init(params),
             "step": jnp.zeros((), jnp.int32), "rng": train_rng}
    if ema_momentum is not None:
      state["ema"] = params
    return state

  abstract_state = jax.eval_shape(init_state, init_rng)
  rules = config.get("sharding_rules", None) or ()
  state_shardings = sharding.tree_shardings(abstract_state, mesh, rules)
  train_step = jax.jit(
      make_train_step(model, objective, tx, schedule, mesh, frozen,
                      outputs_fn=outputs_fn,
                      grad_accum_steps=grad_accum_steps(config),
                      compute_dtype=param_compute_dtype(config),
                      ema_momentum=ema_momentum,
                      device_pp=device_pp_lib.build(
                          config.input.get("device_pp", None))),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0)
  return Run(
      model=model, tx=tx, schedule=schedule, abstract_state=abstract_state,
      state_shardings=state_shardings,
      init_state=lambda: _with_ema(init_from_pretrained(
          jax.jit(init_state, out_shardings=state_shardings)(init_rng),
          config, state_shardings)),
      train_step=train_step)


def check_objective_fields(objective, model, outputs_fn, abstract_params,
                           example, config, mesh):
  """Fails before any data or device work if an objective reads a model
  output or batch field that this run does not have.

  The step's batch (`config.input.batch_size` copies of `example`, after
  device pp) and the model's outputs are traced abstractly
  (`jax.eval_shape`); each objective's reads are recorded
  (`objectives.fields_read`).

  With `config.grad_accum_steps > 1`, every output an objective reads must
  be per example or parameter-only (what GradCache can split).

  Raises:
    objectives.MissingFieldError: naming the objective and the field.
    ValueError: naming the objective and the output GradCache cannot split.
  """
  size = config.input.batch_size
  dtype = lambda v: v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype
  batch = {k: jax.ShapeDtypeStruct((size, *np.shape(v)), dtype(v))
           for k, v in example.items()}
  device_pp = device_pp_lib.build(config.input.get("device_pp", None))
  if device_pp is not None:
    batch = jax.eval_shape(device_pp, batch)
  outputs = jax.eval_shape(
      lambda p, b: outputs_fn(model, {"params": p}, b, train=True,
                              rngs={"dropout": jax.random.PRNGKey(0)}),
      abstract_params, batch)
  steps = grad_accum_steps(config)
  if steps == 1:
    for part in getattr(objective, "parts", ()):
      objectives_lib.fields_read(part, outputs, batch, mesh)
    return
  # GradCache assembles per-example and param-only outputs only.
  param_only = set(jax.eval_shape(
      lambda p: outputs_fn(model, {"params": p}, {}, train=True),
      abstract_params))
  accumulate.splittable_reads(objective, outputs, param_only, batch,
                              rows=size, steps=steps, mesh=mesh)


def _with_ema(state):
  """The EMA copy starts at the (possibly pretrained) params."""
  if "ema" in state:
    state = {**state, "ema": jax.tree.map(jnp.copy, state["params"])}
  return state


def grow(config, stage, run, state, step, mesh, example, total, warmup,
         batch):
  """Applies the growth event at `step`: the bigger model and its state.

  Args:
    config: the run's ConfigDict (with `growth`).
    stage: the current (pre-growth) staged config.
    run: the current `Run`.
    state: the current train state.
    step: training steps done (the event's step).
    mesh, example, total, warmup: as for `build`.
    batch: a global batch, to check that the function is unchanged.

  Returns:
    (new stage, new Run, new state, {"growth/loss_before",
    "growth/loss_after"}: the loss of the inherited old model and of the
    grown model on `batch`).
  """
  new_stage = growth.stage_config(config, step + 1)
  new_run = build(new_stage, mesh, example, total, warmup)
  inherited = state["ema"] if "ema" in state else state["params"]
  fresh = jax.device_get(new_run.init_state())
  params = growth.grow_params(jax.device_get(inherited), fresh["params"],
                              growth.tower_depths(stage))
  new_state = {"params": params,
               "opt": growth.carry_over(jax.device_get(state["opt"]),
                                        fresh["opt"]),
               "step": state["step"], "rng": state["rng"]}
  if "ema" in fresh:
    new_state["ema"] = params
  new_state = place_on(new_state, new_run.state_shardings)
  losses_ = {}
  device_pp = device_pp_lib.build(config.input.get("device_pp", None))
  if device_pp is not None:
    batch = device_pp(batch)
  for key, (r, s, p) in (("growth/loss_before", (run, stage, inherited)),
                         ("growth/loss_after", (new_run, new_stage,
                                                new_state["params"]))):
    objective, outputs_fn = make_objective(s), model_outputs_fn(s)
    eval_loss = jax.jit(
        lambda p_, b_, r=r, objective=objective, outputs_fn=outputs_fn:
        objective(outputs_fn(r.model, {"params": p_}, b_), b_,
                  mesh=mesh)[0])
    losses_[key] = float(eval_loss(p, batch))
  return new_stage, new_run, new_state, losses_


def _per_process_batch(global_batch, mesh):
  div = sharding.batch_size_divisor(mesh)
  if global_batch % div:
    raise ValueError(
        f"config.input.batch_size={global_batch} is not divisible by the "
        f"{div} data shards of the mesh {dict(mesh.shape)}; change the batch "
        "size or config.mesh.")
  if global_batch % jax.process_count():
    raise ValueError(f"config.input.batch_size={global_batch} is not "
                     f"divisible by {jax.process_count()} processes.")
  return global_batch // jax.process_count()


def _run_evals(evaluators, params, step, writer, final=False):
  results = {}
  for name, every, ev in evaluators:
    if final or (every and step % every == 0):
      t0 = time.time()
      for key, value in ev.run(params):
        results[key] = value
      results[f"eval_time/{name}"] = time.time() - t0
  if results:
    writer.write(step, results)
  return results


def check_resume_config(config, step, meta, *, allow_config_change=False,
                        where="the checkpoint"):
  """Compares the run's config with the one checkpoint `step` was saved with.

  With growth the checkpoint holds the staged config of its step, so it is
  compared with `growth.stage_config(config, step)`.

  Args:
    config: the run's ConfigDict.
    step: the checkpoint's step.
    meta: the checkpoint's meta (its "config" is the saved config).
    allow_config_change: let any key change (`--allow_config_change`).
    where: the checkpoint's folder, for messages.

  Returns:
    The differences [(dotted key, old, new)] (`config_lib.config_diff`), or
    None if the checkpoint saved no config.

  Raises:
    ValueError: listing the differing keys (old -> new) if a key outside
      `config_lib.RESUME_CHANGEABLE_KEYS` changed and not
      `allow_config_change`.
  """
  saved = meta.get("config")
  if saved is None:
    return None
  # Both spellings of the objectives compare equal (`config.loss` is the
  # shorthand of `config.objectives.contrastive`).
  diff = config_lib.config_diff(
      objectives_lib.normalize_config(saved),
      objectives_lib.normalize_config(growth.stage_config(config, step)))
  _, bad = config_lib.split_diff(diff, config_lib.RESUME_CHANGEABLE_KEYS)
  if bad and not allow_config_change:
    raise ValueError(
        f"The config differs from the one checkpoint {step} in {where} was "
        "saved with, in keys a resumed run may not change:\n"
        f"{config_lib.format_diff(bad)}\n"
        "Resume with the saved values (the workdir's config.json holds "
        "them), train in a new --workdir, or pass --allow_config_change "
        "(train(..., allow_config_change=True)) to resume anyway (the params' "
        "shapes must still match). Keys that may change on resume, and are "
        "logged: durations (total_*, warmup_*), log/ckpt/eval cadence "
        "(log_*, ckpt_*, evals.NAME.every), sync_every_s, keep_ckpts, "
        "results_dir, retrieval_png, input.read_threads, input.workers.")
  return diff


def _check_saved_config(config, checkpointer, allow_config_change):
  """Checks `config` against the newest checkpoint whose meta reads (before
  any data or device work); a bad meta is left to `restore_latest`."""
  for step in sorted(checkpointer.all_steps(), reverse=True):
    try:
      meta = ckpt_lib.read_meta(checkpointer.directory, step)
    except ckpt_lib.CheckpointError:
      continue
    if meta:
      check_resume_config(config, step, meta,
                          allow_config_change=allow_config_change,
                          where=checkpointer.directory)
      return


def _write_config(files, config, newest_step):
  """Writes files/config.json; when resuming with a changed config, the old
  file is kept as config.until_step_N.json (N: the newest checkpoint)."""
  path = os.path.join(files, "config.json")
  text = config.to_json_best_effort(indent=2)
  if newest_step is not None and os.path.exists(path):
    with open(path) as f:
      try:
        old = json.load(f)
      except ValueError:
        old = None
    if old is None or config_lib.config_diff(
        objectives_lib.normalize_config(old), json.loads(text)):
      keep, n = os.path.join(files, f"config.until_step_{newest_step}.json"), 1
      while os.path.exists(keep):
        keep = os.path.join(files,
                            f"config.until_step_{newest_step}.{n}.json")
        n += 1
      os.replace(path, keep)
  with open(path, "w") as f:
    f.write(text)


def train(config, workdir, *, devices=None, stop_after_steps=None,
          allow_config_change=False, config_spec=None):
  """Trains (or resumes) a run described by `config` in `workdir`.

  Args:
    config: the run's ConfigDict (see configs/*.py).
    workdir: output directory; a checkpoint in it is resumed.
    devices: devices for the mesh (default: all).
    stop_after_steps: stop (with a checkpoint) after this many steps in this
      call, as a preemption would; the next call resumes.
    allow_config_change: resume even if keys other than
      `config_lib.RESUME_CHANGEABLE_KEYS` differ from the checkpoint's config
      (they are logged); otherwise that is a ValueError.
    config_spec: the `--config` the run was started with (e.g.
      "configs/demo.py:runlocal"), kept in the checkpoints' meta with the
      training inputs' shapes, so that `big_vl.evaluate` can name the eval
      config arguments that match the run.

  Returns:
    dict with "step" (last step done), "losses" ({step: loss} of this call)
    and "final" (metrics of the final evaluation, if the run finished).
  """
  check_config(config)
  # One spelling from here on: `config.loss` becomes config.objectives.
  config = objectives_lib.normalize_config(config)
  workdir = storage.absolute(workdir)
  is_main = jax.process_index() == 0
  # One run per workdir: process 0 holds it for the whole job; a second run
  # on it fails here, naming this one (big_vl/workdir_lock.py).
  with workdir_lock.hold(workdir, "big_vl.train", active=is_main, log=_warn):
    return _train_holding(config, workdir, is_main, devices=devices,
                          stop_after_steps=stop_after_steps,
                          allow_config_change=allow_config_change,
                          config_spec=config_spec)


def _train_holding(config, workdir, is_main, *, devices, stop_after_steps,
                   allow_config_change, config_spec):
  """`train` once the config is checked and the workdir is held."""
  # Checkpoints go to `workdir` itself; process 0's other files are written
  # to `files` (the workdir, or a local mirror of a URL workdir, uploaded by
  # `staged.sync()`).
  staged = storage.StagedDir(workdir, active=is_main)
  files = staged.local
  checkpointer = ckpt_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      max_to_keep=config.get("keep_ckpts", 2))
  saved_steps = checkpointer.all_steps()
  # A resumed run's config must match its checkpoint's: checked first.
  _check_saved_config(config, checkpointer, allow_config_change)
  if is_main:
    _write_config(files, config, max(saved_steps) if saved_steps else None)
    staged.sync()
  mesh = sharding.make_mesh(config.mesh, devices)
  seed = config.get("seed", 0)

  # Data.
  inp = config.input
  train_source = sources.get(inp.data, split=inp.get("split", "train"),
                             data_dir=inp.get("data_dir", None))
  global_batch = inp.batch_size
  local_batch = _per_process_batch(global_batch, mesh)
  accumulate.check_steps(global_batch, grad_accum_steps(config), mesh)
  # None for streaming sources (wds:): durations then need _steps/_examples.
  num_examples = pipeline.num_examples(train_source)
  total = config_lib.get_steps("total", config, num_examples=num_examples,
                               batch_size=global_batch)
  warmup = config_lib.get_steps("warmup", config, num_examples=num_examples,
                                batch_size=global_batch, default=0)
  log_every = config_lib.get_steps("log", config, num_examples=num_examples,
                                   batch_size=global_batch, default=50)
  ckpt_every = config_lib.get_steps("ckpt", config, num_examples=num_examples,
                                    batch_size=global_batch, default=total)
  it = pipeline.make_train_iterator(
      train_source, pp=inp.pp, batch_size=local_batch, seed=seed,
      shuffle=inp.get("shuffle", True), workers=inp.get("workers", 0),
      read_threads=inp.get("read_threads", 4))
  example = pipeline.first_example(train_source, pp_lib.build(inp.pp))
  input_shapes = {k: list(np.shape(v)) for k, v in example.items()
                  if not k.startswith("_")}

  # Model, loss, optimiser, state and step. With growth, the model is the
  # one the run has after the checkpoint's steps (`growth.stage_config`).
  # The newest checkpoint that loads is resumed (a bad one is reported and
  # moved aside); state, data position and counters all come from it.
  growth_at = dict(growth.events(config))
  runs = {}

  def run_at(step):
    """(staged config, Run) of the model after `step` steps."""
    stage_ = growth.stage_config(config, step)
    key = stage_.to_json_best_effort()
    if key not in runs:
      runs[key] = (stage_, build(stage_, mesh, example, total, warmup))
    return runs[key]

  def remap_data(states, meta):
    _log(f"The checkpoint was saved by {len(states)} processes and this "
         f"run has {jax.process_count()}: the data stream continues at "
         "the next global batch.")
    return pipeline.remap_position(
        states, int(meta.get("data_block", global_batch // len(states))),
        local_batch)

  def check_meta(step, meta):
    check_resume_config(config, step, meta,
                        allow_config_change=allow_config_change,
                        where=checkpointer.directory)

  skipped = 0
  skipped_by = {r: 0 for r in pipeline.SKIP_REASONS}
  restored = checkpointer.restore_latest(
      lambda step: ckpt_lib.abstract_with_shardings(
          run_at(step)[1].abstract_state, run_at(step)[1].state_shardings),
      data_iter=it, remap_data=remap_data, check_meta=check_meta, log=_warn)
  if restored is not None:
    start, state, meta = restored
    stage, run = run_at(start)
    _log(f"Resuming from step {start} in {workdir}")
    changes = check_resume_config(config, start, meta,
                                  allow_config_change=allow_config_change,
                                  where=checkpointer.directory)
    if changes is None:
      _warn(f"Checkpoint {start} holds no config: the config could not be "
            "compared with the one it was trained with.")
    elif changes:
      _log("The config differs from the checkpoint's"
           + (" (--allow_config_change)" if config_lib.split_diff(
               changes, config_lib.RESUME_CHANGEABLE_KEYS)[1] else "")
           + ":\n" + config_lib.format_diff(changes))
    if start > total:
      raise ValueError(
          f"Checkpoint {start} in {checkpointer.directory} is past the run's "
          f"duration ({total} steps): nothing to train. Give a duration of at "
          f"least {start} steps (config.total_*) or another --workdir.")
    skipped = int(meta.get("skipped", 0))
    skipped_by.update({r: int(n) for r, n in meta.get(
        "skipped_by_reason", {}).items()})
  else:
    start = 0
    stage, run = run_at(0)
    state = run.init_state()
  runs.clear()
  model, abstract_state = run.model, run.abstract_state
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      abstract_state["params"]))
  _log(f"Model {config.get('model_name', 'two_towers')}: "
       f"{n_params / 1e6:.2f}M params; mesh {dict(mesh.shape)}; {total} steps "
       f"of {global_batch} examples ("
       + (f"{total * global_batch / num_examples:.2f} epochs of {num_examples}"
          if num_examples else "streaming data")
       + f"); workdir {workdir}")

  train_step = run.train_step
  name = config.get("retrieval_png", "retrieval")

  def evaluators_for(model):
    evs = make_evaluators(config, model, mesh)
    for ev_name, _, ev in evs:
      if ev_name == name and hasattr(ev, "keep_images"):
        ev.keep_images = True
    return evs

  evaluators = evaluators_for(model)
  # Rows an interrupted run logged after its last checkpoint are dropped
  # (they are logged again as the steps are redone).
  writer = metrics_lib.MetricWriter(
      files, is_main=is_main, resume_step=start,
      redo_prefixes=("growth/",) if start in growth_at else ())
  if writer.dropped:
    _log(f"metrics.jsonl: dropped {writer.dropped} rows logged after step "
         f"{start} by the interrupted run; those steps are logged again.")
  sync_every_s = config.get("sync_every_s", 60)
  t_sync = time.time()

  def sync(force=False):
    """Uploads process 0's new files of a URL workdir (at most every
    `config.sync_every_s` seconds unless forced)."""
    nonlocal t_sync
    if staged.staged and (force or time.time() - t_sync >= sync_every_s):
      staged.sync()
      t_sync = time.time()

  def save(step):
    checkpointer.save(step, state, data_iter=it,
                      meta={"skipped": skipped,
                            "skipped_by_reason": dict(skipped_by),
                            "process_count": jax.process_count(),
                            "data_block": local_batch,
                            # What the model was trained on, for evaluate.
                            "input_shapes": input_shapes,
                            "config_spec": config_spec,
                            # The model as it is at this step (growth).
                            "config": json.loads(
                                stage.to_json_best_effort())})

  step_losses = {}
  step = start
  done_this_call = 0
  bar = metrics_lib.progress_bar(total, initial=start, is_main=is_main)
  t_log, examples_since_log = time.time(), 0
  evals_every = [every for _, every, _ in evaluators if every]

  def finish(pending):
    """Reads one dispatched step's metrics: loss, NaN check, progress, log."""
    nonlocal t_log, examples_since_log
    done, step_metrics, skipped_then, skipped_by_then = pending
    step_metrics = jax.device_get(step_metrics)
    loss = float(step_metrics["train/loss"])
    step_losses[done] = loss
    if not bool(step_metrics.pop("finite")):
      last = checkpointer.latest_step()
      raise NonFiniteLossError(
          f"Non-finite training at step {done}: loss={loss}, grad_norm="
          f"{float(step_metrics['train/grad_norm'])}, param_norm="
          f"{float(step_metrics['train/param_norm'])}. The run stopped "
          f"without saving; the last good checkpoint is step {last} in "
          f"{checkpointer.directory}. Lower config.lr, add warm-up or "
          "gradient clipping (config.grad_clip_norm), or check the data.")
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    if done % log_every == 0 or done == total:
      dt = time.time() - t_log
      step_metrics["train/examples_per_sec"] = examples_since_log / max(
          dt, 1e-9)
      step_metrics["data/skipped"] = skipped_then
      for r, n in skipped_by_then.items():
        step_metrics[f"data/skipped/{r}"] = n
      if num_examples:
        step_metrics["train/epoch"] = done * global_batch / num_examples
      writer.write(done, step_metrics, console=False)
      t_log, examples_since_log = time.time(), 0

  # Each step's metrics are read after the next step is dispatched, so the
  # host never waits for the device between steps: reading the next batch
  # and dispatching its step overlap the running step. Before a checkpoint,
  # an evaluation or a stop, the pending metrics are read first (a
  # non-finite step is never saved or evaluated).
  pending = None
  try:
    while step < total:
      batch = next(it)
      skipped += int(np.sum(batch.pop(pipeline.SKIPPED_KEY)))
      for r, n in pipeline.skipped_by_reason(
          batch.pop(pipeline.SKIPPED_BY_REASON_KEY)).items():
        skipped_by[r] += n
      batch = sharding.to_global(batch, mesh)
      if step in growth_at:
        if pending is not None:
          finish(pending)
          pending = None
        old_params = n_params
        stage, run, state, grown = grow(config, stage, run, state, step,
                                        mesh, example, total, warmup, batch)
        train_step, model = run.train_step, run.model
        evaluators = evaluators_for(model)
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
            run.abstract_state["params"]))
        writer.write(step, {**grown, "growth/params": n_params})
        _log(f"Grew the model at step {step}: {growth_at[step]}; "
             f"{old_params / 1e6:.2f}M -> {n_params / 1e6:.2f}M params; "
             f"loss on the next batch {grown['growth/loss_before']:.5f} "
             f"before, {grown['growth/loss_after']:.5f} after.")
      state, step_metrics = train_step(state, batch)
      step += 1
      done_this_call += 1
      examples_since_log += global_batch
      if pending is not None:
        finish(pending)
      pending = (step, step_metrics, skipped, dict(skipped_by))
      final = step == total
      stopping = (stop_after_steps is not None
                  and done_this_call >= stop_after_steps)
      if (final or stopping or step % ckpt_every == 0
          or any(step % every == 0 for every in evals_every)):
        finish(pending)
        pending = None
      if step % ckpt_every == 0 or final:
        save(step)
      if not final:
        _run_evals(evaluators, state["params"], step, writer)
      sync()
      if stopping and not final:
        if checkpointer.latest_step() != step:
          save(step)
        _log(f"Stopping at step {step} (stop_after_steps); rerun to resume.")
        break
  finally:
    bar.close()
    checkpointer.wait()
    sync(force=True)

  result = {"step": step, "losses": step_losses, "final": None}
  if step == total:
    result["final"] = _run_evals(evaluators, state["params"], step, writer,
                                 final=True)
    if is_main:
      _write_results(config, workdir, files, step, result["final"])
      rows = metrics_lib.read_jsonl(writer.path)
      plots.plot_curves(rows, os.path.join(files, "curves.png"))
      for ev_name, _, ev in evaluators:
        if ev_name == name and getattr(ev, "last", None) is not None:
          ev.plot_examples(os.path.join(files, "retrieval.png"),
                           registry.get("tokenizer", "clip_bpe")())
    _log_summary(result["final"], skipped)
  writer.close()
  checkpointer.close()
  sync(force=True)
  return result


def _write_results(config, workdir, files, step, final):
  """Writes the final metrics as CLIP_benchmark files (big_vl/results.py).

  Args:
    config: the run's ConfigDict; `config.results_dir` is the folder (absent
      or None: workdir/results; "": write nothing; a URL is written through
      a staging folder).
    workdir: the run's workdir (names the results' "pretrained").
    files: the local folder of the workdir's files (see `train`).
    step: the step evaluated.
    final: the final evaluation's metrics.

  Returns:
    The relative names written.
  """
  directory = config.get("results_dir", None)
  if directory == "":
    return []
  staged = storage.StagedDir(directory or os.path.join(files, "results"))
  paths = results_lib.write(
      final, staged.local, model=config.get("model_name", "two_towers"),
      pretrained=f"{os.path.basename(workdir)}-step{step}")
  staged.sync()
  return [os.path.relpath(p, staged.local) for p in paths]


def _log_summary(final, skipped):
  lines = [f"  {k} = {v:.4f}" for k, v in sorted(final.items())
           if not k.startswith("eval_time/")]
  _log("Final evaluation:\n" + "\n".join(lines) +
       f"\n  data/skipped = {skipped}")


def _log(message):
  """Prints a progress message on process 0 (absl logs carry the details)."""
  logging.info(message)
  if jax.process_index() == 0:
    print(message, flush=True)


def _warn(message):
  """Logs a warning, printed on process 0 too."""
  logging.warning(message)
  if jax.process_index() == 0:
    print(f"WARNING: {message}", flush=True)


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/demo.py:runlocal.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after_steps", None, "Stop (checkpointing) after this many steps.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", distributed.MODES,
    "Join a multi-process jax.distributed job: auto (when a coordinator is "
    "given, under multi-task SLURM, on a Cloud TPU VM), yes, no.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", None, "HOST:PORT of process 0 (explicit multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the job (with --coordinator).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (with --coordinator).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume even if the config differs from "
    "the checkpoint's in keys other than durations, log/ckpt/eval cadence "
    "and outputs (the differences are logged).")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "init_timeout", 300, "Seconds a process of a multi-process job waits for "
    "the others to join before it stops with an error.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", 10, "Seconds without a heartbeat after which a "
    "process counts as dead and the whole job stops (non-zero exit).")


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required.")
  request = distributed.plan(_DISTRIBUTED.value, _COORDINATOR.value,
                             _NUM_PROCESSES.value, _PROCESS_ID.value)
  distributed.initialize(request, heartbeat_timeout_s=_HEARTBEAT_TIMEOUT.value,
                         initialization_timeout_s=_INIT_TIMEOUT.value)
  config_lib.setup_cli_runtime(logging.WARNING)
  if request.join:
    _log(f"jax.distributed ({request.reason}): process "
         f"{jax.process_index()} of {jax.process_count()}, "
         f"{jax.local_device_count()} of {jax.device_count()} devices here. "
         "If a process dies, the others stop (a failed collective, or no "
         f"heartbeat for {_HEARTBEAT_TIMEOUT.value} s); relaunch the same "
         "command on every host to resume from the last checkpoint.")
  train(_CONFIG.value, _WORKDIR.value, stop_after_steps=_STOP_AFTER.value,
        allow_config_change=_ALLOW_CONFIG_CHANGE.value,
        config_spec=config_flags.get_config_filename(flags.FLAGS["config"]))


if __name__ == "__main__":
  app.run(main)
