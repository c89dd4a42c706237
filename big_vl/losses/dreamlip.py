"""DreamLIP: several sub-captions per image as positives, plus grouping.

DreamLIP (Zheng et al., 2024) trains on long, multi-sentence captions. Each
step samples K sentences (sub-captions) of an image's long caption
(`pp: sample_sentences(K)|tokenize(..., key='texts', out='text')`, so the
batch's text is [B, K, L] and the model's ztxt [B, K, D]) and uses two
losses:

- multi-positive contrastive: image -> text is a softmax over all B * K
  sub-captions with the image's K sub-captions as positives (the mean of
  their K cross-entropies); text -> image is the usual softmax over the B
  images for each of the B * K sub-captions.
- grouping: each sub-caption embedding attends over its image's patch
  tokens (`two_towers(token_features=True)` gives aux["img/ztokens"]),
  `softmax_n(t * <ztxt_ik, patch_in>)`; the attention-pooled, normalised
  patch feature is matched with the sub-caption in a softmax contrastive
  loss over the B * K (pooled feature, sub-caption) pairs. It ties sentences
  to the image regions they describe.

    config.objectives = dict(dreamlip=dict(loss="dreamlip", weight=1.0,
                                           grouping_weight=1.0))

With K = 1 and grouping_weight = 0 this is CLIP's softmax loss.
`impl="dense"` builds the [B, B * K] logits (partitioned by XLA under a
sharded jit); `impl="ring"` keeps images and their patch tokens in place and
passes sub-caption blocks around the ring of batch devices
(`ring.gather_rows`), holding `[B_local, B_global * K]` rows per device:
about what XLA's partitioned dense logits take, so it brings no memory
gain (bench/token_loss_memory.py), only the ring's data flow.
Both give the same loss and gradients (tests/test_dreamlip.py).
"""

import jax
import jax.numpy as jnp

from jax.sharding import PartitionSpec as P

from big_vl import registry
from big_vl.losses import contrastive as contrastive_lib
from big_vl.losses import ring

_HIGHEST = jax.lax.Precision.HIGHEST


def _l2_normalize(x, eps=1e-12):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def multi_positive_logits(zimg, ztxt, t):
  """Image-vs-sub-caption logits and the positives.

  Args:
    zimg: f32[B, D] normalised image embeddings.
    ztxt: f32[B, K, D] normalised sub-caption embeddings (K per image).
    t: the temperature (logit scale).

  Returns:
    (logits f32[B, B * K] with column j * K + k = sub-caption k of image j,
     positives f32[B, K] = t * <zimg_i, ztxt_ik>).
  """
  b, k, d = ztxt.shape
  logits = t * jnp.einsum("id,jd->ij", zimg, ztxt.reshape(b * k, d),
                          precision=_HIGHEST)
  positives = t * jnp.einsum("id,ikd->ik", zimg, ztxt, precision=_HIGHEST)
  return logits, positives


def grouped_patches(ztxt, patches, t, mask=None):
  """Each sub-caption's attention-pooled patch feature of its own image.

  Args:
    ztxt: f32[B, K, D] normalised sub-caption embeddings.
    patches: f32[B, N, D] normalised patch tokens.
    t: the attention's logit scale.
    mask: optional bool[B, N], False at NaFlex padding (not attended to).

  Returns:
    f32[B, K, D]: normalised `sum_n softmax_n(t <ztxt_ik, p_in>) p_in`.
  """
  logits = t * jnp.einsum("ikd,ind->ikn", ztxt, patches, precision=_HIGHEST)
  if mask is not None:
    logits = jnp.where(mask[:, None, :], logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1)
  return _l2_normalize(jnp.einsum("ikn,ind->ikd", weights, patches,
                                  precision=_HIGHEST))


