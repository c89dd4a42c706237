"""Contrastive losses over the global batch.

Every loss has the signature

    loss_fn(zimg, ztxt, aux, *, mesh=None, **options) -> (loss, metrics)

where `zimg` and `ztxt` are L2-normalised `[B, D]` embeddings of the global
batch (row i of each is a positive pair), `aux` is the model's aux dict with
the temperature `t` (and the bias `b` for sigmoid), and `metrics` is a dict of
scalars to log. Under `jax.jit` with sharded inputs the plain versions here see
the whole global batch; XLA inserts the collectives.

Select one by name in a config: `config.loss = dict(name="sigmoid")`; every
other key of `config.loss` is passed as an option (`get(**config.loss)`).
"""

import functools

import jax
import jax.numpy as jnp

from big_vl import registry


def get(name, **options):
  """The loss `name` with `options` bound: `loss_fn(zimg, ztxt, aux, *, mesh)`.

  Args:
    name: registered loss name, e.g. "softmax" or "sigmoid".
    **options: keyword options of that loss.

  Returns:
    A function `(zimg, ztxt, aux, *, mesh=None) -> (loss, metrics)`.
  """
  fn = registry.get("loss", name)
  return functools.partial(fn, **options) if options else fn


def _logits(zimg, ztxt, aux):
  logits = jnp.einsum("id,jd->ij", zimg, ztxt,
                      precision=jax.lax.Precision.HIGHEST) * aux["t"]
  if "b" in aux:
    logits = logits + aux["b"]
  return logits


@registry.register("loss", "softmax")
def softmax_loss(zimg, ztxt, aux, *, mesh=None):
  """CLIP/ALIGN symmetric cross-entropy over the global batch.

  loss = (CE(image -> texts) + CE(text -> images)) / 2, where the logits are
  `t * zimg @ ztxt.T` (plus `b` if the model has a bias) and the positives sit
  on the diagonal.

  Args:
    zimg: f32[B, D] normalised image embeddings.
    ztxt: f32[B, D] normalised text embeddings, row i pairs with image i.
    aux: dict with "t" (the temperature, exp of the learned log) and
      optionally "b".
    mesh: unused by the dense version (the global batch is visible under jit).

  Returns:
    (loss, metrics) with metrics "img2txt_acc" and "txt2img_acc" (in-batch
    top-1 accuracy of the positive).
  """
  del mesh
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
def sigmoid_loss(zimg, ztxt, aux, *, mesh=None):
  """SigLIP pairwise sigmoid loss over the global batch.

  Every (image i, text j) pair is an independent binary problem with label +1
  on the diagonal and -1 elsewhere; logits are `t * zimg @ ztxt.T + b`. The
  summed negative log-likelihood is divided by the batch size, as in the
  SigLIP paper.

  Args:
    zimg: f32[B, D] normalised image embeddings.
    ztxt: f32[B, D] normalised text embeddings.
    aux: dict with "t" and "b" (bias; 0 is used if the model has none).
    mesh: unused by the dense version.

  Returns:
    (loss, metrics) with "pos_prob" (mean sigmoid of positives) and
    "neg_prob" (mean sigmoid of negatives).
  """
  del mesh
  logits = _logits(zimg, ztxt, aux)
  n = logits.shape[0]
  labels = 2.0 * jnp.eye(n, dtype=logits.dtype) - 1.0
  loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / n
  probs = jax.nn.sigmoid(logits)
  eye = jnp.eye(n, dtype=bool)
  metrics = {
      "pos_prob": jnp.sum(jnp.where(eye, probs, 0)) / n,
      "neg_prob": jnp.sum(jnp.where(eye, 0, probs)) / max(n * (n - 1), 1),
  }
  return loss, metrics
