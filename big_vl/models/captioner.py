"""Image captioners: a ViT encoder and a `decoder.TextDecoder` (CapPa).

CapPa (Tschannen et al. 2023, "Image Captioners Are Scalable Vision
Learners Too"): the decoder predicts the caption from the image tokens.
During training a fraction `parallel_fraction` of the examples (paper:
0.75) is predicted in parallel: every decoder input is the mask token and
the causal mask is off, so each token is predicted from the image alone;
the rest are teacher-forced autoregressively. With `uncond_prob` > 0 the
image tokens of that fraction of examples are replaced by a learned null
token, so the same model also learns p(caption) (classifier-free guidance
at decoding, Kornblith et al. 2023).

Captions are the tokenizer's ids `text` [B, L] (CLIP BPE: start token,
words, end token, zero padding); the decoder reads `text[:, :-1]` and
predicts `text[:, 1:]`. Registered as model "captioner"; its outputs
function gives {"logits": f32[B, L - 1, V]} for the "caption" loss
(`big_vl/losses/caption.py`).

    model = Captioner(image={"variant": "mu/8"}, decoder={"width": 64,
                      "depth": 2, "mlp_dim": 128, "num_heads": 2},
                      max_len=24)
    params = model.init(rng, image, text)["params"]  # image f32[B, H, W, 3]
    logits = model.apply({"params": params}, image, text)  # [B, 23, V]
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vl import registry
from big_vl.models import common
from big_vl.models import decoder as decoder_lib
from big_vl.models import naflex
from big_vl.models import vit


def decodes(model):
  """Whether a model captions (a `Captioner`, or a two-tower model with a
  decoder): what the captioning evaluators and `Predictor.caption` need."""
  return (hasattr(model, "decode_tokens")
          and getattr(model, "decoder", None) is not None)


class CaptionHead:
  """The captioning half of a model: a decoder over image tokens.

  Shared by `Captioner` (a ViT and this head) and `two_towers.Model` with a
  `decoder` (SigLIP 2: two towers and a LocCa decoder on the image
  tower's tokens). The host module calls `setup_caption_head` in its
  `setup`, which creates the submodules `decoder` (`decoder.TextDecoder`),
  `memory_proj` (with project_memory) and the param `null_memory`; the
  options below are read from the host's attributes of the same names:
  vocab_size, max_len, parallel_fraction, uncond_prob, mask_token,
  project_memory, decode.
  """

  def setup_caption_head(self, dec):
    """Creates the decoder from its config `dec` (TextDecoder kwargs with a
    dtype; not vocab_size, max_len, decode)."""
    owned = sorted({"vocab_size", "max_len", "decode"} & set(dec))
    if owned:
      raise ValueError(
          f"config.model.decoder sets {owned}: the captioner sets them "
          "(config.model.vocab_size, config.model.max_len).")
    if not 0 <= self.mask_token <= self.vocab_size:
      raise ValueError(f"config.model.mask_token={self.mask_token}: a token "
                       f"id below vocab_size={self.vocab_size}, or "
                       "vocab_size itself for a mask token of its own.")
    extra = self.mask_token == self.vocab_size
    self.text_decoder = decoder_lib.TextDecoder(
        vocab_size=self.vocab_size, max_len=self.max_len - 1,
        input_vocab_size=self.vocab_size + 1 if extra else 0,
        decode=self.decode, **dec, name="decoder")
    width = dec["width"]
    if self.project_memory:
      self.memory_proj = nn.Dense(width, name="memory_proj")
    self.null_memory = self.param("null_memory",
                                  nn.initializers.normal(0.02), (1, 1, width))

  def image_memory(self, aux, uncond=None):
    """The decoder memory from an image tower's aux (its "tokens", and
    "mask" for NaFlex inputs); rows where `uncond` is True get the learned
    null memory instead (p(caption) without the image).

    Returns:
      [B, N, width], or {"tokens": [B, N, width], "mask": bool [B, N]} for
      NaFlex inputs: the decoder does not attend to the padding
      (`decoder.memory_of`).
    """
    memory = aux["tokens"]
    if self.project_memory:
      memory = self.memory_proj(memory)
    elif memory.shape[-1] != self.null_memory.shape[-1]:
      raise ValueError(
          f"config.model.project_memory=False needs the decoder as wide as "
          f"the image tokens: decoder width {self.null_memory.shape[-1]}, "
          f"image width {memory.shape[-1]}.")
    if uncond is not None:
      memory = jnp.where(uncond[:, None, None],
                         jnp.broadcast_to(self.null_memory.astype(
                             memory.dtype), memory.shape), memory)
    if "mask" in aux:
      return {"tokens": memory, "mask": aux["mask"]}
    return memory

  def decode_tokens(self, tokens, memory, *, full_attention=None,
                    train=False):
    """Next-token logits for decoder inputs `tokens` [B, L'] (L' = 1 per
    call with `decode=True`)."""
    return self.text_decoder(tokens, memory, full_attention=full_attention,
                             train=train)

  def draw_uncond(self, batch, train):
    """Caption dropout's bool [B] (None when off)."""
    if train and self.uncond_prob > 0:
      return jax.random.bernoulli(self.make_rng("dropout"),
                                  self.uncond_prob, (batch,))
    return None

  def caption_logits(self, memory, text, *, train):
    """Teacher-forced (or parallel) logits of `text[:, 1:]` over `memory`:
    f32[B, L - 1, V] for int[B, L], f32[B, T, L - 1, V] for int[B, T, L]
    (T rows per image, each reading the image's memory)."""
    batch = text.shape[0]
    if text.ndim == 3:  # [B, T, L]: every row of an image reads its memory.
      rows = text.shape[1]
      memory = jax.tree.map(lambda m: jnp.repeat(m, rows, axis=0), memory)
      logits = self._decode_rows(text.reshape(batch * rows, -1), memory,
                                 train=train)
      return logits.reshape(batch, rows, *logits.shape[1:])
    return self._decode_rows(text, memory, train=train)

  def _decode_rows(self, text, memory, *, train):
    """Logits of `text[:, 1:]` (int[R, L]) over `memory` [R, N, width]."""
    batch = text.shape[0]
    parallel = None
    inputs = text[:, :-1]
    if train and self.parallel_fraction > 0:
      parallel = jax.random.bernoulli(self.make_rng("dropout"),
                                      self.parallel_fraction, (batch,))
      inputs = jnp.where(parallel[:, None], self.mask_token, inputs)
    return self.decode_tokens(inputs, memory, full_attention=parallel,
                              train=train)


