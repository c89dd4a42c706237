"""Softmax (CLIP/ALIGN) and sigmoid (SigLIP) losses, dense and ring.

`impl="dense"` builds the XLA-partitioned `[B, B]` logits; `impl="ring"`
runs the per-device bodies below on the ring engine (`losses/ring.py`),
O(block_size^2 + B_local * D) memory per device. Both give the same loss,
metrics and gradients (tests/test_losses_distributed.py).

Imports: jax, `big_vl.registry` and `big_vl.losses.ring`.
"""

import jax
import jax.numpy as jnp

from big_vl import registry
from big_vl.losses import ring


def _logits(zimg, ztxt, aux):
  logits = jnp.einsum("id,jd->ij", zimg, ztxt, precision=ring.HIGHEST) * aux["t"]
  if "b" in aux:
    logits = logits + aux["b"]
  return logits


@registry.register("loss", "softmax")
def softmax_loss(zimg, ztxt, aux, *, mesh=None, impl="dense",
                 block_size=ring.DEFAULT_BLOCK_SIZE, label_smoothing=0.0):
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
  ring.check_impl(impl, "softmax")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1) "
                     "(the `label_smoothing` option of its objective).")
  loss, metrics = (_ring_softmax(zimg, ztxt, aux, mesh, block_size)
                   if impl == "ring" else _dense_softmax(zimg, ztxt, aux))
  if label_smoothing:
    t = aux["t"]
    mean_pos = t * jnp.mean(jnp.sum(zimg * ztxt, axis=-1))
    mean_all = t * jnp.dot(jnp.mean(zimg, axis=0), jnp.mean(ztxt, axis=0),
                           precision=ring.HIGHEST)
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
                 block_size=ring.DEFAULT_BLOCK_SIZE):
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
  ring.check_impl(impl, "sigmoid")
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


# Sigmoid (SigLIP chunked): loss = -sum_ij log sigmoid(y_ij * l_ij) / B.


def _sigmoid_fwd_body(zimg, ztxt, t, b, *, axes, n, block_size):
  """Per-device forward of the ring sigmoid loss; see `ring.custom_loss`."""
  bl = zimg.shape[0]

  def fold(txt, own, sums):
    """Adds (nll, pos prob, neg prob) sums of images x text block `txt`."""

    def tile(sums, tl):
      logits = t * ring.cosines(ring.take(zimg, tl.rows, tl.size),
                        ring.take(txt, tl.cols, tl.size)) + b
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

    return ring.fold_tiles(bl, block_size, tile, sums)

  def step(_, carry):
    txt, sums = carry
    txt = ring.shift(txt, axes, n)
    return txt, fold(txt, False, sums)

  zero = jnp.zeros_like(t)
  sums = fold(ztxt, True, (zero, zero, zero))
  _, sums = jax.lax.fori_loop(1, n, step, (ztxt, sums))
  nll, pos, neg = ring.psum(sums, axes)
  total = n * bl
  metrics = {"pos_prob": pos / total,
             "neg_prob": neg / float(max(total * (total - 1), 1))}
  return nll / total, metrics, ()


