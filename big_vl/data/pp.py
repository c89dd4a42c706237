"""Preprocessing ops, composed from a pp string.

A pp string chains registered ops with `|`; each op is a call with literal
arguments:

    fn = pp.build("decode|resize(32)|value_range(-1,1)|choice(key='captions', "
                  "out='text')|tokenize(max_len=32)|keep('image','text')")
    out = fn({"image": png_bytes, "captions": [b"a red circle", ...]}, rng)
    # out == {"image": f32[32, 32, 3] in [-1, 1], "text": i32[32]}

Each op factory takes its arguments and returns `op(example, rng) -> example`
working on one example (a dict of numpy values); `rng` is a
`np.random.Generator` for random ops, or None for deterministic evaluation
(random ops then take their deterministic choice). Ops register under the
"pp" kind of `big_vl.registry`.

Ops (image ops take `key="image"`, text ops `key="text"`):

    decode(key, channels=3, alpha="drop")    bytes -> uint8[H, W, 3]
    resize(size, method="bilinear")          -> [size, size] or [h, w]
    resize_small(size, method="bicubic")     shorter side -> size (torchvision
                                             Resize(int) rounding)
    central_crop(size)                       torchvision CenterCrop offsets
    random_resized_crop(size, scale, ratio, method="bicubic")
    inception_crop(...)                      alias of random_resized_crop
    flip_lr()                                random left-right flip
    naflex(max_patches, patch=16)            aspect-kept resize to a patch
                                             budget -> [N, ph, pw, C] patches
                                             + "image_pos" (SigLIP 2 NaFlex)
    value_range(vmin, vmax)                  uint8 [0, 255] -> f32 [vmin, vmax]
    normalize(mean, std)                     f32 [0, 1] -> (x - mean) / std
    clip_preprocess(size=224)                OpenAI CLIP's eval transform
    choice(key, out), sample_sentences(k, key, out),
    tokenize(max_len, tokenizer='clip_bpe', **kw), lower(),
    keep(*keys), drop(*keys),
    rename(old=new)

Images are resized with PIL on the uint8 image, like torchvision's PIL
backend (which OpenAI CLIP and open_clip use), so bicubic results match
theirs exactly.

Length: every pp op (about 40, each a few lines) lives here, so that the
vocabulary of a pp string is one file."""

import ast
import io
import math
import re

import numpy as np
from PIL import Image

from big_vl import registry

# OpenAI CLIP's per-channel RGB statistics for images in [0, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CorruptRecordError(ValueError):
  """A record that cannot be used (e.g. image bytes that fail to decode).

  The pipeline skips such records and counts them by `reason`:
  "decode" (undecodable bytes), "missing_image" (absent or empty image
  field), "missing_text" (no caption to choose from), "bad_caption" (a
  null, empty or whitespace-only caption, see `caption_text`),
  "decode_text" (text bytes that are not UTF-8).

  Args:
    message: what is wrong, for logs.
    reason: a short stable tag used to count skips.
  """

  def __init__(self, message, reason="decode"):
    super().__init__(message)
    self.reason = reason

  def __reduce__(self):  # Keep `reason` across processes (grain workers).
    return type(self), (str(self), self.reason)


def _parse_op(text):
  """'name(1, k=2)' -> ('name', (1,), {'k': 2}) with literal arguments."""
  try:
    node = ast.parse(text.strip(), mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"Cannot parse pp op {text!r}: {e}") from e
  if isinstance(node, ast.Name):
    return node.id, (), {}
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
    raise ValueError(f"pp op {text!r} must look like name or name(args).")
  try:
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  except ValueError as e:
    raise ValueError(f"pp op {text!r}: arguments must be literals.") from e
  return node.func.id, args, kwargs


def _split_ops(spec):
  """Splits on '|' outside of brackets and quotes."""
  ops, depth, quote, current = [], 0, None, []
  for ch in spec:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "|" and depth == 0:
      ops.append("".join(current))
      current = []
      continue
    current.append(ch)
  ops.append("".join(current))
  return [op for op in (o.strip() for o in ops) if op]


def parse(spec):
  """A pp string as [(name, args, kwargs), ...], one per op, in order.

  Example: parse("decode|resize(32, method='bicubic')") ==
  [("decode", (), {}), ("resize", (32,), {"method": "bicubic"})].
  """
  return [_parse_op(text) for text in _split_ops(spec)]


def build(spec):
  """Builds `fn(example, rng=None) -> example` from a pp string.

  Args:
    spec: ops joined by '|', e.g. "decode|resize(64)|value_range(-1,1)".

  Returns:
    A function applying the ops in order to a copy of the example dict.
    Images travel between ops as PIL images where they can (no numpy round
    trips between decode, crop, resize and flip); the result always holds
    numpy arrays.

  Raises:
    KeyError: for an unknown op (listing the known ones).
  """
  ops = [registry.get("pp", name)(*args, **kwargs)
         for name, args, kwargs in parse(spec)]

  def apply(example, rng=None):
    example = dict(example)
    for op in ops:
      example = op(example, rng)
    return {k: as_array(v) if isinstance(v, Image.Image) else v
            for k, v in example.items()}

  return apply


