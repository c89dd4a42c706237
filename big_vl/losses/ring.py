"""The ring engine of the losses: one `jax.shard_map` ring over the batch axes.

A loss over the global batch whose `[B, B]` logits would not fit runs as a
ring: the batch axes of the mesh are one flattened ring of n devices, each
keeping its B_local = B / n rows (images) while blocks of columns (texts)
travel around it (`shift`, a `jax.lax.ppermute`). Two ways to build on it:

- Losses of plain dot-product logits (softmax, sigmoid:
  `losses/contrastive.py`) give per-device forward and backward bodies to
  `custom_loss`, which runs them with an exact custom gradient; a ring step's
  `[B_local, B_local]` block is walked in tiles of at most `block_size`
  (`fold_tiles`, `Tile`, `take` / `put` / `add`, `grad_tile`), so memory is
  O(block_size^2 + B_local * D) per device.
- Losses whose blocks are not simple dots (FILIP's token similarities,
  DreamLIP's sub-captions: `losses/filip.py`, `losses/dreamlip.py`) gather
  their rows against every travelling block (`gather_rows`, rematerialised
  in the backward pass) and reduce them with `cross_entropies` and
  `column_argmax`.

`layout(z, mesh)` gives the ring's axes and length, `index(axes)` a device's
place on it, `check_impl` / `check_block_size` the options' checks.

Imports: jax and `big_vl.sharding` only (no other loss module).
"""

import functools
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from big_vl import sharding

# Values of the `impl` option of the registered losses.
IMPLS = ("dense", "ring")
# Default `block_size` option of the ring losses: largest side of the tiles
# of logits computed at once (one f32 tile of 1024 x 1024 is 4 MiB).
DEFAULT_BLOCK_SIZE = 1024

HIGHEST = jax.lax.Precision.HIGHEST


def check_impl(impl, name):
  """Raises a ValueError naming `name` unless `impl` is one of `IMPLS`."""
  if impl not in IMPLS:
    raise ValueError(
        f"Unknown impl {impl!r} for loss {name!r}; use one of {IMPLS} "
        "(the `impl` option of its objective).")


# ----------------------------------------------------------------------------
# The ring.
#
# Per-device bodies (`custom_loss`'s, `gather_rows`'s block functions) see
# their local `[B_local, D]` blocks and run the ring with `axes` (the tuple of batch mesh axes, treated as one flattened
# ring; () when there is no mesh) and `n` (the ring length). Device r holds
# global rows r * B_local ... (r + 1) * B_local - 1. A block sent with
# `shift` goes from device r to r + 1, so after k shifts device r holds the
# block of device (r - k) mod n, and after n shifts a block is home again.
#
# Within a ring step the `[B_local, B_local]` block (local images x the text
# block held) is never built whole: `fold_tiles` walks it in square tiles of
# at most `block_size` rows and columns (see there).
# ----------------------------------------------------------------------------


def shift(x, axes, n):
  """Sends (a pytree of) blocks one step along the ring: device r -> r + 1."""
  if n == 1:
    return x
  perm = [(r, (r + 1) % n) for r in range(n)]
  return jax.tree.map(lambda a: jax.lax.ppermute(a, axes, perm), x)


def psum(x, axes):
  return jax.lax.psum(x, axes) if axes else x


def index(axes):
  return jax.lax.axis_index(axes) if axes else 0


def cosines(zimg, ztxt):
  """`[rows, cols]` cosine tile of image rows vs text rows."""
  return jnp.einsum("id,jd->ij", zimg, ztxt, precision=HIGHEST)


def check_block_size(block_size):
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


def layout(zimg, mesh):
  """(axes, n) of the ring for `mesh`; checks that n divides the batch."""
  axes = () if mesh is None else sharding.batch_axes(mesh)
  n = sharding.batch_size_divisor(mesh) if axes else 1
  if zimg.shape[0] % n:
    raise ValueError(
        f"The ring loss splits the batch over the {n} devices of the batch "
        f"axes {axes} of the mesh, but the batch size {zimg.shape[0]} is not "
        "divisible by it; change the batch size or config.mesh.")
  return axes, n


class Tile(NamedTuple):
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


def take(x, start, size):
  """Rows `start ... start + size - 1` of `x`."""
  if size == x.shape[0]:
    return x
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)


def put(x, start, value):
  """`x` with rows from `start` on replaced by `value`."""
  if value.shape[0] == x.shape[0]:
    return value
  return jax.lax.dynamic_update_slice_in_dim(x, value, start, axis=0)


def add(x, start, value):
  """`x` with `value` added to its rows from `start` on."""
  return put(x, start, take(x, start, value.shape[0]) + value)


def tile_size(bl, block_size):
  """Rows (= columns) per tile of a `[bl, bl]` block."""
  return bl if block_size is None else min(block_size, bl)


