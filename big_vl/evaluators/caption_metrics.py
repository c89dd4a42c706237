"""Captioning metrics: CIDEr-D and BLEU-1..4, as the COCO caption toolkit
(`pycocoevalcap`) computes them from tokenized captions.

Captions are compared as lists of tokens; `tokens(text)` gives COCO-style
ones (lower case, punctuation dropped, split on white space; the toolkit
runs the Stanford PTB tokenizer first, which differs on a few contractions
and hyphens).

CIDEr-D (Vedantam et al. 2015): each caption is a TF-IDF vector of its
1..4-grams per order n, the document frequency counted over the reference
sets of the whole corpus; the score of a candidate against one reference is,
per n, the clipped cosine `sum_g min(c_g, r_g) r_g / (|c| |r|)` times a
Gaussian length penalty `exp(-(l_c - l_r)^2 / (2 * 6^2))`, averaged over n
and over the image's references, times 10. (As the toolkit does, the
lengths in the penalty count a caption's bigrams.)

BLEU (Papineni et al. 2002), corpus level, with each candidate's reference
length the closest one to its own (ties: the shorter) and the toolkit's
smoothing constants (1e-15 / 1e-9).

    cider_d(["a red square"], [["a red square", "red square"]])  # -> 10.0*...
    bleu(["a red square"], [["a red square"]])["bleu_4"]         # -> 1.0
"""

import collections
import math
import re

_PUNCT = re.compile(r"[^\w\s]")


def tokens(text):
  """COCO-style tokens of a caption: lower case, no punctuation."""
  return _PUNCT.sub(" ", text.lower()).split()


def _ngrams(words, n_max=4):
  """Counter of the 1..n_max-grams (tuples) of `words`."""
  out = collections.Counter()
  for n in range(1, n_max + 1):
    for i in range(len(words) - n + 1):
      out[tuple(words[i:i + n])] += 1
  return out


def _as_tokens(caption):
  return tokens(caption) if isinstance(caption, str) else list(caption)


def cider_d(candidates, references, *, sigma=6.0, n_max=4):
  """Corpus CIDEr-D and the per-image scores.

  Args:
    candidates: one caption per image (a string or a list of tokens).
    references: per image, a list of reference captions (same forms).
    sigma: the length penalty's width.
    n_max: the longest n-gram.

  Returns:
    (corpus score = the mean of the per-image scores, [per-image scores]).
  """
  if len(candidates) != len(references):
    raise ValueError(f"{len(candidates)} candidates for "
                     f"{len(references)} reference sets.")
  cands = [_ngrams(_as_tokens(c), n_max) for c in candidates]
  refs = [[_ngrams(_as_tokens(r), n_max) for r in rs] for rs in references]
  df = collections.Counter()
  for rs in refs:
    df.update(set().union(*[set(r) for r in rs]) if rs else set())
  log_docs = math.log(float(len(refs))) if refs else 0.0

  def vector(counts):
    vec = [dict() for _ in range(n_max)]
    norm = [0.0] * n_max
    bigrams = 0
    for gram, tf in counts.items():
      n = len(gram) - 1
      value = float(tf) * (log_docs - math.log(max(1.0, df[gram])))
      vec[n][gram] = value
      norm[n] += value * value
      if n == 1:
        bigrams += tf
    return vec, [math.sqrt(x) for x in norm], bigrams

  scores = []
  for cand, rs in zip(cands, refs):
    vc, nc, lc = vector(cand)
    total = [0.0] * n_max
    for r in rs:
      vr, nr, lr = vector(r)
      penalty = math.exp(-((lc - lr) ** 2) / (2 * sigma ** 2))
      for n in range(n_max):
        val = sum(min(v, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0)
                  for g, v in vc[n].items())
        if nc[n] and nr[n]:
          val /= nc[n] * nr[n]
        total[n] += val * penalty
    scores.append(10.0 * (sum(total) / n_max) / max(len(rs), 1))
  return (sum(scores) / len(scores) if scores else 0.0), scores


def bleu(candidates, references, *, n_max=4):
  """Corpus BLEU-1..n_max.

  Args:
    candidates: one caption per image (a string or a list of tokens).
    references: per image, a list of reference captions.
    n_max: the highest order.

  Returns:
    {"bleu_1": ..., ..., "bleu_{n_max}": ...}.
  """
  tiny, small = 1e-15, 1e-9
  correct, guess = [0] * n_max, [0] * n_max
  test_len = ref_len = 0
  for cand, rs in zip(candidates, references):
    words = _as_tokens(cand)
    ref_words = [_as_tokens(r) for r in rs]
    test_len += len(words)
    ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
    counts = _ngrams(words, n_max)
    clip = collections.Counter()
    for r in ref_words:
      for gram, c in _ngrams(r, n_max).items():
        clip[gram] = max(clip[gram], c)
    for gram, c in counts.items():
      correct[len(gram) - 1] += min(c, clip[gram])
    for n in range(n_max):
      guess[n] += max(0, len(words) - n)
  out, product = {}, 1.0
  ratio = (test_len + tiny) / (ref_len + small)
  for n in range(n_max):
    product *= (correct[n] + tiny) / (guess[n] + small)
    score = product ** (1.0 / (n + 1))
    if ratio < 1:
      score *= math.exp(1 - 1 / ratio)
    out[f"bleu_{n + 1}"] = score
  return out
