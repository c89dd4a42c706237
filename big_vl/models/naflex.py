"""NaFlex image inputs (SigLIP 2): native-aspect patch sequences.

A NaFlex image is a sequence of patches cut from the image resized, with
its aspect ratio kept, to the largest patch grid that fits a budget of
`max_patches`, padded to the budget (`big_vl.data.pp`'s `naflex` op makes
them on the host). In a batch it is two fields:

    batch["image"]      [B, N, ph, pw, C]  the patches (uint8 or float),
                                           row-major over each image's grid
    batch["image_pos"]  int32 [B, N, 2]    each patch's (row, col) in its
                                           image's grid; (-1, -1) = padding

so the per-pixel ops (value_range, normalize, on the host or on the
device) work on patches as on images, and every compile serves one budget
N. `image_input(batch)` gives a tower the {"patches", "pos"} dict it takes;
a plain [B, H, W, C] image passes through unchanged.

The learned position embedding of a NaFlex ViT is a fixed grid (`posemb
grid`) resized, per image, to that image's grid with antialiased bilinear
interpolation (`jax.image.scale_and_translate`, as big_vision's
`naflex_vit`), then read at each patch's position. `posemb_at` does it as
two small per-axis weight matrices per image, so no [B, L, L, D] resized
grid is ever built.

Example (a 480x640 image, patch 16, a budget of 256 patches):
  >>> ex = pp.build("decode|naflex(256, 16)")({"image": jpeg_bytes})
  >>> ex["image"].shape, ex["image_pos"].shape   # a 14x18 grid, padded
  ((256, 16, 16, 3), (256, 2))
  >>> ex["image_pos"][[0, 17, 18, 251, 252]].tolist()
  [[0, 0], [0, 17], [1, 0], [13, 17], [-1, -1]]
"""

import jax
import jax.numpy as jnp
import numpy as np

from big_vl.models import common

POS_SUFFIX = "_pos"


def grid_positions(rows, cols):
  """int32 [1, rows * cols, 2]: the (row, col) of every patch of a whole
  rows x cols grid, row-major (the `naflex` pp op's layout, unpadded)."""
  r, c = jnp.meshgrid(jnp.arange(rows), jnp.arange(cols), indexing="ij")
  return jnp.stack([r, c], -1).reshape(1, rows * cols, 2).astype(jnp.int32)


def image_input(batch, key="image"):
  """The image tower's input from a batch dict.

  Args:
    batch: a dict with `key` ([B, H, W, C] images, or [B, N, ph, pw, C]
      NaFlex patches with `key + "_pos"`).
    key: the image field.

  Returns:
    batch[key] for plain images; {"patches": batch[key], "pos":
    batch[key + "_pos"]} for NaFlex ones; None without `key`.
  """
  image = batch.get(key)
  pos = batch.get(key + POS_SUFFIX)
  if image is None or pos is None:
    return image
  return {"patches": image, "pos": pos}


def is_naflex(image):
  """Whether a tower input is a NaFlex {"patches", "pos"} dict."""
  return isinstance(image, dict)


def batch_size(image):
  """The leading (batch) size of a tower input of either form."""
  return (image["patches"] if is_naflex(image) else image).shape[0]


def valid(pos):
  """bool [B, N]: the patches that are not padding."""
  return pos[..., 0] >= 0


def grid_sizes(pos):
  """int32 [B, 2]: each image's (rows, cols), from its patch positions."""
  return jnp.max(pos, axis=1) + 1


def _axis_weights(size, grid, out_len):
  """f32 [out_len, grid]: row i holds the weights of the `grid` source
  positions in output position i of an antialiased bilinear resize of
  `grid` positions to `size` (traced int); rows >= size are zero."""
  eye = jnp.eye(grid, dtype=jnp.float32)
  scale = (jnp.asarray(size, jnp.float32) / grid)[None]
  return jax.image.scale_and_translate(
      eye, (out_len, grid), (0,), scale, jnp.zeros([1], jnp.float32),
      method="bilinear", antialias=True)


