"""`big_vl_demo_shapes`: a small image-text dataset generated locally.

A TFDS dataset of synthetic 64x64 RGB images with captions, built on the
machine in seconds without any download, so that training, zero-shot and
retrieval evaluation can run end to end anywhere (CI, laptops, no network).

What the data looks like:

* Each image shows 1-3 shapes (circle, square, triangle, star, cross) in one of
  7 saturated colours (red, orange, yellow, green, cyan, blue, purple), at
  varied positions and sizes, with a little colour jitter and rotation. Shapes
  never overlap and always lie fully inside the image.
* Backgrounds are near-grey (solid greys, grey gradients, smooth noise
  textures; at most ~12 levels of tint), so a background is never confusable
  with a named object colour.
* Images have 1, 2 or 3 objects in ~43%, 35% and 22% of cases.
* The "main" object is the largest one (20-46 px alone, 24-38 px with one
  other, 24-32 px with two others; other objects are 12-22 px and at least
  6 px smaller; size words: "small" < 24 px <= (none) < 36 px <= "large").
  It is always mentioned first in every caption and gives the image's
  `label`.
* Each image has `NUM_CAPTIONS` = 5 distinct captions made from varied
  templates, e.g. "a small red circle in the top left", "a blue triangle next
  to a green square", "two shapes: a large yellow star and a small purple
  square", "a cyan cross on a textured dark background". Every caption
  contains the main object's colour word and shape word.

Splits: train 30,000; validation 1,000; test 2,000 (the "full" config, the
default). A "small" config (train 600, validation 100, test 300) exists only
for fast unit tests.

Classes: `CLASS_NAMES` = the 35 "colour shape" pairs ("red circle", ...),
label = `COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)`. Zero-shot
top-1 chance level is 1/35 = 2.9%. `ZEROSHOT_TEMPLATES` holds prompt
templates for zero-shot classification.

Held-out combinations: the 5 pairs in `HELDOUT_COMBOS` ("red star", "orange
cross", "green circle", "blue square", "purple triangle"; each colour and
each shape still appears in train in other pairs) never appear, as any
object, in train or validation; in test all 35 pairs appear, as main and as
other objects (main label uniform over the 35 classes), so zero-shot and
retrieval on test measure generalisation to unseen colour-shape pairs.

Determinism: example `i` of split `s` is generated from its own
`np.random.default_rng([_BASE_SEED, split id, i])`, so the output does not
depend on generation order. Records are stored unshuffled, so record `i` of
a split is exactly `generate_example(split, i)` (the examples are i.i.d., so
no shuffling is needed when writing).

Build time: the full dataset (33,000 examples) takes ~25 s of CPU time on one
core (~0.6 ms per example to draw and PNG-encode, ~0.2 ms for TFDS to
serialize and write; TFDS writes serially): measured 27 s wall on a 2-core
machine, 32-37 s when that machine was shared with other jobs (load ~3). The
"small" config takes ~1 s. The full data is ~74 MB on disk; peak memory
~170 MB. `prepare()` builds it once per data dir, under a file lock, and
prints one line when it does.

TFDS without TensorFlow: TFDS encodes a numpy image with `tf.image.encode_png`,
so the generator yields PNG bytes that it encoded itself with PIL; everything
else (writing ArrayRecord files, `tfds.builder`, `tfds.data_source`, image
decoding) works without TensorFlow and needs no environment setting.
`builder.is_prepared()` logs a warning when the data is not built yet, so
`prepare()` checks for the files itself.

Reading (after `prepare()`), without TensorFlow::

  import tensorflow_datasets as tfds
  from big_vl.data.builders import demo_shapes  # Registers the builder.

  builder = demo_shapes.prepare()  # Builds once into $TFDS_DATA_DIR.
  src = tfds.data_source(
      "big_vl_demo_shapes", split="train", data_dir=builder.data_dir_root,
      decoders={"image": tfds.decode.SkipDecoding()})
  len(src)  # 30000
  src[0]
  # {"image": b"\\x89PNG...",                    # PNG bytes
  #  "captions": [b"an orange square on a dark background", ...],  # 5 bytes
  #  "long_caption": b"There is an orange square in the middle. ...",
  #  "label": 6,                                  # int, "orange square"
  #  "objects": {"label": [np.int64(6), np.int64(29), np.int64(11)],
  #              "bbox": [np.array([ymin, xmin, ymax, xmax], np.float32),
  #                       ...]}}                  # lists, main object first

Without `decoders`, `src[i]["image"]` is the decoded image, a (64, 64, 3)
uint8 numpy array (TFDS decodes it with PIL; absl warns once that OpenCV is
not installed), and the other features are the same. "objects" comes back as
a dict of Python lists (one entry per object), not stacked arrays; "bbox" is
the object's size box (centre +- size/2) in relative coordinates. Records are
in generation order: `src[i]` is `generate_example("train", i)`. Batched
reads: `src.__getitems__([0, 1, 2])` (`src[[0, 1]]` is not supported).
`tfds.data_source("big_vl_demo_shapes/small", ...)` reads the small config.

Length: the dataset's generator, its caption grammar and the TFDS builder, with
the data's facts in this docstring."""

