"""FILIP: fine-grained (token-wise) late-interaction contrastive loss.

FILIP (Yao et al., 2021) compares an image and a text through their tokens
instead of one pooled vector each. With x_k the image's (projected,
L2-normalised) patch tokens and y_l the text's valid tokens:

    s_i2t(image, text) = mean_k max_l <x_k, y_l>   (each patch finds a word)
    s_t2i(image, text) = mean_l max_k <x_k, y_l>   (each word finds a patch)

The loss is the softmax contrastive loss with image -> text logits
`t * s_i2t` (a row per image) and text -> image logits `t * s_t2i` (a
column per text); padding tokens never count. Select it with

    config.model.token_features = True     # two_towers: aux["img/ztokens"],
                                           #  aux["txt/ztokens"], txt/mask
    config.model.token_keep = 0.5          # optional: top half of the patch
                                           #  tokens by projected norm
    config.objectives = dict(filip=dict(loss="filip", weight=1.0,
                                        impl="ring", global_weight=0.0))

Memory: the token similarities of a pair of blocks are
`[B_img, B_txt, N, L]`. `impl="dense"` builds them for the whole global
batch (tests and small batches only). `impl="ring"` keeps images where they
are and passes text blocks around the ring of batch devices
(`jax.lax.ppermute`): each step builds one `[B_local, B_local, N, L]` block
(recomputed in the backward pass, `jax.checkpoint`), so no device ever holds
more than that, plus `[B_local, B_global]` similarity rows. Both give the
same loss and gradients (tests/test_filip.py).
"""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from big_vl import registry
from big_vl.losses import contrastive as contrastive_lib
from big_vl.losses import ring

_HIGHEST = jax.lax.Precision.HIGHEST


def late_similarities(ximg, ytxt, mask, img_mask=None):
  """FILIP's two similarity matrices of image and text token sets.

  Args:
    ximg: f32[Bi, N, D] normalised image tokens.
    ytxt: f32[Bt, L, D] normalised text tokens.
    mask: bool[Bt, L], True for the text's real (non-padding) tokens.
    img_mask: optional bool[Bi, N], True for the image's real patches
      (NaFlex inputs: False at padding); None: all are.

  Returns:
    (s_i2t, s_t2i), each f32[Bi, Bt]: mean over image tokens of the best
    text token, and mean over valid text tokens of the best image token.

  Example:
    >>> x = jnp.eye(2)[None]                   # one image, tokens e0, e1
    >>> y = jnp.eye(2)[None, :1]               # one text, token e0
    >>> late_similarities(x, y, jnp.ones((1, 1), bool))
    (Array([[0.5]]), Array([[1.]]))
  """
  sim = jnp.einsum("ind,jld->ijnl", ximg, ytxt, precision=_HIGHEST)
  valid = mask[None, :, None, :]
  best_word = jnp.max(jnp.where(valid, sim, -jnp.inf), axis=3)
  if img_mask is None:
    s_i2t = jnp.mean(best_word, axis=2)
    best_patch = jnp.max(sim, axis=2)
  else:  # Padding patches neither look for words nor are found.
    im = img_mask.astype(sim.dtype)[:, None, :]
    s_i2t = jnp.sum(jnp.where(im > 0, best_word, 0.0), axis=2) / jnp.maximum(
        im.sum(axis=2), 1.0)
    best_patch = jnp.max(jnp.where(img_mask[:, None, :, None], sim,
                                   -jnp.inf), axis=2)
  m = mask.astype(sim.dtype)[None]
  s_t2i = jnp.sum(best_patch * m, axis=2) / jnp.maximum(m.sum(axis=2), 1.0)
  return s_i2t, s_t2i


def _token_inputs(aux):
  try:
    return (aux["img/ztokens"], aux["txt/ztokens"], aux["txt/mask"],
            aux.get("img/mask"))
  except KeyError as e:
    raise ValueError(
        "The filip loss needs token features: set config.model."
        "token_features = True (two_towers then returns aux['img/ztokens'], "
        f"aux['txt/ztokens'] and aux['txt/mask']); missing {e}.") from None


