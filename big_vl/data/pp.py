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
"""

import ast
import io

import numpy as np
from PIL import Image

from big_vl import registry


class CorruptRecordError(ValueError):
  """A record that cannot be used (e.g. image bytes that fail to decode)."""


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


def build(spec):
  """Builds `fn(example, rng=None) -> example` from a pp string.

  Args:
    spec: ops joined by '|', e.g. "decode|resize(64)|value_range(-1,1)".

  Returns:
    A function applying the ops in order to a copy of the example dict.

  Raises:
    KeyError: for an unknown op (listing the known ones).
  """
  ops = []
  for text in _split_ops(spec):
    name, args, kwargs = _parse_op(text)
    ops.append(registry.get("pp", name)(*args, **kwargs))

  def apply(example, rng=None):
    example = dict(example)
    for op in ops:
      example = op(example, rng)
    return example

  return apply


@registry.register("pp", "decode")
def get_decode(key="image", channels=3):
  """Decodes encoded image bytes (PNG/JPEG/WebP...) to uint8[H, W, channels].

  Raises CorruptRecordError when the bytes are not a readable image, so the
  pipeline can skip and count the record.
  """
  mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]

  def op(example, rng):
    del rng
    value = example[key]
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and \
        value.ndim == 3:
      return example  # Already decoded.
    try:
      with Image.open(io.BytesIO(bytes(value))) as img:
        array = np.asarray(img.convert(mode))
    except Exception as e:  # PIL raises many types for bad data.
      raise CorruptRecordError(f"cannot decode {key!r}: {e}") from e
    if array.ndim == 2:
      array = array[..., None]
    example[key] = array
    return example

  return op


@registry.register("pp", "resize")
def get_resize(size, key="image", method="bilinear"):
  """Resizes a uint8 image to `size` (int for square, or (height, width))."""
  height, width = (size, size) if isinstance(size, int) else size
  resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
              "nearest": Image.NEAREST, "area": Image.BOX}[method]

  def op(example, rng):
    del rng
    image = np.asarray(example[key])
    if image.shape[:2] != (height, width):
      squeeze = image.shape[-1] == 1
      pil = Image.fromarray(image[..., 0] if squeeze else image)
      image = np.asarray(pil.resize((width, height), resample=resample))
      image = image[..., None] if squeeze else image
    example[key] = image
    return example

  return op


@registry.register("pp", "value_range")
def get_value_range(vmin=-1.0, vmax=1.0, key="image", in_min=0.0,
                    in_max=255.0):
  """Maps pixel values linearly from [in_min, in_max] to float32 [vmin, vmax]."""
  scale = (vmax - vmin) / (in_max - in_min)

  def op(example, rng):
    del rng
    image = np.asarray(example[key], np.float32)
    example[key] = ((image - in_min) * scale + vmin).astype(np.float32)
    return example

  return op


@registry.register("pp", "flip_lr")
def get_flip_lr(key="image"):
  """Flips the image left-right with probability 1/2 (never without rng)."""

  def op(example, rng):
    if rng is not None and rng.random() < 0.5:
      example[key] = np.ascontiguousarray(np.asarray(example[key])[:, ::-1])
    return example

  return op


@registry.register("pp", "choice")
def get_choice(key="captions", out="text", index=0):
  """Picks one element of a sequence (several captions -> one text).

  With an rng the element is drawn uniformly; without one (evaluation), the
  element at `index` is taken.
  """

  def op(example, rng):
    values = example[key]
    if len(values) == 0:
      raise CorruptRecordError(f"{key!r} is empty")
    i = index if rng is None else int(rng.integers(len(values)))
    example[out] = values[i]
    return example

  return op


def _to_str(value):
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8")
  return str(value)


@registry.register("pp", "tokenize")
def get_tokenize(max_len, key="text", out=None, tokenizer="clip_bpe"):
  """Tokenizes a string (or a list of strings) to int32[max_len] ids.

  A list of strings (e.g. all captions of an image) gives int32[N, max_len].
  """
  tok = registry.get("tokenizer", tokenizer)()
  out = out or key

  def op(example, rng):
    del rng
    value = example[key]
    if isinstance(value, (str, bytes, np.bytes_, np.str_)):
      example[out] = tok.tokenize([_to_str(value)], max_len)[0]
    else:
      example[out] = tok.tokenize([_to_str(v) for v in value], max_len)
    return example

  return op


@registry.register("pp", "keep")
def get_keep(*keys):
  """Keeps only the given keys."""

  def op(example, rng):
    del rng
    missing = [k for k in keys if k not in example]
    if missing:
      raise KeyError(f"keep{keys}: example has no {missing}; it has "
                     f"{sorted(example)}.")
    return {k: example[k] for k in keys}

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