def _sigmoid_bwd_body(zimg, ztxt, t, b, residuals, g, *, axes, n,
                      block_size):
  """Per-device backward of the ring sigmoid loss; see `ring.custom_loss`."""
  del residuals
  bl = zimg.shape[0]
  scale = g / (n * bl)

  def fold(txt, own, carry):
    """Adds the gradients of images x text block `txt` to the carry."""

    def tile(carry, tl):
      cos = ring.cosines(ring.take(zimg, tl.rows, tl.size), ring.take(txt, tl.cols, tl.size))
      probs = jax.nn.sigmoid(t * cos + b)
      # d(-log sigmoid(y l))/dl = sigmoid(l) - [y == 1].
      dl = probs - tl.eye().astype(probs.dtype) if own else probs
      dl = scale * tl.where(dl, 0)
      return ring.grad_tile(zimg, txt, t, tl, dl, cos, carry)

    return ring.fold_tiles(bl, block_size, tile, carry)

  def step(_, carry):
    # The text block travels with the gradient accumulated for it so far.
    txt, dtxt, dimg, dt, db = carry
    txt, dtxt = ring.shift((txt, dtxt), axes, n)
    dimg, dtxt, dt, db = fold(txt, False, (dimg, dtxt, dt, db))
    return txt, dtxt, dimg, dt, db

  zero = jnp.zeros((bl,), zimg.dtype)
  dimg, dtxt, dt, db = fold(
      ztxt, True, (jnp.zeros_like(zimg), jnp.zeros_like(ztxt), zero, zero))
  _, dtxt, dimg, dt, db = jax.lax.fori_loop(1, n, step,
                                            (ztxt, dtxt, dimg, dt, db))
  dtxt = ring.shift(dtxt, axes, n)  # One more step brings each block home.
  return dimg, dtxt, ring.psum(jnp.sum(dt), axes), ring.psum(jnp.sum(db), axes)


