"""Token-by-token decoding with a KV cache: greedy and sampled, and the
uncached greedy reference."""

import functools

import jax
import jax.numpy as jnp

from big_vl.decode import sampling
from big_vl.models import decoder as decoder_lib
from big_vl.models import naflex


def finish(tokens, end_id, pad_id):
  """Tokens after the first `end_id` of each row become `pad_id`."""
  ended = jnp.cumsum(tokens == end_id, axis=1) - (tokens == end_id)
  return jnp.where(ended > 0, pad_id, tokens)


# Jitted decoders by (function, model repr, static options): a linen module
# holding dicts cannot be a static jit argument; its repr (its whole config)
# can key one.
_JITTED = {}


def jitted(fn, model, **static):
  """`fn(model, params, image, **static)` as a jitted `(params, image)`
  function, compiled once per model config and static options."""
  key = (fn, repr(model), tuple(sorted(static.items())))
  if key not in _JITTED:
    _JITTED[key] = jax.jit(functools.partial(fn, model, **static))
  return _JITTED[key]


def empty_cache(dec, params, memory, length):
  """The (empty) KV caches of decoder clone `dec` for `memory`'s rows: one
  call on a full-length input creates them."""
  _, cache = dec.apply({"params": params},
                       jnp.zeros((decoder_lib.memory_rows(memory), length),
                                 jnp.int32),
                       memory, method="decode_tokens",
                       mutable=["cache"])
  return cache


def forced_tokens(prefix, length):
  """int32[B, length]: `prefix` [B, P] (-1: not forced) padded with -1."""
  prefix = jnp.asarray(prefix, jnp.int32)
  if prefix.ndim != 2 or prefix.shape[1] > length:
    raise ValueError(f"prefix must be int[B, P] with P <= {length} (the "
                     f"decoded length), got shape {prefix.shape}.")
  return jnp.pad(prefix, ((0, 0), (0, length - prefix.shape[1])),
                 constant_values=-1)


def greedy(model, params, image, *, start_id, end_id, pad_id=0,
           guidance=None, prefix=None):
  """The most likely next token, step by step, with a KV cache.

  With `guidance` = gamma, the score of a token is classifier-free
  guidance's `log p(c) + gamma * (log p(c | x) - log p(c))`, computed as
  `(1 - gamma) * log p(c) + gamma * log p(c | x)` (exactly the conditional
  scores at gamma = 1 and the unconditional ones at 0): the batch runs
  twice in one pass, rows with the image and rows with the model's learned
  null memory (`Captioner.uncond_prob` trains it), both fed the chosen
  token.

  Args:
    model: a `Captioner` (any `decode` value; decoding uses a clone).
    params: its params.
    image: f32[B, H, W, 3] preprocessed images.
    start_id: the first decoder input (CLIP BPE: 49406).
    end_id: the token that ends a caption (CLIP BPE: 49407).
    pad_id: what follows `end_id`.
    guidance: gamma (a float), or None for plain conditional decoding.
    prefix: optional int[B, P]: the first P tokens of each caption are
      these (teacher forced through the cache) and decoding continues
      after them; -1 entries are not forced (a row's shorter prefix is
      padded with -1). E.g. a task prompt, or a caption's beginning.

  Returns:
    int32[B, model.max_len - 1]: the generated tokens (without the start
    token, the prefix included); after the first `end_id` of a row,
    `pad_id`.
  """
  return _run(model, params, image, None, start_id=start_id, end_id=end_id,
              pad_id=pad_id, guidance=guidance, prefix=prefix)


def sample(model, params, image, rng, *, start_id, end_id, pad_id=0,
           temperature=1.0, top_k=None, top_p=None, guidance=None,
           prefix=None):
  """Captions drawn token by token, with a KV cache.

  Each step draws from `softmax(scores / temperature)` cut to the `top_k`
  tokens and / or the `top_p` nucleus (`sampling.filter_scores`), where
  `scores` are the log-probabilities (with `guidance`, the guided scores of
  `greedy`). Step t draws with `fold_in(rng, t)`: the same key gives the
  same captions. `temperature=0` or `top_k=1` is `greedy`.

  Args:
    model, params, image, start_id, end_id, pad_id, guidance, prefix: as
      `greedy`.
    rng: a PRNG key.
    temperature: > 0 (0: greedy).
    top_k: keep the k most likely tokens (None: all).
    top_p: keep the nucleus holding this much probability (None: all).

  Returns:
    int32[B, model.max_len - 1], as `greedy`.
  """
  sampling.check_options(temperature, top_k, top_p)
  return _run(model, params, image, rng, start_id=start_id, end_id=end_id,
              pad_id=pad_id, guidance=guidance, temperature=float(temperature),
              top_k=None if top_k is None else int(top_k),
              top_p=None if top_p is None else float(top_p), prefix=prefix)


