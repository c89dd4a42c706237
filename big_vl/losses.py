"""Contrastive losses over the global batch.

Every loss has the signature

    loss_fn(zimg, ztxt, aux, *, mesh=None, **options) -> (loss, metrics)

where `zimg` and `ztxt` are L2-normalised `[B, D]` embeddings of the global
batch (row i of each is a positive pair), `aux` is the model's aux dict with
the temperature `t` (and the bias `b` for sigmoid), and `metrics` is a dict of
scalars to log.

Select one by name in a config: `config.loss = dict(name="sigmoid")`; every
other key of `config.loss` is passed as an option (`get(**config.loss)`).

Two implementations of each loss, chosen with the `impl` option:

- `impl="dense"` (default): under `jax.jit` with sharded inputs the code sees
  the whole global batch and XLA inserts the collectives. It builds the full
  `[B, B]` logits, partitioned by XLA: O(B_global^2) logits in all, about
  O(B_global * B_local) per device, plus whatever XLA all-gathers.
- `impl="ring"`: a `jax.shard_map` over all batch axes of the mesh. Images
  stay where they are, text blocks travel around a ring of the
  n = B_global / B_local devices (`jax.lax.ppermute`), and each device only
  ever holds one `[B_local, B_local]` block of logits: O(B_local^2) per device
  (SigLIP's "chunked" sigmoid, a blocked / online-logsumexp softmax). The
  backward pass is a second ring pass (a `jax.custom_vjp`) that recomputes
  the blocks instead of storing them and sends each text block's gradient
  along with it, so it too holds O(B_local^2) logits and O(B_local * D)
  embeddings; nothing of size B_global * B_local is ever stored.

Both give the same loss, metrics and gradients w.r.t. `zimg`, `ztxt`, `t` and
`b` (tests/test_losses_distributed.py checks this on 1 to 8 devices).
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from big_vl import registry
from big_vl import sharding

# Values of the `impl` option of the registered losses.
IMPLS = ("dense", "ring")

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_impl(impl, name):
  if impl not in IMPLS:
    raise ValueError(
        f"Unknown impl {impl!r} for loss {name!r}; use one of {IMPLS} "
        "(config.loss.impl).")


def get(name, **options):
  """The loss `name` with `options` bound: `loss_fn(zimg, ztxt, aux, *, mesh)`.

  Args:
    name: registered loss name, e.g. "softmax" or "sigmoid".
    **options: keyword options of that loss, e.g. `impl="ring"`.

  Returns:
    A function `(zimg, ztxt, aux, *, mesh=None) -> (loss, metrics)`.

  Raises:
    ValueError: if `impl` is given and is not one of `IMPLS`.
  """
  fn = registry.get("loss", name)
  if "impl" in options:
    _check_impl(options["impl"], name)
  return functools.partial(fn, **options) if options else fn


def _logits(zimg, ztxt, aux):
  logits = jnp.einsum("id,jd->ij", zimg, ztxt, precision=_HIGHEST) * aux["t"]
  if "b" in aux:
    logits = logits + aux["b"]
  return logits


@registry.register("loss", "softmax")
def softmax_loss(zimg, ztxt, aux, *, mesh=None, impl="dense"):
  """CLIP/ALIGN symmetric cross-entropy over the global batch.

  loss = (CE(image -> texts) + CE(text -> images)) / 2, where the logits are
  `t * zimg @ ztxt.T` (plus `b` if the model has a bias) and the positives sit
  on the diagonal.

  Memory per device: "dense" holds the XLA-partitioned `[B, B]` logits,
  O(B_global * B_local) or more; "ring" holds one `[B_local, B_local]` block
  at a time (see `_ring_softmax`).

  Args:
    zimg: f32[B, D] normalised image embeddings.
    ztxt: f32[B, D] normalised text embeddings, row i pairs with image i.
    aux: dict with "t" (the temperature, exp of the learned log) and
      optionally "b".
    mesh: the Mesh the batch is sharded over; "ring" runs its ring over
      `sharding.batch_axes(mesh)` (None: a single device). Unused by "dense".
    impl: "dense" or "ring".

  Returns:
    (loss, metrics) with metrics "img2txt_acc" and "txt2img_acc" (in-batch
    top-1 accuracy of the positive).
  """
  _check_impl(impl, "softmax")
  if impl == "ring":
    return _ring_softmax(zimg, ztxt, aux, mesh)
  logits = _logits(zimg, ztxt, aux)
  diag = jnp.diagonal(logits)
  loss_i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
  loss_t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
  labels = jnp.arange(logits.shape[0])
  metrics = {
      "img2txt_acc": jnp.mean(jnp.argmax(logits, axis=1) == labels),
      "txt2img_acc": jnp.mean(jnp.argmax(logits, axis=0) == labels),
  }
  return (loss_i2t + loss_t2i) / 2, metrics


@registry.register("loss", "sigmoid")
def sigmoid_loss(zimg, ztxt, aux, *, mesh=None, impl="dense"):
  """SigLIP pairwise sigmoid loss over the global batch.

  Every (image i, text j) pair is an independent binary problem with label +1
  on the diagonal and -1 elsewhere; logits are `t * zimg @ ztxt.T + b`. The
  summed negative log-likelihood is divided by the batch size, as in the
  SigLIP paper.

  Memory per device: "dense" holds the XLA-partitioned `[B, B]` logits,
  O(B_global * B_local) or more; "ring" (SigLIP's chunked loss) holds one
  `[B_local, B_local]` block at a time (see `_ring_sigmoid`).

  Args:
    zimg: f32[B, D] normalised image embeddings.
    ztxt: f32[B, D] normalised text embeddings.
    aux: dict with "t" and "b" (bias; 0 is used if the model has none).
    mesh: the Mesh the batch is sharded over; "ring" runs its ring over
      `sharding.batch_axes(mesh)` (None: a single device). Unused by "dense".
    impl: "dense" or "ring".

  Returns:
    (loss, metrics) with "pos_prob" (mean sigmoid of positives) and
    "neg_prob" (mean sigmoid of negatives).
  """
  _check_impl(impl, "sigmoid")
  if impl == "ring":
    return _ring_sigmoid(zimg, ztxt, aux, mesh)
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
  """`[B_local, B_local]` cosine block of local images vs a text block."""
  return jnp.einsum("id,jd->ij", zimg, ztxt, precision=_HIGHEST)


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


def _ring_loss(fwd_body, bwd_body, zimg, ztxt, aux, mesh):
  """Runs a ring loss with an exact custom gradient.

  Args:
    fwd_body: per-device `(zimg, ztxt, t, b, *, axes, n) -> (loss, metrics,
      residuals)`; loss and metrics are already reduced over the ring,
      residuals is a tuple of row-sharded `[B_local]` arrays.
    bwd_body: per-device `(zimg, ztxt, t, b, residuals, g, *, axes, n) ->
      (dzimg, dztxt, dt, db)` with dt, db reduced over the ring.
    zimg: [B, D] image embeddings (global, sharded over the batch axes).
    ztxt: [B, D] text embeddings.
    aux: dict with "t" and optionally "b".
    mesh: the Mesh or None.

  Returns:
    (loss, metrics), differentiable w.r.t. zimg, ztxt, aux["t"], aux["b"].
  """
  axes, n = _ring_layout(zimg, mesh)
  t = jnp.asarray(aux["t"])
  b = jnp.asarray(aux["b"]) if "b" in aux else jnp.zeros((), t.dtype)
  dtype = functools.reduce(jnp.promote_types,
                           (zimg.dtype, ztxt.dtype, t.dtype, b.dtype,
                            jnp.float32))

  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

  def per_device(body, in_specs, out_specs):
    body = functools.partial(body, axes=axes, n=n)
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


# Sigmoid (SigLIP chunked): loss = -sum_ij log sigmoid(y_ij * l_ij) / B.


def _sigmoid_fwd_body(zimg, ztxt, t, b, *, axes, n):
  """Per-device forward of the ring sigmoid loss; see `_ring_loss`."""
  bl = zimg.shape[0]

  def block(txt, own):
    logits = t * _cos(zimg, txt) + b
    if own:  # Positives on the diagonal of a device's own block only.
      eye = jnp.eye(bl, dtype=bool)
      probs = jax.nn.sigmoid(logits)
      return (-jnp.sum(jax.nn.log_sigmoid(jnp.where(eye, logits, -logits))),
              jnp.sum(jnp.where(eye, probs, 0)),
              jnp.sum(jnp.where(eye, 0, probs)))
    return (-jnp.sum(jax.nn.log_sigmoid(-logits)), jnp.zeros_like(t),
            jnp.sum(jax.nn.sigmoid(logits)))

  def step(_, carry):
    txt, sums = carry
    txt = _shift(txt, axes, n)
    return txt, jax.tree.map(jnp.add, sums, block(txt, own=False))

  _, sums = jax.lax.fori_loop(1, n, step, (ztxt, block(ztxt, own=True)))
  nll, pos, neg = _psum(sums, axes)
  total = n * bl
  metrics = {"pos_prob": pos / total,
             "neg_prob": neg / float(max(total * (total - 1), 1))}
  return nll / total, metrics, ()


def _sigmoid_bwd_body(zimg, ztxt, t, b, residuals, g, *, axes, n):
  """Per-device backward of the ring sigmoid loss; see `_ring_loss`."""
  del residuals
  bl = zimg.shape[0]
  scale = g / (n * bl)

  def block(txt, own):
    cos = _cos(zimg, txt)
    probs = jax.nn.sigmoid(t * cos + b)
    # d(-log sigmoid(y l))/dl = sigmoid(l) - [y == 1].
    dl = scale * (probs - jnp.eye(bl, dtype=probs.dtype) if own else probs)
    dimg = t * jnp.einsum("ij,jd->id", dl, txt, precision=_HIGHEST)
    dtxt = t * jnp.einsum("ij,id->jd", dl, zimg, precision=_HIGHEST)
    return dimg, dtxt, jnp.sum(dl * cos), jnp.sum(dl)

  def step(_, carry):
    # The text block travels with the gradient accumulated for it so far.
    txt, dtxt, dimg, dt, db = carry
    txt, dtxt = _shift((txt, dtxt), axes, n)
    gi, gt, gdt, gdb = block(txt, own=False)
    return txt, dtxt + gt, dimg + gi, dt + gdt, db + gdb

  dimg, dtxt, dt, db = block(ztxt, own=True)
  _, dtxt, dimg, dt, db = jax.lax.fori_loop(1, n, step,
                                            (ztxt, dtxt, dimg, dt, db))
  dtxt = _shift(dtxt, axes, n)  # One more step brings each block home.
  return dimg, dtxt, _psum(dt, axes), _psum(db, axes)


def _ring_sigmoid(zimg, ztxt, aux, mesh):
  """SigLIP sigmoid loss, chunked over a ring of devices.

  Each of the n devices holds B_local = B_global / n images and texts. For n
  steps it computes the `[B_local, B_local]` logits of its images against the
  text block it currently holds (positives on the diagonal only when that is
  its own block), adds up -log sigmoid(+-logit) and passes the text block on
  with `ppermute`. The loss is the psum over devices divided by B_global.
  The backward pass runs the ring again, recomputing each block; a text
  block's gradient travels with it and arrives home after n steps.

  Memory per device: O(B_local^2) logits (vs O(B_global * B_local) or more
  for dense) and O(B_local * D) embeddings and gradients.

  Args:
    zimg: [B, D] image embeddings, sharded over the batch axes of `mesh`.
    ztxt: [B, D] text embeddings.
    aux: dict with "t" and optionally "b" (0 if absent).
    mesh: the Mesh or None (a single block).

  Returns:
    (loss, {"pos_prob", "neg_prob"}), equal to `sigmoid_loss(impl="dense")`.
  """
  return _ring_loss(_sigmoid_fwd_body, _sigmoid_bwd_body, zimg, ztxt, aux,
                    mesh)


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


def _softmax_fwd_body(zimg, ztxt, t, b, *, axes, n):
  """Per-device forward of the ring softmax loss; see `_ring_loss`."""
  bl = zimg.shape[0]
  me = _ring_index(axes)
  my_rows = me * bl + jnp.arange(bl)

  def update(logits, src, rows, cols):
    """Folds one block into the row stats and the travelling column stats."""
    r_m, r_s, r_i = rows
    rows = _online_max(
        r_m, r_s, r_i, jnp.max(logits, axis=1),
        lambda m: jnp.sum(jnp.exp(logits - m[:, None]), axis=1),
        src * bl + jnp.argmax(logits, axis=1))
    c_m, c_s, c_i = cols
    cols = _online_max(
        c_m, c_s, c_i, jnp.max(logits, axis=0),
        lambda m: jnp.sum(jnp.exp(logits - m[None, :]), axis=0),
        me * bl + jnp.argmax(logits, axis=0))
    return rows, cols

  # Step 0: the own block, which has the positives on its diagonal.
  logits = t * _cos(zimg, ztxt) + b
  pos = jnp.diagonal(logits)
  empty = (jnp.full((bl,), -jnp.inf, logits.dtype), jnp.zeros_like(pos),
           jnp.full((bl,), _NO_INDEX, jnp.int32))
  rows, cols = update(logits, me, empty, empty)

  def step(k, carry):
    txt, rows, cols = carry
    # A text block travels with its column (text -> image) statistics.
    txt, cols = _shift((txt, cols), axes, n)
    src = (me - k) % n
    rows, cols = update(t * _cos(zimg, txt) + b, src, rows, cols)
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


def _softmax_bwd_body(zimg, ztxt, t, b, residuals, g, *, axes, n):
  """Per-device backward of the ring softmax loss; see `_ring_loss`."""
  lse_row, lse_col = residuals
  bl = zimg.shape[0]
  scale = g / (2 * n * bl)

  def block(txt, col_lse, own):
    cos = _cos(zimg, txt)
    logits = t * cos + b
    # d/dl_ij = softmax_row_i(j) + softmax_col_j(i) - 2 [i == j].
    dl = (jnp.exp(logits - lse_row[:, None]) +
          jnp.exp(logits - col_lse[None, :]))
    if own:
      dl = dl - 2 * jnp.eye(bl, dtype=dl.dtype)
    dl = scale * dl
    dimg = t * jnp.einsum("ij,jd->id", dl, txt, precision=_HIGHEST)
    dtxt = t * jnp.einsum("ij,id->jd", dl, zimg, precision=_HIGHEST)
    return dimg, dtxt, jnp.sum(dl * cos), jnp.sum(dl)

  def step(_, carry):
    # A text block travels with its column logsumexp and its gradient.
    txt, col_lse, dtxt, dimg, dt, db = carry
    txt, col_lse, dtxt = _shift((txt, col_lse, dtxt), axes, n)
    gi, gt, gdt, gdb = block(txt, col_lse, own=False)
    return txt, col_lse, dtxt + gt, dimg + gi, dt + gdt, db + gdb

  dimg, dtxt, dt, db = block(ztxt, lse_col, own=True)
  _, _, dtxt, dimg, dt, db = jax.lax.fori_loop(
      1, n, step, (ztxt, lse_col, dtxt, dimg, dt, db))
  dtxt = _shift(dtxt, axes, n)  # One more step brings each block home.
  return dimg, dtxt, _psum(dt, axes), _psum(db, axes)


def _ring_softmax(zimg, ztxt, aux, mesh):
  """CLIP/ALIGN softmax loss, blocked over a ring of devices.

  Images stay put; text blocks travel around the ring (`ppermute`) and both
  directions are done in the same pass:
  - image -> text: each device keeps, for its B_local images, a running max
    and running sum of exp(logit - max) over the text blocks it has seen (a
    numerically stable online logsumexp); after n steps that is the
    logsumexp over all B_global texts.
  - text -> image: each text block carries its own running column max / sum
    along with it; every device folds in its B_local images, so after n
    steps (plus one shift home) a text's statistics cover all B_global
    images. No image block needs to move.
  The positive logit is the diagonal of the own block; the loss is the mean
  of the two cross-entropies over the global batch, exactly as dense. The
  backward pass runs the ring again with the saved row / column logsumexps
  (O(B_local) per device), recomputing each block; a text block's gradient
  travels with it and arrives home after n steps. Accuracies use a running
  argmax with dense's first-index tie-breaking.

  Memory per device: O(B_local^2) logits (vs O(B_global * B_local) or more
  for dense) and O(B_local * D) embeddings and gradients.

  Args:
    zimg: [B, D] image embeddings, sharded over the batch axes of `mesh`.
    ztxt: [B, D] text embeddings.
    aux: dict with "t" and optionally "b".
    mesh: the Mesh or None (a single block).

  Returns:
    (loss, {"img2txt_acc", "txt2img_acc"}), equal to
    `softmax_loss(impl="dense")`.
  """
  return _ring_loss(_softmax_fwd_body, _softmax_bwd_body, zimg, ztxt, aux,
                    mesh)
