"""`big_vl_demo_noisy`: the demo shapes as a noisy web crawl, for curation.

A TFDS dataset built locally (no download) from the demo shapes generator
(`demo_shapes.generate_example`), with the faults that the curation tools
(`big_vl.embed`, `big_vl.curate`) exist to find planted at known places:

* **Noisy captions.** Each record is one image with one caption. With
  probability `noise` (0.5 in both configs) the caption is wrong: half of
  those are "swapped" (the caption of another, unrelated training image),
  half "corrupted" (every colour and shape word replaced by a different
  one, so the caption reads well but describes other objects).
* **Duplicates.** With probability `dup` (5%) a record copies an earlier
  one (image and caption): an exact copy of its bytes, or a near duplicate
  ("jpeg": re-encoded at JPEG quality 70; "shift": moved by 1-2 pixels;
  "recolour": brightness scaled by 0.9-1.1).
* **Leaks.** With probability `leak` (2%) a record is an image of the demo
  shapes *test* split (exactly, or as a near duplicate) with its first
  caption, as when an evaluation set leaks into a crawl.

Every record carries the truth in a `hidden` dict, which the tools never
read and the benchmarks and tests use to score them: `is_clean` (the
caption describes the image), `noise` ("clean", "swapped", "corrupted"),
`variant` ("original", "exact", "jpeg", "shift", "recolour"),
`duplicate_of` (the index of the original record of a duplicate group, -1
for originals), `leak_of` (the demo shapes test index a record shows, -1
if none) and `label` (the main object's class).

Configs: "full" (train 30,000) and "small" (train 600, for tests); the
probabilities are `CONFIGS`'. Only a train split: the
clean demo shapes test split (`tfds:big_vl_demo_shapes:test`) evaluates
models trained on it, and its images are the leak candidates ("small"
leaks from the first 300 test images, the small demo config's test split).

Determinism: record `i` comes from `np.random.default_rng([_SEED, i])` and
the records it copies, so the data does not depend on build order.

    src = big_vl.data.sources.get("tfds:big_vl_demo_noisy/small:train")
    src[0]  # {"image": b"\\x89PNG...", "caption": b"a red circle ...",
            #  "hidden": {"is_clean": True, "noise": 0, "variant": 0,
            #             "duplicate_of": -1, "leak_of": -1, "label": 0}}
"""

import io
import os
import re
from typing import Any

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from big_vl.data.builders import common
from big_vl.data.builders import demo_shapes

NAME = "big_vl_demo_noisy"
NOISE_KINDS = ("clean", "swapped", "corrupted")
VARIANTS = ("original", "exact", "jpeg", "shift", "recolour")

# Per config: train size, caption noise, duplicate and leak probabilities,
# and how many demo shapes test images leaks are drawn from.
CONFIGS = {
    "full": {"train": 30_000, "noise": 0.5, "dup": 0.05, "leak": 0.02,
             "test_pool": 2_000},
    "small": {"train": 600, "noise": 0.5, "dup": 0.05, "leak": 0.02,
              "test_pool": 300},
}
_SEED = 20261207
_COLOUR_RE = re.compile(r"\b(" + "|".join(demo_shapes.COLOURS) + r")\b")
_ARTICLE_RE = re.compile(r"(^|\s)an? ([a-z])")
_SHAPE_RE = re.compile(r"\b(" + "|".join(demo_shapes.SHAPES) + r")(s?)\b")


def _other(rng, options, word):
  return options[(options.index(word) + 1 + rng.integers(len(options) - 1))
                 % len(options)]


def corrupt(caption, rng):
  """`caption` with every colour and shape word replaced by another one.

  Example: "a small red circle on the left" -> "a small cyan star on the
  left" (plurals keep their "s").
  """
  caption = _COLOUR_RE.sub(
      lambda m: _other(rng, demo_shapes.COLOURS, m.group(1)), caption)
  caption = _SHAPE_RE.sub(
      lambda m: _other(rng, demo_shapes.SHAPES, m.group(1)) + m.group(2),
      caption)
  return _ARTICLE_RE.sub(
      lambda m: m.group(1) + ("an " if m.group(2) in "aeiou" else "a ")
      + m.group(2), caption)


def _decode(png):
  return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def near_duplicate(png, variant, rng):
  """PNG bytes of a near-duplicate of the image `png` (see module doc)."""
  if variant == "exact":
    return png
  image = _decode(png)
  if variant == "jpeg":
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=70)
    image = _decode(buf.getvalue())
  elif variant == "shift":
    dy, dx = rng.integers(-2, 3, size=2)
    if dy == 0 and dx == 0:
      dx = 1
    pad = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    image = pad[2 - dy:2 - dy + h, 2 - dx:2 - dx + w]
  elif variant == "recolour":
    scale = rng.uniform(0.9, 1.1)
    image = np.clip(image.astype(np.float32) * scale, 0, 255).round().astype(
        np.uint8)
  else:
    raise ValueError(f"Unknown variant {variant!r} (known: {VARIANTS}).")
  return demo_shapes._png(image)  # pylint: disable=protected-access


