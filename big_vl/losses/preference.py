"""Preference loss: a softmax over K candidates' image-text scores,
cross-entropy with the one a rater chose (HPS v2; Compress & Align's
caption reward model).

Reads the model's outputs and the batch's choice:

* K images per prompt (HPS v2): `zimg` f32[B, K, D], `ztxt` f32[B, D];
* K captions per image (Compress & Align): `zimg` f32[B, D], `ztxt`
  f32[B, K, D];

scores s_k = t * <zimg, ztxt> (t the model's logit scale), loss
-log softmax(s)[choice], averaged over the batch. With K = 2 this is the
logistic pairwise loss -log sigmoid(s_chosen - s_other).

    config.objectives = dict(preference=dict(loss="preference", weight=1.0))

Metrics: "choice_acc" (the highest-scored candidate is the chosen one).
"""

import jax
import jax.numpy as jnp

from big_vl import registry


def candidate_scores(zimg, ztxt):
  """Cosine scores f32[B, K] of K candidates (images or texts) per row.

  Args:
    zimg: f32[B, K, D] (K images per text) or f32[B, D].
    ztxt: f32[B, D] or f32[B, K, D] (K texts per image).
  """
  if zimg.ndim == 3 and ztxt.ndim == 2:
    return jnp.einsum("bkd,bd->bk", zimg, ztxt)
  if zimg.ndim == 2 and ztxt.ndim == 3:
    return jnp.einsum("bd,bkd->bk", zimg, ztxt)
  raise ValueError(
      "preference loss: needs K candidate images per text (zimg [B, K, D], "
      "ztxt [B, D]) or K candidate texts per image (zimg [B, D], ztxt "
      f"[B, K, D]); got zimg {zimg.shape}, ztxt {ztxt.shape}.")


@registry.register("loss", "preference")
def preference_loss(outputs, batch, *, mesh=None, choice_key="choice"):
  """Cross-entropy of the candidates' softmax with the rater's choice.

  Args:
    outputs: the model's outputs with "zimg", "ztxt" and "t" (see the
      module docstring for the shapes).
    batch: the step's batch with `choice_key` int[B] (index of the
      preferred candidate).
    mesh: unused (XLA partitions the batch).
    choice_key: the batch field of the choice.

  Returns:
    (loss, {"choice_acc"}).
  """
  del mesh
  if choice_key not in batch:
    raise ValueError(f"preference loss: choice_key={choice_key!r} is not a "
                     f"field of the batch (fields: {sorted(batch)}).")
  logits = outputs["t"] * candidate_scores(outputs["zimg"], outputs["ztxt"])
  choice = batch[choice_key].astype(jnp.int32)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  loss = -jnp.mean(jnp.take_along_axis(logp, choice[:, None], axis=-1))
  acc = jnp.mean((jnp.argmax(logits, axis=-1) == choice).astype(jnp.float32))
  return loss, {"choice_acc": acc}
