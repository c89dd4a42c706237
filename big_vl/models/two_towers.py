"""Two-tower image-text model (CLIP, SigLIP, LiT, ...), model "two_towers".

Example:
  >>> model = Model(image={"variant": "mu/8", "pool_type": "map"},
  ...               text={"variant": "mu", "vocab_size": 1000, "max_len": 16},
  ...               out_dim=32, bias_init=-10.0)
  >>> params = init_params(model, jax.random.key(0), (1, 32, 32, 3), (1, 16))
  >>> sorted(params)
  ['b', 'img', 't', 'txt']
  >>> image = jnp.zeros([4, 32, 32, 3]); text = jnp.ones([4, 16], jnp.int32)
  >>> zimg, ztxt, aux = model.apply({"params": params}, image, text)
  >>> zimg.shape, ztxt.shape, aux["t"].shape  # rows have unit L2 norm
  ((4, 32), (4, 32), ())

Parameter tree: `img` (a `vit.ViT`), `txt` (a
`text_transformer.TextTransformer`), `t` (log temperature, f32 []) and, with
`bias_init`, `b` (logit bias, f32 []). Regex rules such as `img/.*` select a
whole tower.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from big_vl import registry
from big_vl.models import captioner as captioner_lib
from big_vl.models import common
from big_vl.models import decoder as decoder_lib
from big_vl.models import dino_head
from big_vl.models import naflex
from big_vl.models import text_transformer
from big_vl.models import vit
from big_vl.models import vitamin

# config.model.image["arch"] -> image tower module (default "vit").
IMAGE_ARCHS = {"vit": vit.ViT, "vitamin": vitamin.ViTamin}


l2_normalize = common.l2_normalize


def _scalar_init(value):
  def init(_):
    return jnp.asarray(value, jnp.float32)
  return init


# The batch field of a two-tower model's decoder targets (`decoder` set):
# int [B, L] captions or [B, T, L] task rows (LocCa); the "caption" loss
# reads it with `text_key=CAPTION_KEY`.
CAPTION_KEY = "caption"

# The batch fields of the extra views (the `multi_crop` pp op's, its
# default `out="views"`): float [B, V, H, W, 3] global and [B, U, h, w, 3]
# local views, see `Model` and `view_input`.
VIEW_KEYS = {"global": "views_global", "local": "views_local"}


def view_input(batch):
  """`Model.__call__`'s `views` argument from a batch: {"global": ...,
  "local": ...}, None where the batch lacks that field (no global views:
  the main image is the one global view)."""
  return {name: batch.get(key) for name, key in VIEW_KEYS.items()}


@registry.register("model", "two_towers")
class Model(captioner_lib.CaptionHead, nn.Module):
  """Image and text towers projected into one L2-normalised space.

  Attributes:
    image: kwargs for `vit.ViT` (e.g. {"variant": "B/16", "pool_type":
      "map"}), or with "arch": "vitamin" for `vitamin.ViTamin` (e.g.
      {"arch": "vitamin", "variant": "S"}); `num_classes` is set to
      `out_dim` (give 0 for a tower without a projection head whose width
      already is `out_dim`).
    text: kwargs for `text_transformer.TextTransformer` (e.g. {"variant":
      "B", "causal": True, "pool_type": "eot"}); `num_classes` as for
      `image` (0: e.g. a pretrained sentence encoder used as it is).
    out_dim: width of the shared embedding space (both towers end with a
      projection Dense `head` of this width).
    temperature_init: initial temperature; param `t` holds its log.
    bias_init: initial logit bias (SigLIP: -10.0) stored as param `b`; None
      means no `b` param.
    dtype: compute dtype for both towers, unless a tower dict sets its own.
    token_features: also project every image patch token and text token to
      out_dim (Dense `img_token_head` / `txt_token_head`) and L2-normalise
      them: aux "img/ztokens" [B, N', out_dim], "txt/ztokens" [B, L,
      out_dim] (FILIP's late interaction, `big_vl.losses.filip`).
    token_keep: fraction of image tokens kept in "img/ztokens" (those with
      the largest projected norm, FILIP's token reduction); 1.0 keeps all.
    decoder: None, or kwargs of `decoder.TextDecoder` (width, depth,
      mlp_dim, num_heads, ...) for a captioning decoder over the image
      tower's patch tokens, SigLIP 2's LocCa decoder: `__call__` then also
      takes `caption` and aux gets "logits" (the "caption" loss's), and the
      model decodes like a `captioner.Captioner` (`encode`,
      `decode_tokens`; `big_vl.decode`, the captioning evaluators). Its
      options are the captioner's: vocab_size, max_len (the caption length
      L), parallel_fraction, uncond_prob, mask_token, project_memory;
      decode builds it with a KV cache. Submodules `decoder`, `memory_proj`
      and the param `null_memory` sit beside `img` and `txt`.
    ssl_head: None, or kwargs of `dino_head.DINOHead` (prototypes,
      hidden_dim, bottleneck_dim, depth): SILC / SigLIP 2's
      self-distillation head (submodule `ssl_head`) on the image tower's
      pooled features of the extra views (`views` below).

  Extra views (`__call__`'s `views`, `outputs(..., views=True)`): the
  self-supervised objectives' passes of the image tower, beside the main
  image the contrastive and caption losses see. The global views (the
  `multi_crop` pp op's, or else the main image as the one view) run with
  the tower's `mask_ratio` masking in training (masked prediction); the
  local views run unmasked. Their outputs, for V global and U local views:
  "view/img/ztokens" [B * V, N, out_dim] (with token_features),
  "view/img/patch_mask" [B * V, N] (with mask_ratio), "view/img/ssl"
  [B, V, K] and "local/img/ssl" [B, U, K] (with ssl_head).
  """
  image: Any = None
  text: Any = None
  out_dim: int = 512
  temperature_init: float = 10.0
  bias_init: float | None = None
  dtype: Any = "float32"
  token_features: bool = False
  token_keep: float = 1.0
  decoder: Any = None
  vocab_size: int = 49408
  max_len: int = 24
  parallel_fraction: float = 0.0
  uncond_prob: float = 0.0
  mask_token: int = 0
  project_memory: bool = True
  decode: bool = False
  ssl_head: Any = None

  @staticmethod
  def sub_configs(model_config):
    """[(key, module class, keys the model itself reads)] of the blocks in
    a model config (what `big_vl.models.check_config` checks each against).
    """
    image = common.as_dict(model_config.get("image"))
    arch = image.get("arch", "vit")
    if arch not in IMAGE_ARCHS:
      raise ValueError(f"config.model.image.arch: unknown {arch!r}; known: "
                       f"{sorted(IMAGE_ARCHS)}.")
    blocks = [("image", IMAGE_ARCHS[arch], ("arch",)),
              ("text", text_transformer.TextTransformer, ())]
    if model_config.get("decoder") is not None:
      blocks.append(("decoder", decoder_lib.TextDecoder, ()))
    return blocks

  def setup(self):
    if self.decoder is not None:
      self.setup_caption_head({"dtype": self.dtype,
                               **common.as_dict(self.decoder)})

  def encode(self, image, *, train=False, uncond=None):
    """The decoder memory of `image` (`CaptionHead.image_memory`): the
    image tower's patch tokens, projected."""
    _, _, aux = self(image, None, train=train)
    tower = {k[len("img/"):]: v for k, v in aux.items()
             if k in ("img/tokens", "img/mask")}
    return self.image_memory(tower, uncond)

  def _tower_kwargs(self, cfg, name):
    kw = common.as_dict(cfg)
    if kw.get("num_classes") not in (None, 0, self.out_dim):
      raise ValueError(
          f"two_towers: {name}.num_classes={kw['num_classes']} conflicts with "
          f"out_dim={self.out_dim}; drop it from the {name} config (or set "
          "0 for a tower without a projection head).")
    if kw.get("num_classes") != 0:
      kw["num_classes"] = self.out_dim
    kw.setdefault("dtype", self.dtype)
    return kw

  def _check_width(self, out, name):
    if out.shape[-1] != self.out_dim:
      raise ValueError(
          f"two_towers: the {name} tower has no head (num_classes=0) and "
          f"gives width {out.shape[-1]}, not out_dim={self.out_dim}.")

  @nn.compact
  def __call__(self, image, text, train=False, text_embeddings=None,
               caption=None, views=None):
    """Embeds images and/or texts.

    Args:
      image: float [B, H, W, 3], [B, K, H, W, 3] for K images per
        example (not with a NaFlex model, `posemb_grid`), a NaFlex
        {"patches", "pos"} dict (`naflex.image_input`; ViT towers only), or
        None.
      text: int [B, L] token ids, [B, K, L] for K texts per example, or
        None.
      train: enables dropout (needs a "dropout" rng if any rate > 0).
      text_embeddings: optional float [*text.shape, width] token embeddings
        used in place of the text tower's lookup of `text` (learned prompt
        contexts, `big_vl.adapt.prompt`).
      caption: with a `decoder`, int [B, L] (or [B, T, L]) decoder targets
        for aux "logits" f32[B, L - 1, V] (or [B, T, L - 1, V]); needs
        `image`.
      views: None, or {"global": float [B, V, H, W, 3] or None (None: the
        main image is the one global view), "local": float [B, U, h, w, 3]
        or None} for the extra views' outputs (class docstring); needs
        `image`.

    Returns:
      (zimg, ztxt, aux): zimg / ztxt are float32 [B, out_dim] (zimg / ztxt
      [B, K, out_dim] for K images / texts per example) with unit-norm rows, or None where the
      input was None. aux holds "t" (exp of the log temperature, f32 []),
      "t_log", "b" (with bias_init), and for each tower run "img/tokens",
      "img/pre_logits" or "txt/tokens", "txt/pre_logits", "txt/mask" (text
      entries cover the B * K texts).
    """
    t = self.param("t", _scalar_init(np.log(self.temperature_init)))
    aux = {"t": jnp.exp(t), "t_log": t}
    if self.bias_init is not None:
      aux["b"] = self.param("b", _scalar_init(self.bias_init))

    zimg = ztxt = None
    if image is not None:
      kw = self._tower_kwargs(self.image, "image")
      arch = kw.pop("arch", "vit")
      if arch not in IMAGE_ARCHS:
        raise ValueError(f"two_towers: image.arch={arch!r}; known: "
                         f"{sorted(IMAGE_ARCHS)}.")
      if naflex.is_naflex(image) and arch != "vit":
        raise ValueError(f"two_towers: NaFlex inputs need a ViT image tower, "
                         f"not image.arch={arch!r}.")
      img = IMAGE_ARCHS[arch](**kw, name="img")
      # Shared by the main pass and the views.
      token_head = nn.Dense(self.out_dim, name="img_token_head")
      tower_kw = {"mask": False} if kw.get("mask_ratio") else {}
      lead = None
      if (not naflex.is_naflex(image) and image.ndim == 5
          and not kw.get("posemb_grid")):
        # K images per example ([B, K, H, W, 3], preference candidates)
        # are encoded as B * K images; zimg comes back as [B, K, out_dim].
        # (For a NaFlex model, 5-d input is patches missing their
        # positions: the tower says so.)
        if caption is not None or views is not None:
          raise ValueError("two_towers: [B, K, H, W, 3] images take no "
                           "caption or views.")
        lead, image = image.shape[:2], image.reshape(-1, *image.shape[2:])
      out, img_aux = img(image, train=train, **tower_kw)
      img_aux.pop("patch_mask", None)  # The views' pass is the masked one.
      self._check_width(out, "image")
      zimg = l2_normalize(out)
      if lead is not None:
        zimg = zimg.reshape(*lead, -1)
      for k, v in img_aux.items():
        aux[f"img/{k}"] = v
      if caption is not None:
        if self.decoder is None:
          raise ValueError("two_towers: a caption without a decoder "
                           "(config.model.decoder).")
        memory = self.image_memory(
            img_aux, self.draw_uncond(caption.shape[0], train))
        aux["logits"] = self.caption_logits(memory, caption, train=train)
      if self.token_features:
        if "mask" in img_aux and self.token_keep < 1:
          raise ValueError("two_towers: token_keep < 1 picks tokens by norm "
                           "and would pick padding of NaFlex inputs; use "
                           "token_keep=1 with NaFlex.")
        aux["img/ztokens"] = self._image_token_features(token_head,
                                                        img_aux["tokens"])
      if views is not None:
        aux.update(self._view_outputs(img, token_head, image, views, train,
                                      bool(tower_kw)))
    if text is not None:
      txt = text_transformer.TextTransformer(
          **self._tower_kwargs(self.text, "text"), name="txt")
      # Several texts per example ([B, K, L], e.g. DreamLIP's sub-captions)
      # are encoded as B * K texts; ztxt comes back as [B, K, out_dim].
      lead = text.shape[:-1]
      if text_embeddings is not None:
        text_embeddings = text_embeddings.reshape(
            -1, *text_embeddings.shape[-2:])
      out, txt_aux = txt(text.reshape(-1, text.shape[-1]), train=train,
                         embeddings=text_embeddings)
      self._check_width(out, "text")
      ztxt = l2_normalize(out).reshape(*lead, -1)
      for k, v in txt_aux.items():
        aux[f"txt/{k}"] = v
      if self.token_features:
        aux["txt/ztokens"] = l2_normalize(nn.Dense(
            self.out_dim, name="txt_token_head")(txt_aux["tokens"]))
    return zimg, ztxt, aux

  def _view_outputs(self, img, token_head, image, views, train, masking):
    """The extra views' aux entries (class docstring), from the image
    tower module `img` and the patch-token head (their params shared with
    the main pass)."""
    if naflex.is_naflex(image) and views.get("global") is None:
      raise ValueError("two_towers: extra views of a NaFlex image need the "
                       "multi_crop pp op's square views.")
    out, head = {}, None
    if self.ssl_head is not None:
      head = dino_head.DINOHead(**{"dtype": self.dtype,
                                   **common.as_dict(self.ssl_head)},
                                name="ssl_head")
    glob = views.get("global")
    if glob is None:
      glob = image[:, None]
    n = glob.shape[0]
    # Crops of other sizes than the main image's get its position grid
    # resized.
    resize = {"posemb_resize": True} if isinstance(img, vit.ViT) else {}
    _, glob_aux = img(glob.reshape(-1, *glob.shape[2:]), train=train,
                      **({"mask": True} if masking else {}), **resize)
    if "patch_mask" in glob_aux:
      out["view/img/patch_mask"] = glob_aux["patch_mask"]
    if self.token_features:
      out["view/img/ztokens"] = self._image_token_features(
          token_head, glob_aux["tokens"])
    per_view = lambda x: x.reshape(n, -1, x.shape[-1])  # [B, V, K]
    if head is not None:
      out["view/img/ssl"] = per_view(head(glob_aux["pre_logits"]))
    local = views.get("local")
    if local is not None and head is not None:
      _, local_aux = img(local.reshape(-1, *local.shape[2:]), train=train,
                         **({"mask": False} if masking else {}), **resize)
      out["local/img/ssl"] = per_view(head(local_aux["pre_logits"]))
    return out

  def _image_token_features(self, head, tokens):
    """Projected (by `head`), normalised patch tokens; the top
    `token_keep` by norm."""
    if not 0 < self.token_keep <= 1:
      raise ValueError(f"two_towers: token_keep={self.token_keep} must be "
                       "in (0, 1].")
    proj = head(tokens)
    keep = max(1, int(np.ceil(self.token_keep * proj.shape[1])))
    if keep < proj.shape[1]:
      norms = jnp.linalg.norm(proj.astype(jnp.float32), axis=-1)
      _, index = jax.lax.top_k(norms, keep)
      proj = jnp.take_along_axis(proj, index[..., None], axis=1)
    return l2_normalize(proj)


@registry.register("outputs", "two_towers")
def outputs(model, variables, batch, *, train=False, rngs=None,
            views=False):
  """The two-tower model's outputs dict for a batch.

  The one way the trainer, GradCache, growth and the evaluators' predict
  functions call the model (`big_vl.models.outputs_fn("two_towers")`).

  Args:
    model: a `Model`.
    variables: {"params": params}.
    batch: a dict with "image" float [B, H, W, 3] (or NaFlex patches with
      "image_pos", see `naflex`) and/or "text" int [B, L]
      or [B, K, L] (a missing one is not run), optionally
      "text_embeddings" (see `Model.__call__`); other fields are ignored.
      An empty batch gives the entries that depend on the params only.
    train: enables dropout.
    rngs: e.g. {"dropout": key} when training with dropout.
    views: also run the extra views (`Model`'s docstring) from the batch's
      `VIEW_KEYS` fields (or the main image): the self-supervised
      objectives' inputs. The trainer sets it only in the steps where such
      an objective counts (`big_vl/train/state.py`).

  Returns:
    {"zimg": f32[B, out_dim], "ztxt": f32[B, out_dim] (or [B, K, out_dim]),
    "t", "t_log", "b" (with bias_init), and the towers' "img/..." /
    "txt/..." entries}; zimg / ztxt only for the inputs given; "logits"
    (the decoder's, f32[B, L - 1, V]) for a model with a `decoder` and a
    batch with "caption" (`CAPTION_KEY`); with `views`, the views'
    "view/img/..." and "local/img/..." entries.

  Example (the model and inputs of the module docstring):
    >>> out = outputs(model, {"params": params},
    ...               {"image": image, "text": text})
    >>> out["zimg"].shape, out["ztxt"].shape, out["t"].shape
    ((4, 32), (4, 32), ())
    >>> sorted(outputs(model, {"params": params}, {}))
    ['b', 't', 't_log']
  """
  caption = (batch.get(CAPTION_KEY) if model.decoder is not None
             else None)
  image = naflex.image_input(batch)
  zimg, ztxt, aux = model.apply(
      variables, image, batch.get("text"), train=train,
      rngs=rngs, text_embeddings=batch.get("text_embeddings"),
      caption=caption if image is not None else None,
      views=view_input(batch) if views and image is not None else None)
  out = dict(aux)
  if zimg is not None:
    out["zimg"] = zimg
  if ztxt is not None:
    out["ztxt"] = ztxt
  return out


def init_params(model, rng, image_shape=None, text_shape=None):
  """Initialises a two-tower model's params from input shapes.

  Args:
    model: a `Model`.
    rng: a jax PRNG key.
    image_shape: e.g. (1, 224, 224, 3), or None to skip the image tower.
    text_shape: e.g. (1, 77), or None to skip the text tower.

  Returns:
    The params dict (a plain nested dict of float32 arrays).
  """
  image = None if image_shape is None else jnp.zeros(image_shape, jnp.float32)
  text = None if text_shape is None else jnp.ones(text_shape, jnp.int32)
  return jax.jit(model.init)(rng, image, text)["params"]
