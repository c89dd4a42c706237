"""The curation filters, each on embeddings (or captions) alone.

    score = clip_score(img, txt)                       # f32[N]
    threshold = score_threshold(score, top_fraction=0.5)
    keep_first, nn_sim, group = near_duplicates(img, 0.95, priority=score)
    leaked, eval_sim, eval_id = contaminated(img, eval_img, 0.9)
    kept, matched, counts = balance(captions, entries, cap=20_000)

Each returns per-row arrays, so that `big_vl.curate` can both count what a
filter flags on its own and apply the filters in sequence.
"""

import collections
import re

import numpy as np

from big_vl.curation import index as index_lib


def clip_score(img, txt):
  """Cosine similarity of each row's image and text embeddings (the
  "CLIP score" LAION-5B and DataComp filter by, without Hessel et al.'s
  2.5 * max(., 0) rescaling).

  Args:
    img, txt: f32[N, D] (normalised here, so raw embeddings work too).

  Returns:
    f32[N].
  """
  img = np.asarray(img, np.float32)
  txt = np.asarray(txt, np.float32)
  img = img / np.maximum(np.linalg.norm(img, axis=-1, keepdims=True), 1e-12)
  txt = txt / np.maximum(np.linalg.norm(txt, axis=-1, keepdims=True), 1e-12)
  return np.sum(img * txt, axis=-1)


def score_threshold(score, *, min_score=None, top_fraction=None):
  """The score a row needs to be kept.

  Args:
    score: f32[N] scores.
    min_score: a fixed threshold (LAION-5B: 0.28 with OpenAI's ViT-B/32).
    top_fraction: keep this fraction of the rows with the highest scores
      (DataComp's "CLIP score top 30%"); the threshold is the score of the
      last row kept (ties at it are kept too).

  Returns:
    The threshold (a float), or None when neither is given.
  """
  if min_score is not None and top_fraction is not None:
    raise ValueError("Give min_score or top_fraction, not both.")
  if top_fraction is not None:
    if not 0 < top_fraction <= 1:
      raise ValueError(f"top_fraction={top_fraction} is not in (0, 1].")
    if not len(score):
      return None
    count = max(1, int(round(top_fraction * len(score))))
    return float(np.sort(score)[::-1][count - 1])
  return None if min_score is None else float(min_score)


class _UnionFind:
  """Groups of row indices joined by `union`; `root` is the group's id."""

  def __init__(self, n):
    self.parent = np.arange(n)

  def root(self, i):
    parent = self.parent
    r = i
    while parent[r] != r:
      r = parent[r]
    while parent[i] != r:
      parent[i], i = r, parent[i]
    return r

  def union(self, a, b):
    ra, rb = self.root(a), self.root(b)
    if ra != rb:
      self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicates(vectors, threshold, *, k=16, priority=None,
                    factory="auto"):
  """Groups rows whose embeddings are at least `threshold` similar.

  Every row's `k` nearest neighbours are searched in a faiss index (see
  `curation.index`); a neighbour at similarity >= threshold joins the row's
  group (connected components: a chain of near copies is one group). One
  row per group is kept: the one with the highest `priority` (e.g. its
  CLIP score), ties to the lowest index.

  Args:
    vectors: f32[N, D] unit-norm embeddings (images, usually).
    threshold: cosine similarity at or above which two rows are copies.
    k: neighbours searched per row (a group larger than k is still found
      when its members chain).
    priority: f32[N] or None (keep the first row of each group).
    factory: the index kind (`curation.index.build`).

  Returns:
    (keep bool[N], nn_sim f32[N] the similarity to the nearest other row
    (-inf if none), group int64[N] each row's group id, the lowest index
    in it).
  """
  vectors = np.asarray(vectors, np.float32)
  n = len(vectors)
  if n == 0:
    return (np.zeros(0, bool), np.zeros(0, np.float32),
            np.zeros(0, np.int64))
  index = index_lib.build(vectors, factory)
  sims, ids = index_lib.search(index, vectors, min(k + 1, n))
  self_hit = ids == np.arange(n)[:, None]
  sims_other = np.where(self_hit, -np.inf, sims)
  nn_sim = sims_other.max(axis=1)
  groups = _UnionFind(n)
  rows, cols = np.nonzero((sims_other >= threshold) & (ids >= 0))
  for i, j in zip(rows, ids[rows, cols]):
    groups.union(int(i), int(j))
  group = np.array([groups.root(i) for i in range(n)], np.int64)
  priority = (np.zeros(n, np.float32) if priority is None
              else np.asarray(priority, np.float32))
  # Within each group, the best priority (then the lowest index) stays.
  order = np.lexsort((np.arange(n), -priority, group))
  keep = np.zeros(n, bool)
  first = np.ones(n, bool)
  first[1:] = group[order][1:] != group[order][:-1]
  keep[order[first]] = True
  return keep, nn_sim.astype(np.float32), group


