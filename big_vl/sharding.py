"""Meshes from configs, regex -> PartitionSpec rules, global batch assembly.

A config names its mesh as a list of (axis, size) pairs; one size may be -1
and takes the remaining devices:

    config.mesh = [("data", -1)]                 # pure data parallel
    config.mesh = [("data", 2), ("fsdp", 4)]     # 2-way DP x 4-way FSDP

The batch is split over every data-like axis (`BATCH_AXES` present in the
mesh). Parameters and optimiser state are placed by regex rules over
parameter paths, first match wins, default "replicate":

    config.sharding_rules = [("img/.*", "fsdp"), (".*", "replicate")]

Rules match like every rule list (`big_vl/paths.py`): the regex matches the
whole parameter path (`img/head/kernel`), and a parameter's optimiser
moments and EMA copy follow its rule (`opt/0/mu/img/head/kernel` is matched
as `img/head/kernel`); other state leaves are replicated. A rule that
matches no parameter, or never applies, is an error at start-up.
Specs: "replicate"; "fsdp" (split the largest dimension that the `fsdp` axis
divides, replicate if none does); or a tuple of axis names / None per
dimension, e.g. `(None, "fsdp")`. A tuple is written for one layer: on a
scanned tower (`.../encoderblock/...`, the layers stacked on a leading axis)
it names the trailing dimensions and the layer axis is not split.

Tensor (Megatron-style) parallelism over a `model` mesh axis is a rule set
placed before the catch-all rule; the batch is not split over `model`:

    config.mesh = (("data", 2), ("model", 4))
    config.sharding_rules = (*TENSOR_PARALLEL_RULES, (".*", "fsdp"))
"""

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from big_vl import paths as paths_lib

# Mesh axes the batch is split over, in this order, when present.
BATCH_AXES = ("replica", "data", "fsdp")


def tensor_parallel_rules(model_axis="model", fsdp_axis=None):
  """Megatron-style tensor-parallel rules for the transformer blocks.

  Splits every `MultiHeadDotProductAttention_0` and `MlpBlock_0` (encoder
  blocks of both towers and the MAP head; a decoder block's `SelfAttention`
  and `CrossAttention`) over `model_axis`:
  query/key/value kernels [D, H, Dh] and biases [H, Dh] over heads
  (column-parallel), the out kernel [H, Dh, D] over heads (row-parallel),
  the first MLP Dense [D, mlp] and its bias over mlp (column-parallel), the
  second [mlp, D] over mlp (row-parallel). The row-parallel biases (out and
  second Dense, [D]) are left to the rules that follow. Scanned towers
  (`encoderblock/...`, a leading [depth] axis) get the same specs with
  that axis unsplit (a tuple spec names one layer's dimensions). num_heads
  and mlp_dim must be divisible by the axis size.

  Args:
    model_axis: the mesh axis to split heads / MLP hidden units over.
    fsdp_axis: optionally a second axis for the other (width D) dimension of
      the kernels (2-D sharding, e.g. "fsdp"); D must be divisible by it.

  Returns:
    A tuple of (regex, spec) pairs; put them before a catch-all rule.
  """
  m, f = model_axis, fsdp_axis
  # Flax's attention in the blocks; a captioner's decoder blocks name theirs
  # SelfAttention and CrossAttention (the same params).
  attn = "(MultiHeadDotProductAttention_0|SelfAttention|CrossAttention)"
  return (
      (f".*/{attn}/(query|key|value)/kernel", (f, m, None)),
      (f".*/{attn}/(query|key|value)/bias", (m, None)),
      (f".*/{attn}/out/kernel", (m, None, f)),
      (".*/MlpBlock_0/Dense_0/kernel", (f, m)),
      (".*/MlpBlock_0/Dense_0/bias", (m,)),
      (".*/MlpBlock_0/Dense_1/kernel", (m, f)),
  )


# Tensor parallelism over the `model` axis, for both towers, scanned or not.
TENSOR_PARALLEL_RULES = tensor_parallel_rules()


def make_mesh(mesh_config, devices=None):
  """Builds a `jax.sharding.Mesh` from `[(axis, size), ...]`.

  Args:
    mesh_config: sequence of (name, size) pairs; at most one size is -1.
    devices: devices to use (default: all of `jax.devices()`).

  Returns:
    A Mesh with Auto axis types (linen models and sharding rules).

  Raises:
    ValueError: if the sizes do not multiply to the device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(str(name) for name, _ in mesh_config)
  sizes = [int(size) for _, size in mesh_config]
  if not names:
    raise ValueError("config.mesh is empty; use e.g. [('data', -1)].")
  if sizes.count(-1) > 1:
    raise ValueError(f"Only one mesh axis may have size -1: {mesh_config}.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(
          f"Mesh {mesh_config} does not divide the {len(devices)} devices: "
          f"the fixed axes multiply to {known}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
        f"Mesh {list(zip(names, sizes))} needs {int(np.prod(sizes))} devices "
        f"but {len(devices)} are available; change config.mesh.")
  return jax.make_mesh(tuple(sizes), names, devices=devices,
                       axis_types=(AxisType.Auto,) * len(names))


def batch_axes(mesh):
  """The mesh axes the batch dimension is split over."""
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_size_divisor(mesh):
  """How many ways the global batch is split (it must divide the batch)."""
  return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def batch_sharding(mesh):
  """NamedSharding of a batch leaf: dimension 0 over the batch axes."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh):
  return NamedSharding(mesh, P())


