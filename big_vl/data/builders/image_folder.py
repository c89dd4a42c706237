"""`big_vl_image_folder`: a TFDS dataset from a folder of class subfolders.

Turns images on the user's disk, laid out as

  ROOT/CLASS_NAME/xxx.jpg                 (one "train" split), or
  ROOT/train/CLASS_NAME/xxx.jpg           (splits from the subfolders
  ROOT/test/CLASS_NAME/yyy.png             "train", "validation", "test")

into an image-text / classification dataset, without re-encoding the images.
Each root is one builder config, named after the root's folder name (lower-
cased, characters other than a-z, 0-9 and "_" replaced by "_"): the folder
`/data/My-Flowers` is the dataset

  config.input.data = "tfds:big_vl_image_folder/my_flowers"

Building it needs the root: `prepare(root="/data/My-Flowers")` (returns the
builder; its config name is `config_name_for(root)`), or, for the lazy build
that `big_vl.data.sources` triggers by name, the root listed in
`$BIG_VL_IMAGE_FOLDERS` (a `:`-separated list of roots, like `$PATH`; the
entry whose name gives the config is used). Once built, the dataset is read
from the data dir by name alone (TFDS loads an unknown config from its
files), so moving or deleting the images afterwards does not matter; to pick
up new images, delete `DATA_DIR/big_vl_image_folder/NAME` and rebuild.

Features:

* "image": the file's bytes exactly as stored (JPEG, PNG, GIF, BMP, WebP;
  any size or mode); the `decode` pp op decodes them to RGB (declared shape
  (None, None, 3)).
* "label": `tfds.features.ClassLabel` whose names are the sorted class folder
  names (the union over all splits, so labels agree between splits).
* "captions": one caption per template in `TEMPLATES` with the class name,
  "_" and "-" read as spaces ("golden_retriever" -> "a photo of a golden
  retriever.").
* "file_name": the path relative to the split's folder ("CLASS/xxx.jpg").

Files are found by extension (`IMAGE_EXTENSIONS`, case-insensitive; hidden
files skipped) and stored in sorted (class, file name) order, so record `i`
is deterministic. Building reads each file once; a corrupt image is stored as
is and counted by the pipeline's `decode` op when read.
"""

import os
import re

import tensorflow_datasets as tfds

from big_vl.data.builders import common

