"""ViTamin image tower (Chen et al. 2024): a 3-stage hybrid ConvNet-ViT.

    >>> tower = ViTamin(variant="S", num_classes=512)
    >>> out, aux = tower.apply(params, images)   # images f32[B, 224, 224, 3]
    >>> out.shape, aux["tokens"].shape           # ([B, 512], [B, 196, 384])

Layout (NHWC; the same function and parameter shapes as timm's
`vitamin_{small,base,large,xlarge}_*`, see `big_vl.convert.timm_vitamin`):

  stem      3x3 conv stride 2 -> LayerNorm + GELU -> 3x3 conv     (H/2)
  stage 1   MBConv blocks (pre-LayerNorm, 1x1 expand x4, GELU, depthwise
            3x3, GELU, 1x1), the first with stride 2 and an
            average-pool (+ 1x1 conv) shortcut                    (H/4)
  stage 2   the same, wider                                        (H/8)
  pool      LayerNorm -> 3x3 conv stride 2 to the transformer width (H/16)
  stage 3   tokens (+ learned position embedding, except XL) through
            pre-LN Transformer blocks whose MLP is a GeGLU with its own
            LayerNorm; mean pooling, LayerNorm (`fc_norm`), `head`.

Variants (conv widths, conv depths, stem, transformer width/depth/heads):

  S   (64, 128)   (2, 4)   64    384 / 14 /  6
  B   (128, 256)  (2, 4)  128    768 / 14 / 12
  L   (160, 320)  (2, 4)  160   1024 / 31 / 16
  XL  (192, 384)  (2, 4)  192   1152 / 32 / 16   (no position embedding)
  mu  (16, 32)    (1, 1)   16     64 /  2 /  2   (tests and runlocal only)

Used as the image tower of `two_towers` with `image=dict(arch="vitamin",
variant="S")`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from big_vl.models import common

VARIANTS = {
    "S": dict(conv_widths=(64, 128), conv_depths=(2, 4), stem_width=64,
              width=384, depth=14, num_heads=6, pos_embed=True),
    "B": dict(conv_widths=(128, 256), conv_depths=(2, 4), stem_width=128,
              width=768, depth=14, num_heads=12, pos_embed=True),
    "L": dict(conv_widths=(160, 320), conv_depths=(2, 4), stem_width=160,
              width=1024, depth=31, num_heads=16, pos_embed=True),
    "XL": dict(conv_widths=(192, 384), conv_depths=(2, 4), stem_width=192,
               width=1152, depth=32, num_heads=16, pos_embed=False),
    # Not a paper variant: the same layout, tiny, for CPU tests and runlocal.
    "mu": dict(conv_widths=(16, 32), conv_depths=(1, 1), stem_width=16,
               width=64, depth=2, num_heads=2, pos_embed=True),
}
NORM_EPS = 1e-6
MLP_RATIO = 2


def _conv(features, kernel, stride=1, groups=1, name=None, dtype=None):
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                 kernel_init=nn.initializers.variance_scaling(
                     2.0, "fan_out", "normal"),
                 name=name, dtype=dtype)


class MbConvBlock(nn.Module):
  """Pre-LN inverted bottleneck: LN, 1x1 (x4), GELU, dw 3x3, GELU, 1x1.

  Attributes:
    features: output channels.
    stride: 1 or 2 (the depthwise conv; the shortcut average-pools).
    dtype: compute dtype.
  """
  features: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    act = common.gelu_exact
    shortcut = x
    if self.stride == 2:
      shortcut = nn.avg_pool(shortcut, (3, 3), strides=(2, 2),
                             padding=((1, 1), (1, 1)),
                             count_include_pad=False)
    if shortcut.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, name="shortcut", dtype=self.dtype)(
          shortcut)
    mid = 4 * self.features
    x = nn.LayerNorm(epsilon=NORM_EPS, dtype=self.dtype, name="pre_norm")(x)
    x = act(_conv(mid, 1, name="conv1", dtype=self.dtype)(x))
    x = act(_conv(mid, 3, self.stride, groups=mid, name="conv2",
                  dtype=self.dtype)(x))
    x = _conv(self.features, 1, name="conv3", dtype=self.dtype)(x)
    return x + shortcut


class ViTamin(nn.Module):
  """ViTamin image encoder; returns `(out, aux)` like `vit.ViT`.

  Attributes:
    variant: "S", "B", "L" or "XL" (see the module docstring).
    num_classes: width of the `head` Dense (0: no head, `out` is the
      fc-normed pooled feature).
    dropout: dropout in the transformer blocks.
    dtype: compute dtype.
    remat_policy: transformer blocks' remat policy (see `common.Encoder`).
    scan: scan over the transformer blocks.
  """
  variant: str = "S"
  num_classes: int = 0
  dropout: float = 0.0
  dtype: Any = "float32"
  remat_policy: str = "none"
  scan: bool = False

  @nn.compact
  def __call__(self, image, *, train=False):
    """Encodes images f32[B, H, W, 3] (H, W multiples of 16).

    Returns:
      (out [B, num_classes or width], {"tokens": [B, H*W/256, width]
      final tokens (not normalised), "pre_logits": [B, width]}).
    """
    if self.variant not in VARIANTS:
      raise ValueError(f"ViTamin: unknown variant {self.variant!r}; known: "
                       f"{', '.join(VARIANTS)}.")
    cfg = VARIANTS[self.variant]
    dtype = common.get_dtype(self.dtype)
    x = jnp.asarray(image, dtype)
    # Stem.
    x = _conv(cfg["stem_width"], 3, 2, name="stem_conv1", dtype=dtype)(x)
    x = nn.LayerNorm(epsilon=NORM_EPS, dtype=dtype, name="stem_norm")(x)
    x = _conv(cfg["stem_width"], 3, 1, name="stem_conv2",
              dtype=dtype)(common.gelu_exact(x))
    # Two MBConv stages, each starting with a stride-2 block.
    for s, (width, depth) in enumerate(zip(cfg["conv_widths"],
                                           cfg["conv_depths"])):
      for d in range(depth):
        x = MbConvBlock(width, stride=2 if d == 0 else 1, dtype=dtype,
                        name=f"stage{s}_block{d}")(x)
    # Strided conv to the transformer width, then tokens.
    x = nn.LayerNorm(epsilon=NORM_EPS, dtype=dtype, name="pool_norm")(x)
    x = _conv(cfg["width"], 3, 2, name="pool_conv", dtype=dtype)(x)
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    if cfg["pos_embed"]:
      pos = self.param("pos_embedding", nn.initializers.normal(0.02),
                       (1, h * w, c), jnp.float32)
      x = x + pos.astype(dtype)
    x = common.Encoder(
        depth=cfg["depth"], mlp_dim=MLP_RATIO * cfg["width"],
        num_heads=cfg["num_heads"], dropout=self.dropout, dtype=dtype,
        remat_policy=self.remat_policy, scan=self.scan, act="gelu_exact",
        norm_eps=NORM_EPS, mlp_type="geglu", final_norm=False,
        name="Transformer")(x, deterministic=not train)
    pooled = nn.LayerNorm(epsilon=NORM_EPS, dtype=dtype, name="fc_norm")(
        jnp.mean(x, axis=1))
    out = pooled
    if self.num_classes:
      out = nn.Dense(self.num_classes, dtype=dtype, name="head",
                     kernel_init=common.head_init(cfg["width"]))(pooled)
    return out.astype(jnp.float32), {"tokens": x, "pre_logits": pooled}
