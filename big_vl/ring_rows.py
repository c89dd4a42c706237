"""Ring building blocks for losses whose logit blocks are not simple dots.

Used inside `jax.shard_map` over the batch axes: a device keeps its own
rows (images), blocks of columns (texts, token sets) travel around the ring
of n devices, and the device ends with its rows' logits against every
column, `[R_local, n * C_block]`: linear in the global batch, while the
expensive per-block intermediates (e.g. FILIP's `[B, B, N, L]` token
similarities) exist for one block at a time and are recomputed in the
backward pass. Cross-entropies over rows are then local; over columns they
need a logsumexp across devices (`cross_entropies`).

    rows_a, rows_b = gather_rows(block_fn, local, travelling, axes, n)
    i2t, t2i, col_max = cross_entropies(rows_a, rows_b, positives, axes)
"""

import jax
import jax.numpy as jnp

from big_vl import losses


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
  me = losses._ring_index(axes)  # pylint: disable=protected-access
  block = jax.checkpoint(block_fn)
  shapes = jax.eval_shape(block_fn, local, travelling)

  def step(carry, k):
    held, rows = carry
    blocks = block(local, held)
    col = ((me - k) % n) * shapes[0].shape[1]
    rows = tuple(jax.lax.dynamic_update_slice(r, b.astype(r.dtype), (0, col))
                 for r, b in zip(rows, blocks))
    return (losses._shift(held, axes, n), rows), None  # pylint: disable=protected-access

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
