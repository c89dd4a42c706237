"""CoCa: contrastive captioners (Yu et al. 2022), model "coca".

One image tower, one text tower split in two: unimodal causal text layers
whose appended [CLS] token gives the contrastive text embedding, then
multimodal layers that cross-attend to the image and predict the caption.
The image tower's tokens go through an attentional pooler (learned queries
attending to them); query 0 gives the contrastive image embedding and the
others the decoder's memory. The loss is a contrastive objective plus
`caption_weight` x the caption cross-entropy (paper: 2.0), both named
objectives of the config (`configs/coca.py`).

The layout is open_clip's `coca_*` models' (its "original OpenCLIP CoCa"
pooling: one pooler whose first query is the contrastive embedding), so
their weights convert both ways (`big_vl.convert.open_clip_coca`):

    image [B, H, W, 3] -> ViT (class token, pre-norm, no final norm)
      -> img_pool: queries [Q, out_dim] attend to all tokens -> img_norm
      -> query 0 @ img_proj = zimg;  queries 1.. = memory [B, Q - 1, out_dim]
    text [B, L] -> Embed + [CLS] appended + pos [L + 1]
      -> causal blocks (txt/Encoder_0, no final norm)
      -> txt_norm(CLS) @ txt/head = ztxt;  tokens [B, L, width]
    tokens[:, :-1], memory -> decoder: per layer a causal self-attention
      block and a cross-attention block -> norm -> head -> logits
      [B, L - 1, vocab]

The causal text mask also hides keys at padding as open_clip does: key j
(j >= 1) is hidden when token j - 1 is padding and the [CLS] key when the
last token is (open_clip's `correct_cls_mask=False`, which its released
weights were trained with); `correct_cls_mask=True` hides key j when token
j is padding and never the [CLS].

Decoding (`big_vl.decode`) uses `encode` and `decode_tokens` like the
captioner's, with KV caches in both the unimodal and the multimodal
layers; `uncond_prob` trains a learned null memory for classifier-free
guidance.

    model = CoCa(image={"variant": "mu/8"}, text={"width": 64, "depth": 2,
                 "mlp_dim": 128, "num_heads": 2}, decoder={...same...},
                 out_dim=64, max_len=16, num_queries=9)
    out = outputs(model, {"params": params}, {"image": x, "text": t})
    out["zimg"], out["ztxt"], out["logits"]   # [B, 64], [B, 64], [B, 15, V]
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from big_vl import registry
from big_vl.models import common
from big_vl.models import decoder as decoder_lib
from big_vl.models import naflex
from big_vl.models import two_towers
from big_vl.models import vit

_TOWER_KEYS = ("width", "depth", "mlp_dim", "num_heads")


class AttentionalPooler(nn.Module):
  """`num_queries` learned queries attend to the tokens (one MHA).

  Attributes:
    width: the queries' (and outputs') width.
    num_queries: how many queries.
    num_heads: attention heads.
    norm_eps: LayerNorm epsilon (`ln_q` on the queries, `ln_k` on the
      tokens).
    dtype: compute dtype.
  """
  width: int
  num_queries: int
  num_heads: int
  norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """[B, N, D] tokens -> [B, num_queries, width]; `mask` (bool [B, N],
    False at NaFlex padding) leaves tokens out of the attention."""
    query = self.param("query", nn.initializers.normal(1.0),
                       (self.num_queries, self.width), jnp.float32)
    x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="ln_k")(x)
    q = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype,
                     name="ln_q")(query.astype(self.dtype))
    q = jnp.broadcast_to(q[None], (x.shape[0], *q.shape))
    return nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        force_fp32_for_softmax=True, deterministic=True, name="attn")(
            q, x, mask=None if mask is None else mask[:, None, None, :])


class CrossBlock(nn.Module):
  """x + MHA(LN(x), LN_kv(memory)), then x + MLP(LN(x)) (open_clip's
  cross-attention `ResidualAttentionBlock`); with `decode=True` the
  memory's keys and values are cached (`decoder.CrossAttention`)."""
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  act: str = "gelu_exact"
  norm_eps: float = 1e-5
  decode: bool = False

  @nn.compact
  def __call__(self, x, memory, deterministic=True):
    norm = lambda name: nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype,
                                     name=name)
    drop = lambda y: nn.Dropout(rate=self.dropout)(y, deterministic)
    kv = norm("LayerNorm_kv")(memory)
    x = x + drop(decoder_lib.CrossAttention(
        num_heads=self.num_heads, dtype=self.dtype, decode=self.decode,
        name="MultiHeadDotProductAttention_0")(norm("LayerNorm_0")(x), kv))
    return x + drop(common.MlpBlock(
        mlp_dim=self.mlp_dim, dropout=self.dropout, dtype=self.dtype,
        act=self.act, name="MlpBlock_0")(norm("LayerNorm_1")(x),
                                         deterministic))


