"""Contrastive losses over the global batch.

Every loss has the signature

    loss_fn(zimg, ztxt, aux, *, mesh=None, **options) -> (loss, metrics)

where `zimg` and `ztxt` are L2-normalised `[B, D]` embeddings of the global
batch (row i of each is a positive pair), `aux` is the model's aux dict with
the temperature `t` (and the bias `b` for sigmoid), and `metrics` is a dict of
scalars to log.

Select one by name as an objective of a config (big_vl/objectives.py):
`config.objectives = dict(contrastive=dict(loss="sigmoid", weight=1.0,
impl="ring"))`; every other key of the block is passed as an option (`get`).
The trainer calls them through `objectives`, with the model's outputs dict
as `aux`.

Two implementations of each loss, chosen with the `impl` option:

- `impl="dense"` (default): under `jax.jit` with sharded inputs the code sees
  the whole global batch and XLA inserts the collectives. It builds the full
  `[B, B]` logits, partitioned by XLA: O(B_global^2) logits in all, about
  O(B_global * B_local) per device, plus whatever XLA all-gathers.
- `impl="ring"`: a `jax.shard_map` over all batch axes of the mesh. Images
  stay where they are, text blocks travel around a ring of the
  n = B_global / B_local devices (`jax.lax.ppermute`), and at each ring step
  a device meets one `[B_local, B_local]` block of logits (SigLIP's
  "chunked" sigmoid, a blocked / online-logsumexp softmax). It computes that
  block in tiles of at most `block_size` x `block_size` (option
  `block_size`, default `DEFAULT_BLOCK_SIZE`; None: the whole block at
  once), so it holds O(block_size^2) logits and O(B_local * D) embeddings
  per device: linear in the global batch for a fixed block size and device
  count. The backward pass is a second ring pass (a `jax.custom_vjp`) that
  recomputes the tiles instead of storing them and sends each text block's
  gradient along with it, with the same memory; nothing of size
  B_global * B_local (or B_local^2 when B_local > block_size) is stored.

Both give the same loss, metrics and gradients w.r.t. `zimg`, `ztxt`, `t` and
`b` (tests/test_losses_distributed.py checks this on 1 to 8 devices).
"""

import functools
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from big_vl import config as config_lib
from big_vl import registry
from big_vl import sharding

# Values of the `impl` option of the registered losses.
IMPLS = ("dense", "ring")
# Default `block_size` option of the ring losses: largest side of the tiles
# of logits computed at once (one f32 tile of 1024 x 1024 is 4 MiB).
DEFAULT_BLOCK_SIZE = 1024

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_impl(impl, name):
  if impl not in IMPLS:
    raise ValueError(
        f"Unknown impl {impl!r} for loss {name!r}; use one of {IMPLS} "
        "(the `impl` option of its objective).")


def get(name, where="config.loss", meta_keys=("name",), **options):
  """The loss `name` with `options` bound: `loss_fn(zimg, ztxt, aux, *, mesh)`.

  Args:
    name: registered loss name, e.g. "softmax" or "sigmoid".
    where: the config block of the options, for messages (an objective's
      is "config.objectives.NAME").
    meta_keys: keys of that block that are not options (allowed, ignored).
    **options: keyword options of that loss, e.g. `impl="ring"`,
      `block_size=512`.

  Returns:
    A function `(zimg, ztxt, aux, *, mesh=None) -> (loss, metrics)`.

  Raises:
    KeyError: for an unknown loss name.
    ValueError: for an option the loss does not take (named as
      `WHERE.KEY`), if `impl` is given and is not one of `IMPLS`, or
      `block_size` is given and is neither a positive int nor None.
  """
  fn = registry.get("loss", name)
  config_lib.check_signature(
      options, fn, where, extra=meta_keys,
      skip=("zimg", "ztxt", "aux", "outputs", "batch", "mesh"))
  if "impl" in options:
    _check_impl(options["impl"], name)
  if "block_size" in options:
    _check_block_size(options["block_size"])
  return functools.partial(fn, **options) if options else fn


def _logits(zimg, ztxt, aux):
  logits = jnp.einsum("id,jd->ij", zimg, ztxt, precision=_HIGHEST) * aux["t"]
  if "b" in aux:
    logits = logits + aux["b"]
  return logits