def posemb_at(posemb, pos):
  """A learned position-embedding grid resized to each image and read at
  its patches.

  Equal to big_vision's NaFlex resize (`jax.image.scale_and_translate` of
  the whole grid to the image's (rows, cols), bilinear, antialiased, then a
  gather at each position) up to float rounding; exact when the image grid
  is the embedding's own (the weights are then one-hot).

  Args:
    posemb: [gh, gw, D] the learned grid.
    pos: int [B, N, 2] patch positions, (-1, -1) for padding.

  Returns:
    f32 [B, N, D]; zeros at padding.

  Example:
    >>> pe = jnp.arange(2 * 2 * 1.0).reshape(2, 2, 1)
    >>> pos = jnp.asarray([[[0, 0], [0, 1], [1, 0], [1, 1]]])
    >>> posemb_at(pe, pos)[0, :, 0].tolist()   # the grid itself
    [0.0, 1.0, 2.0, 3.0]
  """
  gh, gw, d = posemb.shape
  n = pos.shape[1]
  sizes = grid_sizes(pos)
  ok = valid(pos)
  rows = jnp.where(ok, pos[..., 0], 0)
  cols = jnp.where(ok, pos[..., 1], 0)

  def one(size, row, col, keep):
    wy = _axis_weights(size[0], gh, n)[row]   # [N, gh]
    wx = _axis_weights(size[1], gw, n)[col]   # [N, gw]
    w = (wy[:, :, None] * wx[:, None, :]).reshape(n, gh * gw)
    return jnp.where(keep[:, None], w, 0.0)

  weights = jax.vmap(one)(sizes, rows, cols, ok)          # [B, N, gh * gw]
  table = posemb.reshape(gh * gw, d).astype(jnp.float32)
  return jnp.einsum("bnk,kd->bnd", weights, table,
                    precision=jax.lax.Precision.HIGHEST)


def sincos_at(pos, width, temperature=10_000.0):
  """`common.posemb_sincos_2d` read at each patch's (row, col).

  Args:
    pos: int [B, N, 2] patch positions, (-1, -1) for padding.
    width: embedding width, a multiple of 4.
    temperature: frequency base.

  Returns:
    f32 [B, N, width], equal to the fixed grid's rows (the same float64
    tables, one per axis, gathered); zeros at padding.
  """
  n = pos.shape[1]
  # The grid of one row of n patches: its first half holds [sin(x), cos(x)]
  # of every column x < n; the y half of the 2-D embedding is the same
  # function of the row.
  per_axis = common.posemb_sincos_2d(1, n, width, temperature)[0, :,
                                                                :width // 2]
  ok = valid(pos)
  rows = jnp.where(ok, pos[..., 0], 0)
  cols = jnp.where(ok, pos[..., 1], 0)
  pe = jnp.concatenate([per_axis[cols], per_axis[rows]], axis=-1)
  return jnp.where(ok[..., None], pe, 0.0)


def to_images(patches, pos):
  """NaFlex examples back to images, for pictures (numpy, host side).

  Args:
    patches: [n, N, ph, pw, C] patches.
    pos: int [n, N, 2] their positions, (-1, -1) at padding.

  Returns:
    [n, S, S, C] of the patches' dtype: each image reassembled from its
    grid and placed at the top left of a square canvas whose side S is
    the largest image side among them; the rest of the canvas holds the
    smallest patch value (black for images in [0, 1] or [-1, 1]).
  """
  patches, pos = np.asarray(patches), np.asarray(pos)
  n, _, ph, pw, c = patches.shape
  grids = pos.max(axis=1) + 1
  side = int(max(1, (grids * (ph, pw)).max())) if n else 1
  out = np.full((n, side, side, c), patches.min() if patches.size else 0,
                patches.dtype)
  for i in range(n):
    for (r, col), patch in zip(pos[i], patches[i]):
      if r >= 0:
        out[i, r * ph:(r + 1) * ph, col * pw:(col + 1) * pw] = patch
  return out