def get_preprocess_fn(pp_string):
  """Returns `fn(example, rng=None) -> example` for a pp string.

  The public entry point for preprocessing outside the pipeline (evaluation
  scripts, notebooks, parity checks); the same as `build`.

    fn = get_preprocess_fn("clip_preprocess(224)")
    fn({"image": jpeg_bytes})["image"]    # f32[224, 224, 3]

  Args:
    pp_string: ops joined by '|'.

  Returns:
    A function of one example dict and an optional `np.random.Generator`.
  """
  return build(pp_string)


# 16-bit (and 32-bit integer) greyscale modes: PIL's convert() clips these at
# 255, so they are rescaled from [0, 65535] by hand.
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _is_missing(value):
  if value is None:
    return True
  if isinstance(value, np.ndarray):
    return value.size == 0
  try:
    return len(value) == 0
  except TypeError:
    return False


def _has_alpha(img):
  return (any(b in ("A", "a") for b in img.getbands())
          or "transparency" in img.info)


def as_array(image):
  """An image field as a numpy array (PIL images become uint8[H, W, C]).

  Ops hand images to each other as PIL images where they can (see
  `build`); this turns either form into an array ([H, W, 1] for one-band
  images).
  """
  if isinstance(image, Image.Image):
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array
  return np.asarray(image)


def _image_shape(image):
  """(height, width) of a PIL image or an [H, W, ...] array."""
  if isinstance(image, Image.Image):
    return image.height, image.width
  return np.shape(image)[:2]


_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _as_pil(image):
  """A PIL image for PIL images and uint8 [H, W, 1|3|4] arrays, else None."""
  if isinstance(image, Image.Image):
    return image if image.mode in _PIL_MODES.values() else None
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or \
      image.shape[-1] not in _PIL_MODES:
    return None
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _pil_to_rgb(img, alpha):
  """PIL image of any mode -> RGB PIL image or uint8[H, W, 3] (`get_decode`)."""
  if img.mode in _WIDE_INT_MODES:
    wide = np.asarray(img).astype(np.float64)
    grey = np.clip(np.round(wide * (255.0 / 65535.0)), 0, 255)
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
  if not _has_alpha(img):
    return img if img.mode == "RGB" else img.convert("RGB")
  rgba = np.asarray(img.convert("RGBA"))
  rgb = rgba[..., :3]
  if alpha == "drop":
    return np.ascontiguousarray(rgb)
  # Composite on white, rounding to nearest: (c * a + 255 * (255 - a)) / 255.
  a = rgba[..., 3:].astype(np.uint32)
  out = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
  return out.astype(np.uint8)


@registry.register("pp", "decode")
def get_decode(key="image", channels=3, alpha="drop"):
  """Decodes encoded image bytes (anything PIL reads) to uint8[H, W, channels].

  Every PIL mode is brought to RGB uint8: greyscale (L, LA, 1) is
  replicated, CMYK and YCbCr are converted by PIL, palette images (P, PA,
  with or without transparency) are expanded, and 16-bit greyscale
  (I;16*, I) is rescaled from [0, 65535] to [0, 255] (v * 255 / 65535,
  rounded; 65535 -> 255, 257 -> 1) instead of being clipped at 255. Multi-
  frame files (GIF, animated WebP) give their first frame. EXIF orientation
  is not applied (as in torchvision / open_clip).

  Args:
    key: the field holding the bytes; an already decoded uint8[H, W, C]
      array is passed through.
    channels: 3 (RGB), 1 (L, from the RGB result) or 4 (RGBA, alpha kept).
    alpha: for channels 1 or 3, what to do with transparency (RGBA, LA, PA,
      P or L with a transparent colour): "drop" keeps the colour channels as
      they are, like PIL's `convert("RGB")` in torchvision, open_clip and
      OpenAI CLIP (default; keeps evaluation numbers comparable), or "white"
      composites the image on a white background (as img2dataset does).

  Returns:
    op(example, rng) setting `example[key]` to the decoded image, e.g. a
    640x480 JPEG -> uint8[480, 640, 3] at the end of the pp function (a PIL
    image while later ops can work on it as one, see `build`).

  Raises (from the op):
    CorruptRecordError: reason "missing_image" for an absent, None or empty
      field; reason "decode" for bytes PIL cannot read (garbage, truncated).
  """
  if channels not in (1, 3, 4):
    raise ValueError(f"decode: channels must be 1, 3 or 4, not {channels!r}.")
  if alpha not in ("drop", "white"):
    raise ValueError(f"decode: alpha must be 'drop' or 'white', not "
                     f"{alpha!r}.")

  def op(example, rng):
    del rng
    value = example.get(key)
    if isinstance(value, np.ndarray) and value.dtype == object and \
        value.ndim == 0:
      value = value.item()
    if _is_missing(value):
      raise CorruptRecordError(f"no image in field {key!r}",
                               reason="missing_image")
    if isinstance(value, Image.Image) or (
        isinstance(value, np.ndarray) and value.dtype == np.uint8 and
        value.ndim == 3):
      return example  # Already decoded.
    try:
      # No `with`: an RGB image is handed on as it is (closing would free it).
      img = Image.open(io.BytesIO(bytes(value)))
      img.load()
      if channels == 4:
        image = img if img.mode == "RGBA" else img.convert("RGBA")
      else:
        image = _pil_to_rgb(img, alpha)
    except Exception as e:  # PIL raises many types for bad data.
      raise CorruptRecordError(f"cannot decode {key!r}: {e}",
                               reason="decode") from e
    if channels == 1:
      image = _as_pil(as_array(image)).convert("L")
    example[key] = image
    return example

  return op


