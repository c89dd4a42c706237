"""Shared evaluator machinery: exact, sharded embedding of a whole split.

An evaluator is built from its config block plus a `predict_fn`:

    ev = registry.get("evaluator", "zeroshot")(predict_fn, mesh=mesh, **cfg)
    for name, value in ev.run(params): ...

`predict_fn(params, image=None, text=None) -> (zimg, ztxt, aux)` is the
model's apply. Batches are padded to the global eval batch with a mask, so a
split of any size is evaluated on every example exactly once, on any mesh and
any number of processes.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils

from big_vl import sharding
from big_vl.data import pipeline


def local_batch_size(global_batch_size, mesh):
  """Per-process eval batch, checking that the mesh divides the batch."""
  div = sharding.batch_size_divisor(mesh)
  if global_batch_size % div:
    raise ValueError(f"Eval batch size {global_batch_size} must be divisible "
                     f"by the {div} data shards of the mesh.")
  if global_batch_size % jax.process_count():
    raise ValueError(f"Eval batch size {global_batch_size} must be divisible "
                     f"by the {jax.process_count()} processes.")
  return global_batch_size // jax.process_count()


def run_over(source, *, pp, batch_size, mesh, fn, params, desc=None):
  """Applies a jitted `fn(params, batch) -> dict` to every example once.

  Args:
    source: random-access source.
    pp: deterministic pp string.
    batch_size: global eval batch size.
    mesh: the Mesh; batches are split over its batch axes.
    fn: jitted function of (params, global batch dict) returning a dict of
      arrays with leading dimension = batch.
    params: model parameters (global arrays).
    desc: unused label (kept for progress messages).

  Returns:
    dict of numpy arrays: the outputs of `fn` for every valid example (padding
    and failed records removed), concatenated over batches and processes.
  """
  del desc
  local = local_batch_size(batch_size, mesh)
  outputs = {}
  for batch in pipeline.eval_batches(source, pp=pp, batch_size=local):
    gbatch = sharding.to_global(batch, mesh)
    out = fn(params, gbatch)
    out[pipeline.MASK_KEY] = gbatch[pipeline.MASK_KEY]
    out = multihost_utils.process_allgather(out, tiled=True)
    for k, v in out.items():
      outputs.setdefault(k, []).append(np.asarray(v))
  result = {k: np.concatenate(v) for k, v in outputs.items()}
  mask = result.pop(pipeline.MASK_KEY)
  return {k: v[mask] for k, v in result.items()}


def embed_texts(texts, *, pp, batch_size, mesh, predict_fn, params):
  """Text embeddings f32[len(texts), D] of a list of strings."""
  source = [{"text": t} for t in texts]
  fn = jax.jit(lambda p, b: {"z": predict_fn(p, text=b["text"])[1]})
  return run_over(source, pp=pp, batch_size=batch_size, mesh=mesh, fn=fn,
                  params=params)["z"]


def dataset_label(spec):
  """Short dataset name for metric keys: 'tfds:big_vl_demo_shapes' -> 'demo_shapes'."""
  name = spec.split(":", 1)[-1].split(":")[0].split("/")[0]
  return name.removeprefix("big_vl_")