def contaminated(vectors, eval_vectors, threshold, factory="auto"):
  """Rows that are near-duplicates of an evaluation set's images.

  Args:
    vectors: f32[N, D] the training rows' unit-norm image embeddings.
    eval_vectors: f32[M, D] the evaluation images' embeddings.
    threshold: similarity at or above which a row is a copy.
    factory: the index kind over the evaluation set.

  Returns:
    (leaked bool[N], eval_sim f32[N] the similarity to the nearest
    evaluation image, eval_id int64[N] its row in `eval_vectors`).
  """
  if not len(eval_vectors) or not len(vectors):
    n = len(vectors)
    return (np.zeros(n, bool), np.full(n, -np.inf, np.float32),
            np.full(n, -1, np.int64))
  index = index_lib.build(eval_vectors, factory)
  sims, ids = index_lib.search(index, vectors, 1)
  return sims[:, 0] >= threshold, sims[:, 0], ids[:, 0]


def _phrases(text, max_words):
  """Every phrase of 1..max_words consecutive words of `text` (lower case),
  the units entries are matched against."""
  words = re.findall(r"[\w'-]+", text.lower())
  return {" ".join(words[i:i + n]) for n in range(1, max_words + 1)
          for i in range(len(words) - n + 1)}


def balance(captions, entries, cap, *, seed=0, keep=None):
  """MetaCLIP's balancing (Xu et al. 2023): caps how often each entry
  (a concept, e.g. a class name) is represented.

  A caption matches an entry when the entry's words occur in it as
  consecutive whole words (case-insensitive). With count(e) the number of
  considered rows matching e, each (row, matched entry) pair draws a
  uniform u; the row is kept if u < min(1, cap / count(e)) for any of its
  entries, so entries rarer than `cap` keep all their rows and frequent
  ones about `cap`. Rows matching no entry are not kept (as MetaCLIP).

  Args:
    captions: N captions (str; None counts as matching nothing).
    entries: the entry strings.
    cap: the per-entry target count (MetaCLIP: t = 20,000 of 500k entries).
    seed: the sampling seed.
    keep: bool[N] rows considered (None: all); others are not kept.

  Returns:
    (kept bool[N], matched bool[N] rows matching some entry, counts
    {entry: rows matching it}).
  """
  entries = [e.strip().lower() for e in entries if e.strip()]
  if not entries:
    raise ValueError("balance needs at least one entry.")
  known = set(entries)
  max_words = max(len(e.split()) for e in entries)
  n = len(captions)
  keep = np.ones(n, bool) if keep is None else np.asarray(keep, bool)
  matches = [sorted(_phrases(c, max_words) & known) if c and keep[i]
             else [] for i, c in enumerate(captions)]
  counts = collections.Counter(e for m in matches for e in m)
  rng = np.random.default_rng(seed)
  kept = np.zeros(n, bool)
  for i, matched in enumerate(matches):
    if matched:
      draws = rng.random(len(matched))
      kept[i] = any(u < min(1.0, cap / counts[e])
                    for u, e in zip(draws, matched))
  matched = np.array([bool(m) for m in matches], bool)
  return kept, matched, {e: counts.get(e, 0) for e in entries}