def check_rule_axes(rules, mesh, where="config.sharding_rules"):
  """Every mesh axis a sharding rule names must be an axis of `mesh`.

  "fsdp" names the `fsdp` axis; a tuple spec names its non-None entries.
  (A rule naming an absent axis used to replicate silently.)

  Raises:
    ValueError: naming the rule, the axis and the mesh's axes.
  """
  for regex, rule in rules:
    if rule == "replicate":
      continue
    if rule == "fsdp":
      axes = ("fsdp",)
    elif isinstance(rule, (tuple, list)):
      axes = tuple(a for a in rule if a is not None)
    else:
      raise ValueError(f"{where}: unknown sharding spec {rule!r} in rule "
                       f"({regex!r}, {rule!r}); use 'replicate', 'fsdp' or a "
                       "tuple of mesh axis names / None per dimension.")
    missing = [a for a in axes if a not in mesh.axis_names]
    if missing:
      raise ValueError(
          f"{where}: rule ({regex!r}, {rule!r}) names mesh axis "
          f"{missing[0]!r}, but the mesh has only {tuple(mesh.axis_names)} "
          f"(config.mesh); add the axis to config.mesh (e.g. "
          f"(('{missing[0]}', -1),) or (('data', 2), ('{missing[0]}', 4))) "
          "or change the rule.")


def _spec_for(rule, shape, mesh, path):
  if rule == "replicate":
    return P()
  if rule == "fsdp":
    n = mesh.shape["fsdp"]
    # Largest dimension that n divides; ties go to the last dimension.
    best = None
    for dim in range(len(shape)):
      if shape[dim] % n == 0 and shape[dim] >= n:
        if best is None or shape[dim] >= shape[best]:
          best = dim
    if best is None:
      return P()
    spec = [None] * len(shape)
    spec[best] = "fsdp"
    return P(*spec)
  if isinstance(rule, (tuple, list)):
    if len(rule) == len(shape) - 1 and "encoderblock" in path.split("/"):
      rule = (None, *rule)  # A scanned tower's layer axis stays whole.
    if len(rule) != len(shape):
      raise ValueError(
          f"Sharding rule {rule} has {len(rule)} entries but {path} has shape "
          f"{shape}.")
    for axis in rule:
      if axis is not None and axis not in mesh.axis_names:
        raise ValueError(f"Sharding rule {rule} names axis {axis!r} that the "
                         f"mesh {mesh.axis_names} lacks.")
    return P(*rule)
  raise ValueError(f"Unknown sharding rule {rule!r} for {path}; use "
                   "'replicate', 'fsdp' or a tuple of axis names.")


# The pytree of "/"-joined leaf paths (kept here for existing callers).
tree_paths = paths_lib.tree_paths


def match_rules(rules, path):
  """The value of the first rule whose regex matches the parameter path.

  Args:
    rules: sequence of (regex, value).
    path: a parameter path, e.g. "img/head/kernel" (see `big_vl.paths`).

  Returns:
    The value of the first matching rule, or None.
  """
  return paths_lib.first_match(rules, path)


def tree_shardings(tree, mesh, rules, where="config.sharding_rules"):
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs).

  Args:
    tree: a params pytree, or a train state {"params": ..., "opt": ...,
      ...} whose other leaves (optimiser moments, EMA) follow the rule of the
      parameter they copy (arrays or ShapeDtypeStructs).
    mesh: the Mesh.
    rules: sequence of (regex, rule) over parameter paths; unmatched leaves
      are replicated.
    where: the rules' config key, for errors.

  Returns:
    A pytree of NamedSharding with the structure of `tree`.

  Raises:
    ValueError: for a rule that matches no parameter or never applies
      (`big_vl.paths.check_rules`), names an axis the mesh lacks
      (`check_rule_axes`), or a spec that does not fit.
  """
  leaf_paths = tree_paths(tree)
  if isinstance(tree, dict) and "params" in tree:
    params = set(paths_lib.leaf_paths(tree["params"]))
  else:
    params = set(jax.tree.leaves(leaf_paths))
  paths_lib.check_rules(where, list(rules), sorted(params), ordered=True)
  check_rule_axes(rules, mesh, where)

  def one(path, leaf):
    param = paths_lib.param_path(path, params)
    rule = None if param is None else match_rules(rules, param)
    shape = tuple(getattr(leaf, "shape", ()))
    return NamedSharding(mesh, _spec_for(rule or "replicate", shape, mesh,
                                         param or path))

  return jax.tree.map(one, leaf_paths, tree)


def to_global(batch, mesh):
  """Assembles this process's part of a batch into global sharded arrays.

  Args:
    batch: dict of numpy arrays, each `[B_local, ...]`, B_local being the
      global batch divided by the number of processes.
    mesh: the Mesh; dimension 0 is split over `batch_axes(mesh)`.

  Returns:
    A dict of jax.Arrays of global shape `[B_global, ...]`.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)