@registry.register("loss", "softmax")
def softmax_loss(zimg, ztxt, aux, *, mesh=None, impl="dense",
                 block_size=DEFAULT_BLOCK_SIZE, label_smoothing=0.0):
  """CLIP/ALIGN symmetric cross-entropy over the global batch.

  loss = (CE(image -> texts) + CE(text -> images)) / 2, where the logits are
  `t * zimg @ ztxt.T` (plus `b` if the model has a bias) and the positives sit
  on the diagonal.

  Label smoothing ALIGN-style (target 1 - e on the positive plus e / B on
  every pair) adds, in both directions, e * (mean positive logit - mean
  logit over all B x B pairs): the mean logit is `t * mean(zimg) .
  mean(ztxt) (+ b)`, so "ring" keeps its memory and no B x B matrix is
  built for it.

  Memory per device: "dense" holds the XLA-partitioned `[B, B]` logits,
  O(B_global * B_local) or more; "ring" holds one tile of at most
  `[block_size, block_size]` logits at a time plus O(B_local * D)
  embeddings and gradients (see `_ring_softmax`).

  Args:
    zimg: f32[B, D] normalised image embeddings.
    ztxt: f32[B, D] normalised text embeddings, row i pairs with image i.
    aux: dict with "t" (the temperature, exp of the learned log) and
      optionally "b".
    mesh: the Mesh the batch is sharded over; "ring" runs its ring over
      `sharding.batch_axes(mesh)` (None: a single device). Unused by "dense".
    impl: "dense" or "ring".
    block_size: "ring" only: each ring step's `[B_local, B_local]` block of
      logits is computed in tiles of at most block_size x block_size (the
      last tile of a row / column overlaps the one before when block_size
      does not divide B_local; the overlap is masked). None: the whole
      block at once. Does not change the result beyond float rounding.
    label_smoothing: e in [0, 1) (ALIGN: 0.1).

  Returns:
    (loss, metrics) with metrics "img2txt_acc" and "txt2img_acc" (in-batch
    top-1 accuracy of the positive).
  """
  _check_impl(impl, "softmax")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1) "
                     "(the `label_smoothing` option of its objective).")
  loss, metrics = (_ring_softmax(zimg, ztxt, aux, mesh, block_size)
                   if impl == "ring" else _dense_softmax(zimg, ztxt, aux))
  if label_smoothing:
    t = aux["t"]
    mean_pos = t * jnp.mean(jnp.sum(zimg * ztxt, axis=-1))
    mean_all = t * jnp.dot(jnp.mean(zimg, axis=0), jnp.mean(ztxt, axis=0),
                           precision=_HIGHEST)
    loss = loss + label_smoothing * (mean_pos - mean_all)
  return loss, metrics


def _dense_softmax(zimg, ztxt, aux):
  logits = _logits(zimg, ztxt, aux)
  # Positives straight from the pairs (not jnp.diagonal, whose partitioned
  # lowering holds collectives inside a conditional that XLA:CPU can
  # deadlock on next to FSDP all-gathers).
  diag = aux["t"] * jnp.sum(zimg * ztxt, axis=-1) + aux.get("b", 0.0)
  loss_i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
  loss_t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
  labels = jnp.arange(logits.shape[0])
  metrics = {
      "img2txt_acc": jnp.mean(jnp.argmax(logits, axis=1) == labels),
      "txt2img_acc": jnp.mean(jnp.argmax(logits, axis=0) == labels),
  }
  return (loss_i2t + loss_t2i) / 2, metrics


