"""Transformer text tower (CLIP-style causal or SigLIP-style bidirectional).

Example:
  >>> model = TextTransformer(variant="mu", vocab_size=1000, max_len=16,
  ...                         causal=True, pool_type="eot", num_classes=32)
  >>> text = jnp.array([[5, 17, 999, 0, 0, 0]], jnp.int32)  # 0 = pad
  >>> params = model.init(jax.random.key(0), text)["params"]
  >>> out, aux = model.apply({"params": params}, text)
  >>> out.shape, aux["tokens"].shape, aux["mask"].tolist()
  ((1, 32), (1, 6, 64), [[True, True, True, False, False, False]])

Here "eot" pooling takes the feature at position 2, the last non-pad token.

Parameter tree (top level): `Embed_0` (token embedding), `pos_embedding`
[1, max_len, width], `Encoder_0/{encoderblock_0.., encoder_norm}`,
`MAPHead_0` (pool_type="map"), `head` (num_classes set). The names match
big_vision's text transformer. With scan=True the blocks are one
`Encoder_0/encoderblock` whose leaves have a leading [depth] axis (see
`common.stack_block_params`).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from big_vl.models import common

POOL_TYPES = ("eot", "last", "first", "mean", "map")


def last_valid_index(mask):
  """Index of the last True in each row of a bool [B, L] mask (0 if none)."""
  positions = jnp.arange(mask.shape[1], dtype=jnp.int32)
  return jnp.max(jnp.where(mask, positions[None, :], 0), axis=1)


class TextTransformer(nn.Module):
  """Transformer text encoder.

  Attributes:
    variant: size name such as "B" or "mu" (see `common.VARIANTS`; a "/PATCH"
      suffix is ignored); explicit dimensions below override it.
    width: token width.
    depth: number of transformer blocks.
    mlp_dim: MLP hidden width.
    num_heads: attention heads.
    vocab_size: token embedding rows (49408 = CLIP BPE).
    max_len: length of the learned position embedding; inputs may be shorter.
    causal: causal (autoregressive) self-attention, as CLIP.
    pool_type: "eot" = feature at the last non-pad token (CLIP's end-of-text
      pooling: with CLIP's BPE the EOT id 49407 is the row's argmax, and it
      is the last non-pad token); "last" = last position (SigLIP, whose
      texts are padded with EOS-like tokens); "first"; "mean" = mean over
      non-pad tokens; "map" = attention pooling over non-pad tokens.
    pad_id: the padding token id.
    mask_pad: whether attention ignores pad keys. For exact parity with
      OpenAI CLIP weights set False: CLIP's BPE id 0 ("!") is also its pad
      id, and its causal attention does not need the pad mask anyway.
    num_classes: if set, a final Dense named `head` to this width.
    dropout: dropout rate; needs a "dropout" rng when > 0 and train=True.
    dtype: compute dtype name ("float32" or "bfloat16"); params stay float32.
    remat_policy: per-block rematerialisation (less activation memory, more
      compute): "none", "full" (recompute the whole block in the backward
      pass) or "dots_saveable" (keep weight-matmul outputs, recompute the
      rest); see `common.REMAT_POLICIES`.
    scan: run the blocks under `nn.scan` (faster compiles for deep towers);
      block params are then stacked as `encoderblock` with a leading
      [depth] axis instead of `encoderblock_{i}` (convert with
      `common.stack_block_params` / `common.unstack_block_params`).
    remat: legacy flag; True means remat_policy="full".
    act: MLP activation: "gelu" (tanh approx.), "gelu_exact", "quick_gelu".
    norm_eps: epsilon of every LayerNorm (1e-6 flax / big_vision; 1e-5
      open_clip; 1e-12 BERT).
    norm_position: "pre" (CLIP, SigLIP: pre-LN blocks and a final
      `encoder_norm`) or "post" (BERT: post-LN blocks, no final norm).
    embed_norm: LayerNorm (`embed_norm`) on the summed embeddings (BERT).
    type_vocab_size: > 0 adds a learned token-type embedding
      (`type_embedding`, [type_vocab_size, width]) of type 0 to every token,
      as BERT does for single-segment inputs.
    head_bias: whether `head` has a bias (CLIP's `text_projection` has none).
  """
  variant: str | None = None
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  vocab_size: int = 49408
  max_len: int = 77
  causal: bool = False
  pool_type: str = "last"
  pad_id: int = 0
  mask_pad: bool = True
  num_classes: int | None = None
  dropout: float = 0.0
  dtype: Any = "float32"
  remat_policy: str = "none"
  scan: bool = False
  remat: bool = False
  act: str = "gelu"
  norm_eps: float = 1e-6
  norm_position: str = "pre"
  embed_norm: bool = False
  type_vocab_size: int = 0
  head_bias: bool = True

  def dims(self):
    """The resolved {width, depth, mlp_dim, num_heads}."""
    return common.resolve_dims(
        "TextTransformer", self.variant, width=self.width, depth=self.depth,
        mlp_dim=self.mlp_dim, num_heads=self.num_heads)

  @nn.compact
  def __call__(self, text, *, train=False, embeddings=None):
    """Encodes token ids.

    Args:
      text: int [B, L] token ids, L <= max_len, padded with `pad_id`.
      train: enables dropout.
      embeddings: optional float [B, L, width] used in place of the token
        embedding lookup of `text` (position embeddings are still added;
        `text` still gives the pad mask and the pooled position). CoOp's
        learned prompt contexts enter here (`big_vl.adapt.prompt`); rows
        of `token_embedding_table(params)[text]` reproduce the plain call.

    Returns:
      (out, aux): out is [B, num_classes] (or [B, width]) in the compute
      dtype; aux = {"tokens": [B, L, width] final-LayerNorm token features,
      "pre_logits": [B, width] pooled features, "mask": bool [B, L], True
      at non-pad tokens}.
    """
    if self.pool_type not in POOL_TYPES:
      raise ValueError(f"TextTransformer: unknown pool_type "
                       f"{self.pool_type!r}; known: {POOL_TYPES}.")
    if text.ndim != 2:
      raise ValueError(f"TextTransformer expects tokens [B, L], got "
                       f"{text.shape}.")
    dims = self.dims()
    width = dims["width"]
    dtype = common.get_dtype(self.dtype)
    n, length = text.shape
    if length > self.max_len:
      raise ValueError(f"TextTransformer: text length {length} exceeds "
                       f"max_len {self.max_len}.")
    text = text.astype(jnp.int32)
    mask = text != self.pad_id

    x = nn.Embed(self.vocab_size, width, dtype=dtype,
                 embedding_init=nn.initializers.normal(stddev=0.02),
                 name="Embed_0")(text)
    if embeddings is not None:
      if embeddings.shape != x.shape:
        raise ValueError(f"TextTransformer: embeddings {embeddings.shape} "
                         f"do not match the tokens' {x.shape}.")
      x = embeddings.astype(dtype)
    pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.01),
                    (1, self.max_len, width), jnp.float32)
    x = x + pe[:, :length].astype(dtype)
    if self.type_vocab_size:
      types = self.param("type_embedding", nn.initializers.normal(stddev=0.02),
                         (self.type_vocab_size, width), jnp.float32)
      x = x + types[0].astype(dtype)
    if self.embed_norm:
      x = nn.LayerNorm(epsilon=self.norm_eps, dtype=dtype,
                       name="embed_norm")(x)
    x = nn.Dropout(rate=self.dropout)(x, not train)

    attn_mask = None
    if self.causal:
      attn_mask = nn.make_causal_mask(jnp.ones((n, length), jnp.bool_),
                                      dtype=jnp.bool_)
    if self.mask_pad:
      pad_mask = common.padding_mask_to_attention(mask)
      attn_mask = pad_mask if attn_mask is None else attn_mask & pad_mask

    x = common.Encoder(
        depth=dims["depth"], mlp_dim=dims["mlp_dim"],
        num_heads=dims["num_heads"], dropout=self.dropout, dtype=dtype,
        remat_policy=common.resolve_remat_policy(
            self.remat_policy, self.remat, "TextTransformer"),
        scan=self.scan, act=self.act, norm_eps=self.norm_eps,
        norm_position=self.norm_position, name="Encoder_0",
    )(x, attn_mask, not train)

    if self.pool_type == "eot":
      idx = last_valid_index(mask)
      pooled = jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]
    elif self.pool_type == "last":
      pooled = x[:, -1]
    elif self.pool_type == "first":
      pooled = x[:, 0]
    elif self.pool_type == "mean":
      w = mask.astype(jnp.float32)[:, :, None]
      total = jnp.sum(x.astype(jnp.float32) * w, axis=1)
      pooled = (total / jnp.maximum(jnp.sum(w, axis=1), 1.0)).astype(dtype)
    else:  # map
      pooled = common.MAPHead(
          mlp_dim=dims["mlp_dim"], num_heads=dims["num_heads"], dtype=dtype,
          act=self.act, norm_eps=self.norm_eps, name="MAPHead_0",
      )(x, mask if self.mask_pad else None)

    out = pooled
    if self.num_classes:
      out = nn.Dense(self.num_classes, dtype=dtype, use_bias=self.head_bias,
                     kernel_init=common.head_init(width), name="head")(pooled)
    return out, {"tokens": x, "pre_logits": pooled, "mask": mask}