@registry.register("loss", "dreamlip")
def dreamlip_loss(zimg, ztxt, aux, *, mesh=None, impl="dense",
                  grouping_weight=1.0):
  """DreamLIP's multi-positive contrastive + grouping loss.

  Args:
    zimg: f32[B, D] image embeddings.
    ztxt: f32[B, K, D] sub-caption embeddings ([B, D]: K = 1).
    aux: the model's aux with "t" and, for the grouping loss,
      "img/ztokens" [B, N, D].
    mesh: the Mesh; "ring" runs over its batch axes.
    impl: "dense" or "ring".
    grouping_weight: weight of the grouping loss (0: off).

  Returns:
    (loss, metrics): "contrastive_loss", "grouping_loss" (with a weight),
    "img2txt_acc" (the best sub-caption is one of the image's) and
    "txt2img_acc".
  """
  ring.check_impl(impl, "dreamlip")
  if ztxt.ndim == 2:
    ztxt = ztxt[:, None]
  b, k, _ = ztxt.shape
  t = aux["t"]
  if grouping_weight and "img/ztokens" not in aux:
    raise ValueError("The dreamlip grouping loss needs patch tokens: set "
                     "config.model.token_features = True (or "
                     "grouping_weight = 0 in its objective).")
  patch_mask = aux.get("img/mask")  # NaFlex padding, not grouped.
  if impl == "ring":
    return _ring_dreamlip(zimg, ztxt, aux.get("img/ztokens"), t, mesh,
                          grouping_weight, patch_mask)
  logits, pos = multi_positive_logits(zimg, ztxt, t)
  loss_i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1)[:, None] - pos)
  loss_t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - pos.reshape(-1))
  contrastive = (loss_i2t + loss_t2i) / 2
  owner = jnp.arange(b * k) // k
  metrics = {
      "contrastive_loss": contrastive,
      "img2txt_acc": jnp.mean(owner[jnp.argmax(logits, axis=1)]
                              == jnp.arange(b)),
      "txt2img_acc": jnp.mean(jnp.argmax(logits, axis=0) == owner),
  }
  loss = contrastive
  if grouping_weight:
    grouped = grouped_patches(ztxt, aux["img/ztokens"], t, patch_mask)
    d = grouped.shape[-1]
    grouping, _ = contrastive_lib.softmax_loss(grouped.reshape(b * k, d),
                                      ztxt.reshape(b * k, d), {"t": t})
    metrics["grouping_loss"] = grouping
    loss = loss + grouping_weight * grouping
  return loss, metrics


def _ring_dreamlip(zimg, ztxt, patches, t, mesh, grouping_weight,
                   patch_mask=None):
  """`dreamlip_loss` with sub-caption blocks travelling around the ring."""
  axes, n = ring.layout(zimg, mesh)
  with_grouping = bool(grouping_weight)
  # The patches (and their NaFlex mask) stay with their images.
  local_patches = () if not with_grouping else (
      (patches,) if patch_mask is None else (patches, patch_mask))
  if not axes:
    aux = {"t": t, **dict(zip(("img/ztokens", "img/mask"), local_patches))}
    return dreamlip_loss(zimg, ztxt, aux, grouping_weight=grouping_weight)
  rows = P(axes)

  def local(zimg, ztxt, t, *maybe_patches):
    b, k, d = ztxt.shape
    total = n * b * k
    me = ring.index(axes)
    grouped = (grouped_patches(ztxt, maybe_patches[0], t,
                               *maybe_patches[1:]).reshape(b * k, d)
               if with_grouping else jnp.zeros((0, d), ztxt.dtype))

    def block(mine, held):
      zi, gr = mine
      texts = held.reshape(-1, d)
      return (t * jnp.einsum("id,jd->ij", zi, texts, precision=_HIGHEST),
              t * jnp.einsum("id,jd->ij", gr, texts, precision=_HIGHEST))

    img_rows, grp_rows = ring.gather_rows(block, (zimg, grouped), ztxt,
                                               axes, n)
    own = ((me * b + jnp.arange(b))[:, None] * k + jnp.arange(k)[None, :])
    i2t, t2i, col_max = ring.cross_entropies(img_rows, img_rows, own,
                                                  axes)
    contrastive = jax.lax.psum(i2t + t2i, axes) / (2 * total)
    owner = jnp.arange(n * b * k) // k
    acc_i2t = jax.lax.psum(jnp.sum(
        owner[jnp.argmax(img_rows, axis=1)] == me * b + jnp.arange(b)),
                           axes) / (n * b)
    winner = ring.column_argmax(img_rows, col_max, me * b, axes)
    acc_t2i = jax.lax.psum(jnp.sum(
        jnp.take(winner, own.reshape(-1)) == own.reshape(-1) // k),
                           axes) / total
    metrics = {"contrastive_loss": contrastive, "img2txt_acc": acc_i2t,
               "txt2img_acc": acc_t2i}
    loss = contrastive
    if with_grouping:
      g_i2t, g_t2i, _ = ring.cross_entropies(
          grp_rows, grp_rows, own.reshape(-1, 1), axes)
      grouping = jax.lax.psum(g_i2t + g_t2i, axes) / (2 * total)
      metrics["grouping_loss"] = grouping
      loss = loss + grouping_weight * grouping
    return loss, metrics

  in_specs = (rows, rows, P()) + (rows,) * len(local_patches)
  fn = jax.shard_map(local, mesh=mesh, in_specs=in_specs,
                     out_specs=(P(), P()), check_vma=False)
  return fn(zimg, ztxt, t, *local_patches)
