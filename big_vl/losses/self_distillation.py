"""Local-to-global self-distillation (SILC, Naeem et al. 2023; SigLIP 2's
first self-supervised objective), DINO's loss over multi-crop views.

An EMA teacher (`config.teacher.ema`) sees the V global views (the
`multi_crop` pp op's, or the main image as the one view) and the student
sees the global and the U local views; both score each view's pooled
image features with the self-distillation head (`config.model.ssl_head`,
`big_vl/models/dino_head.py`: K prototype cosines). For every teacher
global view g and every student view v other than g itself:

    p_g = softmax((t_g - c) / teacher_temp)      (t held constant)
    loss = mean over (example, g, v) of -sum_k p_g[k] log softmax(s_v /
           student_temp)[k]

where c is DINO's centre of the teacher outputs. DINO and SILC keep c as
an EMA of batch means (momentum 0.9); here c is the mean over this step's
global batch and views (DINO's momentum 0, which its ablation trains
without collapse), so the objective needs no state beside the params and
resumes exactly; recorded in docs/design_notes.md. With one global view
and no local views the student's (masked) global view is scored against
the teacher's unmasked one (TIPS's global term).

    config.input.pp = "decode|multi_crop(224, 96)|resize(224)|..."
    config.model.ssl_head = dict(prototypes=65536)
    config.teacher = dict(ema=0.999)
    config.objectives.self_distillation = dict(
        loss="self_distillation", weight=1.0, start_frac=0.8)

Metrics: "teacher_entropy" (mean entropy of p_g in nats: log K is a
uniform, collapsed teacher; 0 a one-hot one), "agreement" (fraction of
pairs whose student and teacher argmax agree).
"""

import jax
import jax.numpy as jnp

from big_vl import registry

STUDENT_KEYS = ("view/img/ssl", "local/img/ssl")
TEACHER_KEY = "teacher/view/img/ssl"


@registry.register("loss", "self_distillation")
def self_distillation_loss(outputs, batch, *, mesh=None, student_temp=0.1,
                           teacher_temp=0.04):
  """DINO's cross-entropy from the teacher's global views to the student's
  other views (module docstring).

  Args:
    outputs: the outputs dict with "view/img/ssl" f32[B, V, K] (the
      student's global views), optionally "local/img/ssl" f32[B, U, K]
      (its local views) and "teacher/view/img/ssl" f32[B, V, K].
    batch: unused.
    mesh: unused (the centre is a mean over the global batch; XLA
      partitions it with the batch).
    student_temp, teacher_temp: the softmax temperatures (DINO: 0.1 and
      0.04).

  Returns:
    (loss, {"teacher_entropy", "agreement"}).

  Example (shapes):
    >>> out = {"view/img/ssl": s_glob,      # [B, 2, K]
    ...        "local/img/ssl": s_local,    # [B, 8, K]
    ...        "teacher/view/img/ssl": t}   # [B, 2, K]
    >>> loss, metrics = self_distillation_loss(out, {})  # 2 * 9 pairs each
  """
  del batch, mesh
  if STUDENT_KEYS[0] not in outputs or TEACHER_KEY not in outputs:
    raise ValueError(
        "self_distillation needs the student's and the teacher's view "
        f"features {STUDENT_KEYS[0]!r} and {TEACHER_KEY!r}: set "
        "config.model.ssl_head and config.teacher (e.g. ema=0.999); the "
        f"outputs hold {sorted(outputs)}.")
  if student_temp <= 0 or teacher_temp <= 0:
    raise ValueError(f"self_distillation: temperatures must be positive, "
                     f"got student_temp={student_temp}, teacher_temp="
                     f"{teacher_temp}.")
  teacher = jax.lax.stop_gradient(outputs[TEACHER_KEY]).astype(jnp.float32)
  glob = outputs[STUDENT_KEYS[0]].astype(jnp.float32)
  if glob.shape != teacher.shape:
    raise ValueError(f"self_distillation: student global views {glob.shape} "
                     f"and teacher views {teacher.shape} must agree.")
  n_global = teacher.shape[1]
  center = jnp.mean(teacher, axis=(0, 1), keepdims=True)
  log_target = jax.nn.log_softmax((teacher - center) / teacher_temp, axis=-1)
  target = jnp.exp(log_target)
  # Every student view, the global ones first: [B, V + U, K].
  students = glob
  if STUDENT_KEYS[1] in outputs:
    students = jnp.concatenate(
        [glob, outputs[STUDENT_KEYS[1]].astype(jnp.float32)], axis=1)
  log_p = jax.nn.log_softmax(students / student_temp, axis=-1)
  ce = -jnp.mean(jnp.einsum("bgk,bvk->bgv", target, log_p), axis=0)
  agree = jnp.mean((jnp.argmax(target, -1)[:, :, None]
                    == jnp.argmax(students, -1)[:, None, :]
                    ).astype(jnp.float32), axis=0)
  # The (teacher view, student view) pairs [V, V + U]: not a global view
  # with itself, unless it is the only view (the masked student against
  # the unmasked teacher).
  own = 1.0 - jnp.eye(n_global) if n_global > 1 else jnp.ones((1, 1))
  pairs = jnp.concatenate(
      [own, jnp.ones((n_global, students.shape[1] - n_global))], axis=1)
  count = jnp.sum(pairs)
  entropy = -jnp.mean(jnp.sum(target * log_target, axis=-1))
  return jnp.sum(ce * pairs) / count, {
      "teacher_entropy": entropy, "agreement": jnp.sum(agree * pairs) / count}


# Reads the extra views' outputs: the trainer runs them while it counts.
self_distillation_loss.needs_views = True
