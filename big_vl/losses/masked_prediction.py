"""Masked prediction of a teacher's patch features (TIPS / SigLIP 2's
masked-prediction objective, in a feature-regression form).

The student's image tower sees a fraction of the patches of its global
views (the `multi_crop` pp op's, or else the main image; `two_towers.Model`
"extra views") replaced by a mask token (`config.model.image.mask_ratio`,
aux "view/img/patch_mask"); at those positions its projected patch
features ("view/img/ztokens", `config.model.token_features = True`) should
match the teacher's on the same, unmasked views ("teacher/view/img/ztokens":
an EMA teacher, `config.teacher.ema`, runs in evaluation mode, which masks
nothing). The main image, which the contrastive and caption losses see,
is never masked; the trainer runs the views only in the steps where an
objective that reads them counts (`start_frac`):

    loss = mean over masked patches of (1 - cos(student, teacher)).

Both feature sets are unit vectors (two_towers normalises "ztokens"), the
teacher's are held constant. TIPS and SigLIP 2 score the prediction with
iBOT's prototype heads and centring; this is the direct cosine regression
of the same features (simpler, no extra head), recorded as such in
docs/design_notes.md.

    config.model.token_features = True
    config.model.image.mask_ratio = 0.5
    config.teacher = dict(ema=0.999)
    config.objectives.masked = dict(loss="masked_prediction", weight=0.25,
                                    start_frac=0.8)

Metrics: "cosine" (mean over masked patches), "masked" (their fraction).
"""

import jax
import jax.numpy as jnp

from big_vl import registry

KEYS = ("view/img/ztokens", "view/img/patch_mask",
        "teacher/view/img/ztokens")


@registry.register("loss", "masked_prediction")
def masked_prediction_loss(outputs, batch, *, mesh=None):
  """1 - cosine between the student's and the teacher's patch features at
  the masked patches (see the module docstring).

  Args:
    outputs: the outputs dict with "view/img/ztokens" [B * V, N, D] (the
      student's, on the masked views), "view/img/patch_mask" bool
      [B * V, N] and "teacher/view/img/ztokens" [B * V, N, D].
    batch: unused.
    mesh: unused (per-patch terms; XLA partitions them with the batch).

  Returns:
    (loss, {"cosine", "masked"}).
  """
  del batch, mesh
  missing = [k for k in KEYS if k not in outputs]
  if missing:
    raise ValueError(
        f"masked_prediction needs {missing}: set config.model."
        "token_features = True and config.model.image.mask_ratio (the "
        "student's masked patch features) and config.teacher (its "
        f"features); the outputs hold {sorted(outputs)}.")
  student = outputs[KEYS[0]]
  teacher = jax.lax.stop_gradient(outputs[KEYS[2]])
  mask = outputs[KEYS[1]].astype(jnp.float32)
  if student.shape != teacher.shape or student.shape[:2] != mask.shape:
    raise ValueError(
        f"masked_prediction: student features {student.shape}, teacher "
        f"features {teacher.shape} and patch mask {mask.shape} must agree "
        "(keep model.token_keep = 1 so every patch has a feature).")
  cos = jnp.sum(student.astype(jnp.float32) * teacher.astype(jnp.float32),
                axis=-1)
  count = jnp.maximum(jnp.sum(mask), 1.0)
  cosine = jnp.sum(mask * cos) / count
  return 1.0 - cosine, {"cosine": cosine,
                        "masked": jnp.sum(mask) / mask.size}


# Reads the extra views' outputs: the trainer runs them while it counts.
masked_prediction_loss.needs_views = True
