"""Peer parity: big_vl's CIDEr-D and BLEU-1..4 against `pycocoevalcap`.

`big_vl.evaluators.caption_metrics` re-implements the COCO caption toolkit's
scorers so that the captioning evaluator needs no extra dependency; these
tests check that it computes the same numbers as the toolkit's reference
pure-Python scorers (`pycocoevalcap==1.2`, requirements-peer.txt):
`pycocoevalcap.cider.cider.Cider` (CIDEr-D: corpus score and per-image
scores) and `pycocoevalcap.bleu.bleu.Bleu` (corpus BLEU-1..4, "closest"
reference length), on a hand set of edge cases and on a seeded random
corpus of 200 images over a small vocabulary (so that n-grams of every
order are shared and document frequencies vary).

What is compared is the scoring of already tokenized captions. Tokenization
is outside the comparison: the toolkit runs the Stanford PTB tokenizer
(Java) with -lowerCase and drops punctuation tokens, while `tokens()` lower
cases, replaces every non-word character by a space and splits on white
space. They agree on plain lower-case words but not everywhere: PTB keeps
"n't" / "'s" as tokens ("don't" -> "do n't", big_vl: "don t") and keeps
hyphenated words whole ("black-and-white", big_vl: "black and white"). So
both sides here get the same tokens: big_vl token lists (or strings that
`tokens()` maps to them) and pycocoevalcap the same tokens joined by single
spaces (its scorers split on white space), {image_id: [caption, ...]}.

Measured agreement (CPython 3.11, 400 random corpora of this kind):
BLEU-1..4 bit-identical (the same operations in the same order); CIDEr-D
within 4e-15 absolute per image and 2e-15 for the corpus score (1-2 ulp
of scores in [0, 10]: numpy's log, `np.e ** x`, pairwise mean and
(mean / refs) * 10 against math.log, math.exp, sum and 10 * mean / refs).
TOL leaves a margin of about a thousand to that and is far below what a
difference in the formulas would give (1e-3 or more).

Peer test (`pytest -m peer`); each test skips where pycocoevalcap is not
installed (pip install pycocoevalcap==1.2, or -r requirements-peer.txt).
"""

import random

import numpy as np
import pytest

from big_vl.evaluators import caption_metrics as cm

pytestmark = pytest.mark.peer

TOL = {"rel": 1e-12, "abs": 1e-14}


@pytest.fixture(name="toolkit", scope="module")
def fixture_toolkit():
  """(Cider, Bleu) of pycocoevalcap; skips where it is not installed.

  Imported in a fixture, not at module level: a module skipped at
  collection is not yet seen as `peer` and fails (tests/skip_policy.py).
  pycocoevalcap is a namespace package (no __init__.py), so the scorer
  modules themselves are imported: a stray `pycocoevalcap` directory on the
  path cannot pass for the toolkit.
  """
  cider_lib = pytest.importorskip("pycocoevalcap.cider.cider")
  bleu_lib = pytest.importorskip("pycocoevalcap.bleu.bleu")
  return cider_lib.Cider, bleu_lib.Bleu


def _coco_format(candidates, references):
  """(gts, res) as pycocoevalcap takes them: {i: [space-joined tokens]}."""
  def join(caption):
    return " ".join(cm.tokens(caption) if isinstance(caption, str)
                    else caption)
  res = {i: [join(c)] for i, c in enumerate(candidates)}
  gts = {i: [join(r) for r in rs] for i, rs in enumerate(references)}
  return gts, res


def _toolkit_scores(toolkit, candidates, references, sigma=6.0):
  """pycocoevalcap's (CIDEr-D, per-image CIDEr-D, [BLEU-1..4])."""
  cider_cls, bleu_cls = toolkit
  gts, res = _coco_format(candidates, references)
  cider, per_image = cider_cls(sigma=sigma).compute_score(gts, res)
  # verbose=0: Bleu otherwise prints its n-gram counts.
  bleus, _ = bleu_cls(4).compute_score(gts, res, verbose=0)
  return float(cider), np.asarray(per_image, np.float64), bleus


def _assert_parity(toolkit, candidates, references, sigma=6.0):
  """Asserts big_vl == pycocoevalcap; returns the max abs differences."""
  ref_cider, ref_per_image, ref_bleus = _toolkit_scores(
      toolkit, candidates, references, sigma=sigma)
  cider, per_image = cm.cider_d(candidates, references, sigma=sigma)
  bleus = cm.bleu(candidates, references)
  assert cider == pytest.approx(ref_cider, **TOL)
  assert len(per_image) == len(ref_per_image)
  np.testing.assert_allclose(per_image, ref_per_image, rtol=TOL["rel"],
                             atol=TOL["abs"])
  assert sorted(bleus) == ["bleu_1", "bleu_2", "bleu_3", "bleu_4"]
  for k in range(4):
    assert bleus[f"bleu_{k + 1}"] == pytest.approx(ref_bleus[k], **TOL), k
  diffs = {"cider": abs(cider - ref_cider),
           "cider_per_image": float(np.max(np.abs(
               np.asarray(per_image) - ref_per_image)))}
  for k in range(4):
    diffs[f"bleu_{k + 1}"] = abs(bleus[f"bleu_{k + 1}"] - ref_bleus[k])
  return diffs


