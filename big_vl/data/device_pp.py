"""Per-pixel pp ops applied to whole batches inside the jitted train step.

The host pipeline (`config.input.pp`) can stop at uint8 images; the last,
per-pixel steps then run on the accelerator, fused into the train step:

    config.input.pp = ("decode|random_resized_crop(224)|flip_lr|"
                       "tokenize(max_len=77)|keep('image','text')")
    config.input.device_pp = "value_range(0,1)|normalize"

gives the model the same float32 images as `value_range(0,1)|normalize` in
the host pp string (equal to float32 rounding), while the host does less
work and sends a quarter of the bytes (uint8 instead of float32) through
grain's worker processes and to the devices (bench/data_throughput.py
measures the difference).

Ops, with the arguments and meaning of the host ops of the same name
(`big_vl.data.pp`); each maps `batch[key]` of any shape [..., C]:

    value_range(vmin=-1, vmax=1, key="image", in_min=0, in_max=255)
    normalize(mean=CLIP_MEAN, std=CLIP_STD, key="image")
"""

import jax.numpy as jnp
import numpy as np

from big_vl.data import pp as pp_lib


def value_range(vmin=-1.0, vmax=1.0, key="image", in_min=0.0, in_max=255.0):
  """Linear map of [in_min, in_max] to float32 [vmin, vmax] (as on the host).

  Takes integer images only: a float batch means the host pp already mapped
  the values, and mapping them twice would be a silent error.
  """
  scale = np.float32((vmax - vmin) / (in_max - in_min))

  def op(batch):
    if not jnp.issubdtype(batch[key].dtype, jnp.integer):
      raise TypeError(
          f"device_pp value_range expects integer (uint8) images in {key!r}, "
          f"got {batch[key].dtype}: config.input.pp already made them float; "
          "remove value_range (and normalize) from config.input.pp.")
    x = batch[key].astype(jnp.float32)
    if in_min:
      x = x - np.float32(in_min)
    x = x * scale
    if vmin:
      x = x + np.float32(vmin)
    return {**batch, key: x}

  return op


def normalize(mean=pp_lib.CLIP_MEAN, std=pp_lib.CLIP_STD, key="image"):
  """Per-channel `(x - mean) / std` of a float image batch (as on the host)."""
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if np.any(std <= 0):
    raise ValueError(f"normalize: std must be positive, got {std}.")

  def op(batch):
    x = batch[key]
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"device_pp normalize expects float images in {key!r}, "
                      f"got {x.dtype}; put value_range(0, 1) before it.")
    return {**batch, key: (x - mean) / std}

  return op


OPS = {"value_range": value_range, "normalize": normalize}


def build(spec):
  """`fn(batch) -> batch` (a dict of arrays) from a device pp string.

  Args:
    spec: ops joined by '|' (see the module docstring); "" or None gives the
      identity.

  Returns:
    A function of a batch dict, usable inside `jax.jit` (returns a new dict;
    other keys pass through).

  Raises:
    ValueError: for an op that is not a device op.
  """
  ops = []
  for name, args, kwargs in pp_lib.parse(spec or ""):
    if name not in OPS:
      raise ValueError(
          f"config.input.device_pp: {name!r} is not a device op; known: "
          f"{sorted(OPS)} (other ops belong in config.input.pp).")
    key = kwargs.get("key", "image")
    ops.append((name, key, OPS[name](*args, **kwargs)))

  def apply(batch):
    for name, key, op in ops:
      if key not in batch:
        raise KeyError(
            f"config.input.device_pp: {name} reads the batch field {key!r}, "
            f"which the batch lacks (it has {sorted(batch)}); keep it in "
            "config.input.pp or drop the op.")
      batch = op(batch)
    return batch

  return apply
