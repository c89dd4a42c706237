"""Shared evaluator machinery: exact, sharded embedding of a whole split.

An evaluator is built from its config block plus a `predict_fn`:

    ev = registry.get("evaluator", "zeroshot")(predict_fn, mesh=mesh, **cfg)
    for name, value in ev.run(params): ...

`predict_fn(params, image=None, text=None) -> (zimg, ztxt, aux)` is the
model's apply. Batches are padded to the global eval batch with a mask, so a
split of any size is evaluated on every example exactly once, on any mesh and
any number of processes.

Records that cannot be used (an undecodable image, a missing file, an empty
caption: the pipeline's skip reasons) are left out of the metrics, never
silently: `run_over` counts them by reason in a `Skipped` and logs a
warning, and every evaluator yields `<evaluator>/<dataset>/skipped` (the
total, always) and `<evaluator>/<dataset>/skipped/<reason>` (each reason
that occurred) with its metrics.
"""

import collections
import re

from absl import logging
import flax
import jax
import numpy as np
from jax.experimental import multihost_utils

from big_vl import sharding
from big_vl.data import pipeline
from big_vl.data import pp as pp_lib


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


class Skipped:
  """Records an evaluation could not use, counted by reason.

  Attributes:
    by_reason: collections.Counter {reason: count} (reasons of
      `pipeline.SKIP_REASONS`).
    records: [(index, reason)] of the records `run_over` skipped, index
      being the position in its source.
    seen: records read (used and skipped).
  """

  def __init__(self):
    self.by_reason = collections.Counter()
    self.records = []
    self.seen = 0

  @property
  def total(self):
    return sum(self.by_reason.values())

  def add(self, reason, count=1):
    if count:
      self.by_reason[reason] += int(count)

  def merge(self, other):
    """Adds the counts (and records) of another `Skipped` (e.g. another
    split)."""
    self.by_reason.update(other.by_reason)
    self.records += other.records
    self.seen += other.seen

  def describe(self):
    """'2 (missing_file=1, decode=1)': the total and the reasons."""
    reasons = ", ".join(f"{r}={n}" for r, n in self._ordered())
    return f"{self.total}" + (f" ({reasons})" if reasons else "")

  def _ordered(self):
    order = {r: i for i, r in enumerate(pipeline.SKIP_REASONS)}
    return sorted(((r, n) for r, n in self.by_reason.items() if n),
                  key=lambda rn: (order.get(rn[0], len(order)), rn[0]))

  def metrics(self, prefix):
    """[(f"{prefix}/skipped", total), (f"{prefix}/skipped/<reason>", n) for
    each reason that occurred], as evaluators yield them."""
    return [(f"{prefix}/skipped", self.total)] + [
        (f"{prefix}/skipped/{r}", n) for r, n in self._ordered()]

  def warn(self, what):
    """Logs a warning naming the count and the reasons (if any skipped)."""
    if self.total:
      of = f" of {self.seen}" if self.seen else ""
      logging.warning(
          "%s: skipped %s%s records that could not be used; the metrics "
          "leave them out (and report them as .../skipped).", what,
          self.describe(), of)


class InputMismatchError(ValueError):
  """The params do not fit the model for an evaluator's inputs (e.g. a
  checkpoint trained at 32x32 fed 64x64 images: a position embedding of
  another length), raised on the first batch, before any result.

  Attributes:
    param: the parameter's path ("img/pos_embedding"), or None.
    have: its shape in the params, or None.
    want: the shape the model builds for these inputs, or None.
    input_shapes: {key: per-example shape} of the evaluator's batch.
  """

  def __init__(self, error, input_shapes):
    m = _PARAM_SHAPE.search(str(error))
    self.param = (m.group("scope").strip("/") + "/" + m.group("name")).lstrip(
        "/") if m else None
    self.want = m.group("want") if m else None
    self.have = m.group("have") if m else None
    self.input_shapes = input_shapes
    super().__init__(
        f"parameter {self.param} is {self.have} in the params, but the model "
        f"builds {self.want} for inputs {format_shapes(input_shapes)}"
        if m else f"{error} (inputs {format_shapes(input_shapes)})")
    self.short = (f"parameter {self.param} is {self.have} in the checkpoint,"
                  f" but the model builds {self.want} for the evaluator's "
                  "inputs" if m else str(error))


# flax's ScopeParamShapeError: 'For parameter "pos_embedding" in "/img", the
# given initializer is expected to generate shape (1, 64, 64), but the
# existing parameter it received has shape (1, 16, 64).'
_PARAM_SHAPE = re.compile(
    r'parameter "(?P<name>[^"]+)" in "(?P<scope>[^"]*)".*?shape '
    r'(?P<want>\([^)]*\)).*?has shape (?P<have>\([^)]*\))', re.S)


def format_shapes(shapes):
  """{key: per-example shape} as text, e.g. "image 64x64x3, text 24"."""
  return ", ".join(f"{k} " + ("x".join(map(str, s)) if s else "scalar")
                   for k, s in sorted(shapes.items())) or "(none)"


