"""GrowCLIP-style growth: deeper and wider towers during training.

A config lists growth events; after `step` training steps, the model's
config is updated with the event's overrides and the train state is carried
into the bigger model so that it computes the same function:

    config.model.image.depth = 2
    config.growth = ((500, {"image.depth": 4, "text.depth": 4}),
                     (1000, {"image.mlp_dim": 512}))
    config.growth_ema = 0.999     # PIM: inherit from the EMA weights

- depth: new blocks are appended at the top of the tower, freshly
  initialised except for their residual output projections (attention
  `out`, MLP `Dense_1`), which are zero: a pre-LN block then adds nothing,
  so the tower is unchanged.
- width (`mlp_dim`, the MLP hidden width): new hidden units get fresh
  incoming weights and zero outgoing weights (`Dense_1` rows): unchanged
  output. (The residual width is not grown: zero-padding it would change
  every LayerNorm's statistics.)
- parameter inheritance with momentum (GrowCLIP's PIM): with
  `config.growth_ema`, the train state keeps an exponential moving average
  of the params, and the grown model inherits from it rather than from the
  last step's params (the EMA restarts from the grown params).
- optimiser state: Adam moments of the old params are carried over (new
  entries start at zero); sharding comes from the new model's rules.

`stage_config(config, step)` is the model a run has after `step` steps
(events at that very step not yet applied), which is what a checkpoint of
that step holds, so runs resume across growth steps.
"""

import copy
import re

import jax
import numpy as np

from big_vl import sharding

GROWABLE = {"depth", "mlp_dim"}
TOWERS = ("image", "text")


def events(config):
  """The config's growth events as a sorted list of (step, overrides).

  Raises:
    ValueError: for a step < 1, a duplicate step, or an override that is
      not `{image,text}.{depth,mlp_dim}`.
  """
  found = []
  for entry in config.get("growth", None) or ():
    step, overrides = entry
    step = int(step)
    if step < 1:
      raise ValueError(f"config.growth: step {step} must be >= 1.")
    overrides = dict(overrides)
    for key in overrides:
      tower, _, dim = key.partition(".")
      if tower not in TOWERS or dim not in GROWABLE:
        raise ValueError(
            f"config.growth: cannot grow {key!r}; growable: "
            f"{sorted(f'{t}.{d}' for t in TOWERS for d in GROWABLE)}.")
    found.append((step, overrides))
  steps = [s for s, _ in found]
  if len(set(steps)) != len(steps):
    raise ValueError(f"config.growth: duplicate steps {sorted(steps)}.")
  return sorted(found, key=lambda e: e[0])


def stage_config(config, step):
  """A copy of `config` whose model has grown by every event before `step`.

  Args:
    config: the run's ConfigDict (with `growth`).
    step: training steps done.

  Returns:
    An unlocked ConfigDict copy (`config` itself if there is no growth).
  """
  todo = [o for s, o in events(config) if s < step]
  if not todo:
    return config
  staged = copy.deepcopy(config)
  with staged.unlocked():
    for overrides in todo:
      for key, value in overrides.items():
        tower, _, dim = key.partition(".")
        if staged.model[tower].get("scan", False):
          raise ValueError(f"config.growth: {tower} tower uses scan=True; "
                           "growth needs unscanned blocks.")
        if staged.model[tower].get("norm_position", "pre") != "pre":
          raise ValueError(f"config.growth: {tower} tower is post-LN; a "
                           "zero residual branch keeps only pre-LN blocks "
                           "unchanged.")
        staged.model[tower][dim] = int(value)
  return staged


_RESIDUAL_OUT = re.compile(
    r"(MultiHeadDotProductAttention_0/out|MlpBlock_0/Dense_1)/(kernel|bias)$")
_NEW_BLOCK = re.compile(r"encoderblock_(\d+)/")


def _paths(tree):
  return jax.tree.leaves(sharding.tree_paths(tree))


def _embed(old, new):
  """`new` with `old` written into its leading corner (same rank)."""
  out = np.array(new, copy=True)
  out[tuple(slice(0, n) for n in np.shape(old))] = old
  return out


def grow_params(old, fresh, old_depths):
  """Carries params into a grown model, keeping its function.

  Args:
    old: the old model's params (numpy), e.g. inherited EMA weights.
    fresh: the grown model's freshly initialised params (numpy).
    old_depths: {"img": depth, "txt": depth} of the old towers.

  Returns:
    The grown model's params: old values where the old model had them
    (embedded into wider arrays), fresh values elsewhere, and zeros on the
    residual output projections of new blocks and on the outgoing weights
    (`Dense_1` rows) of new MLP hidden units.
  """
  old_leaves = dict(zip(_paths(old), jax.tree.leaves(old)))
  paths = _paths(fresh)

  def one(path, new):
    new = np.asarray(new)
    block = _NEW_BLOCK.search(path)
    tower = path.split("/")[0]
    if block and int(block.group(1)) >= old_depths.get(tower, 1 << 30):
      return np.zeros_like(new) if _RESIDUAL_OUT.search(path) else new
    if path not in old_leaves:
      return new
    value = np.asarray(old_leaves[path])
    if value.shape == new.shape:
      return value
    if path.endswith("MlpBlock_0/Dense_1/kernel"):
      # New hidden units (rows) contribute nothing.
      return _embed(value, np.zeros_like(new))
    return _embed(value, new)

  return jax.tree.unflatten(jax.tree.structure(fresh),
                            [one(p, x) for p, x in zip(
                                paths, jax.tree.leaves(fresh))])


def carry_over(old, new):
  """Leaves of `new` with the same path as a leaf of `old` take old's values
  (embedded into the leading corner if wider); others keep `new`'s.

  Used for the optimiser state: Adam moments of old params carry over, new
  entries keep their initial zeros.
  """
  old_leaves = dict(zip(_paths(old), jax.tree.leaves(old)))

  def one(path, value):
    if path not in old_leaves:
      return value
    prev = np.asarray(old_leaves[path])
    value = np.asarray(value)
    if prev.shape == value.shape:
      return prev
    if prev.ndim == value.ndim and all(
        a <= b for a, b in zip(prev.shape, value.shape)):
      return _embed(prev, value)
    return value

  return jax.tree.unflatten(jax.tree.structure(new), [
      one(p, x) for p, x in zip(_paths(new), jax.tree.leaves(new))])


def tower_depths(config):
  """{"img": depth, "txt": depth} of a (staged) config's two towers."""
  from big_vl.models import common  # pylint: disable=g-import-not-at-top
  depths = {}
  for tower, name in (("image", "img"), ("text", "txt")):
    cfg = dict(config.model[tower])
    depths[name] = common.resolve_dims(
        name, cfg.get("variant"), names=("depth",),
        depth=cfg.get("depth"))["depth"]
  return depths