def text_key_mask(text, pad_id, correct_cls_mask):
  """bool [B, L + 1]: which keys of the text + [CLS] sequence may be
  attended to (see the module docstring)."""
  valid = text != pad_id
  ones = jnp.ones((text.shape[0], 1), jnp.bool_)
  if correct_cls_mask:
    return jnp.concatenate([valid, ones], axis=1)
  return jnp.concatenate([ones, valid], axis=1)


@registry.register("model", "coca")
class CoCa(nn.Module):
  """Contrastive captioner (see the module docstring).

  Attributes:
    image: kwargs of `vit.ViT` ("variant", "patch_size", "image_size",
      ...); the tower always has a class token, a pre-norm and no final
      norm or head (open_clip's layout).
    text: {width, depth, mlp_dim, num_heads} (or "variant") of the
      unimodal text layers.
    decoder: the same of the multimodal layers (same width as `text` and
      as `out_dim`: the decoder reads the text tokens and the pooled image
      queries directly).
    out_dim: the contrastive embedding width (open_clip's embed_dim).
    vocab_size: tokenizer vocabulary (CLIP BPE: 49408).
    max_len: the tokenized caption length L (open_clip CoCa: 76); the
      decoder predicts L - 1 tokens.
    num_queries: the attentional pooler's queries (open_clip: 256).
    pool_heads: the pooler's attention heads.
    temperature_init: initial temperature (param `t` holds its log).
    bias_init: initial logit bias `b` (sigmoid losses), None for none.
    pad_id: padding token id.
    correct_cls_mask: see the module docstring.
    uncond_prob: fraction of training examples whose memory is the
      learned null (classifier-free guidance).
    act: MLP activation of every block (open_clip: exact GELU).
    norm_eps: LayerNorm epsilon (open_clip: 1e-5).
    dropout: dropout in the text and decoder blocks.
    remat_policy: a key of `common.REMAT_POLICIES`: rematerialise each
      text and decoder block in the backward pass (the image tower has its
      own, `image.remat_policy`); the params keep open_clip's per-layer
      names, so CoCa has no `scan`.
    dtype: compute dtype.
    decode: build the text and decoder layers with KV caches (decoding).
  """
  image: Any = None
  text: Any = None
  decoder: Any = None
  out_dim: int = 512
  vocab_size: int = 49408
  max_len: int = 76
  num_queries: int = 256
  pool_heads: int = 8
  temperature_init: float = 1 / 0.07
  bias_init: float | None = None
  pad_id: int = 0
  correct_cls_mask: bool = False
  uncond_prob: float = 0.0
  act: str = "gelu_exact"
  norm_eps: float = 1e-5
  dropout: float = 0.0
  remat_policy: str = "none"
  dtype: Any = "float32"
  decode: bool = False

  @staticmethod
  def sub_configs(model_config):
    del model_config
    return [("image", vit.ViT, ()), ("text", _Tower, ()),
            ("decoder", _Tower, ())]

  def _dims(self, cfg, where):
    kw = common.as_dict(cfg)
    dims = common.resolve_dims("CoCa", kw.pop("variant", None),
                               **{k: kw.pop(k, None) for k in _TOWER_KEYS})
    if kw:
      raise ValueError(f"coca: {where} has unknown keys {sorted(kw)}; known: "
                       f"variant, {', '.join(_TOWER_KEYS)}.")
    return dims

  def setup(self):
    dtype = common.get_dtype(self.dtype)
    image = {"act": self.act, "norm_eps": self.norm_eps, "dtype": self.dtype,
             **common.as_dict(self.image)}
    for key, value in (("pool_type", "cls"), ("pre_norm", True),
                       ("final_norm", False), ("num_classes", 0)):
      if image.setdefault(key, value) != value:
        raise ValueError(f"coca: image.{key}={image[key]!r}; CoCa's image "
                         f"tower has {key}={value!r}.")
    self.img = vit.ViT(**image, name="img")
    text, dec = self._dims(self.text, "text"), self._dims(self.decoder,
                                                          "decoder")
    if not text["width"] == dec["width"] == self.out_dim:
      raise ValueError(
          f"coca: text width {text['width']}, decoder width {dec['width']} "
          f"and out_dim {self.out_dim} must be equal (the decoder reads the "
          "text tokens and the pooled image queries as they are).")
    self.img_pool = AttentionalPooler(
        width=self.out_dim, num_queries=self.num_queries,
        num_heads=self.pool_heads, norm_eps=self.norm_eps, dtype=dtype,
        name="img_pool")
    self.img_norm = nn.LayerNorm(epsilon=self.norm_eps, dtype=dtype,
                                 name="img_norm")
    self.img_proj = nn.Dense(self.out_dim, use_bias=False, dtype=dtype,
                             kernel_init=common.head_init(self.out_dim),
                             name="img_proj")
    block = dict(dropout=self.dropout, dtype=dtype, act=self.act,
                 norm_eps=self.norm_eps,
                 remat_policy="none" if self.decode else self.remat_policy)
    self.txt = _Text(**text, **block, vocab_size=self.vocab_size,
                     max_len=self.max_len, out_dim=self.out_dim,
                     pad_id=self.pad_id,
                     correct_cls_mask=self.correct_cls_mask,
                     decode=self.decode, name="txt")
    self.dec = _Decoder(**dec, **block, vocab_size=self.vocab_size,
                        decode=self.decode, name="dec")
    self.t = self.param("t", lambda _: jnp.asarray(
        np.log(self.temperature_init), jnp.float32))
    if self.bias_init is not None:
      self.b = self.param("b", lambda _: jnp.asarray(self.bias_init,
                                                     jnp.float32))
    self.null_memory = self.param("null_memory", nn.initializers.normal(0.02),
                                  (1, 1, self.out_dim))

  def embed_image(self, image, *, train=False):
    """(zimg f32[B, out_dim] unit rows, memory [B, num_queries - 1,
    out_dim])."""
    _, aux = self.img(image, train=train)
    sequence = jnp.concatenate([aux["pre_logits"][:, None], aux["tokens"]],
                               axis=1)  # The class token, then the patches.
    mask = None
    if "mask" in aux:  # NaFlex: the pooler skips the padding patches.
      mask = jnp.concatenate([jnp.ones_like(aux["mask"][:, :1]),
                              aux["mask"]], axis=1)
    pooled = self.img_norm(self.img_pool(sequence, mask))
    z = self.img_proj(pooled[:, 0])
    return two_towers.l2_normalize(z), pooled[:, 1:]

  def encode(self, image, *, train=False, uncond=None):
    """The decoder memory of `image` [B, num_queries - 1, out_dim]; rows
    where `uncond` is True get the learned null memory."""
    _, memory = self.embed_image(image, train=train)
    if uncond is not None:
      memory = jnp.where(uncond[:, None, None], jnp.broadcast_to(
          self.null_memory.astype(memory.dtype), memory.shape), memory)
    return memory

  def decode_tokens(self, tokens, memory, *, train=False):
    """Next-token logits f32[B, L', V] of decoder inputs `tokens` [B, L']
    (one position per call with `decode=True`)."""
    _, states = self.txt(tokens, with_cls=False, train=train)
    return self.dec(states, memory, train=train)

  def scalars(self):
    out = {"t": jnp.exp(self.t), "t_log": self.t}
    if self.bias_init is not None:
      out["b"] = self.b
    return out

  def __call__(self, image, text, *, train=False, captions=True):
    """The outputs dict (see `outputs`) of a batch; image or text may be
    None; `captions=False` skips the decoder."""
    out = self.scalars()
    uncond = None
    if image is not None:
      out["zimg"], memory = self.embed_image(image, train=train)
      if train and self.uncond_prob > 0:
        uncond = jax.random.bernoulli(self.make_rng("dropout"),
                                      self.uncond_prob,
                                      (naflex.batch_size(image),))
        memory = jnp.where(uncond[:, None, None], jnp.broadcast_to(
            self.null_memory.astype(memory.dtype), memory.shape), memory)
    if text is not None:
      ztxt, states = self.txt(text, with_cls=True, train=train)
      out["ztxt"] = ztxt
      if image is not None and captions:
        out["logits"] = self.dec(states[:, :-1], memory, train=train)
    return out


