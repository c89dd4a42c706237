"""Distillation of a teacher's image-text similarities (open_clip's
`DistillClipLoss`, its `--distill-model` recipe).

Over the global batch, each image's softmax distribution over the texts
and each text's distribution over the images, from the student's logits
`t * zimg @ ztxt.T`, are pulled towards the teacher's, from its own
embeddings and temperature:

    loss = (CE_rows(p_T, p_S) + CE_columns(p_T, p_S)) / 2,
    CE(p, q) = mean over rows (columns) of -sum_j p_j log q_j.

This is the KL divergence KL(p_T || p_S) plus the teacher's entropy, which
has no gradient (open_clip minimises the same cross-entropy); the "kl"
metric is the divergence itself (0 when the student's similarities equal
the teacher's), "agreement" the fraction of rows and columns whose
student argmax is the teacher's.

The teacher's outputs come in the outputs dict as "teacher/zimg",
"teacher/ztxt" ([B, D_T] unit rows, any width D_T) and "teacher/t" (its
temperature, not the log); they are held constant here (a teacher never
receives gradients, even an EMA of the student).

    objectives = dict(contrastive=dict(loss="softmax", weight=1.0),
                      distill=dict(loss="distill", weight=1.0, impl="ring"))

`impl="dense"` builds both [B, B] logit matrices (under jit, partitioned by
XLA); `impl="ring"` keeps each device's images and passes the text blocks
of student and teacher around the ring of batch devices (`ring.gather_rows`,
rematerialised in the backward pass), so a device holds its [B_local, B]
rows of each matrix, never a [B, B] one; column (text -> image) softmaxes
combine their statistics across devices. Both give the same loss, metrics
and gradients (tests/test_distill.py, 1 and 8 devices).
"""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from big_vl import registry
from big_vl.losses import ring

TEACHER_KEYS = ("teacher/zimg", "teacher/ztxt", "teacher/t")


def _teacher(aux):
  missing = [k for k in TEACHER_KEYS if k not in aux]
  if missing:
    raise ValueError(
        f"The distill loss needs the teacher's outputs {missing} in the "
        "outputs dict (its embeddings 'teacher/zimg', 'teacher/ztxt' and "
        f"temperature 'teacher/t'); the outputs hold {sorted(aux)}.")
  return tuple(jax.lax.stop_gradient(aux[k]) for k in TEACHER_KEYS)


@registry.register("loss", "distill")
def distill_loss(zimg, ztxt, aux, *, mesh=None, impl="dense"):
  """The student's similarity distributions against the teacher's.

  Args:
    zimg, ztxt: the student's unit embeddings [B, D].
    aux: the outputs dict: the student's temperature "t" and the teacher's
      "teacher/zimg", "teacher/ztxt", "teacher/t".
    mesh: the Mesh; "ring" runs over its batch axes.
    impl: "dense" or "ring".

  Returns:
    (loss, {"kl", "agreement"}): see the module docstring.
  """
  ring.check_impl(impl, "distill")
  teacher = _teacher(aux)
  t = aux["t"]
  if impl == "ring":
    return _ring_distill(zimg, ztxt, t, *teacher, mesh)
  student_logits = t * ring.cosines(zimg, ztxt)
  teacher_logits = teacher[2] * ring.cosines(teacher[0], teacher[1])
  rows = _cross_entropy(teacher_logits, student_logits, axis=1)
  cols = _cross_entropy(teacher_logits, student_logits, axis=0)
  return _combine(rows, cols, zimg.shape[0])


def _cross_entropy(teacher_logits, student_logits, axis):
  """(summed CE, summed teacher entropy, argmax agreements) along `axis`."""
  log_q = jax.nn.log_softmax(student_logits, axis=axis)
  log_p = jax.nn.log_softmax(teacher_logits, axis=axis)
  p = jnp.exp(log_p)
  agree = jnp.argmax(student_logits, axis=axis) == jnp.argmax(
      teacher_logits, axis=axis)
  return (-jnp.sum(p * log_q), -jnp.sum(p * log_p),
          jnp.sum(agree.astype(jnp.float32)))


def _combine(rows, cols, total):
  """The loss and metrics of the row and column sums over `total` each."""
  ce = (rows[0] + cols[0]) / (2 * total)
  entropy = (rows[1] + cols[1]) / (2 * total)
  return ce, {"kl": ce - entropy,
              "agreement": (rows[2] + cols[2]) / (2 * total)}


def _column_log_softmax(logits, axes):
  """log softmax of each column of `logits` [R, C] over the rows of every
  device of the ring."""
  m = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=0)), axes)
  z = jax.lax.psum(jnp.sum(jnp.exp(logits - m), axis=0), axes)
  return logits - (jnp.log(z) + m)


def _column_argmax(logits, first_row, axes):
  """Each column's best row over every device (ties: the lowest)."""
  logits = jax.lax.stop_gradient(logits)
  best = jax.lax.pmax(jnp.max(logits, axis=0), axes)
  return ring.column_argmax(logits, best, first_row, axes)


def _ring_distill(zimg, ztxt, t, teacher_zimg, teacher_ztxt, teacher_t,
                  mesh):
  """The loss with text blocks of both models passed around the ring."""
  axes, n = ring.layout(zimg, mesh)
  if not axes:
    return distill_loss(zimg, ztxt, {"t": t, "teacher/zimg": teacher_zimg,
                                     "teacher/ztxt": teacher_ztxt,
                                     "teacher/t": teacher_t})
  spec = P(axes)

  def local(zimg, ztxt, tzimg, tztxt, t, tt):
    b = zimg.shape[0]
    student, teacher = ring.gather_rows(
        lambda own, held: (t * ring.cosines(own[0], held[0]),
                           tt * ring.cosines(own[1], held[1])),
        (zimg, tzimg), (ztxt, tztxt), axes, n)
    rows = [jax.lax.psum(x, axes) for x in
            _cross_entropy(teacher, student, axis=1)]
    log_q = _column_log_softmax(student, axes)
    log_p = _column_log_softmax(teacher, axes)
    p = jnp.exp(log_p)
    first = ring.index(axes) * b
    agree = _column_argmax(student, first, axes) == _column_argmax(
        teacher, first, axes)
    cols = (-jax.lax.psum(jnp.sum(p * log_q), axes),
            -jax.lax.psum(jnp.sum(p * log_p), axes),
            jnp.sum(agree.astype(jnp.float32)))
    return _combine(rows, cols, n * b)

  fn = jax.shard_map(local, mesh=mesh,
                     in_specs=(spec, spec, spec, spec, P(), P()),
                     out_specs=(P(), P()), check_vma=False)
  return fn(zimg, ztxt, teacher_zimg, teacher_ztxt, t, teacher_t)
