"""Vision Transformer (ViT) image tower.

Example:
  >>> model = ViT(variant="mu/8", pool_type="map", num_classes=32)
  >>> image = jnp.zeros([2, 32, 32, 3], jnp.float32)
  >>> params = model.init(jax.random.key(0), image)["params"]
  >>> out, aux = model.apply({"params": params}, image)
  >>> out.shape, aux["tokens"].shape, aux["pre_logits"].shape
  ((2, 32), (2, 16, 64), (2, 64))

Parameter tree (top level): `embedding` (patch Conv), `pos_embedding`
(posemb="learn"), `cls` (pool_type="cls"), `pre_norm` (pre_norm=True),
`Transformer/{encoderblock_0..depth-1, encoder_norm}`, `MAPHead_0`
(pool_type="map"), `head` (num_classes set). The names match big_vision.
With scan=True the blocks are one `Transformer/encoderblock` whose leaves
have a leading [depth] axis (see `common.stack_block_params`).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from big_vl.models import common
from big_vl.models import naflex

POOL_TYPES = ("cls", "gap", "map")
POSEMB_TYPES = ("learn", "sincos2d")


def _pair(patch_size):
  if isinstance(patch_size, int):
    return (patch_size, patch_size)
  ph, pw = patch_size
  return (int(ph), int(pw))


def resample_posemb(posemb, new_grid, old_grid=None):
  """Resizes a learned position embedding to a new patch grid (bilinear).

  Use it to run a model at a resolution other than the one it was initialised
  (or trained) at: the "high-res fine-tuning" trick.

  Args:
    posemb: [1, N, D] array, N = old_h * old_w.
    new_grid: int or (h, w), the target patch grid.
    old_grid: int or (h, w) of `posemb`; None means square.

  Returns:
    [1, h * w, D] array of `posemb`'s dtype.

  Example:
    >>> resample_posemb(jnp.zeros([1, 16, 64]), 8).shape  # 4x4 -> 8x8 grid
    (1, 64, 64)
  """
  _, n, d = posemb.shape
  if old_grid is None:
    side = int(round(np.sqrt(n)))
    if side * side != n:
      raise ValueError(f"posemb has {n} positions, not a square grid; give "
                       "old_grid.")
    old_grid = (side, side)
  old_grid, new_grid = _pair(old_grid), _pair(new_grid)
  if old_grid[0] * old_grid[1] != n:
    raise ValueError(f"old_grid {old_grid} does not match {n} positions.")
  if old_grid == new_grid:
    return posemb
  grid = jnp.reshape(posemb, (*old_grid, d)).astype(jnp.float32)
  grid = jax.image.resize(grid, (*new_grid, d), method="bilinear")
  return jnp.reshape(grid, (1, new_grid[0] * new_grid[1], d)).astype(
      posemb.dtype)


class PatchEmbedding(nn.Module):
  """Non-overlapping patches to tokens: a stride-`patch` convolution.

  Params are those of `nn.Conv(width, patch, strides=patch)` (kernel
  [ph, pw, C, width], lecun-normal; bias [width], zeros: the same names,
  shapes and initial values), but the convolution runs as one matmul of the
  flattened patches [B * N, ph * pw * C] with the kernel [ph * pw * C, width],
  which XLA's CPU backend runs about 2x faster than the convolution (forward
  and backward).

  Attributes:
    width: output channels.
    patch: (ph, pw).
    dtype: compute dtype.
  """
  width: int
  patch: tuple
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image):
    """[B, H, W, C] images -> [B, H / ph, W / pw, width] patch embeddings;
    [B, N, ph, pw, C] patches (NaFlex) -> [B, N, width]."""
    ph, pw = self.patch
    c = image.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (ph, pw, c, self.width), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.width,),
                      jnp.float32)
    if image.ndim == 5:
      n, num = image.shape[:2]
      x = image.astype(self.dtype).reshape(n, num, ph * pw * c)
    else:
      n, h, w, c = image.shape
      gh, gw = h // ph, w // pw
      x = image.astype(self.dtype).reshape(n, gh, ph, gw, pw, c)
      x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, gh, gw, ph * pw * c)
    x = x @ kernel.astype(self.dtype).reshape(ph * pw * c, self.width)
    return x + bias.astype(self.dtype)


def keep_patches(x, keep, rng, valid=None):
  """FLIP's patch dropout: a random `round(keep * N)` of each row's tokens.

  Args:
    x: [B, N, D] patch tokens (position embedding added).
    keep: the fraction kept, in (0, 1].
    rng: a PRNG key; each row draws its own subset.
    valid: None, or bool [B, N] marking the real patches of NaFlex inputs
      (the rest is padding): each row then keeps `round(keep * n_valid)` of
      its real patches, drawn among those alone.

  Returns:
    [B, K, D] with K = max(1, round(keep * N)), the kept tokens in their
    original order; with `valid`, the pair (tokens, bool [B, K] valid).
  """
  n, num, _ = x.shape
  order = _random_order(rng, n, num, valid)
  k = _count(num, keep)
  if valid is None:
    kept = jnp.sort(order[:, :k], axis=1)
    return jnp.take_along_axis(x, kept[..., None], axis=1)
  chosen = order[:, :k]
  wanted = jnp.arange(k)[None] < _count(jnp.sum(valid, axis=1), keep)[:, None]
  back = jnp.argsort(chosen, axis=1)
  kept = jnp.take_along_axis(chosen, back, axis=1)
  return (jnp.take_along_axis(x, kept[..., None], axis=1),
          jnp.take_along_axis(wanted, back, axis=1))


def _count(num, fraction):
  """max(1, round(fraction * num)), for an int or an int array `num`."""
  if isinstance(num, int):
    return max(1, int(round(fraction * num)))
  return jnp.maximum(1, jnp.round(fraction * num).astype(jnp.int32))


def _random_order(rng, n, num, valid=None):
  """int [n, num]: each row's positions in a random order; with `valid`
  (bool [n, num]), the valid positions come first."""
  scores = jax.random.uniform(rng, (n, num))
  if valid is not None:
    scores = jnp.where(valid, scores, 2.0)
  return jnp.argsort(scores, axis=1)


def mask_patches(n, num, ratio, rng, valid=None):
  """bool [n, num]: each row marks a random `round(ratio * num)` (at least
  one) of its `num` positions; with `valid` (bool [n, num], NaFlex), a
  random `round(ratio * n_valid)` of its valid positions."""
  order = _random_order(rng, n, num, valid)
  if valid is None:
    return jnp.zeros((n, num), jnp.bool_).at[
        jnp.arange(n)[:, None], order[:, :_count(num, ratio)]].set(True)
  rank = jnp.argsort(order, axis=1)
  return rank < _count(jnp.sum(valid, axis=1), ratio)[:, None]


class ViT(nn.Module):
  """Vision Transformer image encoder.

  Attributes:
    variant: "SIZE/PATCH" such as "B/16", "S/32", "mu/8" (see
      `common.VARIANTS`); explicit dimensions below override it.
    width: token width.
    depth: number of transformer blocks.
    mlp_dim: MLP hidden width.
    num_heads: attention heads.
    patch_size: int or (h, w) patch size; images must be divisible by it.
    pool_type: "cls" (a learned class token, CLIP), "gap" (mean over patch
      tokens) or "map" (attention pooling, SigLIP).
    posemb: "learn" (learned, shape fixed by the init image size) or
      "sincos2d" (fixed, any image size).
    num_classes: if set, a final Dense named `head` to this width (the
      projection in a two-tower model; normal(width**-0.5) init).
    dropout: dropout rate (embeddings and every block); needs a "dropout" rng
      when > 0 and train=True.
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
    pre_norm: LayerNorm on the embedded tokens before the blocks (CLIP's
      `ln_pre`), named `pre_norm`.
    norm_eps: epsilon of every LayerNorm (1e-6 flax / big_vision; 1e-5 for
      PyTorch-trained CLIP weights).
    head_bias: whether `head` has a bias (CLIP's `proj` has none).
    final_norm: end the blocks with `Transformer/encoder_norm` (False:
      CoCa, whose attentional pooler normalises after pooling).
    patch_keep: FLIP patch dropout (Li et al. 2023): in training, each
      image keeps a random `round(patch_keep * N)` of its N patch tokens
      (after the position embedding, drawn from the "dropout" rng, kept in
      their order) and the blocks run on those alone; evaluation sees every
      patch. 1.0: off.
    mask_ratio: masked prediction (TIPS / iBOT): in training, each image
      has a random `round(mask_ratio * N)` of its patch embeddings replaced
      by a learned `mask_token` (before the position embedding) and
      aux["patch_mask"] (bool [B, N]) marks them; evaluation (and a call
      with `mask=False`) masks nothing.
      0: off (no `mask_token` param, no "patch_mask").
    posemb_grid: None, or the (h, w) (or int side) patch grid of the
      learned position embedding, resized (bilinear, antialiased, as
      SigLIP 2's NaFlex) to each input's grid: needed for NaFlex inputs
      (`naflex.image_input`), and lets fixed-size images of any grid run.
      None: the grid of the init image, which inputs must then match
      (except calls with `posemb_resize`, e.g. SigLIP 2's local views).
      At the input's own grid the embedding is used as is, so a model
      with posemb_grid=16 equals one without on 16x16-patch images.
    image_size: informational, not used in the computation: the image
      side the learned position embedding was made for. Converters
      record it so that evaluation preprocessing can be derived from the
      model config alone; None = unknown.
  """
  variant: str | None = None
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  patch_size: Any = None
  pool_type: str = "gap"
  posemb: str = "learn"
  num_classes: int | None = None
  dropout: float = 0.0
  dtype: Any = "float32"
  remat_policy: str = "none"
  scan: bool = False
  remat: bool = False
  act: str = "gelu"
  pre_norm: bool = False
  norm_eps: float = 1e-6
  head_bias: bool = True
  image_size: int | None = None
  final_norm: bool = True
  patch_keep: float = 1.0
  mask_ratio: float = 0.0
  posemb_grid: Any = None

  def dims(self):
    """The resolved {width, depth, mlp_dim, num_heads, patch_size}."""
    return common.resolve_dims(
        "ViT", self.variant,
        names=common.DIM_NAMES + ("patch_size",),
        width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
        num_heads=self.num_heads, patch_size=self.patch_size)

  @nn.compact
  def __call__(self, image, *, train=False, mask=True, posemb_resize=False):
    """Encodes images.

    Args:
      image: float [B, H, W, 3], H and W divisible by the patch size; or a
        NaFlex input {"patches": float [B, N, ph, pw, 3], "pos": int [B, N,
        2]} (`naflex.image_input`), padding at pos (-1, -1).
      train: enables dropout (and patch dropout, `patch_keep`).
      mask: with `mask_ratio`, whether training masks this call's patches
        (a model that also needs its unmasked features, such as
        `two_towers` with masked prediction, passes False for those).
      posemb_resize: without `posemb_grid`, resize the learned position
        embedding that an earlier call (the init image) made, a square
        grid, to this input's grid (SigLIP 2's smaller local views);
        otherwise an input of another grid is an error, as a model
        evaluated at a resolution it was not trained at should be.

    Returns:
      (out, aux): out is [B, num_classes] (or [B, width] without a head) in
      the compute dtype; aux = {"tokens": [B, N, width] final-LayerNorm
      patch tokens (N = H*W/patch**2; the class token is not included),
      "pre_logits": [B, width] pooled features}. With final_norm=False
      neither is normalised. With patch dropout (training) N is the kept
      count. NaFlex inputs add "mask" (bool [B, N], False at padding);
      padding tokens are not attended to and not pooled.
    """
    if self.pool_type not in POOL_TYPES:
      raise ValueError(f"ViT: unknown pool_type {self.pool_type!r}; known: "
                       f"{POOL_TYPES}.")
    if self.posemb not in POSEMB_TYPES:
      raise ValueError(f"ViT: unknown posemb {self.posemb!r}; known: "
                       f"{POSEMB_TYPES}.")
    dims = self.dims()
    width, patch = dims["width"], _pair(dims["patch_size"])
    dtype = common.get_dtype(self.dtype)
    pos = valid = None
    if naflex.is_naflex(image):
      image, pos = image["patches"], image["pos"]
      if (image.ndim != 5 or tuple(image.shape[2:4]) != patch
          or tuple(pos.shape) != tuple(image.shape[:2]) + (2,)):
        raise ValueError(
            f"ViT: NaFlex input needs patches [B, N, {patch[0]}, {patch[1]}, "
            f"C] and pos [B, N, 2], got {image.shape} and {pos.shape}.")
      valid = naflex.valid(pos)
    elif image.ndim != 4:
      hint = (" NaFlex patches [B, N, ph, pw, C] need their positions: keep "
              "'image_pos' in the pp (`naflex` op writes it)."
              if image.ndim == 5 else "")
      raise ValueError(
          f"ViT expects images [B, H, W, C], got {image.shape}.{hint}")
    elif image.shape[1] % patch[0] or image.shape[2] % patch[1]:
      raise ValueError(
          f"ViT: image size {image.shape[1]}x{image.shape[2]} is not "
          f"divisible by the patch size {patch[0]}x{patch[1]}.")

    x = PatchEmbedding(width, patch, dtype=dtype, name="embedding")(image)
    n = x.shape[0]
    if pos is None:
      _, h, w, _ = x.shape
      x = jnp.reshape(x, (n, h * w, width))
    num = x.shape[1]
    extra = {}
    if self.mask_ratio:
      if not 0.0 < self.mask_ratio < 1.0 or self.patch_keep < 1.0:
        raise ValueError(f"ViT: mask_ratio={self.mask_ratio} must be in "
                         "(0, 1) and does not combine with patch_keep.")
      token = self.param("mask_token", nn.initializers.normal(0.02),
                         (1, 1, width), jnp.float32)
      masked = jnp.zeros((n, num), jnp.bool_)
      if train and mask:
        masked = mask_patches(n, num, self.mask_ratio,
                              self.make_rng("dropout"), valid)
      x = jnp.where(masked[..., None], token.astype(dtype), x)
      extra["patch_mask"] = masked

    x = x + self._posemb(width, pos, None if pos is not None else (h, w),
                         posemb_resize).astype(dtype)
    if not 0.0 < self.patch_keep <= 1.0:
      raise ValueError(f"ViT: patch_keep={self.patch_keep} is not in (0, 1].")
    if train and self.patch_keep < 1.0:
      if valid is None:
        x = keep_patches(x, self.patch_keep, self.make_rng("dropout"))
      else:
        x, valid = keep_patches(x, self.patch_keep, self.make_rng("dropout"),
                                valid)

    attn_mask = None
    if self.pool_type == "cls":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, width),
                       jnp.float32)
      x = jnp.concatenate([jnp.tile(cls.astype(dtype), (n, 1, 1)), x], axis=1)
    if valid is not None:
      keys = valid if self.pool_type != "cls" else jnp.concatenate(
          [jnp.ones((n, 1), jnp.bool_), valid], axis=1)
      attn_mask = common.padding_mask_to_attention(keys)

    if self.pre_norm:
      x = nn.LayerNorm(epsilon=self.norm_eps, dtype=dtype,
                       name="pre_norm")(x)
    x = nn.Dropout(rate=self.dropout)(x, not train)

    x = common.Encoder(
        depth=dims["depth"], mlp_dim=dims["mlp_dim"],
        num_heads=dims["num_heads"], dropout=self.dropout, dtype=dtype,
        remat_policy=common.resolve_remat_policy(
            self.remat_policy, self.remat, "ViT"),
        scan=self.scan, act=self.act, norm_eps=self.norm_eps,
        final_norm=self.final_norm, name="Transformer",
    )(x, attn_mask, not train)

    if self.pool_type == "cls":
      pooled, tokens = x[:, 0], x[:, 1:]
    elif self.pool_type == "gap":
      tokens = x
      if valid is None:
        pooled = jnp.mean(x, axis=1)
      else:
        w = valid[..., None].astype(x.dtype)
        pooled = jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1)
    else:  # map
      pooled = common.MAPHead(
          mlp_dim=dims["mlp_dim"], num_heads=dims["num_heads"], dtype=dtype,
          act=self.act, norm_eps=self.norm_eps, name="MAPHead_0")(x, valid)
      tokens = x
    if valid is not None:
      extra["mask"] = valid

    out = pooled
    if self.num_classes:
      out = nn.Dense(self.num_classes, dtype=dtype, use_bias=self.head_bias,
                     kernel_init=common.head_init(width), name="head")(pooled)
    return out, {"tokens": tokens, "pre_logits": pooled, **extra}

  def _posemb(self, width, pos, grid, resize=False):
    """The position embedding to add: [1, h * w, width] for an image's
    (h, w) `grid`, or [B, N, width] at NaFlex positions `pos`; `resize`:
    see `__call__`'s `posemb_resize`."""
    if self.posemb == "sincos2d":
      if pos is not None:
        return naflex.sincos_at(pos, width)
      return common.posemb_sincos_2d(*grid, width)
    own = _pair(self.posemb_grid) if self.posemb_grid else None
    if own is None and resize and self.has_variable("params",
                                                    "pos_embedding"):
      # The init image's grid (square), resized to this call's.
      n = self.get_variable("params", "pos_embedding").shape[1]
      side = math.isqrt(n)
      if side * side == n:
        own = (side, side)
      elif grid is None or n != grid[0] * grid[1]:
        raise ValueError(
            f"ViT: a learned position embedding of {n} positions (not a "
            f"square grid) cannot be resized to a {grid} patch grid; set "
            "`posemb_grid`.")
    own = own or grid
    if own is None:
      raise ValueError("ViT: NaFlex inputs need `posemb_grid` (the learned "
                       "position-embedding grid, e.g. 16), since the inputs "
                       "have no one grid to make it for.")
    pe = self.param("pos_embedding",
                    nn.initializers.normal(stddev=1 / np.sqrt(width)),
                    (1, own[0] * own[1], width), jnp.float32)
    if pos is None and own == tuple(grid):
      return pe
    if pos is None:
      pos = naflex.grid_positions(*grid)
    return naflex.posemb_at(pe.reshape(*own, width), pos)