def run_over(source, *, pp, batch_size, mesh, fn, params, desc=None,
             with_index=False, skipped=None):
  """Applies a jitted `fn(params, batch) -> dict` to every example once.

  Args:
    source: random-access source.
    pp: deterministic pp string.
    batch_size: global eval batch size.
    mesh: the Mesh; batches are split over its batch axes.
    fn: jitted function of (params, global batch dict) returning a dict of
      arrays with leading dimension = batch.
    params: model parameters (global arrays).
    desc: what is evaluated, for the warning about skipped records (e.g.
      "zeroshot/imagenet"; default: the source's repr).
    with_index: also return "index": int64[N], the position in `source` of
      each returned example (so callers can tell which records failed).
    skipped: a `Skipped` to add the failed records to (their reasons and
      indices), or None.

  Returns:
    dict of numpy arrays: the outputs of `fn` for every valid example (padding
    and failed records removed), gathered from all processes, in source
    order (the same on any number of processes). Failed records are logged
    (a warning with their count and reasons) and added to `skipped`.
  """
  local = local_batch_size(batch_size, mesh)
  nproc = jax.process_count()
  outputs = {}
  for b, batch in enumerate(pipeline.eval_batches(source, pp=pp,
                                                  batch_size=local)):
    gbatch = sharding.to_global(batch, mesh)
    try:
      out = fn(params, gbatch)
    except flax.errors.ScopeParamShapeError as e:
      raise InputMismatchError(e, {
          k: tuple(np.shape(v))[1:] for k, v in batch.items()
          if not k.startswith("_")}) from e
    out[pipeline.MASK_KEY] = gbatch[pipeline.MASK_KEY]
    out[pipeline.SKIP_REASON_KEY] = gbatch[pipeline.SKIP_REASON_KEY]
    out = multihost_utils.process_allgather(out, tiled=True)
    for k, v in out.items():
      outputs.setdefault(k, []).append(np.asarray(v))
    # Row r of process p's b-th batch is example p + nproc * (b * local + r)
    # (eval_batches reads source[p::nproc]); the gather is process-major.
    q = np.arange(local * nproc)
    outputs.setdefault("_index", []).append(
        q // local + nproc * (b * local + q % local))
  result = {k: np.concatenate(v) for k, v in outputs.items()}
  mask = result.pop(pipeline.MASK_KEY)
  index = result.pop("_index")
  reasons = result.pop(pipeline.SKIP_REASON_KEY)
  counts = Skipped()
  counts.seen = len(source)
  failed = np.flatnonzero(reasons >= 0)
  for r in failed[np.argsort(index[failed], kind="stable")]:
    reason = pipeline.SKIP_REASONS[int(reasons[r])]
    counts.add(reason)
    counts.records.append((int(index[r]), reason))
  counts.warn(desc or repr(source))
  if skipped is not None:
    skipped.merge(counts)
  # Valid rows, put back in source order (several processes interleave).
  rows = np.flatnonzero(mask)
  rows = rows[np.argsort(index[rows], kind="stable")]
  result = {k: v[rows] for k, v in result.items()}
  if with_index:
    result["index"] = index[rows]
  return result


def embed_texts(texts, *, pp, batch_size, mesh, predict_fn, params):
  """Text embeddings f32[len(texts), D] of a list of strings.

  Raises:
    ValueError: if some text failed preprocessing (rows would not align).
  """
  source = [{"text": t} for t in texts]
  fn = jax.jit(lambda p, b: {"z": predict_fn(p, text=b["text"])[1]})
  z = run_over(source, pp=pp, batch_size=batch_size, mesh=mesh, fn=fn,
               params=params)["z"]
  if len(z) != len(texts):
    raise ValueError(f"{len(texts) - len(z)} of {len(texts)} texts failed "
                     f"preprocessing with pp={pp!r}.")
  return z


def text_fn(predict_fn):
  """Jitted `(params, batch) -> {"z": text embeddings}` for `run_over`."""
  return jax.jit(lambda p, b: {"z": predict_fn(p, text=b["text"])[1]})


def embed_tokens(tokens, *, batch_size, mesh, predict_fn, params, fn=None):
  """Text embeddings f32[N, D] of already tokenized texts (mesh-exact).

  Args:
    tokens: int32[N, L] token ids.
    batch_size: global eval batch size.
    mesh: the Mesh.
    predict_fn: `(params, image=None, text=None) -> (zimg, ztxt, aux)`.
    params: model parameters.
    fn: `text_fn(predict_fn)`, made once by the caller to reuse its
      compilation across runs (None: made here).

  Returns:
    f32[N, D] text embeddings, in the order of `tokens`.
  """
  tokens = np.asarray(tokens, np.int32)
  source = [{"text": row} for row in tokens]
  fn = fn or text_fn(predict_fn)
  return run_over(source, pp="keep('text')", batch_size=batch_size,
                  mesh=mesh, fn=fn, params=params)["z"]


def pp_tokenizer(pp):
  """`fn(list of str) -> int32[N, L]` applying a text pp string to each text.

  Args:
    pp: pp string reading "text" and writing token ids to "text", e.g.
      "tokenize(max_len=32)".

  Returns:
    The tokenizer function.
  """
  pp_fn = pp_lib.build(pp)
  return lambda texts: np.stack(
      [np.asarray(pp_fn({"text": t})["text"], np.int32) for t in texts])


def l2_normalize(x, axis=-1, eps=1e-12):
  """x / ||x|| along `axis` (numpy)."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def dataset_label(spec):
  """Short dataset name for metric keys: 'tfds:big_vl_demo_shapes' ->
  'demo_shapes'; a path kind's file name without its extension
  ('jsonl:/data/coco_val.jsonl?sep=,' -> 'coco_val')."""
  kind, _, rest = spec.partition(":")
  if kind in ("jsonl", "csv", "wds"):
    parts = rest.partition("?")[0].split("::")[0].rstrip("/").split("/")
    for part in reversed(parts):  # 'd/{000..009}.tar' -> 'd'
      stem = re.sub(r"\{[^{}]*\}", "", part).split(".")[0].strip("-_")
      if stem:
        return stem
    return kind
  name = rest.split(":")[0].split("/")[0] if rest else spec
  return name.removeprefix("big_vl_")
