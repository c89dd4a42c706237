"""A transformer text decoder over image tokens, with a KV cache.

Pre-LN blocks: causal self-attention (`SelfAttention`), cross-attention to
the image tower's tokens (`CrossAttention`), MLP (`MlpBlock_0`). Training
runs the whole caption at once (teacher forcing, or CapPa's parallel
prediction with the causal mask off per example); decoding builds the same
module with `decode=True`, which keeps every self-attention's keys and
values in the "cache" collection so each new token costs one position
(`big_vl/decode.py`).

    dec = TextDecoder(vocab_size=49408, width=64, depth=2, mlp_dim=128,
                      num_heads=2, max_len=23)
    params = dec.init(rng, tokens, memory)["params"]   # tokens i32[B, 23]
    logits = dec.apply({"params": params}, tokens, memory)  # [B, 23, V]
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vl.models import common



def memory_of(memory):
  """(tokens [B, N, D], mask bool [B, N] or None) of a decoder memory: an
  array, or {"tokens", "mask"} for padded (NaFlex) image tokens."""
  if isinstance(memory, dict):
    return memory["tokens"], memory["mask"]
  return memory, None


def memory_rows(memory):
  """The number of rows (batch) of a decoder memory of either form."""
  return memory_of(memory)[0].shape[0]

class CrossAttention(nn.Module):
  """Attention from tokens to a fixed memory (the image tokens), with the
  params of flax's `MultiHeadDotProductAttention` (`query`, `key`,
  `value`, `out`) and the same numbers.

  With `decode=True` the memory's keys and values are computed once, by the
  call that creates the caches, and kept in the "cache" collection
  (`cross_key`, `cross_value` [B, N, heads, head_dim]): a decoding step
  then projects its one query instead of all N memory tokens again (for
  open_clip's CoCa, N = 255 tokens per layer and step).

  Attributes:
    num_heads: attention heads.
    dtype: compute dtype.
    decode: cache the memory's keys and values (see above).
  """
  num_heads: int
  dtype: Any = jnp.float32
  decode: bool = False

  @nn.compact
  def __call__(self, x, memory):
    """[B, L, D] queries attending to memory [B, N, D] -> [B, L, D].

    `memory` may also be {"tokens": [B, N, D], "mask": bool [B, N]}
    (`memory_of`): False tokens (NaFlex padding) are not attended to.
    """
    memory, memory_mask = memory_of(memory)
    features = x.shape[-1]
    dense = functools.partial(
        nn.DenseGeneral, axis=-1, dtype=self.dtype,
        features=(self.num_heads, features // self.num_heads),
        kernel_init=nn.initializers.xavier_uniform())
    query = dense(name="query")(x)
    if self.decode and self.has_variable("cache", "cross_key"):
      key = self.get_variable("cache", "cross_key")
      value = self.get_variable("cache", "cross_value")
    else:
      key, value = dense(name="key")(memory), dense(name="value")(memory)
      if self.decode:  # The call that creates the caches.
        self.put_variable("cache", "cross_key", key)
        self.put_variable("cache", "cross_value", value)
    mask = (None if memory_mask is None
            else memory_mask[:, None, None, :])
    out = nn.dot_product_attention(query, key, value, mask=mask,
                                   dtype=self.dtype, deterministic=True,
                                   force_fp32_for_softmax=True)
    return nn.DenseGeneral(features=features, axis=(-2, -1), dtype=self.dtype,
                           kernel_init=nn.initializers.xavier_uniform(),
                           name="out")(out)


class DecoderBlock(nn.Module):
  """x + SelfAttn(LN(x)), x + CrossAttn(LN(x), memory), x + MLP(LN(x)).

  Attributes:
    mlp_dim: MLP hidden width.
    num_heads: attention heads.
    dropout: dropout on the residual branches.
    dtype: compute dtype.
    act: MLP activation name.
    norm_eps: LayerNorm epsilon.
    decode: keep the self-attention's keys / values in the "cache"
      collection and take one position per call (and the memory's keys /
      values, `CrossAttention`).
  """
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  act: str = "gelu"
  norm_eps: float = 1e-6
  decode: bool = False

  @nn.compact
  def __call__(self, x, memory, mask=None, deterministic=True):
    """Applies the block.

    Args:
      x: [B, L, D] token states (L = 1 per call when decoding).
      memory: [B, N, D] image tokens.
      mask: bool self-attention mask broadcastable to [B, H, L, L] (True =
        may attend), or None (decoding: the cache masks future positions).
      deterministic: disables dropout.

    Returns:
      [B, L, D].
    """
    attention = dict(num_heads=self.num_heads, dtype=self.dtype,
                     kernel_init=nn.initializers.xavier_uniform(),
                     force_fp32_for_softmax=True, deterministic=True)
    drop = lambda y: nn.Dropout(rate=self.dropout)(y, deterministic)
    norm = lambda name: nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype,
                                     name=name)
    y = norm("LayerNorm_0")(x)
    x = x + drop(nn.MultiHeadDotProductAttention(
        **attention, decode=self.decode, name="SelfAttention")(
            y, y, mask=mask))
    y = norm("LayerNorm_1")(x)
    x = x + drop(CrossAttention(
        num_heads=self.num_heads, dtype=self.dtype, decode=self.decode,
        name="CrossAttention")(y, memory))
    y = norm("LayerNorm_2")(x)
    return x + drop(common.MlpBlock(
        mlp_dim=self.mlp_dim, dropout=self.dropout, dtype=self.dtype,
        act=self.act, name="MlpBlock_0")(y, deterministic))


class TextDecoder(nn.Module):
  """Token embedding + learned positions, `DecoderBlock`s, LN, logits.

  Attributes:
    width, depth, mlp_dim, num_heads: the blocks' sizes.
    vocab_size: tokens (the tokenizer's vocabulary; default CLIP BPE's).
    input_vocab_size: rows of the input embedding when inputs use ids past
      the outputs (0: `vocab_size`); big_vision's CapPa embeds its mask
      token as id `vocab_size`, one extra row.
    max_len: positions (the longest decoder input).
    dropout: dropout rate.
    dtype: compute dtype name.
    act: MLP activation.
    norm_eps: LayerNorm epsilon.
    decode: one position per call, with a KV cache (see the module doc).
    remat_policy: a key of `common.REMAT_POLICIES` ("none", "full",
      "dots_saveable"): rematerialise each block in the backward pass.
    scan: run the blocks as one `nn.scan`: one `decoderblock` whose params
      (and, when decoding, KV caches) are stacked on a leading [depth] axis
      (`common.stack_block_params` converts from `decoderblock_{i}`).
  """
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  vocab_size: int = 49408
  input_vocab_size: int = 0
  max_len: int = 76
  dropout: float = 0.0
  dtype: Any = "float32"
  act: str = "gelu"
  norm_eps: float = 1e-6
  decode: bool = False
  remat_policy: str = "none"
  scan: bool = False

  @nn.compact
  def __call__(self, tokens, memory, *, full_attention=None, train=False):
    """Logits of the next token at every position.

    Args:
      tokens: int [B, L] decoder inputs (L <= max_len; 1 when decoding).
      memory: [B, N, width] image tokens (already at the decoder's width),
        or {"tokens": those, "mask": bool [B, N]} for padded (NaFlex) ones.
      full_attention: bool [B] or None: rows that attend to every position
        (CapPa's parallel prediction) instead of causally.
      train: enables dropout.

    Returns:
      f32 [B, L, vocab_size].
    """
    dtype = common.get_dtype(self.dtype)
    x = nn.Embed(self.input_vocab_size or self.vocab_size, self.width,
                 embedding_init=nn.initializers.normal(0.02),
                 name="Embed_0")(tokens).astype(dtype)
    pos = self.param("pos_embedding", nn.initializers.normal(0.02),
                     (1, self.max_len, self.width))
    length = tokens.shape[1]
    if self.decode and self.has_variable("cache", "index"):
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      x = x + jnp.take(pos[0], index.value + jnp.arange(length), axis=0)[None]
      index.value = index.value + length
      mask = None  # The self-attention caches mask what is not written yet.
    else:
      if self.decode:  # The call that creates the caches.
        self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      x = x + pos[:, :length]
      mask = nn.make_causal_mask(tokens, dtype=jnp.bool_)
      if full_attention is not None:
        mask = mask | full_attention[:, None, None, None]
    memory = jax.tree.map(lambda m: m.astype(dtype) if jnp.issubdtype(
        m.dtype, jnp.floating) else m, memory)
    x = common.run_blocks(
        DecoderBlock, dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                           dropout=self.dropout, dtype=dtype, act=self.act,
                           norm_eps=self.norm_eps, decode=self.decode),
        x, (memory, mask), not train, depth=self.depth, name="decoderblock",
        scan=self.scan, remat_policy=self.remat_policy,
        variable_axes=("params", "cache"))
    x = nn.LayerNorm(epsilon=self.norm_eps, dtype=dtype, name="LayerNorm_0")(x)
    return nn.Dense(self.vocab_size, dtype=dtype,
                    kernel_init=nn.initializers.zeros,
                    name="head")(x).astype(jnp.float32)