_METHODS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
            "nearest": Image.NEAREST, "area": Image.BOX,
            "lanczos": Image.LANCZOS}


def _resample(method):
  if method not in _METHODS:
    raise ValueError(f"Unknown resize method {method!r}; known: "
                     f"{sorted(_METHODS)}.")
  return _METHODS[method]


def _pil_resize(image, height, width, resample):
  """Resizes an [H, W, C] image with PIL to [height, width, C].

  PIL images and uint8 arrays with 1, 3 or 4 channels are resized as one PIL
  image (L, RGB, RGBA), exactly like torchvision's PIL backend, and come
  back as a PIL image; other images are resized channel by channel in
  float32 ("F" mode), uint8 ones rounded back.
  """
  if tuple(_image_shape(image)) == (height, width):
    return image
  pil = _as_pil(image)
  if pil is not None:
    return pil.resize((width, height), resample=resample)
  image = as_array(image)
  planes = [np.asarray(Image.fromarray(np.ascontiguousarray(
      image[..., c], np.float32)).resize((width, height), resample=resample))
            for c in range(image.shape[-1])]
  out = np.stack(planes, axis=-1)
  if image.dtype == np.uint8:
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
  return out


def _crop(image, top, left, height, width):
  """The [top:top+height, left:left+width] window of a PIL image or array."""
  if isinstance(image, Image.Image):
    return image.crop((left, top, left + width, top + height))
  return np.ascontiguousarray(
      np.asarray(image)[top:top + height, left:left + width])


def _hw(size):
  return (size, size) if isinstance(size, int) else tuple(size)


@registry.register("pp", "resize")
def get_resize(size, key="image", method="bilinear"):
  """Resizes an image to `size`, ignoring its aspect ratio.

  Args:
    size: int for a square, or (height, width).
    key: image field (uint8 or float [H, W, C]).
    method: "bilinear", "bicubic", "nearest", "area" (box) or "lanczos"; PIL
      filters, antialiased when downsampling.

  Returns:
    op(example, rng); e.g. resize(32) on uint8[480, 640, 3] -> uint8[32, 32, 3].
  """
  height, width = _hw(size)
  resample = _resample(method)

  def op(example, rng):
    del rng
    example[key] = _pil_resize(example[key], height, width, resample)
    return example

  return op


def resize_small_shape(height, width, size):
  """Output (height, width) of resizing the shorter side to `size`.

  Same rounding as torchvision's `Resize(int)`: the longer side becomes
  `int(size * long / short)` (truncated).

  Args:
    height, width: input shape.
    size: target length of the shorter side.

  Returns:
    (new_height, new_width), e.g. (200, 300, 224) -> (224, 336) and
    (450, 655, 224) -> (224, 326).
  """
  if height <= width:
    return size, int(size * width / height)
  return int(size * height / width), size


@registry.register("pp", "resize_small")
def get_resize_small(size, key="image", method="bicubic"):
  """Resizes the shorter side to `size`, keeping the aspect ratio.

  Args:
    size: target length of the shorter side.
    key: image field.
    method: PIL filter name (see `resize`); bicubic on uint8 equals
      torchvision's `Resize(size, BICUBIC)` on a PIL image.

  Returns:
    op(example, rng); e.g. resize_small(224) on uint8[200, 300, 3] ->
    uint8[224, 336, 3].
  """
  resample = _resample(method)

  def op(example, rng):
    del rng
    image = example[key]
    height, width = resize_small_shape(*_image_shape(image), size)
    example[key] = _pil_resize(image, height, width, resample)
    return example

  return op


def central_crop_box(height, width, crop_height, crop_width):
  """Top-left corner of a centred crop, with torchvision CenterCrop rounding.

  Args:
    height, width: image shape (at least the crop's).
    crop_height, crop_width: crop shape.

  Returns:
    (top, left) = (round((height - crop_height) / 2), ...) with Python's
    round (half to even), e.g. (336, 224, 224, 224) -> (56, 0) and
    (5, 5, 2, 2) -> (2, 2).
  """
  return (int(round((height - crop_height) / 2.0)),
          int(round((width - crop_width) / 2.0)))


@registry.register("pp", "central_crop")
def get_central_crop(size, key="image"):
  """Crops the centre of an image, like torchvision's `CenterCrop`.

  An image smaller than the crop is first zero-padded (as torchvision does:
  the extra pixel of an odd padding goes to the bottom/right).

  Args:
    size: int for a square, or (height, width).
    key: image field.

  Returns:
    op(example, rng); e.g. central_crop(224) on [224, 336, 3] takes columns
    56:280 -> [224, 224, 3].
  """
  crop_h, crop_w = _hw(size)

  def op(example, rng):
    del rng
    image = example[key]
    height, width = _image_shape(image)
    if crop_h > height or crop_w > width:
      image = as_array(image)
      pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
      pads = [(pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2)]
      image = np.pad(image, pads + [(0, 0)] * (image.ndim - 2))
      height, width = image.shape[:2]
    top, left = central_crop_box(height, width, crop_h, crop_w)
    example[key] = _crop(image, top, left, crop_h, crop_w)
    return example

  return op


