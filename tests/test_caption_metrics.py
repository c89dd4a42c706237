"""CIDEr-D and BLEU on captions whose scores are worked out by hand."""

import math

import pytest

from big_vl.evaluators import caption_metrics as cm


def test_tokens_are_lower_case_without_punctuation():
  assert cm.tokens("A Red, square.") == ["a", "red", "square"]


def test_bleu_on_a_worked_example():
  # "the cat sat on the mat" vs "the cat is on the mat": clipped matches
  # 5/6 unigrams, 3/5 bigrams, 1/4 trigrams, 0/3 4-grams; equal lengths.
  got = cm.bleu(["the cat sat on the mat"], [["the cat is on the mat"]])
  assert got["bleu_1"] == pytest.approx(5 / 6)
  assert got["bleu_2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
  assert got["bleu_3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))
  assert got["bleu_4"] < 1e-3  # no 4-gram matches (smoothed to ~0)
  # A short candidate: brevity penalty exp(1 - 6/2); the closest reference
  # length counts (6 here, not 9).
  short = cm.bleu(["the cat"], [["the cat is on the mat",
                                 "a cat is sitting on the mat today"]])
  assert short["bleu_1"] == pytest.approx(math.exp(1 - 6 / 2))
  same = cm.bleu(["a red square"], [["a red square", "blue"]])
  assert same["bleu_3"] == pytest.approx(1.0)


def test_cider_d_on_a_worked_example():
  # Two images; every reference n-gram occurs in one of them (df = 1), an
  # n-gram of no reference has df 0 -> 1: all weights are log 2, so the
  # clipped cosines count shared n-grams.
  refs = [["a b c d"], ["w x y z"]]
  score, per_image = cm.cider_d(["a b c d e", "w x y z"], refs)
  # Image 1: cosines 4/(sqrt5*2), 3/(2*sqrt3), 2/(sqrt3*sqrt2), 1/sqrt2 for
  # n = 1..4; lengths in bigrams 4 vs 3 -> penalty exp(-1 / 72).
  first = 10 * (4 / (math.sqrt(5) * 2) + 3 / (2 * math.sqrt(3))
                + 2 / (math.sqrt(3) * math.sqrt(2)) + 1 / math.sqrt(2)
                ) / 4 * math.exp(-1 / 72)
  assert per_image[0] == pytest.approx(first)
  assert per_image[1] == pytest.approx(10.0)  # identical to its reference
  assert score == pytest.approx((first + 10.0) / 2)
  # Nothing shared: 0. An n-gram in every reference set carries no weight.
  assert cm.cider_d(["p q r s", "w x y z"], refs)[1][0] == 0.0
  common = cm.cider_d(["the a b", "the w x"], [["the a b"], ["the w x"]])
  assert common[1][0] < 10.0
  # Several references: the mean over them.
  two = cm.cider_d(["a b c d", "w x y z"], [["a b c d", "p q r s"],
                                           ["w x y z"]])[1]
  assert two[0] == pytest.approx(5.0)
  with pytest.raises(ValueError, match="2 candidates for 1 reference"):
    cm.cider_d(["a", "b"], [["a"]])
