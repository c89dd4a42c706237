"""CLIPScore, RefCLIPScore and self-retrieval (big_vl/evaluators/
clip_score.py) on hand-worked embeddings."""

import numpy as np
import pytest

from big_vl.evaluators import clip_score


def test_hand_worked_scores():
  zimg = np.array([[1.0, 0.0], [0.0, 1.0]])
  zcap = np.array([[0.6, 0.8], [0.6, -0.8]])  # cos 0.6 and -0.8
  np.testing.assert_allclose(clip_score.clip_scores(zimg, zcap), [1.5, 0.0])
  # Example 0: references at cos 0.6 and 0.8 (best 0.8); example 1: -0.8.
  zref = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
  ref = clip_score.ref_clip_scores(zimg, zcap, zref, [0, 0, 1])
  np.testing.assert_allclose(ref, [2 * 1.5 * 0.8 / (1.5 + 0.8), 0.0])
  # Each caption is closer to the other image: both miss at 1, hit at 2.
  assert clip_score.self_retrieval(zimg, zcap, ks=(1, 2)) == {
      "r@1": 0.0, "r@2": 1.0}
  # A caption equal to its image: CLIP-S = w, found first.
  assert clip_score.clip_scores(zimg, zimg).tolist() == [2.5, 2.5]
  assert clip_score.self_retrieval(zimg, zimg, ks=(1,))["r@1"] == 1.0
  # A zero (empty) caption scores 0 and ties count against the hit.
  zero = np.zeros_like(zimg)
  assert clip_score.clip_scores(zimg, zero).tolist() == [0.0, 0.0]
  assert clip_score.self_retrieval(zimg, zero, ks=(1,))["r@1"] == 0.0
  with pytest.raises(ValueError, match="no reference"):
    clip_score.ref_clip_scores(zimg, zcap, zref[:1], [0])
  with pytest.raises(ValueError, match="entries"):
    clip_score.ref_clip_scores(zimg, zcap, zref, [0, 1])