def test_hand_set_of_edge_cases_matches_pycocoevalcap(toolkit):
  """Edge cases, one image each, scored as one corpus.

  Covers: a candidate equal to a reference; shorter and longer than all its
  references (BLEU brevity penalty, the CIDEr-D length penalty both ways);
  repeated n-grams (clipping of counts and of TF-IDF weights); several
  references of different lengths (closest length, a tie taking the
  shorter); no n-gram shared with the references (0); one word (no
  bigrams: CIDEr-D length 0); an empty candidate; and "a", which is in
  every image's references (document frequency = corpus size: no weight).
  big_vl gets the captions as strings (some candidates with capitals and
  punctuation, which `tokens()` drops), the toolkit their `tokens()`.
  """
  candidates = [
      "A man riding a horse on a beach.",         # equals its 1st reference
      "a dog",                                    # shorter than all
      "a cat sitting on a red sofa next to a window in a bright room",
      "a a a a a dog dog",                        # repeated n-grams
      "a plate of food on a table",               # refs of lengths 5..9
      "two zebras grazing",                       # 3 words: tie 2 vs 4
      "purple elephants dancing",                 # nothing shared
      "a",                                        # one word, no bigrams
      "",                                         # empty
      "A bus parked, on the street!",
  ]
  references = [
      ["a man riding a horse on a beach", "a person on a horse at the sea"],
      ["a dog running in a park", "a brown dog playing with a ball outside"],
      ["a cat on a sofa", "a cat sitting on a couch"],
      ["a dog and a cat", "a dog a dog a dog"],
      ["a plate of food", "a plate of food on a table",
       "a plate with food on a wooden table", "food on a table"],
      ["a zebra", "two zebras grazing grass"],
      ["a bird on a branch", "a small bird sitting on a tree branch"],
      ["a boat on the water", "a small boat on a lake"],
      ["a train at a station"],
      ["a bus parked on the street", "a red bus on a city street",
       "a double decker bus parked at the side of a road"],
  ]
  _assert_parity(toolkit, candidates, references)
  # One image: every n-gram is in every (the only) reference set, so all
  # TF-IDF weights are log(1 / 1) = 0 and CIDEr-D is 0 on both sides.
  _assert_parity(toolkit, ["a man riding a horse"], [["a man riding a horse"]])


def _random_corpus(seed, num_images=200, vocab=10, max_len=12):
  """Token-list captions over `vocab` words, 1-5 references per image.

  Small vocabulary so unigrams and bigrams are shared widely; a third of
  the candidates are an edited copy of one of their references (a word
  substituted, dropped or inserted) so that 3- and 4-grams match too.
  """
  rng = random.Random(seed)
  words = [f"w{i}" for i in range(vocab)]

  def sentence():
    return [rng.choice(words) for _ in range(rng.randint(1, max_len))]

  candidates, references = [], []
  for _ in range(num_images):
    refs = [sentence() for _ in range(rng.randint(1, 5))]
    if rng.random() < 1 / 3:
      cand = list(rng.choice(refs))
      pos = rng.randrange(len(cand))
      edit = rng.choice(("substitute", "drop", "insert"))
      if edit == "substitute":
        cand[pos] = rng.choice(words)
      elif edit == "drop" and len(cand) > 1:
        del cand[pos]
      else:
        cand.insert(pos, rng.choice(words))
    else:
      cand = sentence()
    candidates.append(cand)
    references.append(refs)
  return candidates, references


@pytest.mark.parametrize("seed,sigma", [(0, 6.0), (1, 6.0), (2, 3.0)])
def test_random_corpus_matches_pycocoevalcap(toolkit, seed, sigma):
  """A seeded random corpus of 200 images: corpus and per-image CIDEr-D and
  corpus BLEU-1..4 against the toolkit, at its default length-penalty width
  sigma = 6 and at sigma = 3 (both sides take it as a parameter). The
  n-gram order stays 4: the toolkit's CiderScorer counts 1..4-grams
  whatever its `n` (cook_refs / cook_test are called without it) and fails
  for n != 4."""
  candidates, references = _random_corpus(seed)
  diffs = _assert_parity(toolkit, candidates, references, sigma=sigma)
  # The corpus is not degenerate: every order has matches, scores vary.
  assert cm.bleu(candidates, references)["bleu_4"] > 0.05
  per_image = cm.cider_d(candidates, references, sigma=sigma)[1]
  assert len(set(per_image)) > 100 and max(per_image) > 1.0
  print(f"seed {seed} sigma {sigma}: max abs diffs {diffs}")