class _Tower(nn.Module):
  """The keys of a CoCa text / decoder block (for config checks only)."""
  variant: str | None = None
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None


class _Text(nn.Module):
  """CoCa's unimodal text layers: `Embed_0`, `cls` [width], `pos_embedding`
  [1, max_len + 1, width], `Encoder_0` (causal blocks, no final norm),
  `cls_norm` and `head` (no bias) on the [CLS] token."""
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  vocab_size: int
  max_len: int
  out_dim: int
  pad_id: int = 0
  correct_cls_mask: bool = False
  dropout: float = 0.0
  dtype: Any = jnp.float32
  act: str = "gelu_exact"
  norm_eps: float = 1e-5
  remat_policy: str = "none"
  decode: bool = False

  @nn.compact
  def __call__(self, text, *, with_cls, train=False):
    """(ztxt [B, out_dim] unit rows or None, token states [B, L, width])."""
    n, length = text.shape
    x = nn.Embed(self.vocab_size, self.width, dtype=self.dtype,
                 embedding_init=nn.initializers.normal(0.02),
                 name="Embed_0")(text.astype(jnp.int32))
    pos = self.param("pos_embedding", nn.initializers.normal(0.01),
                     (1, self.max_len + 1, self.width), jnp.float32)
    cls = self.param("cls", nn.initializers.normal(0.01), (self.width,),
                     jnp.float32)
    mask = None
    if self.decode and self.has_variable("cache", "index"):
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      x = x + jnp.take(pos[0], index.value + jnp.arange(length),
                       axis=0)[None].astype(self.dtype)
      index.value = index.value + length
    else:
      if self.decode:  # The call that creates the caches.
        self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      if with_cls:
        x = jnp.concatenate([x, jnp.broadcast_to(
            cls.astype(self.dtype), (n, 1, self.width))], axis=1)
      total = x.shape[1]
      x = x + pos[:, :total].astype(self.dtype)
      mask = nn.make_causal_mask(jnp.ones((n, total), jnp.bool_),
                                  dtype=jnp.bool_)
      keys = text_key_mask(text, self.pad_id, self.correct_cls_mask)
      mask = mask & keys[:, None, None, :total]
    x = nn.Dropout(rate=self.dropout)(x, not train)
    x = common.Encoder(
        depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        dropout=self.dropout, dtype=self.dtype, act=self.act,
        norm_eps=self.norm_eps, final_norm=False, decode=self.decode,
        remat_policy=self.remat_policy, name="Encoder_0")(x, mask, not train)
    if not with_cls:
      return None, x
    pooled = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype,
                          name="cls_norm")(x[:, -1])
    z = nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype,
                 kernel_init=common.head_init(self.width), name="head")(pooled)
    return two_towers.l2_normalize(z), x[:, :-1]