def _ring_sigmoid(zimg, ztxt, aux, mesh, block_size):
  """SigLIP sigmoid loss, chunked over a ring of devices.

  Each of the n devices holds B_local = B_global / n images and texts. For n
  steps it computes the logits of its images against the text block it
  currently holds (positives on the diagonal only when that is its own
  block), adds up -log sigmoid(+-logit) and passes the text block on with
  `ppermute`. The loss is the psum over devices divided by B_global.
  Within a step the `[B_local, B_local]` logits are computed and summed tile
  by tile (at most `block_size` x `block_size`, see `ring.fold_tiles`). The
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
  return ring.custom_loss(_sigmoid_fwd_body, _sigmoid_bwd_body, zimg, ztxt, aux,
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
  old = tuple(ring.take(x, start, size) for x in stats)
  keep = lambda m: jnp.expand_dims(m, axis)
  new = _online_max(
      *old, jnp.max(logits, axis=axis),
      lambda m: jnp.sum(jnp.exp(logits - keep(m)), axis=axis),
      first_index + jnp.argmax(logits, axis=axis))
  new = tuple(a.astype(o.dtype) for a, o in zip(new, old))
  if ok is not None:
    new = tuple(jnp.where(ok, a, o) for a, o in zip(new, old))
  return tuple(ring.put(x, start, a) for x, a in zip(stats, new))


def _softmax_fwd_body(zimg, ztxt, t, b, *, axes, n, block_size):
  """Per-device forward of the ring softmax loss; see `ring.custom_loss`."""
  bl = zimg.shape[0]
  me = ring.index(axes)
  my_rows = me * bl + jnp.arange(bl)

  def fold(txt, src, own, carry):
    """Folds images x text block `src` (held as `txt`) into the carry.

    The carry is (row stats, column stats of the text block held, positive
    logits), the last only updated (and only needed) for the own block.
    """

    def tile(carry, tl):
      rows, cols, pos = carry
      logits = t * ring.cosines(ring.take(zimg, tl.rows, tl.size),
                        ring.take(txt, tl.cols, tl.size)) + b
      if own:  # The positives are the diagonals of the tiles (i, i).
        diag = jnp.diagonal(logits)
        if tl.row_ok is not None:
          diag = jnp.where(tl.row_ok, diag, 0)
        if not isinstance(tl.rows, int):
          diag = jnp.where(tl.rows == tl.cols, diag, 0)
        pos = ring.add(pos, tl.rows, diag)
      logits = tl.where(logits, -jnp.inf)
      rows = _update_stats(rows, tl.rows, tl.row_ok, logits, 1,
                           src * bl + tl.cols)
      cols = _update_stats(cols, tl.cols, tl.col_ok, logits, 0,
                           me * bl + tl.rows)
      return rows, cols, pos

    return ring.fold_tiles(bl, block_size, tile, carry)

  dtype = jnp.result_type(zimg, t, b)
  empty = (jnp.full((bl,), -jnp.inf, dtype), jnp.zeros((bl,), dtype),
           jnp.full((bl,), _NO_INDEX, jnp.int32))
  # Step 0: the own block, which has the positives on its diagonal.
  rows, cols, pos = fold(ztxt, me, True,
                         (empty, empty, jnp.zeros((bl,), dtype)))

  def step(k, carry):
    txt, rows, cols = carry
    # A text block travels with its column (text -> image) statistics.
    txt, cols = ring.shift((txt, cols), axes, n)
    src = (me - k) % n
    rows, cols, _ = fold(txt, src, False, (rows, cols, None))
    return txt, rows, cols

  _, rows, cols = jax.lax.fori_loop(1, n, step, (ztxt, rows, cols))
  cols = ring.shift(cols, axes, n)  # One more step brings each block's stats home.
  lse_row = rows[0] + jnp.log(rows[1])
  lse_col = cols[0] + jnp.log(cols[1])
  total = n * bl
  loss_sum, i2t, t2i = ring.psum(
      (jnp.sum(lse_row - pos) + jnp.sum(lse_col - pos),
       jnp.sum(rows[2] == my_rows).astype(pos.dtype),
       jnp.sum(cols[2] == my_rows).astype(pos.dtype)), axes)
  metrics = {"img2txt_acc": i2t / total, "txt2img_acc": t2i / total}
  return loss_sum / (2 * total), metrics, (lse_row, lse_col)


def _softmax_bwd_body(zimg, ztxt, t, b, residuals, g, *, axes, n,
                      block_size):
  """Per-device backward of the ring softmax loss; see `ring.custom_loss`."""
  lse_row, lse_col = residuals
  bl = zimg.shape[0]
  scale = g / (2 * n * bl)

  def fold(txt, col_lse, own, carry):
    """Adds the gradients of images x text block `txt` to the carry."""

    def tile(carry, tl):
      cos = ring.cosines(ring.take(zimg, tl.rows, tl.size), ring.take(txt, tl.cols, tl.size))
      logits = t * cos + b
      # d/dl_ij = softmax_row_i(j) + softmax_col_j(i) - 2 [i == j].
      dl = (jnp.exp(logits - ring.take(lse_row, tl.rows, tl.size)[:, None]) +
            jnp.exp(logits - ring.take(col_lse, tl.cols, tl.size)[None, :]))
      if own:
        dl = dl - 2 * tl.eye().astype(dl.dtype)
      dl = scale * tl.where(dl, 0)
      return ring.grad_tile(zimg, txt, t, tl, dl, cos, carry)

    return ring.fold_tiles(bl, block_size, tile, carry)

  def step(_, carry):
    # A text block travels with its column logsumexp and its gradient.
    txt, col_lse, dtxt, dimg, dt, db = carry
    txt, col_lse, dtxt = ring.shift((txt, col_lse, dtxt), axes, n)
    dimg, dtxt, dt, db = fold(txt, col_lse, False, (dimg, dtxt, dt, db))
    return txt, col_lse, dtxt, dimg, dt, db

  zero = jnp.zeros((bl,), zimg.dtype)
  dimg, dtxt, dt, db = fold(
      ztxt, lse_col, True,
      (jnp.zeros_like(zimg), jnp.zeros_like(ztxt), zero, zero))
  _, _, dtxt, dimg, dt, db = jax.lax.fori_loop(
      1, n, step, (ztxt, lse_col, dtxt, dimg, dt, db))
  dtxt = ring.shift(dtxt, axes, n)  # One more step brings each block home.
  return dimg, dtxt, ring.psum(jnp.sum(dt), axes), ring.psum(jnp.sum(db), axes)


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
  (at most `block_size` x `block_size`, see `ring.fold_tiles`), each tile
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
  return ring.custom_loss(_softmax_fwd_body, _softmax_bwd_body, zimg, ztxt, aux,
                    mesh, block_size)