import io
import math
import os
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageDraw
import tensorflow_datasets as tfds

from big_vl.data.builders import common

NAME = "big_vl_demo_shapes"
IMAGE_SIZE = 64
NUM_CAPTIONS = 5

# Saturated, clearly distinct colours. Backgrounds are near-grey (see
# `_background`), so they can never be mistaken for one of these.
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple")
_COLOUR_RGB = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 30),
    "green": (40, 175, 50),
    "cyan": (30, 200, 215),
    "blue": (35, 70, 225),
    "purple": (145, 45, 195),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
CLASS_NAMES = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]

# Never in train/validation (as any object); present in test. One per shape,
# each colour at most once, so every colour and shape is still seen in train.
HELDOUT_COMBOS = (
    "red star",
    "orange cross",
    "green circle",
    "blue square",
    "purple triangle",
)

# Prompt templates for zero-shot classification: `t.format(class_name)`.
ZEROSHOT_TEMPLATES = (
    "a {}.",
    "the {}.",
    "{}.",
    "a {} shape.",
    "a picture of a {}.",
    "an image with a {}.",
    "a drawing of a {}.",
    "there is a {} in the picture.",
)

SPLIT_SIZES = {
    "full": {"train": 30_000, "validation": 1_000, "test": 2_000},
    "small": {"train": 600, "validation": 100, "test": 300},
}
# Measured seconds per example of a build (for the one-line build message).
_SECONDS_PER_EXAMPLE = 0.0008

_BASE_SEED = 20240917
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
_SUPERSAMPLE = 4  # Shapes are drawn at 4x and box-filtered (anti-aliasing).

# Pixel coordinates in [-0.5, 0.5], for gradients.
_GRID = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / (
    IMAGE_SIZE - 1) - 0.5

_HELDOUT_LABELS = frozenset(CLASS_NAMES.index(c) for c in HELDOUT_COMBOS)
_SEEN_LABELS = tuple(
    i for i in range(len(CLASS_NAMES)) if i not in _HELDOUT_LABELS)
_ALL_LABELS = tuple(range(len(CLASS_NAMES)))

_POSITION_PHRASES = (
    ("in the top left", "at the top", "in the top right"),
    ("on the left", "in the centre", "on the right"),
    ("in the bottom left", "at the bottom", "in the bottom right"),
)
_COUNT_WORDS = {2: "two", 3: "three"}


def label_of(colour: str, shape: str) -> int:
  """Returns the class index of a colour+shape pair.

  Args:
    colour: one of `COLOURS`.
    shape: one of `SHAPES`.

  Returns:
    The index into `CLASS_NAMES`.
  """
  return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