def random_resized_crop_box(height, width, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3), rng=None):
  """Crop box of torchvision's `RandomResizedCrop.get_params`.

  Up to 10 tries draw an area fraction uniformly in `scale` and an aspect
  ratio (width / height) log-uniformly in `ratio`, round the crop's sides
  and keep the first crop that fits, at a uniform position. If none fits,
  or `rng` is None, the fallback is a central crop of the whole image with
  its aspect ratio clipped to `ratio`. Same distribution as torchvision,
  not the same numbers (numpy instead of torch random draws).

  Args:
    height, width: image shape.
    scale: (min, max) fraction of the image area.
    ratio: (min, max) aspect ratio width / height.
    rng: np.random.Generator, or None for the deterministic fallback.

  Returns:
    (top, left, crop_height, crop_width); e.g. rng None on (100, 300)
    gives (0, 83, 100, 133).
  """
  if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
    raise ValueError(f"random_resized_crop: need 0 < scale[0] <= scale[1] "
                     f"<= 1 and 0 < ratio[0] <= ratio[1]; got scale={scale}, "
                     f"ratio={ratio}.")
  if rng is not None:
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
      target_area = area * rng.uniform(scale[0], scale[1])
      aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
      crop_w = int(round(math.sqrt(target_area * aspect)))
      crop_h = int(round(math.sqrt(target_area / aspect)))
      if 0 < crop_w <= width and 0 < crop_h <= height:
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        return top, left, crop_h, crop_w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    crop_w, crop_h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    crop_w, crop_h = int(round(height * ratio[1])), height
  else:
    crop_w, crop_h = width, height
  return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


@registry.register("pp", "random_resized_crop")
@registry.register("pp", "inception_crop")
def get_random_resized_crop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                            method="bicubic", key="image"):
  """Random crop of random area and aspect, resized (torchvision semantics).

  See `random_resized_crop_box` for how the crop is drawn. With rng None
  (evaluation) the crop is the deterministic central one of the whole image
  (aspect clipped to `ratio`), then resized. Also registered as
  `inception_crop`.

  Args:
    size: output int (square) or (height, width).
    scale: (min, max) fraction of the image area kept.
    ratio: (min, max) aspect ratio width / height of the crop.
    method: PIL filter for the resize.
    key: image field.

  Returns:
    op(example, rng); e.g. random_resized_crop(224) on uint8[480, 640, 3]
    -> uint8[224, 224, 3].
  """
  out_h, out_w = _hw(size)
  resample = _resample(method)
  scale, ratio = tuple(scale), tuple(ratio)
  random_resized_crop_box(1, 1, scale, ratio)  # Validates the arguments.

  def op(example, rng):
    image = example[key]
    top, left, crop_h, crop_w = random_resized_crop_box(
        *_image_shape(image), scale, ratio, rng)
    crop = _crop(image, top, left, crop_h, crop_w)
    example[key] = _pil_resize(crop, out_h, out_w, resample)
    return example

  return op


@registry.register("pp", "multi_crop")
def get_multi_crop(global_size=224, local_size=96, n_global=2, n_local=8,
                   global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
                   ratio=(3 / 4, 4 / 3), flip=True, method="bicubic",
                   key="image", out="views"):
  """Multi-crop views (DINO / SILC): global and local random resized crops.

  The self-distillation objective (`big_vl/losses/self_distillation.py`)
  lets an EMA teacher see the global views and the student every view.
  `key` itself is left as it is, so put this op before the ops that make
  the image-text input (e.g. `decode|multi_crop(224, 96)|resize(224)|...`):
  the contrastive and captioning losses keep the plain image, as SILC and
  SigLIP 2 advise. Each crop is drawn as `random_resized_crop` draws one
  (area fraction in `global_scale` / `local_scale`, aspect in `ratio`),
  resized and, with `flip`, flipped left-right with probability 1/2.
  Without rng (evaluation) every view is the deterministic central crop.
  SILC's defaults: 2 global views of 40-100% of the area, 8 local views of
  5-40%.

  Args:
    global_size, local_size: output sizes, int or (height, width).
    n_global, n_local: view counts (n_local may be 0).
    global_scale, local_scale: (min, max) area fractions.
    ratio: (min, max) crop aspect (width / height).
    flip: random left-right flips.
    method: PIL resize filter.
    key: the image field (uint8 [H, W, C] or a PIL image).
    out: prefix of the output fields.

  Returns:
    op(example, rng) writing `out + "_global"` [n_global, *global_size, C]
    and `out + "_local"` [n_local, *local_size, C] (with n_local > 0), in
    the image's dtype; e.g. multi_crop(32, 16, 2, 4) on uint8[64, 96, 3]
    -> views_global uint8[2, 32, 32, 3], views_local uint8[4, 16, 16, 3].
  """
  if n_global < 1 or n_local < 0:
    raise ValueError(f"multi_crop: n_global={n_global} must be >= 1 and "
                     f"n_local={n_local} >= 0.")
  scales = (tuple(global_scale), tuple(local_scale))
  for scale in scales:
    random_resized_crop_box(1, 1, scale, tuple(ratio))  # Validates.
  groups = (("_global", _hw(global_size), n_global, scales[0]),
            ("_local", _hw(local_size), n_local, scales[1]))
  resample = _resample(method)

  def op(example, rng):
    image = example[key]
    shape = _image_shape(image)
    for suffix, (out_h, out_w), count, scale in groups:
      if not count:
        continue
      views = []
      for _ in range(count):
        top, left, crop_h, crop_w = random_resized_crop_box(
            *shape, scale, tuple(ratio), rng)
        view = as_array(_pil_resize(_crop(image, top, left, crop_h, crop_w),
                                    out_h, out_w, resample))
        if flip and rng is not None and rng.random() < 0.5:
          view = view[:, ::-1]
        views.append(view)
      example[out + suffix] = np.stack(views)
    return example

  return op


