"""Beam search with a KV cache.

Each image keeps `beam` hypotheses (rows `b * beam + k` of the decoder's
batch and of its KV cache). A step scores every hypothesis's extensions by
their summed token log-probabilities, keeps the best `beam` live ones per
image (the cache rows follow their parents) and moves hypotheses that just
emitted `end_id` to a finished pool, ranked by the length-normalised score
`logp / ((5 + length) / 6) ** alpha` (GNMT's penalty; alpha = 0: raw sum).
At the end the live hypotheses (captions cut at the maximum length) compete
with the finished ones, and the best of each image is returned.
"""


import jax
import jax.numpy as jnp

from big_vl.decode import greedy_search
from big_vl.models import common
from big_vl.models import naflex

_NEG = -1.0e9


def length_penalty(length, alpha):
  """GNMT's `((5 + length) / 6) ** alpha`."""
  return ((5.0 + length) / 6.0) ** alpha


def beam_search(model, params, image, *, beam, start_id, end_id, pad_id=0,
                alpha=0.0):
  """The best caption of each image under beam search.

  Args:
    model: a `Captioner`.
    params: its params.
    image: f32[B, H, W, 3].
    beam: hypotheses kept per image (1: greedy).
    start_id, end_id, pad_id: as for `greedy`.
    alpha: the length penalty's exponent (0: rank by summed log-prob).

  Returns:
    (tokens int32[B, max_len - 1] as `greedy` gives them, scores f32[B]:
    their summed log-probabilities, end token included).
  """
  return greedy_search.jitted(
      _beam_search, model, beam=int(beam), start_id=int(start_id),
      end_id=int(end_id), pad_id=int(pad_id), alpha=float(alpha))(
          params, image)


def _gather_rows(tree, rows):
  """Cache leaves reordered by `rows` along their row axis: the leading one,
  or the second under a scanned block stack (`common.BLOCK_NAMES`: a
  leading [depth] axis). Position counters (scalars, or [depth] when
  scanned) and the cached memory keys / values (`cross_*`: the same for
  every hypothesis of an image) are kept."""
  def gather(path, x):
    keys = [str(getattr(p, "key", p)) for p in path]
    stacked = any(k in common.BLOCK_NAMES for k in keys)
    if x.ndim <= int(stacked) or keys[-1].startswith("cross_"):
      return x
    return x[:, rows] if stacked else x[rows]
  return jax.tree_util.tree_map_with_path(gather, tree)


def _beam_search(model, params, image, *, beam, start_id, end_id, pad_id,
                 alpha):
  dec = model.clone(decode=True)
  length = model.max_len - 1
  batch = naflex.batch_size(image)
  rows = batch * beam
  variables = {"params": params}
  memory = dec.apply(variables, image, method="encode")
  memory = jax.tree.map(lambda m: jnp.repeat(m, beam, axis=0),
                        memory)  # row b * beam + k
  cache = greedy_search.empty_cache(dec, params, memory, length)
  # Live hypotheses: only beam 0 is real at the start.
  live_logp = jnp.tile(jnp.array([0.0] + [_NEG] * (beam - 1)), (batch, 1))
  live_seq = jnp.full((batch, beam, length), pad_id, jnp.int32)
  fin_score = jnp.full((batch, beam), _NEG)
  fin_logp = jnp.full((batch, beam), _NEG)
  fin_seq = jnp.full((batch, beam, length), pad_id, jnp.int32)
  token = jnp.full((rows,), start_id, jnp.int32)

  def step(t, carry):
    cache, token, live_logp, live_seq, fin_score, fin_logp, fin_seq = carry
    logits, cache = dec.apply(
        {"params": params, **cache}, token[:, None], memory,
        method="decode_tokens", mutable=["cache"])
    logp = jax.nn.log_softmax(logits[:, -1], axis=-1)
    vocab = logp.shape[-1]
    cand = (live_logp[:, :, None] + logp.reshape(batch, beam, vocab))
    cand = cand.reshape(batch, beam * vocab)
    # 2 * beam candidates: enough for `beam` live ones even if up to `beam`
    # of them end here.
    top_logp, top_idx = jax.lax.top_k(cand, 2 * beam)
    parent, tok = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(live_seq, parent[:, :, None], axis=1)
    seqs = seqs.at[:, :, t].set(tok)
    ended = tok == end_id
    # Finished pool: merge the ones that ended with the old pool.
    score = jnp.where(ended, top_logp / length_penalty(t + 1.0, alpha), _NEG)
    all_score = jnp.concatenate([fin_score, score], axis=1)
    all_logp = jnp.concatenate([fin_logp, jnp.where(ended, top_logp, _NEG)],
                               axis=1)
    all_seq = jnp.concatenate([fin_seq, seqs], axis=1)
    best, keep = jax.lax.top_k(all_score, beam)
    fin_score = best
    fin_logp = jnp.take_along_axis(all_logp, keep, axis=1)
    fin_seq = jnp.take_along_axis(all_seq, keep[:, :, None], axis=1)
    # Live: the best `beam` that did not end.
    alive = jnp.where(ended, _NEG, top_logp)
    live_logp, pick = jax.lax.top_k(alive, beam)
    live_seq = jnp.take_along_axis(seqs, pick[:, :, None], axis=1)
    src = jnp.take_along_axis(parent, pick, axis=1)  # [B, beam]
    src_rows = (jnp.arange(batch)[:, None] * beam + src).reshape(rows)
    cache = _gather_rows(cache, src_rows)
    token = jnp.take_along_axis(tok, pick, axis=1).reshape(rows)
    return cache, token, live_logp, live_seq, fin_score, fin_logp, fin_seq

  carry = (cache, token, live_logp, live_seq, fin_score, fin_logp, fin_seq)
  carry = jax.lax.fori_loop(0, length, step, carry)
  _, _, live_logp, live_seq, fin_score, fin_logp, fin_seq = carry
  # Hypotheses still alive at the last position compete with the finished
  # ones (as captions cut at max_len).
  live_score = live_logp / length_penalty(float(length), alpha)
  all_score = jnp.concatenate([fin_score, live_score], axis=1)
  best = jnp.argmax(all_score, axis=1)[:, None]
  tokens = jnp.take_along_axis(
      jnp.concatenate([fin_seq, live_seq], axis=1), best[:, :, None],
      axis=1)[:, 0]
  scores = jnp.take_along_axis(
      jnp.concatenate([fin_logp, live_logp], axis=1), best, axis=1)[:, 0]
  return greedy_search.finish(tokens, end_id, pad_id), scores
