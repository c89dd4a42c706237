"""`big_vl_demo_prefs`: human-preference data in miniature, rated by a noisy
synthetic rater, for preference scorers (HPS v2) and caption reward models
(Compress & Align).

Each record is a scene of 2-3 demo shapes (`demo_shapes`' sampler and
renderer) and K = 4 candidates, each with a controlled defect, rated by a
rater whose score is the defect's quality plus Gaussian noise (sd
`RATER_NOISE`); `choice` is the candidate the rater liked best.

* config "images" (HPS v2's setting): a `prompt` naming every object of
  the scene ("a red circle, a small blue square and a green star") and K
  rendered `images`. Defects: none, colour (the main object's colour is
  wrong), shape (its shape is wrong), missing (an object is left out),
  extra (an unrequested object is added), blur (Gaussian, radius 1.5),
  jpeg (JPEG quality 8).
* config "captions" (Compress & Align's setting): the faithful `image`
  and K `captions`. Defects: none, colour, shape, missing (an object is
  not mentioned), extra (an absent object is mentioned), swapped (another
  scene's caption).

Held out: the train split never shows the defect "extra"; the test split
(other scenes, hence unseen prompts) does, so a scorer's agreement with
the rater on pairs involving "extra" measures generalisation to an unseen
defect type. Splits: train 4,000 and test 500 records ("small" configs:
200 and 100).

Fields: `ratings` f32[K] (the rater's scores), `choice` (argmax), and the
truth in `hidden`: `defects` int[K] (indices into `IMAGE_DEFECTS` or
`CAPTION_DEFECTS`) and `quality` f32[K] (the noise-free score).

    src = sources.get("tfds:big_vl_demo_prefs/images:test")
    src[0]["images"]   # object[K] of PNG bytes
    pp = ("each('decode|resize(32)|value_range(-1,1)', key='images', "
          "out='image')|tokenize(max_len=24, key='prompt', out='text')")
    # -> image f32[K, 32, 32, 3], text i32[24]
"""

import io
import os

import numpy as np
from PIL import Image
from PIL import ImageFilter
import tensorflow_datasets as tfds

from big_vl.data.builders import common
from big_vl.data.builders import demo_shapes as ds

NAME = "big_vl_demo_prefs"
K = 4
RATER_NOISE = 0.1
HELD_OUT = "extra"
# Defect -> the rater's mean score (higher is better).
IMAGE_QUALITY = {"none": 1.0, "jpeg": 0.7, "blur": 0.65, "extra": 0.5,
                 "missing": 0.35, "shape": 0.25, "colour": 0.2}
CAPTION_QUALITY = {"none": 1.0, "missing": 0.6, "extra": 0.35, "shape": 0.25,
                   "colour": 0.2, "swapped": 0.0}
IMAGE_DEFECTS = tuple(IMAGE_QUALITY)
CAPTION_DEFECTS = tuple(CAPTION_QUALITY)
SPLITS = {"full": {"train": 4000, "test": 500},
          "small": {"train": 200, "test": 100}}
_SEED = 20261208
_SPLIT_IDS = {"train": 0, "test": 1}


def _scene(rng):
  """(objects, background) of a scene with 2 or 3 objects."""
  for _ in range(100):
    objects = ds._sample_objects(rng, ds._ALL_LABELS)  # pylint: disable=protected-access
    if len(objects) >= 2:
      return objects, ds._background(rng)[0]  # pylint: disable=protected-access
  raise RuntimeError("No scene with 2 objects in 100 draws.")


def describe(objects):
  """The prompt naming every object: "a red circle and a blue star"."""
  return ds._list([ds._a(ds._name(o)) for o in objects])  # pylint: disable=protected-access


def _recoloured(obj, rng):
  colour = ds.COLOURS[(ds.COLOURS.index(obj["colour"]) + 1
                       + rng.integers(len(ds.COLOURS) - 1)) % len(ds.COLOURS)]
  return {**obj, "colour": colour, "rgb": np.array(ds._COLOUR_RGB[colour])}  # pylint: disable=protected-access


def _reshaped(obj, rng):
  shape = ds.SHAPES[(ds.SHAPES.index(obj["shape"]) + 1
                     + rng.integers(len(ds.SHAPES) - 1)) % len(ds.SHAPES)]
  return {**obj, "shape": shape}


