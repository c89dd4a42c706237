r"""Named, weighted objectives: what the train step minimises.

A config names its objectives, each a registered loss with a weight and the
loss's options:

    config.objectives = dict(
        contrastive=dict(loss="sigmoid", weight=1.0, impl="ring"),
        tokens=dict(loss="filip", weight=0.5),
    )

The step minimises `sum_k weight_k * loss_k` and logs `train/loss` (the
sum), `train/NAME/loss` and `train/NAME/METRIC` for each objective NAME.
`config.loss = dict(name=..., **options)` is the one-objective shorthand:
`normalize_config` turns it into `{"contrastive": {"loss": name, "weight":
1.0, **options}}` before anything else reads the config, so both spellings
take the same code path (and resume each other's checkpoints).

An objective is `fn(outputs, batch, *, mesh) -> (scalar loss, metrics)`:
`outputs` is the model's outputs dict (`big_vl.models.outputs_fn`; the
two-tower model gives "zimg", "ztxt", "t", "b"?, "img/...", "txt/..."),
`batch` the step's batch after device pp. A registered loss whose first
argument is `outputs` is used as it is; the embedding losses of
`big_vl.losses` (`loss(zimg, ztxt, aux, *, mesh, **options)`) read
`outputs["zimg"]`, `outputs["ztxt"]` and take the outputs dict as `aux`.

Example (the two-objective check of tests/test_objectives.py):

    objs = objectives.build({"sig": {"loss": "sigmoid", "weight": 1.0},
                             "soft": {"loss": "softmax", "weight": 0.5}})
    total, metrics = objectives.combine(objs)(outputs, batch, mesh=mesh)
    # total == l_sig + 0.5 * l_soft; metrics["sig/loss"], metrics[
    # "soft/img2txt_acc"], ...
"""

import collections.abc
import copy
import inspect
import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from big_vl import losses
from big_vl import registry

# The name `config.loss` becomes under `config.objectives`.
SHORTHAND_NAME = "contrastive"
# Keys of an objective's block that are not options of its loss.
META_KEYS = ("loss", "weight", "start_frac")


class Objective(NamedTuple):
  """One named, weighted term of the training loss.

  Attributes:
    name: the key in `config.objectives` (metrics `train/NAME/...`).
    loss: the registered loss name.
    weight: its factor in the total loss (a finite float).
    fn: `(outputs, batch, *, mesh) -> (loss, metrics)`.
    start_frac: the fraction of training after which the term counts
      (SigLIP 2 adds its self-distillation terms for the last 20%:
      `start_frac=0.8`); 0: from the first step.
  """
  name: str
  loss: str
  weight: float
  fn: Callable[..., Any]
  start_frac: float = 0.0


def normalize_config(config):
  """`config` with `config.loss` rewritten as `config.objectives`.

  Args:
    config: a ConfigDict (possibly locked) or a plain dict (e.g. a saved
      config.json).

  Returns:
    The same type: `config` itself when it has no `loss` key, else an
    unlocked copy whose `objectives` is `{"contrastive": {"loss": NAME,
    "weight": 1.0, **options}}` (options in their original order) and
    without `loss`.

  Raises:
    ValueError: when both `loss` and `objectives` are given, or
      `config.loss` has no `name`.
  """
  if "loss" not in config:
    return config
  if "objectives" in config and config["objectives"] is not None:
    raise ValueError(
        "config.loss and config.objectives are both set; config.loss is the "
        "one-objective shorthand of config.objectives.contrastive. Keep one "
        "(config.objectives = {NAME: {'loss': ..., 'weight': ...}}).")
  loss = config["loss"]
  loss = dict(loss.to_dict() if hasattr(loss, "to_dict") else (loss or {}))
  if "name" not in loss:
    raise ValueError(
        "config.loss.name is missing; e.g. config.loss = dict(name='softmax')"
        f" (known losses: {', '.join(registry.names('loss'))}).")
  block = {"loss": loss.pop("name"), "weight": 1.0, **loss}
  if isinstance(config, ml_collections.ConfigDict):
    out = copy.deepcopy(config)
    out.unlock()
    del out["loss"]
    out.objectives = ml_collections.ConfigDict({SHORTHAND_NAME: block})
    return out
  out = {k: v for k, v in config.items() if k != "loss"}
  out["objectives"] = {SHORTHAND_NAME: block}
  return out


_LONG = f"objectives.{SHORTHAND_NAME}."


def shorthand_key(key):
  """A dotted override key in the `config.loss` spelling, where it has one.

  `objectives.contrastive.loss` -> `loss.name`, `objectives.contrastive.X`
  -> `loss.X`; any other key is returned as it is. Sweeps name variant
  folders with it, so a variant keeps its folder across the spelling
  change.
  """
  if key.startswith(_LONG):
    rest = key[len(_LONG):]
    return "loss.name" if rest == "loss" else f"loss.{rest}"
  return key


