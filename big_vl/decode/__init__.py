"""Decoding captions from a captioner (`big_vl.models.captioner`, or a
CoCa: `big_vl.models.coca`; any model with `encode` and `decode_tokens`).

`greedy(model, params, image, start_id=..., end_id=...)` runs the decoder
one token at a time with a KV cache: the model is cloned with
`decode=True`, whose self-attention layers keep their keys and values in
the "cache" collection, so step t costs one position instead of t. The
whole loop is one jitted `lax.fori_loop` over static lengths, so one
compile serves every batch of the same shape.

`greedy_uncached` recomputes the whole prefix at every step (the reference
the tests compare the cached decoder with).

`guidance=gamma` adds classifier-free guidance (Kornblith et al. 2023) in
the same pass. `beam_search(..., beam=K, alpha=...)` keeps K hypotheses per
image with the same cache (its rows follow their parents) and GNMT's length
penalty. `sample(model, params, image, rng, temperature=..., top_k=...,
top_p=...)` draws captions token by token with the same cache
(`sampling.filter_scores` makes the top-k and nucleus cuts). `greedy` and
`sample` take a `prefix` ([B, P] token ids, -1 = free) that is forced
through the cache before decoding continues (a task prompt, or the start
of a caption).
"""

from big_vl.decode import sampling
from big_vl.decode.beam import beam_search
from big_vl.decode.greedy_search import greedy
from big_vl.decode.greedy_search import greedy_uncached
from big_vl.decode.greedy_search import sample

__all__ = ["beam_search", "greedy", "greedy_uncached", "sample", "sampling"]