def _extra_object(objects, rng):
  """A small object of an unused class placed where it overlaps no other,
  or None when there is no room."""
  used = {o["label"] for o in objects}
  label = int(rng.choice([l for l in ds._ALL_LABELS if l not in used]))  # pylint: disable=protected-access
  size = float(rng.uniform(12, 18))
  lo, hi = 0.54 * size, ds.IMAGE_SIZE - 0.54 * size
  for _ in range(200):
    cx, cy = rng.uniform(lo, hi, size=2)
    if all(np.hypot(cx - o["cx"], cy - o["cy"]) > 0.62 * (size + o["size"])
           + 1 for o in objects):
      colour = ds.COLOURS[label // len(ds.SHAPES)]
      return {"label": label, "colour": colour,
              "shape": ds.SHAPES[label % len(ds.SHAPES)], "size": size,
              "cx": float(cx), "cy": float(cy), "angle": 0.0,
              "rgb": np.array(ds._COLOUR_RGB[colour])}  # pylint: disable=protected-access
  return None


def _png(image):
  return ds._png(np.asarray(image, np.uint8))  # pylint: disable=protected-access


def _defect_objects(objects, defect, rng):
  """The scene's objects as `defect` changes them (the added object of
  "extra" is None when there is no room for it)."""
  if defect == "colour":
    return [_recoloured(objects[0], rng)] + objects[1:]
  if defect == "shape":
    return [_reshaped(objects[0], rng)] + objects[1:]
  if defect == "missing":
    return objects[:-1]
  if defect == "extra":
    return objects + [_extra_object(objects, rng)]
  return objects


def defect_image(objects, background, defect, rng):
  """PNG bytes of the scene rendered with `defect` (see module doc)."""
  objects = [o for o in _defect_objects(objects, defect, rng)
             if o is not None]
  image = Image.fromarray(ds.render(objects, background))
  if defect == "blur":
    image = image.filter(ImageFilter.GaussianBlur(1.5))
  elif defect == "jpeg":
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=8)
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
  return _png(image)


def defect_caption(objects, defect, rng, other=None):
  """The scene's description with `defect` (see module doc)."""
  if defect == "swapped":
    return describe(other)
  changed = _defect_objects(objects, defect, rng)
  if changed and changed[-1] is None:  # No room to draw: name another.
    changed[-1] = _reshaped(objects[0], rng)
  return describe(changed)


def generate_record(kind, split, index):
  """Record `index` of `split` of config `kind` ("images" or "captions").

  Returns:
    The record's fields (module docstring); images as PNG bytes.
  """
  rng = np.random.default_rng([_SEED, _SPLIT_IDS[split], index])
  objects, background = _scene(rng)
  quality = IMAGE_QUALITY if kind == "images" else CAPTION_QUALITY
  allowed = [d for d in quality if split == "test" or d != HELD_OUT]
  defects = [allowed[i] for i in rng.choice(len(allowed), K, replace=False)]
  true = np.array([quality[d] for d in defects], np.float32)
  ratings = (true + rng.normal(0, RATER_NOISE, K)).astype(np.float32)
  names = IMAGE_DEFECTS if kind == "images" else CAPTION_DEFECTS
  record = {"ratings": ratings, "choice": int(np.argmax(ratings)),
            "hidden": {"defects": np.array([names.index(d) for d in defects],
                                           np.int64),
                       "quality": true}}
  if kind == "images":
    record["prompt"] = describe(objects)
    record["images"] = [defect_image(objects, background, d, rng)
                        for d in defects]
  else:
    other, _ = _scene(rng)
    record["image"] = _png(ds.render(objects, background))
    record["captions"] = [defect_caption(objects, d, rng, other)
                          for d in defects]
  return record


class DemoPrefsConfig(tfds.core.BuilderConfig):
  """A config: which candidates ("images"/"captions") and the sizes."""

  def __init__(self, *, kind, sizes, **kwargs):
    super().__init__(**kwargs)
    self.kind, self.sizes = kind, sizes


class DemoPrefs(tfds.core.GeneratorBasedBuilder):
  """Preference records of the demo shapes; see the module docstring."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      DemoPrefsConfig(name=f"{kind}{suffix}", kind=kind, sizes=SPLITS[size],
                      description=f"K {kind} per record ({size}).")
      for kind in ("images", "captions")
      for size, suffix in (("full", ""), ("small", "_small"))]
  DEFAULT_CONFIG_NAME = "images"

  def _info(self):
    size = (ds.IMAGE_SIZE, ds.IMAGE_SIZE, 3)
    image = tfds.features.Image(shape=size, encoding_format="png")
    if self.builder_config.kind == "images":
      # Encoded bytes, not a Sequence of Image features: TFDS's numpy
      # reader can only decode those, and the pp decodes (`each` op).
      fields = {"prompt": tfds.features.Text(),
                "images": tfds.features.Tensor(shape=(K,),
                                               dtype=np.object_)}
    else:
      fields = {"image": image,
                "captions": tfds.features.Sequence(tfds.features.Text(),
                                                   length=K)}
    return self.dataset_info_from_configs(
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            **fields,
            "ratings": tfds.features.Tensor(shape=(K,), dtype=np.float32),
            "choice": tfds.features.Scalar(np.int64),
            "hidden": tfds.features.FeaturesDict({
                "defects": tfds.features.Tensor(shape=(K,), dtype=np.int64),
                "quality": tfds.features.Tensor(shape=(K,),
                                                dtype=np.float32)}),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n)
            for split, n in self.builder_config.sizes.items()}

  def _generate_examples(self, split, num):  # pylint: disable=arguments-differ
    for index in range(num):
      yield index, generate_record(self.builder_config.kind, split, index)


def prepare(data_dir: str | os.PathLike[str] | None = None,
            config: str = "images") -> tfds.core.DatasetBuilder:
  """The `big_vl_demo_prefs` builder of `config`, built once if needed."""
  sizes = SPLITS["small" if config.endswith("_small") else "full"]
  return common.build_once(
      lambda: DemoPrefs(data_dir=data_dir, config=config),
      lock_name=f"{NAME}.{config}",
      message=(f"building demo dataset {NAME}/{config} into {{root}} "
               f"(one-time, ~{max(1, round(sum(sizes.values()) * 0.004))} "
               "s)"))