def key_in(config, key):
  """Override key `key` spelled for `config` (either spelling accepted).

  `loss.name` / `loss.X` on a config with `objectives` become
  `objectives.contrastive.loss` / `.X`, and back on a config with `loss`.
  """
  short = shorthand_key(key)
  if not short.startswith("loss."):
    return key
  if "loss" in config:
    return short
  rest = short[len("loss."):]
  return _LONG + ("loss" if rest == "name" else rest)


def _takes_outputs(fn):
  """True for a loss of the v2 form `fn(outputs, batch, *, mesh, ...)`."""
  params = list(inspect.signature(fn).parameters)
  return bool(params) and params[0] == "outputs"


def _embedding_objective(fn):
  """An objective reading `zimg`, `ztxt` and the outputs as `aux`."""

  def objective(outputs, batch, *, mesh=None):
    del batch
    return fn(outputs["zimg"], outputs["ztxt"], outputs, mesh=mesh)

  return objective


def _check_weight(name, weight):
  where = f"config.objectives.{name}.weight"
  if (isinstance(weight, bool) or not isinstance(weight, numbers.Real)
      or not math.isfinite(weight)):
    raise ValueError(f"{where}={weight!r} must be a finite number.")
  return float(weight)


def build(blocks, *, shorthand=False):
  """The objectives a `config.objectives` mapping describes.

  Args:
    blocks: {name: {"loss": NAME, "weight": w, **options}} (a ConfigDict or
      dict); every option is checked against the loss's signature.
    shorthand: the mapping came from `config.loss` (`normalize_config`):
      messages then name `config.loss.KEY`, as the user wrote it.

  Returns:
    A tuple of `Objective`s, in the mapping's order.

  Raises:
    ValueError: for an empty mapping, a block without `loss`, an unknown
      loss (listing the known ones), a weight that is not a finite number,
      or an option the loss does not take (`config.objectives.NAME.KEY`).
  """
  blocks = blocks.to_dict() if hasattr(blocks, "to_dict") else dict(
      blocks or {})
  if not blocks:
    raise ValueError(
        "config.objectives is empty: name at least one, e.g. "
        "config.objectives = {'contrastive': {'loss': 'softmax', "
        "'weight': 1.0}} (or the shorthand config.loss = {'name': ...}).")
  out = []
  for name, block in blocks.items():
    where = "config.loss" if shorthand else f"config.objectives.{name}"
    loss_key = "name" if shorthand else "loss"
    if not isinstance(block, collections.abc.Mapping):
      raise ValueError(f"{where} must be a dict like {{'loss': 'softmax', "
                       f"'weight': 1.0}}, got {block!r}.")
    block = dict(block)
    if "loss" not in block:
      raise ValueError(f"{where}.{loss_key} is missing; known losses: "
                       f"{', '.join(registry.names('loss'))}.")
    loss = block.pop("loss")
    weight = _check_weight(name, block.pop("weight", 1.0))
    start_frac = block.pop("start_frac", 0.0)
    if (isinstance(start_frac, bool) or
        not isinstance(start_frac, numbers.Real) or
        not 0.0 <= start_frac < 1.0):
      raise ValueError(f"{where}.start_frac={start_frac!r}: a fraction of "
                       "training in [0, 1) after which the term counts.")
    try:
      fn = losses.get(loss, where=where,
                      meta_keys=(loss_key, "weight", "start_frac"), **block)
    except KeyError as e:
      raise ValueError(f"{where}.{loss_key}: {e.args[0]}") from None
    if not _takes_outputs(registry.get("loss", loss)):
      fn = _embedding_objective(fn)
    out.append(Objective(name, loss, weight, fn, float(start_frac)))
  return tuple(out)


def from_config(config):
  """The objectives of a training config, in either spelling.

  Args:
    config: a training ConfigDict with `objectives` or the shorthand `loss`.

  Returns:
    A tuple of `Objective`s (see `build`).

  Raises:
    ValueError: as `build` and `normalize_config`, or when neither key is
      set.
  """
  if "loss" in config:
    return build(normalize_config(config)["objectives"], shorthand=True)
  if config.get("objectives", None) is None:
    raise ValueError(
        "config.objectives is missing: e.g. config.objectives = "
        "{'contrastive': {'loss': 'softmax', 'weight': 1.0}} (or the "
        "shorthand config.loss = {'name': 'softmax'}); known losses: "
        f"{', '.join(registry.names('loss'))}.")
  return build(config["objectives"])