@registry.register("loss", "sigmoid")
def sigmoid_loss(zimg, ztxt, aux, *, mesh=None, impl="dense",
                 block_size=DEFAULT_BLOCK_SIZE):
  """SigLIP pairwise sigmoid loss over the global batch.

  Every (image i, text j) pair is an independent binary problem with label +1
  on the diagonal and -1 elsewhere; logits are `t * zimg @ ztxt.T + b`. The
  summed negative log-likelihood is divided by the batch size, as in the
  SigLIP paper.

  Memory per device: "dense" holds the XLA-partitioned `[B, B]` logits,
  O(B_global * B_local) or more; "ring" (SigLIP's chunked loss) holds one
  tile of at most `[block_size, block_size]` logits at a time plus
  O(B_local * D) embeddings and gradients (see `_ring_sigmoid`).

  Args:
    zimg: f32[B, D] normalised image embeddings.
    ztxt: f32[B, D] normalised text embeddings.
    aux: dict with "t" and "b" (bias; 0 is used if the model has none).
    mesh: the Mesh the batch is sharded over; "ring" runs its ring over
      `sharding.batch_axes(mesh)` (None: a single device). Unused by "dense".
    impl: "dense" or "ring".
    block_size: "ring" only: each ring step's `[B_local, B_local]` block of
      logits is computed in tiles of at most block_size x block_size (the
      last tile of a row / column overlaps the one before when block_size
      does not divide B_local; the overlap is masked). None: the whole
      block at once. Does not change the result beyond float rounding.

  Returns:
    (loss, metrics) with "pos_prob" (mean sigmoid of positives) and
    "neg_prob" (mean sigmoid of negatives).
  """
  _check_impl(impl, "sigmoid")
  if impl == "ring":
    return _ring_sigmoid(zimg, ztxt, aux, mesh, block_size)
  logits = _logits(zimg, ztxt, aux)
  n = logits.shape[0]
  labels = 2.0 * jnp.eye(n, dtype=logits.dtype) - 1.0
  loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / n
  probs = jax.nn.sigmoid(logits)
  eye = jnp.eye(n, dtype=bool)
  # A float divisor: n * (n - 1) overflows int32 from n = 46,341.
  metrics = {
      "pos_prob": jnp.sum(jnp.where(eye, probs, 0)) / n,
      "neg_prob": jnp.sum(jnp.where(eye, 0, probs)) / float(
          max(n * (n - 1), 1)),
  }
  return loss, metrics


# ----------------------------------------------------------------------------
# Ring implementations.
#
# Per-device bodies below see their local `[B_local, D]` blocks and run the
# ring with `axes` (the tuple of batch mesh axes, treated as one flattened
# ring; () when there is no mesh) and `n` (the ring length). Device r holds
# global rows r * B_local ... (r + 1) * B_local - 1. A block sent with
# `_shift` goes from device r to r + 1, so after k shifts device r holds the
# block of device (r - k) mod n, and after n shifts a block is home again.
#
# Within a ring step the `[B_local, B_local]` block (local images x the text
# block held) is never built whole: `_fold_tiles` walks it in square tiles of
# at most `block_size` rows and columns (see there).
# ----------------------------------------------------------------------------


def _shift(x, axes, n):
  """Sends (a pytree of) blocks one step along the ring: device r -> r + 1."""
  if n == 1:
    return x
  perm = [(r, (r + 1) % n) for r in range(n)]
  return jax.tree.map(lambda a: jax.lax.ppermute(a, axes, perm), x)


def _psum(x, axes):
  return jax.lax.psum(x, axes) if axes else x


def _ring_index(axes):
  return jax.lax.axis_index(axes) if axes else 0


def _cos(zimg, ztxt):
  """`[rows, cols]` cosine tile of image rows vs text rows."""
  return jnp.einsum("id,jd->ij", zimg, ztxt, precision=_HIGHEST)


def _check_block_size(block_size):
  """Validates the `block_size` option of the ring losses.

  Args:
    block_size: a positive integer (Python or NumPy) or None.

  Returns:
    block_size as a Python int, or None.

  Raises:
    ValueError: for anything else (0, negative, float, bool, str, ...).
  """
  if block_size is None:
    return None
  try:
    value = None if isinstance(block_size, bool) else operator.index(
        block_size)
  except TypeError:
    value = None
  if value is None or value < 1:
    raise ValueError(
        f"block_size must be a positive int or None, got {block_size!r} "
        "(the `block_size` option of its objective).")
  return value


def _ring_layout(zimg, mesh):
  """(axes, n) of the ring for `mesh`; checks that n divides the batch."""
  axes = () if mesh is None else sharding.batch_axes(mesh)
  n = sharding.batch_size_divisor(mesh) if axes else 1
  if zimg.shape[0] % n:
    raise ValueError(
        f"The ring loss splits the batch over the {n} devices of the batch "
        f"axes {axes} of the mesh, but the batch size {zimg.shape[0]} is not "
        "divisible by it; change the batch size or config.mesh.")
  return axes, n


class _Tile(NamedTuple):
  """One square tile of a ring step's `[B_local, B_local]` block.

  Attributes:
    rows: first local image row of the tile (int or traced int32).
    cols: first text row of the tile within the text block held.
    size: static number of rows (= columns) of the tile.
    row_ok: bool[size], False for rows an earlier tile already covered (the
      last tile is moved back to end at B_local when block_size does not
      divide it), or None when every row counts.
    col_ok: the same for the columns.
  """
  rows: Any
  cols: Any
  size: int
  row_ok: Any
  col_ok: Any

  @property
  def mask(self):
    """bool[size, size] of the entries that count, or None for all."""
    if self.row_ok is None:
      return None
    return self.row_ok[:, None] & self.col_ok[None, :]

  def eye(self):
    """bool[size, size], True where image row == text row (positives)."""
    r = self.rows + jnp.arange(self.size)
    c = self.cols + jnp.arange(self.size)
    return r[:, None] == c[None, :]

  def where(self, x, fill):
    """`x` with the entries that do not count replaced by `fill`."""
    return x if self.mask is None else jnp.where(self.mask, x, fill)