def generate_record(index: int, config: str = "full") -> dict[str, Any]:
  """Record `index` of the noisy train split of `config` (see module doc).

  Returns:
    {"image": PNG bytes, "caption": str, "hidden": {"is_clean": bool,
    "noise": str, "variant": str, "duplicate_of": int, "leak_of": int,
    "label": int}}.
  """
  spec = CONFIGS[config]
  rng = np.random.default_rng([_SEED, index])
  role = rng.random()
  variant = VARIANTS[1 + rng.integers(len(VARIANTS) - 1)]
  if role < spec["leak"]:
    test_index = int(rng.integers(spec["test_pool"]))
    example = demo_shapes.generate_example("test", test_index)
    return {"image": near_duplicate(example["image"], variant, rng),
            "caption": example["captions"][0],
            "hidden": {"is_clean": True, "noise": "clean",
                       "variant": variant, "duplicate_of": -1,
                       "leak_of": test_index, "label": int(example["label"])}}
  if role < spec["leak"] + spec["dup"] and index > 0:
    copied = int(rng.integers(index))
    original = generate_record(copied, config)
    root = original["hidden"]["duplicate_of"]
    return {"image": near_duplicate(original["image"], variant, rng),
            "caption": original["caption"],
            "hidden": {**original["hidden"], "variant": variant,
                       "duplicate_of": copied if root < 0 else root}}
  example = demo_shapes.generate_example("train", index)
  caption = example["captions"][int(rng.integers(len(example["captions"])))]
  noise = "clean"
  if rng.random() < spec["noise"]:
    if rng.random() < 0.5:
      noise = "swapped"
      other = (index + 1 + int(rng.integers(spec["train"] - 1))) % spec[
          "train"]
      caption = demo_shapes.generate_example("train", other)["captions"][0]
    else:
      noise = "corrupted"
      caption = corrupt(caption, rng)
  return {"image": example["image"], "caption": caption,
          "hidden": {"is_clean": noise == "clean", "noise": noise,
                     "variant": "original", "duplicate_of": -1,
                     "leak_of": -1, "label": int(example["label"])}}


class DemoNoisyConfig(tfds.core.BuilderConfig):
  """Config of `DemoNoisy`: a name of `CONFIGS`."""


class DemoNoisy(tfds.core.GeneratorBasedBuilder):
  """The demo shapes with noisy captions, duplicates and leaks."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      DemoNoisyConfig(name="full", description="30,000 records (default)."),
      DemoNoisyConfig(name="small", description="600 records, for tests."),
  ]
  DEFAULT_CONFIG_NAME = "full"

  def _info(self):
    size = demo_shapes.IMAGE_SIZE
    return self.dataset_info_from_configs(
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3),
                                         encoding_format="png"),
            "caption": tfds.features.Text(),
            "hidden": tfds.features.FeaturesDict({
                "is_clean": tfds.features.Scalar(np.bool_),
                "noise": tfds.features.ClassLabel(names=NOISE_KINDS),
                "variant": tfds.features.ClassLabel(names=VARIANTS),
                "duplicate_of": tfds.features.Scalar(np.int64),
                "leak_of": tfds.features.Scalar(np.int64),
                "label": tfds.features.ClassLabel(
                    names=demo_shapes.CLASS_NAMES),
            }),
        }),
        disable_shuffling=True,  # Record i == generate_record(i, config).
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    name = self.builder_config.name
    return {"train": self._generate_examples(name)}

  def _generate_examples(self, config):  # pylint: disable=arguments-differ
    for index in range(CONFIGS[config]["train"]):
      yield index, generate_record(index, config)


def prepare(data_dir: str | os.PathLike[str] | None = None,
            config: str = "full") -> tfds.core.DatasetBuilder:
  """The `big_vl_demo_noisy` builder, building the data once if needed.

  Args:
    data_dir: TFDS data dir (None: TFDS's default).
    config: "full" or "small".

  Returns:
    A prepared builder.
  """
  num = CONFIGS[config]["train"]
  return common.build_once(
      lambda: DemoNoisy(data_dir=data_dir, config=config),
      lock_name=f"{NAME}.{config}",
      message=(f"building demo dataset {NAME}/{config} into {{root}} "
               f"(one-time, ~{max(1, round(num * 0.001))} s)"))
