"""Tests for the `big_vl_demo_shapes` TFDS builder (no TensorFlow needed)."""

import contextlib
import io
import re
import sys
import threading

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from big_vl.data.builders import demo_shapes

SMALL_SIZES = demo_shapes.SPLIT_SIZES["small"]
HELDOUT = {demo_shapes.CLASS_NAMES.index(c) for c in demo_shapes.HELDOUT_COMBOS}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Builds the "small" config once; returns (data_dir, prepare's stdout)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    demo_shapes.prepare(data_dir, config="small")
  return data_dir, out.getvalue()


def _source(data_dir, split, skip_decoding=True):
  decoders = {"image": tfds.decode.SkipDecoding()} if skip_decoding else None
  return tfds.data_source(f"{demo_shapes.NAME}/small", split=split,
                          data_dir=data_dir, decoders=decoders)


def _records(data_dir, split):
  src = _source(data_dir, split)
  return [src[i] for i in range(len(src))]


def _decode_png(png):
  return np.asarray(Image.open(io.BytesIO(png)))


def _first_word(caption, words):
  """The first of `words` (whole words) that occurs in `caption`."""
  found = [(m.start(), w) for w in words
           for m in re.finditer(rf"\b{w}\b", caption)]
  return min(found)[1] if found else None


def test_constants():
  colours, shapes = demo_shapes.COLOURS, demo_shapes.SHAPES
  assert len(colours) == 7 and len(shapes) == 5
  assert len(demo_shapes.CLASS_NAMES) == 35
  assert demo_shapes.CLASS_NAMES[0] == "red circle"
  for colour in colours:
    for shape in shapes:
      label = demo_shapes.label_of(colour, shape)
      assert demo_shapes.CLASS_NAMES[label] == f"{colour} {shape}"
  assert demo_shapes.NUM_CAPTIONS == 5
  assert len(demo_shapes.HELDOUT_COMBOS) == 5
  assert set(demo_shapes.HELDOUT_COMBOS) <= set(demo_shapes.CLASS_NAMES)
  # Every colour and every shape still occurs in train in some seen pair.
  seen = [demo_shapes.CLASS_NAMES[l]
          for l in demo_shapes.allowed_labels("train")]
  assert len(seen) == 30
  assert {n.split()[0] for n in seen} == set(colours)
  assert {n.split()[1] for n in seen} == set(shapes)
  assert len(demo_shapes.allowed_labels("test")) == 35
  assert 6 <= len(demo_shapes.ZEROSHOT_TEMPLATES) <= 10
  for template in demo_shapes.ZEROSHOT_TEMPLATES:
    assert template.count("{}") == 1
    assert "red circle" in template.format("red circle")


def test_colours_are_distinct_and_saturated():
  rgb = np.array([demo_shapes._COLOUR_RGB[c] for c in demo_shapes.COLOURS],
                 np.float32)
  # Backgrounds are near-grey (channel spread <= 12 + noise); colours are not.
  assert (rgb.max(1) - rgb.min(1)).min() >= 120
  dists = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
  assert dists[~np.eye(len(rgb), dtype=bool)].min() >= 80


def test_generator_is_deterministic():
  a = demo_shapes.generate_example("train", 17)
  b = demo_shapes.generate_example("train", 17)
  assert a["image"] == b["image"]
  assert a["captions"] == b["captions"]
  assert a["label"] == b["label"]
  np.testing.assert_array_equal(a["objects"]["bbox"], b["objects"]["bbox"])
  np.testing.assert_array_equal(a["objects"]["label"], b["objects"]["label"])
  # Different index or split: a different image.
  assert demo_shapes.generate_example("train", 18)["image"] != a["image"]
  assert demo_shapes.generate_example("test", 17)["image"] != a["image"]
  images = {demo_shapes.generate_example("validation", i)["image"]
            for i in range(50)}
  assert len(images) == 50


def test_generated_example_contents():
  for split in ("train", "test"):
    for index in range(200):
      ex = demo_shapes.generate_example(split, index)
      labels = ex["objects"]["label"]
      boxes = ex["objects"]["bbox"]
      assert 1 <= len(labels) <= 3 and boxes.shape == (len(labels), 4)
      assert len(set(labels.tolist())) == len(labels)
      assert ex["label"] == labels[0]
      # The main object is the largest.
      sides = boxes[:, 2] - boxes[:, 0]
      assert sides[0] == sides.max() and sides[0] * 64 >= 20
      assert (boxes >= 0).all() and (boxes <= 1).all()

      colour, shape = demo_shapes.CLASS_NAMES[ex["label"]].split()
      captions = ex["captions"]
      assert len(captions) == demo_shapes.NUM_CAPTIONS
      assert len(set(captions)) == demo_shapes.NUM_CAPTIONS
      for caption in captions:
        assert isinstance(caption, str) and caption == caption.lower()
        # Main object's words are present and mentioned first.
        assert _first_word(caption, demo_shapes.COLOURS) == colour, caption
        assert _first_word(caption, demo_shapes.SHAPES) == shape, caption

      image = _decode_png(ex["image"])
      assert image.shape == (64, 64, 3) and image.dtype == np.uint8
      # The main object's centre pixel has the object's colour (+-jitter).
      cy, cx = ((boxes[0, :2] + boxes[0, 2:]) / 2 * 64).astype(int)
      want = np.array(demo_shapes._COLOUR_RGB[colour])
      assert np.abs(image[cy, cx].astype(int) - want).max() <= 16
      # Pixels away from every object are near-grey background.
      free = np.ones((64, 64), bool)
      for y0, x0, y1, x1 in (boxes * 64):
        r = 0.62 * (y1 - y0) + 2
        yc, xc = (y0 + y1) / 2, (x0 + x1) / 2
        free[max(0, int(yc - r)):int(yc + r) + 1,
             max(0, int(xc - r)):int(xc + r) + 1] = False
      spread = image.max(-1).astype(int) - image.min(-1)
      assert free.any() and spread[free].max() <= 16


def test_caption_variety():
  captions = [c for i in range(100)
              for c in demo_shapes.generate_example("train", i)["captions"]]
  assert len(set(captions)) > 350
  text = " ".join(captions)
  for phrase in ("next to", "in the top left", "two shapes:", "three shapes:",
                 "background", "small ", "large "):
    assert phrase in text


def test_prepare_builds_once(built):
  data_dir, out = built
  assert out.startswith(
      f"building demo dataset big_vl_demo_shapes into {data_dir} (one-time, ~")
  again = io.StringIO()
  with contextlib.redirect_stdout(again):
    builder = demo_shapes.prepare(data_dir, config="small")
  assert again.getvalue() == ""
  assert isinstance(builder, demo_shapes.DemoShapes)
  assert str(builder.data_dir_root) == data_dir
  assert {s: builder.info.splits[s].num_examples for s in SMALL_SIZES} == (
      SMALL_SIZES)
  assert "tensorflow" not in sys.modules


def test_builder_is_registered_by_name(tmp_path):
  builder = tfds.builder(demo_shapes.NAME, data_dir=str(tmp_path))
  assert isinstance(builder, demo_shapes.DemoShapes)
  assert builder.builder_config.name == "full"  # The default config.
  assert builder.builder_config.split_sizes == {
      "train": 30_000, "validation": 1_000, "test": 2_000}
  assert str(builder.version) == "1.1.0"
  features = builder.info.features
  assert features["image"].shape == (64, 64, 3)
  assert features["label"].names == demo_shapes.CLASS_NAMES


def test_data_source_skip_decoding(built):
  data_dir, _ = built
  for split, size in SMALL_SIZES.items():
    src = _source(data_dir, split)
    assert len(src) == size
    for index in (0, 1, size - 1):
      ex = src[index]
      assert set(ex) == {"image", "captions", "long_caption", "label",
                         "objects"}
      assert isinstance(ex["image"], bytes)
      assert ex["image"].startswith(b"\x89PNG\r\n\x1a\n")
      assert _decode_png(ex["image"]).shape == (64, 64, 3)
      # Records are stored in generation order.
      want = demo_shapes.generate_example(split, index)
      assert ex["image"] == want["image"]
      assert [c.decode() for c in ex["captions"]] == want["captions"]
      assert isinstance(ex["label"], int) and ex["label"] == want["label"]
      np.testing.assert_array_equal(np.asarray(ex["objects"]["label"]),
                                    want["objects"]["label"])
      np.testing.assert_allclose(np.stack(ex["objects"]["bbox"]),
                                 want["objects"]["bbox"])


def test_data_source_decoded(built):
  data_dir, _ = built
  src = _source(data_dir, "validation", skip_decoding=False)
  raw = _source(data_dir, "validation")
  for index in (0, 3):
    ex = src[index]
    assert isinstance(ex["image"], np.ndarray)
    assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
    np.testing.assert_array_equal(ex["image"],
                                  _decode_png(raw[index]["image"]))
    assert ex["label"] == raw[index]["label"]


def test_heldout_combos(built):
  data_dir, _ = built
  for split in ("train", "validation"):
    for ex in _records(data_dir, split):
      labels = set(np.asarray(ex["objects"]["label"]).tolist())
      assert not labels & HELDOUT, (split, labels)
  test = _records(data_dir, "test")
  main = [ex["label"] for ex in test]
  others = [l for ex in test for l in np.asarray(ex["objects"]["label"])[1:]]
  assert HELDOUT <= set(main)  # Every held-out pair is a main object.
  assert set(others) & HELDOUT  # ... and also appears as a non-main object.
  assert set(main) == set(range(35))
  assert 0.07 < np.mean([l in HELDOUT for l in main]) < 0.25


def test_concurrent_prepare_builds_once(tmp_path):
  """Two concurrent callers: one builds, the other waits on the file lock."""
  builders = []

  def run():
    builders.append(demo_shapes.prepare(str(tmp_path), config="small"))

  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  assert len(builders) == 2
  assert out.getvalue().count("building demo dataset") == 1
  assert len(_source(str(tmp_path), "test")) == SMALL_SIZES["test"]