@registry.register("model", "captioner")
class Captioner(CaptionHead, nn.Module):
  """ViT image tokens -> decoder -> caption logits.

  Attributes:
    image: kwargs of `vit.ViT` (its patch tokens are the decoder's memory;
      `num_classes` is not used).
    decoder: kwargs of `decoder.TextDecoder` except `vocab_size`, `max_len`
      and `decode` (width, depth, mlp_dim, num_heads, dropout, act, ...).
    vocab_size: the tokenizer's vocabulary (CLIP BPE: 49408).
    max_len: the tokenized caption length L (the decoder gets L - 1).
    parallel_fraction: CapPa's fraction of examples predicted in parallel
      (training only).
    uncond_prob: fraction of examples whose image tokens are replaced by a
      learned null (training only), for classifier-free guidance.
    mask_token: the decoder input of parallel prediction: a token id, or
      `vocab_size` for a token of its own (one more embedding row, as
      big_vision's CapPa).
    project_memory: a Dense layer (`memory_proj`) from the image tokens to
      the decoder's width; False feeds them as they are (big_vision's
      CapPa: the decoder is as wide as the encoder).
    dtype: compute dtype of both parts unless a block sets its own.
    decode: build the decoder with a KV cache (`big_vl/decode.py`).
  """
  image: Any = None
  decoder: Any = None
  vocab_size: int = 49408
  max_len: int = 24
  parallel_fraction: float = 0.0
  uncond_prob: float = 0.0
  mask_token: int = 0
  project_memory: bool = True
  dtype: Any = "float32"
  decode: bool = False

  @staticmethod
  def sub_configs(model_config):
    del model_config
    return [("image", vit.ViT, ()), ("decoder", decoder_lib.TextDecoder, ())]

  def setup(self):
    image = {"dtype": self.dtype, **common.as_dict(self.image)}
    image.pop("num_classes", None)
    self.encoder = vit.ViT(**image, name="img")
    self.setup_caption_head({"dtype": self.dtype,
                             **common.as_dict(self.decoder)})

  def encode(self, image, *, train=False, uncond=None):
    """The decoder memory of `image` (see `CaptionHead.image_memory`)."""
    _, aux = self.encoder(image, train=train)
    return self.image_memory(aux, uncond)

  def __call__(self, image, text, *, train=False):
    """Teacher-forced (or parallel) logits f32[B, L - 1, V] of `text[:, 1:]`.

    Args:
      image: f32[B, H, W, 3] (or a NaFlex input, `naflex.image_input`).
      text: int[B, L] caption ids, or int[B, T, L]: T sequences per image
        (LocCa's tasks, `big_vl/data/locca.py`), decoded from one encoding
        of the image; the logits are then f32[B, T, L - 1, V]. Caption
        dropout drops an image for all its rows.
      train: enables dropout, parallel prediction and caption dropout (they
        draw from the "dropout" rng).
    """
    uncond = self.draw_uncond(text.shape[0], train)
    memory = self.encode(image, train=train, uncond=uncond)
    return self.caption_logits(memory, text, train=train)


@registry.register("outputs", "captioner")
def outputs(model, variables, batch, *, train=False, rngs=None):
  """The captioner's outputs dict: {"logits": f32[B, L - 1, V]} (or
  [B, T, L - 1, V] for text int[B, T, L]) for a batch with "image" and
  "text"; {} for a batch without them (no param-only outputs)."""
  if batch.get("image") is None or batch.get("text") is None:
    return {}
  logits = model.apply(variables, naflex.image_input(batch), batch["text"],
                       train=train, rngs=rngs)
  return {"logits": logits}