@registry.register("loss", "filip")
def filip_loss(zimg, ztxt, aux, *, mesh=None, impl="dense",
               global_weight=0.0):
  """FILIP's token-wise contrastive loss (see the module docstring).

  Args:
    zimg, ztxt: the pooled embeddings (used only with `global_weight`).
    aux: the model's aux with "t", "img/ztokens" [B, N, D], "txt/ztokens"
      [B, L, D] and "txt/mask" [B, L].
    mesh: the Mesh; "ring" runs over its batch axes.
    impl: "dense" or "ring".
    global_weight: adds this times the pooled softmax loss (0: FILIP alone;
      > 0 also trains the pooled embeddings that the zero-shot and
      retrieval evaluators use).

  Returns:
    (loss, metrics): metrics "img2txt_acc", "txt2img_acc" of the late
    similarities (and "global_loss" with global_weight).
  """
  ring.check_impl(impl, "filip")
  ximg, ytxt, mask, img_mask = _token_inputs(aux)
  t = aux["t"]
  if impl == "ring":
    loss, metrics = _ring_filip(ximg, ytxt, mask, t, mesh, img_mask)
  else:
    s_i2t, s_t2i = late_similarities(ximg, ytxt, mask, img_mask)
    loss, metrics = _contrastive(t * s_i2t, t * s_t2i)
  if global_weight:
    global_loss, _ = contrastive_lib.softmax_loss(zimg, ztxt, aux, mesh=mesh)
    loss = loss + global_weight * global_loss
    metrics["global_loss"] = global_loss
  return loss, metrics


def _contrastive(logits_i2t, logits_t2i):
  """Mean of the row CE of i2t and the column CE of t2i (diagonal pairs)."""
  labels = jnp.arange(logits_i2t.shape[0])
  loss_i2t = jnp.mean(jax.nn.logsumexp(logits_i2t, axis=1)
                      - jnp.diagonal(logits_i2t))
  loss_t2i = jnp.mean(jax.nn.logsumexp(logits_t2i, axis=0)
                      - jnp.diagonal(logits_t2i))
  metrics = {
      "img2txt_acc": jnp.mean(jnp.argmax(logits_i2t, axis=1) == labels),
      "txt2img_acc": jnp.mean(jnp.argmax(logits_t2i, axis=0) == labels),
  }
  return (loss_i2t + loss_t2i) / 2, metrics


def _ring_filip(ximg, ytxt, mask, t, mesh, img_mask=None):
  """FILIP loss with text blocks passed around the ring of batch devices.

  Each device keeps its B_local images and, after n steps, has their
  similarity rows against all B_global texts (both directions, `[B_local,
  B_global]`); each step's `[B_local, B_local, N, L]` token block is
  rematerialised for the backward pass. Image -> text cross-entropies are
  rows of the local i2t matrix; text -> image ones need each text's
  logsumexp over all images, a column logsumexp combined across devices.
  """
  axes, n = ring.layout(ximg, mesh)
  if not axes:
    s_i2t, s_t2i = late_similarities(ximg, ytxt, mask, img_mask)
    return _contrastive(t * s_i2t, t * s_t2i)
  spec = P(axes)
  # The images (and their patch masks) stay; the texts travel.
  rows = (ximg,) if img_mask is None else (ximg, img_mask)

  def local(ytxt, mask, t, *rows):
    b = rows[0].shape[0]
    total = n * b
    me = ring.index(axes)
    rows_i2t, rows_t2i = ring.gather_rows(
        lambda x, held: late_similarities(x[0], *held, *x[1:]), rows,
        (ytxt, mask), axes, n)
    own = me * b + jnp.arange(b)
    li2t, lt2i = t * rows_i2t, t * rows_t2i
    i2t, t2i, col_max = ring.cross_entropies(li2t, lt2i, own[:, None],
                                                  axes)
    loss = jax.lax.psum(i2t + t2i, axes) / (2 * total)
    acc_i2t = jax.lax.psum(jnp.sum(jnp.argmax(li2t, axis=1) == own),
                           axes) / total
    winner = ring.column_argmax(lt2i, col_max, me * b, axes)
    acc_t2i = jax.lax.psum(jnp.sum(jnp.take(winner, own) == own),
                           axes) / total
    return loss, {"img2txt_acc": acc_i2t, "txt2img_acc": acc_t2i}

  fn = jax.shard_map(local, mesh=mesh,
                     in_specs=(spec, spec, P()) + (spec,) * len(rows),
                     out_specs=(P(), P()), check_vma=False)
  return fn(ytxt, mask, t, *rows)
