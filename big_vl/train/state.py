"""The run's model, objective, optimiser and sharded train state.

`build` makes a `Run` (model, optimiser, abstract and sharded state, the
jitted step) after the checks that need the params' shapes (rule lists,
objective fields); its `init_state` initialises the state, loads
`config.model_init` (`init_from_pretrained`) and starts the EMA. `grow`
makes the bigger model of a growth event and carries the state over.

Imports: models, objectives, optim, paths, pretrained, growth, sharding,
device pp and the package's schema / step / gradcache / console / teacher.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from big_vl import growth
from big_vl import models
from big_vl import objectives as objectives_lib
from big_vl import optim
from big_vl import paths
from big_vl import pretrained
from big_vl import sharding
from big_vl.data import device_pp as device_pp_lib
from big_vl.models import naflex
from big_vl.models import two_towers
from big_vl.train import console
from big_vl.train import gradcache
from big_vl.train import schema
from big_vl.train import step as step_lib
from big_vl.train import teacher as teacher_lib


def make_model(config):
  return models.get({"name": config.get("model_name", "two_towers"),
                     **config.model.to_dict()})


def params_initializer(model, example):
  """`rng -> params` of `model` for inputs shaped like one `example`.

  Args:
    model: the linen model (`make_model`).
    example: one preprocessed example (arrays or ShapeDtypeStructs) with
      "image" [H, W, C] (or NaFlex patches [N, ph, pw, C] with
      "image_pos" [N, 2]) and "text" [L] (or [K, L]); and "caption" for
      a two-tower model with a decoder; the `multi_crop` views for one
      with an `ssl_head`.

  Returns:
    A function of a PRNG key; `jax.eval_shape` of it gives the params'
    layout without computing anything.
  """
  image0 = naflex.image_input({
      k: jnp.zeros((1, *np.shape(v)), jnp.float32 if k == "image"
                   else jnp.int32)
      for k, v in example.items() if k in ("image", "image_pos")})
  text0 = jnp.zeros((1, *np.shape(example["text"])), jnp.int32)
  kw = {}
  if getattr(model, "decoder", None) is not None and \
      two_towers.CAPTION_KEY in example and isinstance(model,
                                                       two_towers.Model):
    kw["caption"] = jnp.zeros((1, *np.shape(example[two_towers.CAPTION_KEY])),
                              jnp.int32)
  if isinstance(model, two_towers.Model) and model.ssl_head is not None:
    kw["views"] = {  # The self-distillation head's params need a view.
        name: jnp.zeros((1, *np.shape(example[key])), jnp.float32)
        if key in example else None
        for name, key in two_towers.VIEW_KEYS.items()}
  return lambda rng: model.init({"params": rng}, image0, text0, **kw)[
      "params"]


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
  console.log(f"Initialised {len(report['loaded'])} params from {path} "
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


def make_objective(config, total_steps=None):
  """`(outputs, batch, *, mesh, step) -> (loss, metrics)`: the weighted sum
  of the config's objectives (`objectives.Combined`; either spelling);
  `total_steps` places the start of objectives with `start_frac`."""
  return objectives_lib.combine(objectives_lib.from_config(config),
                                total_steps)


def model_outputs_fn(config):
  """The outputs function of `config.model_name`'s model kind."""
  return models.outputs_fn(config.get("model_name", "two_towers"))


