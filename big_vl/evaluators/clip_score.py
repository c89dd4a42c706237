"""CLIPScore and RefCLIPScore (Hessel et al. 2021), and caption-to-image
self-retrieval: how well generated captions fit their images by a
contrastive model's embeddings.

For image embedding v, caption embedding c and reference embeddings R (all
unit rows):

    CLIP-S(c, v)       = w * max(cos(c, v), 0)               (w = 2.5)
    RefCLIP-S(c, R, v) = harmonic mean of CLIP-S(c, v) and
                         max(max_{r in R} cos(c, r), 0)

Self-retrieval ranks every evaluated image for each generated caption (the
captions as text queries, `retrieval.recall_at_k`'s text -> image): a
caption that singles out its image ranks it first (the guidance paper's
measure of specific captions, Kornblith et al. 2023).

    scores = clip_scores(zimg, zcap)                    # f32[N]
    refs = ref_clip_scores(zimg, zcap, zref, ref_owner)  # f32[N]
"""

import numpy as np

from big_vl.evaluators import retrieval

W = 2.5  # Hessel et al.'s rescaling of CLIP-S.


def clip_scores(zimg, zcap, w=W):
  """Per-example CLIP-S.

  Args:
    zimg: f32[N, D] unit image embeddings.
    zcap: f32[N, D] unit embeddings of each image's generated caption.
    w: the rescaling weight.

  Returns:
    f32[N] in [0, w].
  """
  cos = np.sum(np.asarray(zimg, np.float64) * np.asarray(zcap, np.float64),
               axis=1)
  return w * np.maximum(cos, 0.0)


def ref_clip_scores(zimg, zcap, zref, ref_owner, w=W):
  """Per-example RefCLIP-S.

  Args:
    zimg, zcap: as `clip_scores`.
    zref: f32[M, D] unit embeddings of every reference caption.
    ref_owner: int[M]: the example each reference belongs to (every
      example needs at least one).
    w: CLIP-S's weight.

  Returns:
    f32[N]: the harmonic mean of CLIP-S and the clipped best reference
    cosine (0 where either is 0).
  """
  owner = np.asarray(ref_owner, np.int64)
  n = len(zcap)
  if len(owner) != len(zref):
    raise ValueError(f"ref_owner has {len(owner)} entries for {len(zref)} "
                     "references.")
  if np.bincount(owner, minlength=n)[:n].min(initial=1) == 0:
    raise ValueError("ref_clip_scores: an example has no reference.")
  cos = np.sum(np.asarray(zcap, np.float64)[owner]
               * np.asarray(zref, np.float64), axis=1)
  best = np.full(n, -np.inf)
  np.maximum.at(best, owner, cos)
  ref = np.maximum(best, 0.0)
  clip = clip_scores(zimg, zcap, w)
  total = clip + ref
  return np.where(total > 0, 2 * clip * ref / np.where(total > 0, total, 1),
                  0.0)


def self_retrieval(zimg, zcap, ks=(1, 5)):
  """{"r@k": fraction of captions whose own image ranks in the top k}
  among the N images (ties count against the hit)."""
  out = retrieval.recall_at_k(zimg, zcap, np.arange(len(zcap)), ks=ks)
  return {f"r@{k}": out[f"txt2img_r@{k}"] for k in ks}