def naflex_grid(height, width, patch, max_patches):
  """The patch grid of an image resized, aspect kept, to fit a NaFlex budget.

  SigLIP 2's rule (big_vision's `resize_to_sequence`): the largest scale r
  whose grid (ceil(height * r / ph), ceil(width * r / pw)), each side at
  least 1, has at most `max_patches` patches. Solved exactly here: at the
  largest feasible r one side is a whole number of patches, so the
  candidates are r = a * ph / height and r = b * pw / width for a, b in
  1..max_patches (big_vision bisects to within 1e-5 instead).

  Args:
    height, width: the image's size.
    patch: int or (ph, pw).
    max_patches: the budget N.

  Returns:
    (rows, cols) with rows * cols <= max_patches; the image is then resized
    to (rows * ph, cols * pw), its aspect ratio kept up to the rounding to
    whole patches. E.g. a 480x640 image, patch 16, budget 256 -> (14, 18);
    a square one -> (16, 16).
  """
  ph, pw = (patch, patch) if isinstance(patch, int) else patch
  if height < 1 or width < 1 or max_patches < 1:
    raise ValueError(f"naflex_grid({height}, {width}, budget {max_patches}).")
  k = np.arange(1, max_patches + 1, dtype=np.int64)
  # Candidate scales as fractions num / den over a common denominator
  # height * width * ph * pw... kept as pairs and compared exactly.
  cand = []
  # r = a * ph / height: rows = a, cols = ceil(width * a * ph / (height * pw)).
  cols = np.maximum(1, -(-(width * k * ph) // (height * pw)))
  cand.append((k * ph * width, k, cols))             # r * height * width
  rows = np.maximum(1, -(-(height * k * pw) // (width * ph)))
  cand.append((k * pw * height, rows, k))
  best = None
  for scaled, rows, cols in cand:
    ok = rows * cols <= max_patches
    if ok.any():
      i = np.flatnonzero(ok)[np.argmax(scaled[ok])]
      if best is None or scaled[i] > best[0]:
        best = (scaled[i], int(rows[i]), int(cols[i]))
  if best is None:  # Even one patch per side is too many: cannot happen
    raise ValueError(f"no grid fits {max_patches} patches.")  # for N >= 1.
  return best[1], best[2]


@registry.register("pp", "naflex")
def get_naflex(max_patches, patch=16, key="image", method="bilinear"):
  """NaFlex (SigLIP 2): the image resized to fit `max_patches`, aspect
  kept, cut into patches and padded to the budget.

  Put it after the ops that need an image (crops, flips) and before or
  after value_range / normalize (which work on patches as on images).

  Args:
    max_patches: the sequence budget N (e.g. 256); one compile per budget.
    patch: int or (ph, pw), the model's patch size.
    key: image field.
    method: resize filter (as `resize`; PIL, antialiased).

  Returns:
    op(example, rng) writing `key`: [N, ph, pw, C] patches (the input's
    dtype) row-major over the (rows, cols) grid of `naflex_grid`, then
    zeros; and `key + "_pos"`: int32 [N, 2] each patch's (row, col), -1 at
    padding. E.g. uint8[480, 640, 3] with naflex(256, 16) -> image
    uint8[256, 16, 16, 3] (252 real patches, a 14x18 grid), image_pos
    int32[256, 2].
  """
  ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
  resample = _resample(method)

  def op(example, rng):
    del rng
    height, width = _image_shape(example[key])
    rows, cols = naflex_grid(height, width, (ph, pw), max_patches)
    image = as_array(_pil_resize(example[key], rows * ph, cols * pw,
                                 resample))
    c = image.shape[-1]
    patches = np.zeros((max_patches, ph, pw, c), image.dtype)
    patches[:rows * cols] = image.reshape(rows, ph, cols, pw, c).transpose(
        0, 2, 1, 3, 4).reshape(rows * cols, ph, pw, c)
    pos = np.full((max_patches, 2), -1, np.int32)
    grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols),
                                indexing="ij"), -1).reshape(-1, 2)
    pos[:rows * cols] = grid
    example[key] = patches
    example[key + "_pos"] = pos
    return example

  return op


@registry.register("pp", "value_range")
def get_value_range(vmin=-1.0, vmax=1.0, key="image", in_min=0.0,
                    in_max=255.0):
  """Maps pixel values linearly from [in_min, in_max] to float32 [vmin, vmax]."""
  scale = (vmax - vmin) / (in_max - in_min)

  def op(example, rng):
    del rng
    image = as_array(example[key]).astype(np.float32)  # A fresh copy.
    if in_min:
      image -= np.float32(in_min)
    image *= np.float32(scale)
    if vmin:
      image += np.float32(vmin)
    example[key] = image
    return example

  return op


@registry.register("pp", "normalize")
def get_normalize(mean=CLIP_MEAN, std=CLIP_STD, key="image"):
  """Per-channel standardisation `(x - mean) / std` of a float image.

  Expects float values in [0, 1] (put `value_range(0, 1)` before it), the
  convention of torchvision's ToTensor + Normalize:
  `value_range(0,1)|normalize(mean=CLIP_MEAN, std=CLIP_STD)` in the DSL,
  where the names stand for the tuples (the DSL only takes literals, so
  write the numbers, or use `clip_preprocess`).

  Args:
    mean: scalar or one value per channel. Default: CLIP_MEAN.
    std: scalar or one positive value per channel. Default: CLIP_STD.
    key: image field.

  Returns:
    op(example, rng) giving float32[H, W, C]; e.g. a pixel of 0.5 in every
    channel -> ((0.5 - 0.4815) / 0.2686, ...) = (0.0690, 0.1614, 0.3328).

  Raises (from the op):
    TypeError: for an integer image (forgotten `value_range(0, 1)`).
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if np.any(std <= 0):
    raise ValueError(f"normalize: std must be positive, got {std}.")

  def op(example, rng):
    del rng
    image = as_array(example[key])
    if not np.issubdtype(image.dtype, np.floating):
      raise TypeError(f"normalize expects a float image in [0, 1] in "
                      f"{key!r}, got {image.dtype}; put value_range(0, 1) "
                      "before it.")
    # Rows of [W * C] values against per-channel constants tiled to match:
    # numpy's inner loops then run over whole rows, not over C = 3 values.
    if image.ndim == 3 and mean.size in (1, image.shape[-1]) and \
        std.size in (1, image.shape[-1]):
      height, width, channels = image.shape
      rows = np.ascontiguousarray(image).reshape(height, width * channels)
      out = np.subtract(rows, np.resize(mean, rows.shape[1]),
                        dtype=np.float32)
      out /= np.resize(std, rows.shape[1])
      out = out.reshape(height, width, channels)
    else:
      out = np.subtract(image, mean, dtype=np.float32)
      out /= std
    example[key] = out
    return example

  return op


@registry.register("pp", "clip_preprocess")
def get_clip_preprocess(size=224, key="image"):
  """OpenAI CLIP's evaluation transform, the same numbers as `clip.load`'s.

  decode -> bicubic resize of the shorter side to `size` (PIL, uint8) ->
  central crop `size` x `size` -> float in [0, 1] -> normalise with
  CLIP_MEAN / CLIP_STD. Equivalent to
  `decode|resize_small(size)|central_crop(size)|value_range(0,1)|normalize`.
  OpenAI converts to RGB after resizing; the two orders agree except at
  alpha edges of transparent images.

  Args:
    size: output side (224 for ViT-B/32, B/16, L/14; 336 for L/14@336px).
    key: image field (encoded bytes or uint8[H, W, 3]).

  Returns:
    op(example, rng) setting `example[key]` to float32[size, size, 3] (HWC;
    transpose to CHW to compare with PyTorch).
  """
  ops = [get_decode(key=key), get_resize_small(size, key=key),
         get_central_crop(size, key=key),
         get_value_range(0.0, 1.0, key=key),
         get_normalize(CLIP_MEAN, CLIP_STD, key=key)]

  def op(example, rng):
    for fn in ops:
      example = fn(example, rng)
    return example

  return op


@registry.register("pp", "flip_lr")
def get_flip_lr(key="image"):
  """Flips the image left-right with probability 1/2 (never without rng)."""

  def op(example, rng):
    if rng is not None and rng.random() < 0.5:
      image = example[key]
      if isinstance(image, Image.Image):
        example[key] = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
      else:
        example[key] = np.ascontiguousarray(np.asarray(image)[:, ::-1])
    return example

  return op


@registry.register("pp", "choice")
def get_choice(key="captions", out="text", index=0):
  """Picks one element of a sequence (several captions -> one text).

  With an rng the element is drawn uniformly; without one (evaluation), the
  element at `index` is taken.

  Raises (from the op):
    TypeError: `key` holds one string (str/bytes, e.g. a WebDataset or
      CSV caption, or a TFDS `Text` feature), not a sequence: indexing it
      would pick one character (or byte). A config error, not a corrupt
      record, so it stops the run instead of being skipped.
    CorruptRecordError: reason "missing_text" for an empty sequence,
      "bad_caption" when no entry is a usable caption (empty, whitespace-only
      and null entries are never picked; see `caption_list`).
  """

  def op(example, rng):
    values = example[key]
    if isinstance(values, (str, bytes, np.str_, np.bytes_)) or (
        isinstance(values, np.ndarray) and values.ndim == 0):
      raise TypeError(
          f"choice(key={key!r}): {key!r} is a single string "
          f"({_short(values)}), not a list of captions, so choice would "
          "pick one character of it. Drop `choice` and tokenize the field "
          f"directly (`tokenize(max_len=N, key={key!r}, out={out!r})`), or "
          "use `sample_sentences(k, key=...)` to draw sentences of a long "
          "caption.")
    if len(values) == 0:
      raise CorruptRecordError(f"{key!r} is empty", reason="missing_text")
    values = caption_list(values, key, decode=False)  # never an empty one
    i = index if rng is None else int(rng.integers(len(values)))
    example[out] = values[i]
    return example

  return op


def _short(value, n=40):
  """repr of a value, cut to about `n` characters, for error messages."""
  text = repr(value.item() if isinstance(value, np.ndarray) else value)
  return text if len(text) <= n else text[:n] + "..."


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@registry.register("pp", "sample_sentences")
def get_sample_sentences(k, key="long_caption", out="texts"):
  """K sentences of a long caption, as K sub-captions (DreamLIP).

  The caption is split after ".", "!" or "?"; with an rng K sentences are
  drawn without replacement (with replacement when it has fewer than K),
  without one (evaluation) the first K are taken (cycling if fewer).

  Args:
    k: sub-captions per example.
    key: field holding the long caption (str or bytes).
    out: field to write: a list of K strings.
  """

  def op(example, rng):
    sentences = [x.strip() for x in _SENTENCE_END.split(
        caption_text(example[key], key).strip()) if x.strip()]
    n = len(sentences)
    if rng is None:
      picks = [i % n for i in range(k)]
    else:
      picks = rng.choice(n, size=k, replace=n < k).tolist()
    example[out] = [sentences[i] for i in picks]
    return example

  return op


def _what(value):
  """A short description of a non-text value, for messages."""
  return "null" if value is None else f"a {type(value).__name__}"


def caption_text(value, key="text"):
  """A caption as a str; a `CorruptRecordError` if it is not a usable one.

  The one definition of a usable caption. It is applied where big_vl knows
  a field is a caption: by the sources to their caption field (jsonl/csv
  rows, a WebDataset sample's `.txt`, TFDS features named in
  `sources.CAPTION_FIELDS`) and by the pp ops that consume text (`tokenize`,
  `sample_sentences`), so that a record with an empty caption is skipped
  and counted (reason "bad_caption") by every source, in training and in
  evaluation, instead of being trained on as "" (or as "None").

  Args:
    value: str, UTF-8 bytes, or a 0-d numpy array of either.
    key: the field's name, for the message.

  Returns:
    The text as a str (decoded; not stripped).

  Raises:
    CorruptRecordError: reason "bad_caption" for None (a JSON null, a
      missing column, a short CSV row), a value that is not text, or a text
      that is empty or only whitespace; reason "decode_text" for bytes that
      are not UTF-8.
  """
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, (bytes, np.bytes_)):
    try:
      value = bytes(value).decode("utf-8")
    except UnicodeDecodeError as e:
      raise CorruptRecordError(f"{key!r} is not UTF-8: {e}",
                               reason="decode_text") from e
  if not isinstance(value, str):
    raise CorruptRecordError(f"{key!r} is {_what(value)}, not a caption",
                             reason="bad_caption")
  if not value.strip():
    raise CorruptRecordError(f"{key!r} is an empty caption ({value!r})",
                             reason="bad_caption")
  return str(value)


def caption_list(values, key="captions", decode=True):
  """The usable captions of a list of captions, the others dropped.

  A record with several captions (the demo data's `captions`, a jsonl list)
  keeps its record as long as one caption is usable: empty, whitespace-only
  and null entries are dropped (`caption_text` decides).

  Args:
    values: a sequence (list, tuple, 1-d numpy array) of captions.
    key: the field's name, for the message.
    decode: return the captions as str (False: the entries as they are).

  Returns:
    A list of the usable captions, in the original order.

  Raises:
    CorruptRecordError: reason "bad_caption" when no entry is usable (or
      `values` is None or not a sequence); "decode_text" when no entry is
      usable and one is not UTF-8.
  """
  if not hasattr(values, "__len__") or isinstance(values, (
      str, bytes, dict)) or (isinstance(values, np.ndarray) and
                             values.ndim != 1):
    raise CorruptRecordError(f"{key!r} is {_what(values)}, not a list of "
                             "captions", reason="bad_caption")
  good, first_error = [], None
  for i, value in enumerate(values):
    try:
      text = caption_text(value, f"{key}[{i}]")
      good.append(text if decode else value)
    except CorruptRecordError as e:
      first_error = first_error or e
  if not good:
    if first_error is not None and first_error.reason == "decode_text":
      raise first_error
    raise CorruptRecordError(f"{key!r} has no usable caption "
                             f"({len(values)} entries)", reason="bad_caption")
  return good


@registry.register("pp", "tokenize")
def get_tokenize(max_len, key="text", out=None, tokenizer="clip_bpe",
                 **tokenizer_kw):
  """Tokenizes a string (or a list of strings) to int32[max_len] ids.

  A list of strings (e.g. all captions of an image) gives int32[N, max_len].

  Args:
    max_len: row length.
    key: field holding the text(s).
    out: field to write (default `key`).
    tokenizer: a registered tokenizer name ("clip_bpe", "clip",
      "sentencepiece", "wordpiece", see `big_vl.data.tokenizers`).
    **tokenizer_kw: the tokenizer factory's arguments, e.g.
      `tokenize(max_len=64, tokenizer='wordpiece', path='/models/minilm')`
      or `tokenize(16, tokenizer='sentencepiece', model='/spm.model')`.

  Returns:
    op(example, rng).

  Raises (from the op):
    CorruptRecordError: reason "bad_caption" for a null, empty or
      whitespace-only text, or a list with such an entry (all entries of a
      list are used, so the record is skipped; `choice` draws among the
      usable ones); "decode_text" for bytes that are not UTF-8 (see
      `caption_text`).
  """
  tok = registry.get("tokenizer", tokenizer)(**tokenizer_kw)
  out = out or key

  def op(example, rng):
    del rng
    value = example[key]
    if not isinstance(value, (list, tuple, np.ndarray)) or (
        isinstance(value, np.ndarray) and value.ndim == 0):
      example[out] = tok.tokenize([caption_text(value, key)], max_len)[0]
    else:
      # Every caption of the list is used (e.g. retrieval), and a batch
      # needs the same number for each record: one bad entry skips it.
      example[out] = tok.tokenize(
          [caption_text(v, f"{key}[{i}]") for i, v in enumerate(value)],
          max_len)
    return example

  return op


def _lower(value):
  """Lower-cases a str or UTF-8 bytes, keeping the type (other values, e.g.
  None, stay as they are, for `tokenize` to skip as "bad_caption", not to
  become "none")."""
  if isinstance(value, (bytes, np.bytes_)):
    try:
      return bytes(value).decode("utf-8").lower().encode("utf-8")
    except UnicodeDecodeError as e:
      raise CorruptRecordError(f"text is not UTF-8: {e}",
                               reason="decode_text") from e
  return value.lower() if isinstance(value, str) else value


@registry.register("pp", "lower")
def get_lower(key="text"):
  """Lower-cases a text field (Unicode-aware).

  Args:
    key: field holding a str / bytes, or a sequence of them (all captions).

  Returns:
    op(example, rng); str stays str and bytes stay (UTF-8) bytes; a
    sequence becomes a list, e.g. [b"A Dog", "ÉTÉ"] -> [b"a dog", "été"].

  Raises (from the op):
    CorruptRecordError: reason "decode_text" for bytes that are not UTF-8.
  """

  def op(example, rng):
    del rng
    value = example[key]
    if not isinstance(value, (list, tuple, np.ndarray)):
      example[key] = _lower(value)
    elif isinstance(value, np.ndarray) and value.ndim == 0:
      example[key] = _lower(value.item())
    else:
      example[key] = [_lower(v) for v in value]
    return example

  return op


def _check_keys_present(op_name, keys, example):
  missing = [k for k in keys if k not in example]
  if missing:
    raise KeyError(f"{op_name}{keys}: example has no {missing}; it has "
                   f"{sorted(example)}.")


@registry.register("pp", "each")
def get_each(pp, key="images", out=None, inner="image"):
  """Applies a pp string to each element of a list field and stacks them.

  For records with several images (K candidates per prompt in preference
  data): `each('decode|resize(32)|value_range(-1,1)', key='images',
  out='image')` turns object[K] encoded images into f32[K, 32, 32, 3].

  Args:
    pp: the pp string applied to {inner: element} for each element.
    key: the list field.
    out: the output field (default `key`).
    inner: the field name the inner pp reads and writes.

  Returns:
    op(example, rng); a corrupt element skips the whole record (its
    `CorruptRecordError`), an empty list is reason "missing_image".
  """
  fn = build(pp)

  def op(example, rng):
    values = example.get(key)
    if values is None or len(values) == 0:
      raise CorruptRecordError(f"no elements in field {key!r}",
                               reason="missing_image")
    example[out or key] = np.stack(
        [np.asarray(fn({inner: v}, rng)[inner]) for v in values])
    return example

  return op


@registry.register("pp", "keep")
def get_keep(*keys):
  """Keeps only the given keys."""

  def op(example, rng):
    del rng
    _check_keys_present("keep", keys, example)
    return {k: example[k] for k in keys}

  return op


@registry.register("pp", "drop")
def get_drop(*keys):
  """Removes the given keys (the complement of `keep`).

  Args:
    *keys: field names, e.g. drop('captions', 'url').

  Returns:
    op(example, rng) without those keys.

  Raises (from the op):
    KeyError: naming a key the example does not have.
  """

  def op(example, rng):
    del rng
    _check_keys_present("drop", keys, example)
    return {k: v for k, v in example.items() if k not in keys}

  return op


@registry.register("pp", "unnest")
def get_unnest(key):
  """Moves the fields of a nested dict field to the top level:
  unnest('hidden') turns {"hidden": {"defects": d}} into {"defects": d}."""

  def op(example, rng):
    del rng
    example.update(example.pop(key))
    return example

  return op


@registry.register("pp", "rename")
def get_rename(**mapping):
  """Renames keys: rename(label='labels') renames 'label' to 'labels'."""

  def op(example, rng):
    del rng
    for old, new in mapping.items():
      example[new] = example.pop(old)
    return example

  return op