class Combined:
  """`(outputs, batch, *, mesh, step) -> (total, metrics)` of several
  objectives.

  total = sum_k weight_k * loss_k (one objective: its loss times its
  weight); metrics hold "NAME/loss" and "NAME/METRIC" for every objective.
  An objective with `start_frac` counts from training step (0-based)
  `round(start_frac * total_steps)` on; before, its loss and metrics are
  still computed and logged, with "NAME/active" 0 (1 once it counts).
  `parts` are the `Objective`s (GradCache and the start-up checks read
  them one by one). The objectives named in `skipped` are not computed
  (their "NAME/loss" and "NAME/active" are 0): `before_views` makes the
  trainer's early phase so.
  """

  def __init__(self, objectives, total_steps=None, skipped=()):
    self.parts = tuple(objectives)
    self.total_steps = total_steps
    self.skipped = frozenset(skipped)
    if total_steps is None and any(o.start_frac for o in self.parts):
      raise ValueError("Objectives with start_frac need the run's total "
                       "steps (combine(..., total_steps=N)).")

  def start_step(self, obj):
    """The 0-based step from which `obj` counts."""
    return int(round(obj.start_frac * self.total_steps)) if obj.start_frac \
        else 0

  def __call__(self, outputs, batch, *, mesh=None, step=None):
    total, metrics = None, {}
    for obj in self.parts:
      if obj.name in self.skipped:
        metrics[f"{obj.name}/active"] = metrics[f"{obj.name}/loss"] = \
            jnp.zeros((), jnp.float32)
        continue
      loss, part_metrics = obj.fn(outputs, batch, mesh=mesh)
      term = loss if obj.weight == 1.0 else obj.weight * loss
      if obj.start_frac:
        if step is None:
          raise ValueError(f"Objective {obj.name!r} has start_frac: call "
                           "the objectives with the step.")
        active = (step >= self.start_step(obj)).astype(loss.dtype)
        term = term * active
        metrics[f"{obj.name}/active"] = active
      total = term if total is None else total + term
      metrics[f"{obj.name}/loss"] = loss
      for key, value in part_metrics.items():
        metrics[f"{obj.name}/{key}"] = value
    if total is None:  # Every term skipped.
      total = jnp.zeros((), jnp.float32)
    return total, metrics


def needs_views(obj):
  """Whether an `Objective`'s loss reads the model's extra views
  (`two_towers.Model`; the loss function's `needs_views`)."""
  return bool(getattr(registry.get("loss", obj.loss), "needs_views", False))


def views_from(objective):
  """The first step whose objectives read the extra views, or None.

  Args:
    objective: a `Combined` (anything else reads no views).

  Returns:
    None if no objective reads the views; else the smallest start step of
    those that do (0 for one without `start_frac`). The trainer runs the
    views from that step on and skips those objectives before it
    (`before_views`), so SigLIP 2's late self-supervised terms cost
    nothing in the first 80% of training.
  """
  parts = [o for o in getattr(objective, "parts", ()) if needs_views(o)]
  if not parts:
    return None
  return min(objective.start_step(o) for o in parts)


def before_views(objective):
  """`objective` without the terms that read the extra views (computed as
  0, see `Combined`): the train step before `views_from(objective)`."""
  return Combined(objective.parts, objective.total_steps,
                  skipped={o.name for o in objective.parts
                           if needs_views(o)})


def combine(objectives, total_steps=None):
  """A `Combined` of `objectives` (from `build`); `total_steps` places the
  start of those with `start_frac`."""
  return Combined(objectives, total_steps)


def at_step(objective, step):
  """`objective` as `(outputs, batch, *, mesh)` at training step `step`
  (a `Combined` gates its late terms; anything else is returned as is)."""
  if isinstance(objective, Combined):
    return lambda outputs, batch, *, mesh=None: objective(
        outputs, batch, mesh=mesh, step=step)
  return objective


class MissingFieldError(ValueError):
  """An objective reads an output or batch field that does not exist."""


class _Recorder(collections.abc.Mapping):
  """A read-only view of a dict that records the keys read and explains a
  missing one."""

  def __init__(self, data, seen, what, objective):
    self._data, self._seen = data, seen
    self._what, self._objective = what, objective

  def __getitem__(self, key):
    if key not in self._data:
      obj = self._objective
      who = (f"config.objectives.{obj.name} (loss {obj.loss!r})"
             if isinstance(obj, Objective) else "the objective")
      raise MissingFieldError(
          f"{who} reads the "
          f"{self._what} field {key!r}, which this run does not have; the "
          f"{self._what} has: {sorted(self._data)}. Check the model config "
          "(e.g. model.token_features for token losses), the input pp or "
          "the objective.")
    self._seen.add(key)
    return self._data[key]

  def __contains__(self, key):
    return key in self._data

  def get(self, key, default=None):
    return self[key] if key in self._data else default

  def __iter__(self):
    return iter(self._data)

  def __len__(self):
    return len(self._data)


def fields_read(objective, outputs, batch, mesh=None):
  """Which output and batch fields `objective` reads, traced abstractly.

  Args:
    objective: an `Objective`, or a bare `fn(outputs, batch, *, mesh)`.
    outputs: the outputs dict, of arrays or ShapeDtypeStructs.
    batch: the batch dict, of arrays or ShapeDtypeStructs.
    mesh: the Mesh (ring losses trace their shard_map over it).

  Returns:
    (set of output keys, set of batch keys) read; nothing is computed.

  Raises:
    MissingFieldError: naming the objective and the field if it reads a
      field that `outputs` / `batch` lack.
  """
  out_seen, batch_seen = set(), set()
  fn = objective.fn if isinstance(objective, Objective) else objective
  jax.eval_shape(
      lambda o, b: fn(
          _Recorder(o, out_seen, "model output", objective),
          _Recorder(b, batch_seen, "batch", objective), mesh=mesh),
      dict(outputs), dict(batch))
  return out_seen, batch_seen