NAME = "big_vl_image_folder"
ENV_VAR = "BIG_VL_IMAGE_FOLDERS"
SPLIT_NAMES = ("train", "validation", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
TEMPLATES = (
    "a photo of a {}.",
    "a picture of the {}.",
    "an image of a {}.",
    "a close-up photo of the {}.",
    "a cropped photo of a {}.",
)


def config_name_for(root: str | os.PathLike[str]) -> str:
  """The dataset config name for a root folder (its sanitized base name).

  Args:
    root: the folder.

  Returns:
    e.g. "my_flowers" for "/data/My-Flowers/".

  Raises:
    ValueError: a name with no letter or digit.
  """
  base = os.path.basename(os.path.normpath(os.fspath(root)))
  name = re.sub(r"[^a-z0-9_]", "_", base.lower()).strip("_")
  if not re.search(r"[a-z0-9]", name):
    raise ValueError(f"Cannot derive a dataset name from folder {root!r}.")
  return name


def caption_name(class_name: str) -> str:
  """A class folder name as it reads in a caption ("golden_retriever" ->
  "golden retriever")."""
  return " ".join(re.sub(r"[_\-]+", " ", class_name).split())


def captions_for(class_name: str) -> list[str]:
  """The captions of an image of `class_name`, one per template."""
  name = caption_name(class_name)
  return [t.format(name) for t in TEMPLATES]


def find_root(name: str) -> str:
  """Root folder of config `name` from `$BIG_VL_IMAGE_FOLDERS`.

  Raises:
    ValueError: no listed root has that name.
  """
  roots = [r for r in os.environ.get(ENV_VAR, "").split(os.pathsep) if r]
  for root in roots:
    if config_name_for(root) == name:
      return root
  raise ValueError(
      f"{NAME}/{name} is not built and its image folder is unknown: call "
      f"big_vl.data.builders.image_folder.prepare(root=PATH) or list the "
      f"folder in ${ENV_VAR} (':'-separated; listed now: {roots}).")


def _is_image(name):
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_dirs(folder):
  return sorted(d for d in os.listdir(folder)
                if not d.startswith(".")
                and os.path.isdir(os.path.join(folder, d)))


def scan(root: str | os.PathLike[str]
         ) -> tuple[list[str], dict[str, str], dict[str, list[tuple[str, str]]]]:
  """Finds the classes and the image files of each split under `root`.

  Args:
    root: the image folder (see the module docstring for the layout).

  Returns:
    (class_names, folders, files): the sorted class names; per split, its
    folder; per split, the sorted list of (class_name, path relative to the
    split's folder).

  Raises:
    ValueError: missing folder, no class folders, or no images.
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise ValueError(f"Image folder {root!r} does not exist.")
  top = _class_dirs(root)
  split_dirs = [s for s in SPLIT_NAMES if s in top]
  if split_dirs:
    others = sorted(set(top) - set(split_dirs))
    if others:
      raise ValueError(
          f"{root}: has split folders {split_dirs} and also other folders "
          f"{others}; put every class folder inside a split folder.")
    folders = {s: os.path.join(root, s) for s in split_dirs}
  else:
    folders = {"train": root}
  classes = sorted({c for f in folders.values() for c in _class_dirs(f)})
  if not classes:
    raise ValueError(f"{root}: no class folders (expected ROOT/CLASS/x.jpg).")
  files = {}
  for split, folder in folders.items():
    entries = []
    for cls in _class_dirs(folder):
      for dirpath, dirnames, names in os.walk(os.path.join(folder, cls)):
        dirnames.sort()
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in sorted(names):
          if _is_image(name):
            rel = os.path.relpath(os.path.join(dirpath, name), folder)
            entries.append((cls, rel))
    if not entries:
      raise ValueError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}).")
    files[split] = entries
  return classes, folders, files


class ImageFolderConfig(tfds.core.BuilderConfig):
  """One image folder: `name` = `config_name_for(root)`."""

  def __init__(self, *, root=None, **kwargs):
    """Args: root: the image folder (None: found in `$BIG_VL_IMAGE_FOLDERS`
    when building); rest for `tfds.core.BuilderConfig`."""
    super().__init__(**kwargs)
    self.root = root


class ImageFolder(tfds.core.GeneratorBasedBuilder):
  """Images in class folders, with captions; see the module docstring."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = []  # One config per folder, made on demand.

  def __init__(self, *, config=None, root=None, **kwargs):
    """Creates the builder for one folder.

    Args:
      config: a config name (str) or an `ImageFolderConfig`.
      root: the folder; its name gives the config when `config` is None.
      **kwargs: for `tfds.core.GeneratorBasedBuilder` (data_dir, ...).
    """
    if isinstance(config, str):
      config = ImageFolderConfig(name=config, root=root)
    elif config is None:
      if root is None:
        raise ValueError(f"{NAME}: give a config name or a root folder.")
      config = ImageFolderConfig(name=config_name_for(root), root=root)
    self._scan = None
    super().__init__(config=config, **kwargs)

  def _root(self):
    return self.builder_config.root or find_root(self.builder_config.name)

  def _scanned(self):
    if self._scan is None:
      self._scan = scan(self._root())
    return self._scan

  def _info(self):
    classes, _, _ = self._scanned()
    return self.dataset_info_from_configs(
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=classes),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # Sorted (class, file) order.
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    _, folders, files = self._scanned()
    return {split: self._generate_examples(folders[split], entries)
            for split, entries in files.items()}

  def _generate_examples(self, folder, entries):
    for cls, rel in entries:
      with open(os.path.join(folder, rel), "rb") as f:
        data = f.read()
      yield rel, {
          "image": data,
          "label": cls,
          "captions": captions_for(cls),
          "file_name": rel,
      }


def _built_path(data_dir, config):
  """The prepared dataset's folder, or None if not built (no folder scan)."""
  if data_dir is None:
    data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
        "~/tensorflow_datasets")
  path = os.path.join(os.fspath(data_dir), NAME, config,
                      str(ImageFolder.VERSION))
  done = all(os.path.exists(os.path.join(path, n))
             for n in ("dataset_info.json", "features.json"))
  return path if done else None


def _read_only(data_dir, config):
  return tfds.builder(f"{NAME}/{config}", data_dir=data_dir)


def prepare(data_dir: str | os.PathLike[str] | None = None,
            config: str | None = None,
            root: str | os.PathLike[str] | None = None
            ) -> tfds.core.DatasetBuilder:
  """Returns the builder of one image folder, building it if needed.

  Args:
    data_dir: TFDS data dir; None means TFDS's default (`$TFDS_DATA_DIR` or
      ~/tensorflow_datasets).
    config: the dataset's config name; None: `config_name_for(root)`.
    root: the image folder; None: found in `$BIG_VL_IMAGE_FOLDERS` (only
      needed when the dataset is not built yet).

  Returns:
    A prepared builder for `big_vl_image_folder/CONFIG`
    (`builder.data_dir_root` is the data dir to give `tfds.data_source`).

  Raises:
    ValueError: neither config nor root given, a root whose name differs
      from `config`, or problems found by `scan`.
  """
  if config is None:
    if root is None:
      raise ValueError(f"{NAME}: prepare() needs config= or root=.")
    config = config_name_for(root)
  elif root is not None and config_name_for(root) != config:
    raise ValueError(f"Folder {root!r} gives the dataset name "
                     f"{config_name_for(root)!r}, not {config!r}.")
  if _built_path(data_dir, config) is not None:
    return _read_only(data_dir, config)
  root = root if root is not None else find_root(config)
  common.build_once(
      lambda: ImageFolder(data_dir=data_dir,
                          config=ImageFolderConfig(name=config, root=root)),
      lock_name=f"{NAME}.{config}",
      message=f"building {NAME}/{config} from {root} into {{root}} (one-time)")
  return _read_only(data_dir, config)
