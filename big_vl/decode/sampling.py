"""Choosing the next token from its scores: argmax, or a draw from the
temperature-scaled distribution cut to its top k tokens and / or its
nucleus (the smallest set of most likely tokens holding `top_p` of the
probability; Holtzman et al. 2020).

    scores = jax.nn.log_softmax(logits)           # f32[B, V]
    token = choose(scores, key, temperature=0.7, top_k=40, top_p=0.9)

`temperature=0` is the argmax (greedy decoding), whatever the cuts.
"""

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


def check_options(temperature, top_k, top_p):
  """Raises a ValueError naming the option that is out of range."""
  if temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0 (0: greedy).")
  if top_k is not None and int(top_k) < 1:
    raise ValueError(f"top_k={top_k} must be >= 1 (None: no cut).")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p} must be in (0, 1] (None: no cut).")


def filter_scores(scores, *, top_k=None, top_p=None):
  """`scores` with every token outside the cuts set to -inf.

  Args:
    scores: f32[B, V] log-probabilities (or logits: the cuts only compare
      them; `top_p` reads `softmax(scores)`).
    top_k: keep the k highest scores of each row (None: all). Tokens tied
      with the k-th are kept too.
    top_p: keep the most likely tokens until their softmax mass reaches
      `top_p` (the token that crosses it included, so the top token always
      stays); None: all.

  Returns:
    f32[B, V].
  """
  if top_k is not None and top_k < scores.shape[-1]:
    kth = jax.lax.top_k(scores, int(top_k))[0][..., -1:]
    scores = jnp.where(scores < kth, _NEG_INF, scores)
  if top_p is not None and top_p < 1.0:
    ordered = jnp.sort(scores, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass above each token
    kept = before < top_p
    # The lowest kept score of each row (the top one always is).
    floor = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1,
                    keepdims=True)
    scores = jnp.where(scores < floor, _NEG_INF, scores)
  return scores


def choose(scores, key, *, temperature=0.0, top_k=None, top_p=None):
  """The next token of each row.

  Args:
    scores: f32[B, V] next-token log-probabilities.
    key: a PRNG key (unused at temperature 0).
    temperature: 0 for the argmax; otherwise tokens are drawn from
      `softmax(filter_scores(scores) / temperature)`.
    top_k, top_p: the cuts of `filter_scores` (only when sampling).

  Returns:
    int32[B].
  """
  if temperature == 0:
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)
  scores = filter_scores(scores / temperature, top_k=top_k, top_p=top_p)
  return jax.random.categorical(key, scores, axis=-1).astype(jnp.int32)