def _run(model, params, image, rng, *, start_id, end_id, pad_id, guidance,
         temperature=0.0, top_k=None, top_p=None, prefix=None):
  """`_stepwise`, jitted once per model and options."""
  forced = None if prefix is None else forced_tokens(prefix,
                                                     model.max_len - 1)
  return jitted(_stepwise, model, start_id=int(start_id), end_id=int(end_id),
                pad_id=int(pad_id), guidance=None if guidance is None
                else float(guidance), temperature=temperature, top_k=top_k,
                top_p=top_p)(params, image, rng, forced)


def _stepwise(model, params, image, rng, forced, *, start_id, end_id, pad_id,
              guidance, temperature, top_k, top_p):
  """`greedy`'s and `sample`'s computation (traced once per model, shape
  and options)."""
  dec = model.clone(decode=True)
  length = model.max_len - 1
  batch = naflex.batch_size(image)
  variables = {"params": params}
  encode = functools.partial(dec.apply, variables,
                             method="encode")
  memory = encode(image)
  if guidance is not None:  # Rows [with the image; with the null memory].
    memory = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), memory,
                          encode(image, uncond=jnp.ones((batch,), bool)))
  cache = empty_cache(dec, params, memory, length)

  def step(t, carry):
    cache, token, out = carry
    fed = token if guidance is None else jnp.concatenate([token, token])
    logits, cache = dec.apply(
        {"params": params, **cache}, fed[:, None], memory,
        method="decode_tokens", mutable=["cache"])
    scores = jax.nn.log_softmax(logits[:, -1], axis=-1)
    if guidance is not None:
      scores = (1.0 - guidance) * scores[batch:] + guidance * scores[:batch]
    token = sampling.choose(
        scores, None if rng is None else jax.random.fold_in(rng, t),
        temperature=temperature, top_k=top_k, top_p=top_p)
    if forced is not None:
      token = jnp.where(forced[:, t] >= 0, forced[:, t], token)
    return cache, token, out.at[:, t].set(token)

  start = jnp.full((batch,), start_id, jnp.int32)
  out = jnp.full((batch, length), pad_id, jnp.int32)
  _, _, out = jax.lax.fori_loop(0, length, step, (cache, start, out))
  return finish(out, end_id, pad_id)


def greedy_uncached(model, params, image, *, start_id, end_id, pad_id=0,
                    guidance=None, prefix=None):
  """`greedy` without a cache: the decoder reruns the whole prefix at every
  step, and guidance runs the conditional and unconditional rows as two
  calls (slow; the reference of the tests)."""
  length = model.max_len - 1
  batch = naflex.batch_size(image)
  variables = {"params": params}

  def scores_of(tokens, memory):
    logits = model.apply(variables, tokens, memory,
                         method="decode_tokens")
    return jax.nn.log_softmax(logits[:, -1], axis=-1)

  encode = functools.partial(model.apply, variables, image,
                             method="encode")
  memory = encode()
  null = None if guidance is None else encode(
      uncond=jnp.ones((batch,), bool))
  tokens = jnp.full((batch, 1), start_id, jnp.int32)
  forced = None if prefix is None else forced_tokens(prefix, length)
  for step in range(length):
    scores = scores_of(tokens, memory)
    if guidance is not None:
      scores = ((1.0 - guidance) * scores_of(tokens, null)
                + guidance * scores)
    nxt = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    if forced is not None:
      nxt = jnp.where(forced[:, step] >= 0, forced[:, step], nxt)
    tokens = jnp.concatenate([tokens, nxt[:, None]], axis=1)
  return finish(tokens[:, 1:], end_id, pad_id)