def fold_tiles(bl, block_size, body, carry):
  """Folds `body` over the tiles of a `[bl, bl]` block.

  The block is cut into count x count square tiles of `size =
  min(block_size, bl)` rows and columns (count = ceil(bl / size)); tile
  (i, j) starts at row i * size and column j * size, and the last tile of a
  row or column is moved back to end at bl when size does not divide it, its
  rows / columns already covered by the tile before marked as not counting
  (`Tile.row_ok`, `Tile.col_ok`). So every (row, column) pair counts in
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
    body: `(carry, tile: Tile) -> carry`.
    carry: initial carry.

  Returns:
    The carry after all tiles.
  """
  size = tile_size(bl, block_size)
  count = -(-bl // size)
  if count == 1:
    return body(carry, Tile(0, 0, size, None, None))
  ragged = bl % size != 0

  def span(i):
    start = jnp.minimum(i * size, bl - size)
    ok = start + jnp.arange(size) >= i * size if ragged else None
    return start, ok

  def step(k, carry):
    (rows, row_ok), (cols, col_ok) = span(k // count), span(k % count)
    return body(carry, Tile(rows, cols, size, row_ok, col_ok))

  return jax.lax.fori_loop(1, count * count, step, step(0, carry))


def custom_loss(fwd_body, bwd_body, zimg, ztxt, aux, mesh, block_size):
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
    block_size: largest tile side within a ring step (see `fold_tiles`), or
      None for the whole `[B_local, B_local]` block at once.

  Returns:
    (loss, metrics), differentiable w.r.t. zimg, ztxt, aux["t"], aux["b"].

  Raises:
    ValueError: if block_size is not a positive int or None, or the ring
      length does not divide the batch.
  """
  block_size = check_block_size(block_size)
  axes, n = layout(zimg, mesh)
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


def grad_tile(zimg, txt, t, tile, dl, cos, carry):
  """Adds one tile's gradients: `dl` = dloss/dlogits of the tile.

  Args:
    zimg: [B_local, D] local images.
    txt: [B_local, D] the text block held.
    t: temperature.
    tile: the `Tile`; entries of `dl` that do not count must be 0.
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
  img = take(zimg, tile.rows, tile.size)
  tx = take(txt, tile.cols, tile.size)
  dimg = add(dimg, tile.rows,
              t * jnp.einsum("ij,jd->id", dl, tx, precision=HIGHEST))
  dtxt = add(dtxt, tile.cols,
              t * jnp.einsum("ij,id->jd", dl, img, precision=HIGHEST))
  dt = add(dt, tile.rows, jnp.sum(dl * cos, axis=1))
  db = add(db, tile.rows, jnp.sum(dl, axis=1))
  return dimg, dtxt, dt, db


def gather_rows(block_fn, local, travelling, axes, n):
  """This device's rows against every device's travelling block.

  Args:
    block_fn: `(local, held) -> tuple of [R_i, C]` logit blocks of the local
      rows against one travelling block of C columns (rematerialised in
      the backward pass).
    local: this device's row inputs (any pytree).
    travelling: this device's column inputs (pytree with a leading batch
      axis), passed around the ring.
    axes: the mesh axes of the ring.
    n: the ring's size.

  Returns:
    A tuple of `[R_i, n * C]` arrays: the block that started on device d
    sits at columns `d * C : (d + 1) * C`.
  """
  me = index(axes)
  block = jax.checkpoint(block_fn)
  shapes = jax.eval_shape(block_fn, local, travelling)

  def step(carry, k):
    held, rows = carry
    blocks = block(local, held)
    col = ((me - k) % n) * shapes[0].shape[1]
    rows = tuple(jax.lax.dynamic_update_slice(r, b.astype(r.dtype), (0, col))
                 for r, b in zip(rows, blocks))
    return (shift(held, axes, n), rows), None

  zeros = tuple(jnp.zeros((s.shape[0], n * s.shape[1]), jnp.float32)
                for s in shapes)
  # A scan, not a Python loop: one block is alive at a time.
  (_, rows), _ = jax.lax.scan(step, (travelling, zeros), jnp.arange(n))
  return rows


def cross_entropies(row_logits, col_logits, positives, axes):
  """Summed cross-entropies of this device's rows and of their positives'
  columns.

  Args:
    row_logits: f32[R, C]: local rows against all C columns (row softmax).
    col_logits: f32[R, C]: the logits for the column softmax (over the rows
      of every device); the same array for a symmetric loss.
    positives: int[R, P]: each row's positive columns; every column is a
      positive of exactly one row of one device.

  Returns:
    (sum over (r, p) of lse_r - row_logits[r, p], sum over the same pairs
    of col_lse[p] - col_logits[r, p], col_max f32[C]: the columns' global
    max, for argmax bookkeeping).
  """
  lse = jax.nn.logsumexp(row_logits, axis=1)
  row_pos = jnp.take_along_axis(row_logits, positives, axis=1)
  i2t = jnp.sum(lse[:, None] - row_pos)
  col_max = jax.lax.pmax(
      jax.lax.stop_gradient(jnp.max(col_logits, axis=0)), axes)
  col_sum = jax.lax.psum(jnp.sum(jnp.exp(col_logits - col_max), axis=0),
                         axes)
  col_lse = jnp.log(col_sum) + col_max
  col_pos = jnp.take_along_axis(col_logits, positives, axis=1)
  t2i = jnp.sum(jnp.take(col_lse, positives) - col_pos)
  return i2t, t2i, col_max


def column_argmax(col_logits, col_max, first_row, axes):
  """Each column's best row over all devices (ties: the lowest index).

  Args:
    col_logits: f32[R, C] local rows against all columns.
    col_max: f32[C] the columns' global max (`cross_entropies`).
    first_row: this device's first global row index.

  Returns:
    int32[C] global row indices.
  """
  col_logits = jax.lax.stop_gradient(col_logits)
  rows = first_row + jnp.arange(col_logits.shape[0])
  big = jnp.iinfo(jnp.int32).max
  local = jnp.min(jnp.where(col_logits >= col_max[None, :], rows[:, None],
                            big), axis=0)
  return jax.lax.pmin(local, axes)