class _Decoder(nn.Module):
  """CoCa's multimodal layers: per layer `selfblock_{i}` (causal, an
  `EncoderBlock`) and `crossblock_{i}` (`CrossBlock`), then `LayerNorm_0`
  and `head` (no bias) to the vocabulary."""
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  vocab_size: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  act: str = "gelu_exact"
  norm_eps: float = 1e-5
  remat_policy: str = "none"
  decode: bool = False

  @nn.compact
  def __call__(self, x, memory, *, train=False):
    mask = None
    # Decoding with caches: the self-attention caches hide what is not yet
    # written; the call that creates them (and training) is causal.
    if self.decode and self.has_variable("cache", "ready"):
      pass
    else:
      if self.decode:
        self.variable("cache", "ready", lambda: jnp.ones((), jnp.bool_))
      mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.bool_),
                                 dtype=jnp.bool_)
    memory = memory.astype(self.dtype)
    block = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                 dropout=self.dropout, dtype=self.dtype, act=self.act,
                 norm_eps=self.norm_eps)
    self_block = common.remat_block(common.EncoderBlock, self.remat_policy)
    cross_block = common.remat_block(CrossBlock, self.remat_policy)
    for i in range(self.depth):
      x = self_block(**block, decode=self.decode,
                     name=f"selfblock_{i}")(x, mask, not train)
      x = cross_block(**block, decode=self.decode, name=f"crossblock_{i}")(
          x, memory, not train)
    x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype,
                     name="LayerNorm_0")(x)
    return nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype,
                    kernel_init=nn.initializers.zeros,
                    name="head")(x).astype(jnp.float32)


@registry.register("outputs", "coca")
def outputs(model, variables, batch, *, train=False, rngs=None):
  """CoCa's outputs dict: "t", "t_log" ("b"), and for a batch's "image"
  "zimg" f32[B, out_dim], for its "text" "ztxt", and for images and texts
  that pair up row by row (as a training batch's) "logits" f32[B, L - 1, V]
  (the caption loss's). An evaluator's batch of K texts per image (B
  images, B * K texts) gets the embeddings only."""
  image, text = naflex.image_input(batch), batch.get("text")
  paired = (image is not None and text is not None
            and naflex.batch_size(image) == text.shape[0])
  return model.apply(variables, image, text, train=train, rngs=rngs,
                     captions=paired)