def _take(x, start, size):
  """Rows `start ... start + size - 1` of `x`."""
  if size == x.shape[0]:
    return x
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)


def _put(x, start, value):
  """`x` with rows from `start` on replaced by `value`."""
  if value.shape[0] == x.shape[0]:
    return value
  return jax.lax.dynamic_update_slice_in_dim(x, value, start, axis=0)


def _add(x, start, value):
  """`x` with `value` added to its rows from `start` on."""
  return _put(x, start, _take(x, start, value.shape[0]) + value)


def _tile_size(bl, block_size):
  """Rows (= columns) per tile of a `[bl, bl]` block."""
  return bl if block_size is None else min(block_size, bl)


def _fold_tiles(bl, block_size, body, carry):
  """Folds `body` over the tiles of a `[bl, bl]` block.

  The block is cut into count x count square tiles of `size =
  min(block_size, bl)` rows and columns (count = ceil(bl / size)); tile
  (i, j) starts at row i * size and column j * size, and the last tile of a
  row or column is moved back to end at bl when size does not divide it, its
  rows / columns already covered by the tile before marked as not counting
  (`_Tile.row_ok`, `_Tile.col_ok`). So every (row, column) pair counts in
  exactly one tile, no tile is larger than the others or padded, and a
  tile's rows start where its columns do exactly for the tiles (i, i). With a
  single tile (block_size None or >= bl) `body` runs once on the whole block
  with no masks; otherwise a `jax.lax.fori_loop` runs the tiles in row-major
  order, so only one tile's temporaries live at a time. The first tile runs
  before the loop: inside `jax.shard_map` a loop carry must vary over the
  same mesh axes on entry as on exit, and an initial carry made of
  constants does not vary while every tile's result does.

  Args:
    bl: rows (= columns) of the block, B_local.
    block_size: largest tile side, or None for one tile.
    body: `(carry, tile: _Tile) -> carry`.
    carry: initial carry.

  Returns:
    The carry after all tiles.
  """
  size = _tile_size(bl, block_size)
  count = -(-bl // size)
  if count == 1:
    return body(carry, _Tile(0, 0, size, None, None))
  ragged = bl % size != 0

  def span(i):
    start = jnp.minimum(i * size, bl - size)
    ok = start + jnp.arange(size) >= i * size if ragged else None
    return start, ok

  def step(k, carry):
    (rows, row_ok), (cols, col_ok) = span(k // count), span(k % count)
    return body(carry, _Tile(rows, cols, size, row_ok, col_ok))

  return jax.lax.fori_loop(1, count * count, step, step(0, carry))


def _ring_loss(fwd_body, bwd_body, zimg, ztxt, aux, mesh, block_size):
  """Runs a ring loss with an exact custom gradient.

  Args:
    fwd_body: per-device `(zimg, ztxt, t, b, *, axes, n, block_size) ->
      (loss, metrics, residuals)`; loss and metrics are already reduced over
      the ring, residuals is a tuple of row-sharded `[B_local]` arrays.
    bwd_body: per-device `(zimg, ztxt, t, b, residuals, g, *, axes, n,
      block_size) -> (dzimg, dztxt, dt, db)` with dt, db reduced over the
      ring.
    zimg: [B, D] image embeddings (global, sharded over the batch axes).
    ztxt: [B, D] text embeddings.
    aux: dict with "t" and optionally "b".
    mesh: the Mesh or None.
    block_size: largest tile side within a ring step (see `_fold_tiles`), or
      None for the whole `[B_local, B_local]` block at once.

  Returns:
    (loss, metrics), differentiable w.r.t. zimg, ztxt, aux["t"], aux["b"].

  Raises:
    ValueError: if block_size is not a positive int or None, or the ring
      length does not divide the batch.
  """
  block_size = _check_block_size(block_size)
  axes, n = _ring_layout(zimg, mesh)
  t = jnp.asarray(aux["t"])
  b = jnp.asarray(aux["b"]) if "b" in aux else jnp.zeros((), t.dtype)
  dtype = functools.reduce(jnp.promote_types,
                           (zimg.dtype, ztxt.dtype, t.dtype, b.dtype,
                            jnp.float32))

  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

  def per_device(body, in_specs, out_specs):
    body = functools.partial(body, axes=axes, n=n, block_size=block_size)
    if axes:
      body = jax.shard_map(body, mesh=mesh, in_specs=in_specs,
                           out_specs=out_specs)
    return lambda *args: body(*jax.tree.map(cast, args))

  rows = P(axes)
  fwd = per_device(fwd_body, (rows, rows, P(), P()), (P(), P(), rows))
  bwd = per_device(bwd_body, (rows, rows, P(), P(), rows, P()),
                   (rows, rows, P(), P()))

  @jax.custom_vjp
  def loss_fn(zimg, ztxt, t, b):
    loss, metrics, _ = fwd(zimg, ztxt, t, b)
    return loss, metrics

  def loss_fwd(zimg, ztxt, t, b):
    loss, metrics, residuals = fwd(zimg, ztxt, t, b)
    return (loss, metrics), (zimg, ztxt, t, b, residuals)

  def loss_bwd(saved, cotangents):
    zimg, ztxt, t, b, residuals = saved
    g = jnp.asarray(cotangents[0], dtype)  # Metrics get no gradient.
    dzimg, dztxt, dt, db = bwd(zimg, ztxt, t, b, residuals, g)
    return (dzimg.astype(zimg.dtype), dztxt.astype(ztxt.dtype),
            dt.astype(t.dtype).reshape(t.shape),
            db.astype(b.dtype).reshape(b.shape))

  loss_fn.defvjp(loss_fwd, loss_bwd)
  return loss_fn(zimg, ztxt, t, b)


def _grad_tile(zimg, txt, t, tile, dl, cos, carry):
  """Adds one tile's gradients: `dl` = dloss/dlogits of the tile.

  Args:
    zimg: [B_local, D] local images.
    txt: [B_local, D] the text block held.
    t: temperature.
    tile: the `_Tile`; entries of `dl` that do not count must be 0.
    dl: [size, size] gradient w.r.t. the tile's logits.
    cos: [size, size] cosines of the tile.
    carry: (dimg [B_local, D], dtxt [B_local, D] of the text block held,
      dt [B_local], db [B_local]) accumulated so far; dt and db are kept per
      image row and summed at the end: d/db of softmax is a sum of +-1/B
      terms that cancels to 0, and one scalar running sum over many tiles
      would round it worse than dense's single reduction.

  Returns:
    The updated carry.
  """
  dimg, dtxt, dt, db = carry
  img = _take(zimg, tile.rows, tile.size)
  tx = _take(txt, tile.cols, tile.size)
  dimg = _add(dimg, tile.rows,
              t * jnp.einsum("ij,jd->id", dl, tx, precision=_HIGHEST))
  dtxt = _add(dtxt, tile.cols,
              t * jnp.einsum("ij,id->jd", dl, img, precision=_HIGHEST))
  dt = _add(dt, tile.rows, jnp.sum(dl * cos, axis=1))
  db = _add(db, tile.rows, jnp.sum(dl, axis=1))
  return dimg, dtxt, dt, db


# Sigmoid (SigLIP chunked): loss = -sum_ij log sigmoid(y_ij * l_ij) / B.


def _sigmoid_fwd_body(zimg, ztxt, t, b, *, axes, n, block_size):
  """Per-device forward of the ring sigmoid loss; see `_ring_loss`."""
  bl = zimg.shape[0]

  def fold(txt, own, sums):
    """Adds (nll, pos prob, neg prob) sums of images x text block `txt`."""

    def tile(sums, tl):
      logits = t * _cos(_take(zimg, tl.rows, tl.size),
                        _take(txt, tl.cols, tl.size)) + b
      probs = jax.nn.sigmoid(logits)
      if own:  # Positives on the diagonal of a device's own block only.
        eye = tl.eye()
        new = (-jnp.sum(tl.where(jax.nn.log_sigmoid(
            jnp.where(eye, logits, -logits)), 0)),
               jnp.sum(tl.where(jnp.where(eye, probs, 0), 0)),
               jnp.sum(tl.where(jnp.where(eye, 0, probs), 0)))
      else:
        new = (-jnp.sum(tl.where(jax.nn.log_sigmoid(-logits), 0)), 0,
               jnp.sum(tl.where(probs, 0)))
      return jax.tree.map(jnp.add, sums, new)

    return _fold_tiles(bl, block_size, tile, sums)

  def step(_, carry):
    txt, sums = carry
    txt = _shift(txt, axes, n)
    return txt, fold(txt, False, sums)

  zero = jnp.zeros_like(t)
  sums = fold(ztxt, True, (zero, zero, zero))
  _, sums = jax.lax.fori_loop(1, n, step, (ztxt, sums))
  nll, pos, neg = _psum(sums, axes)
  total = n * bl
  metrics = {"pos_prob": pos / total,
             "neg_prob": neg / float(max(total * (total - 1), 1))}
  return nll / total, metrics, ()


def _sigmoid_bwd_body(zimg, ztxt, t, b, residuals, g, *, axes, n,
                      block_size):
  """Per-device backward of the ring sigmoid loss; see `_ring_loss`."""
  del residuals
  bl = zimg.shape[0]
  scale = g / (n * bl)

  def fold(txt, own, carry):
    """Adds the gradients of images x text block `txt` to the carry."""

    def tile(carry, tl):
      cos = _cos(_take(zimg, tl.rows, tl.size), _take(txt, tl.cols, tl.size))
      probs = jax.nn.sigmoid(t * cos + b)
      # d(-log sigmoid(y l))/dl = sigmoid(l) - [y == 1].
      dl = probs - tl.eye().astype(probs.dtype) if own else probs
      dl = scale * tl.where(dl, 0)
      return _grad_tile(zimg, txt, t, tl, dl, cos, carry)

    return _fold_tiles(bl, block_size, tile, carry)

  def step(_, carry):
    # The text block travels with the gradient accumulated for it so far.
    txt, dtxt, dimg, dt, db = carry
    txt, dtxt = _shift((txt, dtxt), axes, n)
    dimg, dtxt, dt, db = fold(txt, False, (dimg, dtxt, dt, db))
    return txt, dtxt, dimg, dt, db

  zero = jnp.zeros((bl,), zimg.dtype)
  dimg, dtxt, dt, db = fold(
      ztxt, True, (jnp.zeros_like(zimg), jnp.zeros_like(ztxt), zero, zero))
  _, dtxt, dimg, dt, db = jax.lax.fori_loop(1, n, step,
                                            (ztxt, dtxt, dimg, dt, db))
  dtxt = _shift(dtxt, axes, n)  # One more step brings each block home.
  return dimg, dtxt, _psum(jnp.sum(dt), axes), _psum(jnp.sum(db), axes)


def _ring_sigmoid(zimg, ztxt, aux, mesh, block_size):
  """SigLIP sigmoid loss, chunked over a ring of devices.

  Each of the n devices holds B_local = B_global / n images and texts. For n
  steps it computes the logits of its images against the text block it
  currently holds (positives on the diagonal only when that is its own
  block), adds up -log sigmoid(+-logit) and passes the text block on with
  `ppermute`. The loss is the psum over devices divided by B_global.
  Within a step the `[B_local, B_local]` logits are computed and summed tile
  by tile (at most `block_size` x `block_size`, see `_fold_tiles`). The
  backward pass runs the ring again, recomputing each tile and adding its
  gradient into the local image rows, the travelling text block's gradient
  (which arrives home after n steps), t and b.

  Memory per device: O(block_size^2) logits (O(B_local^2) with block_size
  None; vs O(B_global * B_local) or more for dense) and O(B_local * D)
  embeddings and gradients: linear in B_global for a fixed block_size.

  Args:
    zimg: [B, D] image embeddings, sharded over the batch axes of `mesh`.
    ztxt: [B, D] text embeddings.
    aux: dict with "t" and optionally "b" (0 if absent).
    mesh: the Mesh or None (a single block).
    block_size: largest tile side, or None for whole blocks.

  Returns:
    (loss, {"pos_prob", "neg_prob"}), equal to `sigmoid_loss(impl="dense")`.
  """
  return _ring_loss(_sigmoid_fwd_body, _sigmoid_bwd_body, zimg, ztxt, aux,
                    mesh, block_size)


# Softmax (CLIP/ALIGN): loss = (sum_i lse_row_i + sum_j lse_col_j
#                               - 2 sum_i l_ii) / (2 B).

_NO_INDEX = jnp.iinfo(jnp.int32).max


def _online_max(m, s, idx, block_max, block_sum_fn, block_idx):
  """One online-logsumexp + argmax update.

  Args:
    m: running max.
    s: running sum of exp(logit - m).
    idx: running (first, i.e. smallest global) index of the max.
    block_max: max of the new block.
    block_sum_fn: `new_max -> sum of exp(block - new_max)`.
    block_idx: smallest global index of `block_max` in the block.

  Returns:
    Updated (m, s, idx).
  """
  new_m = jnp.maximum(m, block_max)
  s = s * jnp.exp(m - new_m) + block_sum_fn(new_m)
  better = (block_max > m) | ((block_max == m) & (block_idx < idx))
  return new_m, s, jnp.where(better, block_idx, idx)


def _update_stats(stats, start, ok, logits, axis, first_index):
  """Folds a tile into the (max, sum, argmax) stats of its rows or columns.

  Args:
    stats: (m, s, idx), each `[B_local]`, of all rows (or columns).
    start: first row (column) of the tile.
    ok: bool[size] of the rows (columns) that count, or None for all.
    logits: [size, size] tile, entries that do not count set to -inf.
    axis: 1 to fold into the row stats, 0 for the column stats.
    first_index: global index of the tile's first column (row).

  Returns:
    The updated stats; rows (columns) that do not count keep theirs.
  """
  size = logits.shape[1 - axis]
  old = tuple(_take(x, start, size) for x in stats)
  keep = lambda m: jnp.expand_dims(m, axis)
  new = _online_max(
      *old, jnp.max(logits, axis=axis),
      lambda m: jnp.sum(jnp.exp(logits - keep(m)), axis=axis),
      first_index + jnp.argmax(logits, axis=axis))
  new = tuple(a.astype(o.dtype) for a, o in zip(new, old))
  if ok is not None:
    new = tuple(jnp.where(ok, a, o) for a, o in zip(new, old))
  return tuple(_put(x, start, a) for x, a in zip(stats, new))


def _softmax_fwd_body(zimg, ztxt, t, b, *, axes, n, block_size):
  """Per-device forward of the ring softmax loss; see `_ring_loss`."""
  bl = zimg.shape[0]
  me = _ring_index(axes)
  my_rows = me * bl + jnp.arange(bl)

  def fold(txt, src, own, carry):
    """Folds images x text block `src` (held as `txt`) into the carry.

    The carry is (row stats, column stats of the text block held, positive
    logits), the last only updated (and only needed) for the own block.
    """

    def tile(carry, tl):
      rows, cols, pos = carry
      logits = t * _cos(_take(zimg, tl.rows, tl.size),
                        _take(txt, tl.cols, tl.size)) + b
      if own:  # The positives are the diagonals of the tiles (i, i).
        diag = jnp.diagonal(logits)
        if tl.row_ok is not None:
          diag = jnp.where(tl.row_ok, diag, 0)
        if not isinstance(tl.rows, int):
          diag = jnp.where(tl.rows == tl.cols, diag, 0)
        pos = _add(pos, tl.rows, diag)
      logits = tl.where(logits, -jnp.inf)
      rows = _update_stats(rows, tl.rows, tl.row_ok, logits, 1,
                           src * bl + tl.cols)
      cols = _update_stats(cols, tl.cols, tl.col_ok, logits, 0,
                           me * bl + tl.rows)
      return rows, cols, pos

    return _fold_tiles(bl, block_size, tile, carry)

  dtype = jnp.result_type(zimg, t, b)
  empty = (jnp.full((bl,), -jnp.inf, dtype), jnp.zeros((bl,), dtype),
           jnp.full((bl,), _NO_INDEX, jnp.int32))
  # Step 0: the own block, which has the positives on its diagonal.
  rows, cols, pos = fold(ztxt, me, True,
                         (empty, empty, jnp.zeros((bl,), dtype)))

  def step(k, carry):
    txt, rows, cols = carry
    # A text block travels with its column (text -> image) statistics.
    txt, cols = _shift((txt, cols), axes, n)
    src = (me - k) % n
    rows, cols, _ = fold(txt, src, False, (rows, cols, None))
    return txt, rows, cols

  _, rows, cols = jax.lax.fori_loop(1, n, step, (ztxt, rows, cols))
  cols = _shift(cols, axes, n)  # One more step brings each block's stats home.
  lse_row = rows[0] + jnp.log(rows[1])
  lse_col = cols[0] + jnp.log(cols[1])
  total = n * bl
  loss_sum, i2t, t2i = _psum(
      (jnp.sum(lse_row - pos) + jnp.sum(lse_col - pos),
       jnp.sum(rows[2] == my_rows).astype(pos.dtype),
       jnp.sum(cols[2] == my_rows).astype(pos.dtype)), axes)
  metrics = {"img2txt_acc": i2t / total, "txt2img_acc": t2i / total}
  return loss_sum / (2 * total), metrics, (lse_row, lse_col)


def _softmax_bwd_body(zimg, ztxt, t, b, residuals, g, *, axes, n,
                      block_size):
  """Per-device backward of the ring softmax loss; see `_ring_loss`."""
  lse_row, lse_col = residuals
  bl = zimg.shape[0]
  scale = g / (2 * n * bl)

  def fold(txt, col_lse, own, carry):
    """Adds the gradients of images x text block `txt` to the carry."""

    def tile(carry, tl):
      cos = _cos(_take(zimg, tl.rows, tl.size), _take(txt, tl.cols, tl.size))
      logits = t * cos + b
      # d/dl_ij = softmax_row_i(j) + softmax_col_j(i) - 2 [i == j].
      dl = (jnp.exp(logits - _take(lse_row, tl.rows, tl.size)[:, None]) +
            jnp.exp(logits - _take(col_lse, tl.cols, tl.size)[None, :]))
      if own:
        dl = dl - 2 * tl.eye().astype(dl.dtype)
      dl = scale * tl.where(dl, 0)
      return _grad_tile(zimg, txt, t, tl, dl, cos, carry)

    return _fold_tiles(bl, block_size, tile, carry)

  def step(_, carry):
    # A text block travels with its column logsumexp and its gradient.
    txt, col_lse, dtxt, dimg, dt, db = carry
    txt, col_lse, dtxt = _shift((txt, col_lse, dtxt), axes, n)
    dimg, dtxt, dt, db = fold(txt, col_lse, False, (dimg, dtxt, dt, db))
    return txt, col_lse, dtxt, dimg, dt, db

  zero = jnp.zeros((bl,), zimg.dtype)
  dimg, dtxt, dt, db = fold(
      ztxt, lse_col, True,
      (jnp.zeros_like(zimg), jnp.zeros_like(ztxt), zero, zero))
  _, _, dtxt, dimg, dt, db = jax.lax.fori_loop(
      1, n, step, (ztxt, lse_col, dtxt, dimg, dt, db))
  dtxt = _shift(dtxt, axes, n)  # One more step brings each block home.
  return dimg, dtxt, _psum(jnp.sum(dt), axes), _psum(jnp.sum(db), axes)


def _ring_softmax(zimg, ztxt, aux, mesh, block_size):
  """CLIP/ALIGN softmax loss, blocked over a ring of devices.

  Images stay put; text blocks travel around the ring (`ppermute`) and both
  directions are done in the same pass:
  - image -> text: each device keeps, for its B_local images, a running max
    and running sum of exp(logit - max) over the texts it has seen (a
    numerically stable online logsumexp); after n steps that is the
    logsumexp over all B_global texts.
  - text -> image: each text block carries its own running column max / sum
    along with it; every device folds in its B_local images, so after n
    steps (plus one shift home) a text's statistics cover all B_global
    images. No image block needs to move.
  Within a step the `[B_local, B_local]` logits are folded in tile by tile
  (at most `block_size` x `block_size`, see `_fold_tiles`), each tile
  updating the stats of its rows and columns. The positive logit is the
  diagonal of the own block; the loss is the mean of the two cross-entropies
  over the global batch, exactly as dense. The backward pass runs the ring
  again with the saved row / column logsumexps (O(B_local) per device),
  recomputing each tile and adding its gradient into the local image rows,
  the travelling text block's gradient (home after n steps), t and b.
  Accuracies use a running argmax with dense's first-index tie-breaking.

  Memory per device: O(block_size^2) logits (O(B_local^2) with block_size
  None; vs O(B_global * B_local) or more for dense) and O(B_local * D)
  embeddings and gradients: linear in B_global for a fixed block_size.

  Args:
    zimg: [B, D] image embeddings, sharded over the batch axes of `mesh`.
    ztxt: [B, D] text embeddings.
    aux: dict with "t" and optionally "b".
    mesh: the Mesh or None (a single block).
    block_size: largest tile side, or None for whole blocks.

  Returns:
    (loss, {"img2txt_acc", "txt2img_acc"}), equal to
    `softmax_loss(impl="dense")`.
  """
  return _ring_loss(_softmax_fwd_body, _softmax_bwd_body, zimg, ztxt, aux,
                    mesh, block_size)