def allowed_labels(split: str) -> tuple[int, ...]:
  """Returns the class indices that objects of `split` are drawn from.

  Args:
    split: "train", "validation" or "test".

  Returns:
    A tuple of indices into `CLASS_NAMES`: all of them for "test", all but
    `HELDOUT_COMBOS` otherwise.
  """
  if split not in _SPLIT_IDS:
    raise ValueError(f"Unknown split {split!r}; known: {tuple(_SPLIT_IDS)}")
  return _ALL_LABELS if split == "test" else _SEEN_LABELS


# ----------------------------------------------------------------------------
# Scene sampling.


def _sample_objects(rng, labels):
  """Samples 1-3 non-overlapping objects; the first is the largest."""
  num = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
  main_size = rng.uniform(*{1: (20, 46), 2: (24, 38), 3: (24, 32)}[num])
  sizes = [main_size]
  for _ in range(num - 1):
    sizes.append(rng.uniform(12, min(22, main_size - 6)))
  chosen = []
  objects = []
  for size in sizes:
    # Distinct colour+shape per object, so captions are unambiguous.
    label = int(rng.choice([l for l in labels if l not in chosen]))
    # 0.54*size bounds every (rotated) shape's x and y half-extent.
    lo, hi = 0.54 * size, IMAGE_SIZE - 0.54 * size
    for _ in range(100):
      cx, cy = rng.uniform(lo, hi, size=2)
      # Radius 0.62*size bounds every shape (incl. rotated squares/crosses).
      if all(math.hypot(cx - o["cx"], cy - o["cy"])
             > 0.62 * (size + o["size"]) + 1 for o in objects):
        break
    else:
      continue  # No room left: drop this (non-main) object.
    chosen.append(label)
    objects.append({
        "label": label,
        "colour": COLOURS[label // len(SHAPES)],
        "shape": SHAPES[label % len(SHAPES)],
        "size": float(size),
        "cx": float(cx),
        "cy": float(cy),
        "angle": float(rng.uniform(-12, 12)),
        "rgb": np.clip(np.array(_COLOUR_RGB[COLOURS[label // len(SHAPES)]])
                       + rng.integers(-12, 13, size=3), 0, 255),
    })
  return objects


def _background(rng):
  """Returns a near-grey (float32 HxWx3) background and a phrase for it."""
  n = IMAGE_SIZE
  kind = rng.choice(["solid", "gradient", "texture"], p=[0.4, 0.3, 0.3])
  tint = rng.integers(-6, 7, size=3).astype(np.float32)
  if kind == "solid":
    img = np.full((n, n, 1), rng.uniform(25, 190), np.float32)
  elif kind == "gradient":
    level_a = rng.uniform(25, 190)
    level_b = np.clip(level_a + rng.choice([-1, 1]) * rng.uniform(40, 90),
                      20, 195)
    theta = rng.uniform(0, 2 * np.pi)
    ys, xs = _GRID
    t = (np.cos(theta) * xs + np.sin(theta) * ys) / (
        abs(np.cos(theta)) / 2 + abs(np.sin(theta)) / 2) + 0.5
    img = (level_a + (level_b - level_a) * t)[..., None]
  else:
    coarse = rng.uniform(-1, 1, size=(6, 6)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize(
        (n, n), Image.BILINEAR))
    img = (rng.uniform(40, 180) + rng.uniform(12, 25) * smooth
           + rng.normal(0, 4, size=(n, n)))[..., None].astype(np.float32)
  img = np.clip(img + tint, 0, 255) * np.ones(3, np.float32)
  mean = float(img.mean())
  tone = "dark" if mean < 80 else ("light" if mean > 145 else "grey")
  if kind == "solid":
    phrase = {"dark": "a dark background", "grey": "a grey background",
              "light": "a light grey background"}[tone]
  elif kind == "gradient":
    phrase = f"a {tone} gradient background"
  else:
    phrase = f"a textured {tone} background"
  return img, phrase


def _polygon(obj, scale):
  """Returns the polygon vertices (supersampled pixel coords) of `obj`."""
  cx, cy, s = obj["cx"] * scale, obj["cy"] * scale, obj["size"] * scale
  shape = obj["shape"]
  if shape == "square":
    half = 0.43 * s
    pts = [(-half, -half), (half, -half), (half, half), (-half, half)]
  elif shape == "triangle":
    # Side 0.92*s; shifted down by r/4 to centre it vertically.
    r = 0.92 * s / math.sqrt(3)  # Circumradius.
    pts = [(r * math.cos(a), r * math.sin(a) + r / 4)
           for a in np.radians([-90, 30, 150])]
  elif shape == "star":
    pts = []
    for k in range(10):
      r = s / 2 if k % 2 == 0 else 0.25 * s
      a = math.radians(-90 + 36 * k)
      pts.append((r * math.cos(a), r * math.sin(a) + 0.05 * s))
  elif shape == "cross":
    a, b = s / 2, 0.18 * s
    pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a),
           (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
  else:
    raise ValueError(f"Not a polygon shape: {shape!r}")
  c, si = math.cos(math.radians(obj["angle"])), math.sin(
      math.radians(obj["angle"]))
  return [(cx + x * c - y * si, cy + x * si + y * c) for x, y in pts]


def _pixel_box(obj):
  """Returns the integer pixel box (x0, y0, x1, y1) that contains `obj`."""
  r = 0.62 * obj["size"] + 1  # Bounds every (rotated) shape.
  x0, y0 = (max(0, int(obj[k] - r)) for k in ("cx", "cy"))
  x1, y1 = (min(IMAGE_SIZE, int(math.ceil(obj[k] + r))) for k in ("cx", "cy"))
  return x0, y0, x1, y1


def _coverage(obj, box):
  """Returns the anti-aliased coverage of `obj` in [0, 1] within `box`.

  Args:
    obj: an object dict.
    box: (x0, y0, x1, y1) pixel box, as from `_pixel_box`.

  Returns:
    float32 array (y1 - y0, x1 - x0, 1).
  """
  x0, y0, x1, y1 = box
  scale = _SUPERSAMPLE
  mask = Image.new("L", ((x1 - x0) * scale, (y1 - y0) * scale), 0)
  draw = ImageDraw.Draw(mask)
  # Shift so that the box's top-left corner is the origin.
  shifted = dict(obj, cx=obj["cx"] - x0, cy=obj["cy"] - y0)
  if obj["shape"] == "circle":
    r = obj["size"] * scale / 2
    cx, cy = shifted["cx"] * scale, shifted["cy"] * scale
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
  else:
    draw.polygon(_polygon(shifted, scale), fill=255)
  small = mask.reduce(scale)
  return np.asarray(small, np.float32)[..., None] * (1 / 255.0)


def render(objects, background):
  """Draws `objects` over `background`.

  Args:
    objects: object dicts as made by the scene sampler (keys "shape", "size",
      "cx", "cy", "angle", "rgb"; sizes/centres in pixels).
    background: float32 array (IMAGE_SIZE, IMAGE_SIZE, 3) in [0, 255].

  Returns:
    The image as a uint8 array (IMAGE_SIZE, IMAGE_SIZE, 3).
  """
  img = background.copy()
  for obj in objects:
    box = _pixel_box(obj)
    x0, y0, x1, y1 = box
    alpha = _coverage(obj, box)
    crop = img[y0:y1, x0:x1]
    crop += (np.asarray(obj["rgb"], np.float32) - crop) * alpha
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# Captions.


def _a(phrase):
  """Prefixes `phrase` with the right indefinite article."""
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _size_word(obj):
  if obj["size"] < 24:
    return "small"
  if obj["size"] >= 36:
    return "large"
  return ""


def _name(obj, with_size=False):
  words = [_size_word(obj)] if with_size else []
  return " ".join(w for w in words + [obj["colour"], obj["shape"]] if w)


def _position(obj):
  def third(v):
    return 0 if v < 0.4 * IMAGE_SIZE else (2 if v > 0.6 * IMAGE_SIZE else 1)
  return _POSITION_PHRASES[third(obj["cy"])][third(obj["cx"])]


def _relation(a, b):
  """Where `a` is relative to `b`: "to the left of", "above", ..."""
  dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
  if abs(dx) >= abs(dy):
    return "to the left of" if dx < 0 else "to the right of"
  return "above" if dy < 0 else "below"


def _list(phrases):
  if len(phrases) == 1:
    return phrases[0]
  return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def make_captions(objects, background_phrase, rng):
  """Returns `NUM_CAPTIONS` distinct captions, main object mentioned first.

  Args:
    objects: object dicts (the first one is the main object).
    background_phrase: e.g. "a dark background".
    rng: numpy Generator used to pick and order the captions.

  Returns:
    A list of `NUM_CAPTIONS` distinct lower-case strings; each contains the
    main object's colour and shape words, before any other object's.
  """
  main, others = objects[0], objects[1:]
  m, ms = _name(main), _name(main, with_size=True)
  pos, bg = _position(main), background_phrase
  colour, shape = main["colour"], main["shape"]
  prefix = rng.choice(["a picture of", "an image of", "a drawing of",
                       "a photo of"])
  pool = [
      _a(m),
      f"{_a(ms)} {pos}",
      f"{_a(m)} on {bg}",
      f"{prefix} {_a(m)}",
      f"there is {_a(m)} {pos}",
      f"{_a(shape)} coloured {colour}",
      f"{_a(colour)} {shape} shape",
      f"{_a(ms)} {pos} over {bg}",
  ]
  if not others:
    pool += [
        f"a single {m} {pos}",
        f"just one shape: {_a(ms)}",
        f"one {m} on {bg}",
        f"{prefix} a lone {m}",
    ]
  else:
    first = others[0]
    names = [_a(_name(o)) for o in others]
    sized = [_a(_name(o, with_size=True)) for o in others]
    count = _COUNT_WORDS[len(objects)]
    pool += [
        f"{_a(m)} next to {names[0]}",
        f"{_a(ms)} {_relation(main, first)} {sized[0]}",
        f"{count} shapes: {_list([_a(ms)] + sized)}",
        f"{count} shapes: {_list([_a(m)] + names)} on {bg}",
        f"{_list([_a(m)] + names)}",
        f"{_a(m)} with {_list(sized)}",
        f"the largest shape is {_a(m)} {pos}",
    ]
    if len(others) == 2:
      sides = {_relation(o, main) for o in others}
      between = sides in ({"to the left of", "to the right of"},
                          {"above", "below"})
      pool.append(f"{_a(m)} between {names[0]} and {names[1]}" if between
                  else f"{_a(m)} and two smaller shapes")
  pool = list(dict.fromkeys(pool))  # Dedupe, keep order.
  order = rng.permutation(len(pool))[:NUM_CAPTIONS]
  return [pool[i] for i in order]


def make_long_caption(objects, background_phrase):
  """A few sentences describing the whole image: one per object, then one
  for the background (for long-caption methods such as DreamLIP).

  Deterministic (no rng), so adding it left every other field unchanged.

  Args:
    objects: object dicts (the first one is the main object).
    background_phrase: e.g. "a dark background".

  Returns:
    A string of `len(objects) + 1` sentences, each ending with ". ", e.g.
    "There is a large red circle in the top left. A small blue square is to
    the right of the red circle. The background is a dark background."
  """
  main = objects[0]
  sentences = [f"there is {_a(_name(main, with_size=True))} {_position(main)}"]
  for obj in objects[1:]:
    sentences.append(f"{_a(_name(obj, with_size=True))} is "
                     f"{_relation(obj, main)} the {_name(main)}")
  sentences.append(f"the picture has {background_phrase}")
  return " ".join(f"{x[0].upper()}{x[1:]}." for x in sentences)


# ----------------------------------------------------------------------------
# Examples.


def _png(image):
  buf = io.BytesIO()
  # compress_level=3: as small as the default (6) for these images, faster.
  Image.fromarray(image).save(buf, format="PNG", compress_level=3)
  return buf.getvalue()


def generate_example(split: str, index: int) -> dict[str, Any]:
  """Generates example `index` of `split` (deterministic, order-free).

  Args:
    split: "train", "validation" or "test".
    index: the example's index within the split.

  Returns:
    A dict with "image" (PNG bytes of a 64x64x3 uint8 image), "captions"
    (list of `NUM_CAPTIONS` str), "long_caption" (one sentence per object
    and one for the background), "label" (int, main object's class) and
    "objects" ({"label": int array, "bbox": float32 array (n, 4) of relative
    ymin, xmin, ymax, xmax}; main object first).
  """
  rng = np.random.default_rng([_BASE_SEED, _SPLIT_IDS[split], index])
  objects = _sample_objects(rng, allowed_labels(split))
  background, bg_phrase = _background(rng)
  image = render(objects, background)
  captions = make_captions(objects, bg_phrase, rng)
  boxes = np.array([[o["cy"] - o["size"] / 2, o["cx"] - o["size"] / 2,
                     o["cy"] + o["size"] / 2, o["cx"] + o["size"] / 2]
                    for o in objects], np.float32)
  return {
      "image": _png(image),
      "captions": captions,
      "long_caption": make_long_caption(objects, bg_phrase),
      "label": objects[0]["label"],
      "objects": {
          "label": np.array([o["label"] for o in objects], np.int64),
          "bbox": np.clip(boxes / IMAGE_SIZE, 0.0, 1.0),
      },
  }


class DemoShapesConfig(tfds.core.BuilderConfig):
  """Config of `DemoShapes`: only the number of examples per split differs."""

  def __init__(self, *, split_sizes, **kwargs):
    super().__init__(**kwargs)
    self.split_sizes = dict(split_sizes)


class DemoShapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes with captions; see the module docstring."""

  name = NAME
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "long_caption: one sentence per object and one "
                            "for the background (other fields unchanged)."}
  BUILDER_CONFIGS = [
      DemoShapesConfig(name="full", split_sizes=SPLIT_SIZES["full"],
                       description="The dataset (default)."),
      DemoShapesConfig(name="small", split_sizes=SPLIT_SIZES["small"],
                       description="Few examples, for unit tests."),
  ]
  DEFAULT_CONFIG_NAME = "full"

  def _info(self):
    return self.dataset_info_from_configs(
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(
                shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="png"),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "long_caption": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "objects": tfds.features.Sequence({
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                "bbox": tfds.features.BBoxFeature(),
            }),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # Record i == generate_example(split, i).
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split, num)
            for split, num in self.builder_config.split_sizes.items()}

  def _generate_examples(self, split, num):
    for index in range(num):
      yield index, generate_example(split, index)


def prepare(data_dir: str | os.PathLike[str] | None = None,
            config: str = "full") -> tfds.core.DatasetBuilder:
  """Returns the `big_vl_demo_shapes` builder, building the data if needed.

  Building is one-time (a few tens of seconds), needs no network and is
  guarded by a file lock in `data_dir`, so concurrent callers wait for one
  build instead of racing.

  Args:
    data_dir: TFDS data dir; None means TFDS's default (`$TFDS_DATA_DIR` or
      ~/tensorflow_datasets).
    config: "full" (the dataset) or "small" (a few hundred examples, for unit
      tests only).

  Returns:
    A prepared `DemoShapes` builder (`builder.data_dir_root` is the data dir
    to give `tfds.data_source`).
  """
  num = sum(SPLIT_SIZES[config].values())
  return common.build_once(
      lambda: DemoShapes(data_dir=data_dir, config=config),
      lock_name=f"{NAME}.{config}",
      message=(f"building demo dataset {NAME} into {{root}} "
               f"(one-time, ~{max(1, round(num * _SECONDS_PER_EXAMPLE))} s)"))