class PhasedStep:
  """A run's train step in two phases: `early` before step `start`, `late`
  from it (the extra views and the objectives that read them switch on:
  `objectives.views_from`); two compiles, each phase pays only for
  itself."""

  def __init__(self, early, late, start):
    self.early, self.late, self.start = early, late, int(start)

  def at(self, step):
    """The jitted step function for training step `step` (0-based)."""
    return self.late if step >= self.start else self.early

  def __call__(self, state, batch):
    """One step; reads the state's step from the device (the loop, which
    knows it, calls `at(step)` instead)."""
    return self.at(int(jax.device_get(state["step"])))(state, batch)


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
      donates `state`. A `PhasedStep` where the objectives switch the
      extra views on after the first step (`step_at`).
  """
  model: Any
  tx: Any
  schedule: Any
  abstract_state: Any
  state_shardings: Any
  init_state: Any
  train_step: Any

  def step_at(self, step):
    """The jitted step function for training step `step`."""
    if isinstance(self.train_step, PhasedStep):
      return self.train_step.at(step)
    return self.train_step


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
  objective = make_objective(config, total_steps)
  outputs_fn = model_outputs_fn(config)
  teacher = teacher_lib.load(config, model, outputs_fn)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(
      config.get("seed", 0)))
  init_params = params_initializer(model, example)
  abstract_params = jax.eval_shape(init_params, init_rng)
  # Every rule list must match the params (big_vl/paths.py), before any
  # device work.
  paths.check_config_rules(config, abstract_params)
  # The extra views run from the first step whose objectives read them.
  views_from = objectives_lib.views_from(objective)
  if views_from is not None and not isinstance(model, two_towers.Model):
    raise ValueError(
        "config.objectives: self_distillation and masked_prediction read "
        "the extra image views of a two-tower model (model_name "
        f"'two_towers'), not of {type(model).__name__}.")
  # Every objective's fields exist (an abstract trace, no device work).
  reads = check_objective_fields(objective, model, outputs_fn,
                                 abstract_params, example, config, mesh,
                                 teacher=teacher,
                                 views=views_from is not None)
  frozen_teacher = teacher is not None and teacher.state_key == "teacher"
  tx, schedule = optim.make(config, abstract_params, total_steps,
                            warmup_steps)
  frozen = optim.frozen_mask(config, abstract_params)

  ema_momentum = config.get("growth_ema", None)
  if teacher is not None and teacher.ema is not None:
    ema_momentum = teacher.ema  # The EMA teacher is the state's "ema".

  def init_state(rng):
    params = init_params(rng)
    state = {"params": params, "opt": tx.init(params),
             "step": jnp.zeros((), jnp.int32), "rng": train_rng}
    if ema_momentum is not None:
      state["ema"] = params
    if frozen_teacher:  # Placeholders; `_with_teacher` fills them.
      state["teacher"] = jax.tree.map(
          lambda x: jnp.zeros(x.shape, x.dtype),
          teacher_lib.abstract_params(teacher))
    return state

  abstract_state = jax.eval_shape(init_state, init_rng)
  rules = config.get("sharding_rules", None) or ()
  state_shardings = sharding.tree_shardings(
      {k: v for k, v in abstract_state.items() if k != "teacher"}, mesh,
      rules)
  if frozen_teacher:
    state_shardings["teacher"] = sharding.tree_shardings(
        abstract_state["teacher"], mesh, teacher.rules,
        where="config.teacher.sharding_rules")
  def jitted_step(objective, views, teacher):
    step_fn = step_lib.make_train_step(
        model, objective, tx, schedule, mesh, frozen, outputs_fn=outputs_fn,
        grad_accum_steps=schema.grad_accum_steps(config),
        compute_dtype=schema.param_compute_dtype(config),
        ema_momentum=ema_momentum,
        device_pp=device_pp_lib.build(config.input.get("device_pp", None)),
        teacher=None if teacher is None else teacher._replace(params=None),
        views=views)
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0)

  train_step = jitted_step(objective, views_from is not None, teacher)
  if views_from:  # Two phases: without the views, then with them.
    early = objectives_lib.before_views(objective)
    # The teacher runs early only if an objective that counts reads it.
    early_teacher = teacher if reads is None or any(
        key.startswith(teacher_lib.PREFIX)
        for part in early.parts if part.name not in early.skipped
        for key in reads[part.name]) else None
    train_step = PhasedStep(jitted_step(early, False, early_teacher),
                            train_step, views_from)
  return Run(
      model=model, tx=tx, schedule=schedule, abstract_state=abstract_state,
      state_shardings=state_shardings,
      init_state=lambda: _with_teacher(_with_ema(init_from_pretrained(
          jax.jit(init_state, out_shardings=state_shardings)(init_rng),
          config, state_shardings)), teacher, state_shardings),
      train_step=train_step)


def check_objective_fields(objective, model, outputs_fn, abstract_params,
                           example, config, mesh, teacher=None, views=False):
  """Fails before any data or device work if an objective reads a model
  output or batch field that this run does not have.

  The step's batch (`config.input.batch_size` copies of `example`, after
  device pp) and the model's outputs are traced abstractly
  (`jax.eval_shape`); each objective's reads are recorded
  (`objectives.fields_read`).

  With `config.grad_accum_steps > 1`, every output an objective reads must
  be per example or parameter-only (what GradCache can split); a teacher's
  outputs ("teacher/KEY") are computed on the whole batch, so any is.

  With `views` the model and the teacher run the extra views too (the
  step's late phase, where every objective is computed).

  Returns:
    {objective name: the output keys it reads}, or None with GradCache
    (which checks its reads its own way).

  Raises:
    objectives.MissingFieldError: naming the objective and the field.
    ValueError: naming the objective and the output GradCache cannot split.
  """
  view_kw = {"views": True} if views else {}
  size = config.input.batch_size
  dtype = lambda v: v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype
  batch = {k: jax.ShapeDtypeStruct((size, *np.shape(v)), dtype(v))
           for k, v in example.items()}
  device_pp = device_pp_lib.build(config.input.get("device_pp", None))
  if device_pp is not None:
    batch = jax.eval_shape(device_pp, batch)
  outputs = jax.eval_shape(
      lambda p, b: outputs_fn(model, {"params": p}, b, train=True,
                              rngs={"dropout": jax.random.PRNGKey(0)},
                              **view_kw),
      abstract_params, batch)
  taught = {}
  if teacher is not None:
    taught = jax.eval_shape(
        lambda p, b: teacher_lib.outputs(teacher, p, b, views=views),
        abstract_params if teacher.params is None
        else teacher_lib.abstract_params(teacher), batch)
    outputs = {**outputs, **taught}
  steps = schema.grad_accum_steps(config)
  if steps == 1:
    return {part.name: objectives_lib.fields_read(part, outputs, batch,
                                                  mesh)[0]
            for part in getattr(objective, "parts", ())}
  # GradCache assembles per-example and param-only outputs only.
  param_only = set(jax.eval_shape(
      lambda p: outputs_fn(model, {"params": p}, {}, train=True),
      abstract_params)) | set(taught)
  gradcache.splittable_reads(objective, outputs, param_only, batch,
                              rows=size, steps=steps, mesh=mesh)
  return None


def _with_teacher(state, teacher, state_shardings):
  """The state with a frozen teacher's params put in place of the
  placeholders."""
  if teacher is None or teacher.params is None:
    return state
  return {**state, "teacher": place_on(teacher.params,
                                       state_shardings["teacher"])}


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
  if "teacher" in fresh:
    new_state["teacher"] = jax.device_get(state["teacher"])
  new_state = place_on(new_state, new_run.state_shardings)
  losses_ = {}
  device_pp = device_pp_lib.build(config.input.get("device_pp", None))
  if device_pp is not None:
    batch = device_pp(batch)
  for key, (r, s, p) in (("growth/loss_before", (run, stage, inherited)),
                         ("growth/loss_after", (new_run, new_stage,
                                                new_state["params"]))):
    objective, outputs_fn = make_objective(s, total), model_outputs_fn(s)
    eval_loss = jax.jit(
        lambda p_, b_, r=r, objective=objective, outputs_fn=outputs_fn:
        objectives_lib.at_step(objective, step)(
            outputs_fn(r.model, {"params": p_}, b_), b_, mesh=mesh)[0])
    losses_[key] = float(eval_loss(p, batch))
  return new_stage, new_run, new_state, losses_
