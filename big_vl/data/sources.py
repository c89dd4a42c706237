"""Data sources selected by a name in the config.

    config.input.data = "tfds:big_vl_demo_shapes"   # or "tfds:NAME/CONFIG[:SPLIT]"
    config.input.data = "wds:/data/cc3m/{00000..00331}.tar?shuffle_buffer=5000"
    config.input.data = "jsonl:/data/pairs.jsonl"   # {"image": path, "caption": ..}
    config.input.data = "csv:/data/pairs.csv?sep=\t&image_key=filepath&caption_key=title"
    config.input.data = (("tfds:big_vl_demo_shapes", 0.7), ("wds:...", 0.3))
    config.input.split = "train"   # for tfds specs

`get(spec, split=..., data_dir=...)` returns
- a random-access source (`len`, `[i]`) for `tfds:` (read with
  `tfds.data_source` from an array_record-prepared TFDS dataset; datasets whose
  builder ships with big_vl, the demo set, are built on first use) and for
  `jsonl:` / `csv:` (rows of image path + caption; see `CaptionFileSource`);
- a streaming `grain.IterDataset` for `wds:` (WebDataset tar shards, see
  `big_vl.data.wds`);
- a `Mixture` for a list of (spec, weight) pairs or a {spec: weight} dict.
Images are left encoded (bytes) so that the `decode` pp op decodes them and a
corrupt record can be skipped and counted. Options of path-based kinds follow
the path after `?` as `key=value` pairs joined by `&` (or go to `get` as
keyword arguments).
"""

import csv
import dataclasses
import importlib
import json
import os
from typing import Any
import urllib.parse

from etils import epath
import tensorflow_datasets as tfds

from big_vl import registry
from big_vl.data import pp as pp_lib
from big_vl.data import wds as wds_lib

# Kinds whose name is a path (it may hold ':', as in gs://); no split.
PATH_KINDS = ("wds", "jsonl", "csv")

# TFDS builders shipped with big_vl: dataset name -> module with prepare().
SHIPPED_BUILDERS = {
    "big_vl_demo_shapes": "big_vl.data.builders.demo_shapes",
    "big_vl_mnist_idx": "big_vl.data.builders.mnist_idx",
    "big_vl_image_folder": "big_vl.data.builders.image_folder",
}


def _image_keys(features):
  return [k for k, f in features.items() if isinstance(f, tfds.features.Image)]


@registry.register("source", "tfds")
def tfds_source(name, *, split, data_dir=None):
  """A TFDS dataset prepared as array_record, with images left encoded.

  Args:
    name: "NAME" or "NAME/CONFIG" (optionally with ":VERSION").
    split: TFDS split string, e.g. "train", "test[:1000]".
    data_dir: TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).

  Returns:
    A random-access `tfds` data source; `source.dataset_info` has features,
    class names and split sizes.
  """
  parts = name.split(":")[0].split("/")
  if parts[0] in SHIPPED_BUILDERS:
    kwargs = {"config": parts[1]} if len(parts) > 1 else {}
    importlib.import_module(SHIPPED_BUILDERS[parts[0]]).prepare(
        data_dir=data_dir, **kwargs)
  builder = tfds.builder(name, data_dir=data_dir)
  _check_array_record(builder, name)
  decoders = {k: tfds.decode.SkipDecoding()
              for k in _image_keys(builder.info.features)}
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            decoders=decoders or None)
  except (NotImplementedError, ValueError) as e:
    raise ValueError(
        f"Cannot read TFDS dataset {name!r} split {split!r} as a random-access "
        f"source ({e}). big_vl reads array_record files: prepare it with "
        f"`tfds build {name} --file_format=array_record` or "
        f"`builder.download_and_prepare(file_format='array_record')`.") from e


def _check_array_record(builder, name):
  """Fails clearly when the prepared dataset is not in array_record files."""
  try:
    prepared = builder.data_path.exists() and (
        builder.data_path / "dataset_info.json").exists()
    fmt = builder.info.file_format if prepared else None
  except Exception:  # pylint: disable=broad-except
    return  # Let tfds.data_source report whatever is wrong.
  fmt_name = getattr(fmt, "value", fmt)
  if fmt is not None and fmt_name != "array_record":
    raise ValueError(
        f"TFDS dataset {name!r} in {builder.data_path} was prepared as "
        f"{fmt_name!r}, but big_vl reads array_record files (random access, "
        "needed for exact shuffling and resume). Prepare it again as "
        f"array_record: `tfds build {name.split(':')[0]} "
        "--file_format=array_record` (or in Python "
        "`tfds.builder(name).download_and_prepare(file_format='array_record')`"
        "; delete or move the old folder first), or convert the existing "
        "files with `tfds convert_format --dataset_version_dir="
        f"{builder.data_path} --out_file_format=array_record`.")


def _read_text(path):
  with epath.Path(path).open("r") as f:
    return f.read()


class CaptionFileSource:
  """Image-caption pairs listed in a JSONL or CSV file (random access).

  Each row names an image file (relative to the list file's folder, or
  absolute / any epath URL) and a caption. Column names default to the first
  of `image`/`filepath` and `caption`/`text`/`title` that the file has (as
  open_clip's `--csv-img-key` / `--csv-caption-key`; note that open_clip's CSV
  separator defaults to a tab, ours to ',').

  Args:
    path: the .jsonl or .csv file.
    kind: "jsonl" or "csv".
    image_key, caption_key: column names (None: the defaults above).
    sep: CSV separator.

  Example:
    # pairs.csv:  filepath,title\n img/0.jpg,a red circle\n ...
    src = CaptionFileSource("pairs.csv", "csv")
    len(src); src[0] == {"image": b"\xff\xd8...", "caption": "a red circle",
                         "text": "a red circle", "__key__": "img/0.jpg"}
    A missing image file raises `pp.CorruptRecordError` with reason
    "missing_file"; the pipeline skips and counts such records.
  """

  IMAGE_KEYS = ("image", "filepath")
  CAPTION_KEYS = ("caption", "text", "title")

  def __init__(self, path, kind, *, image_key=None, caption_key=None,
               sep=","):
    self.path = str(path)
    self.root = os.path.dirname(self.path)
    text = _read_text(self.path)
    if kind == "jsonl":
      rows = [json.loads(line) for line in text.splitlines() if line.strip()]
      columns = set().union(*rows) if rows else set()
    else:
      reader = csv.DictReader(text.splitlines(), delimiter=sep)
      rows = list(reader)
      columns = set(reader.fieldnames or ())
    self._hint = (f" (is the CSV separator right? sep={sep!r})"
                  if kind == "csv" else "")
    self.image_key = image_key or self._pick(columns, self.IMAGE_KEYS, "image")
    self.caption_key = caption_key or self._pick(columns, self.CAPTION_KEYS,
                                                 "caption")
    for key in (self.image_key, self.caption_key):
      if rows and key not in columns:
        raise ValueError(f"{self.path}: no column {key!r}; columns: "
                         f"{sorted(columns)}{self._hint}")
    self._rows = [(str(r.get(self.image_key, "")),
                   str(r.get(self.caption_key, ""))) for r in rows]

  def _pick(self, columns, candidates, what):
    for c in candidates:
      if c in columns:
        return c
    if not columns:
      return candidates[0]
    raise ValueError(f"{self.path}: none of the {what} columns {candidates} "
                     f"found (columns: {sorted(columns)}){self._hint}; pass "
                     f"{what}_key=NAME (e.g. '{self.path}?{what}_key=NAME').")

  def __len__(self):
    return len(self._rows)

  def __getitem__(self, i):
    name, caption = self._rows[i]
    path = name if os.path.isabs(name) or "://" in name else os.path.join(
        self.root, name)
    try:
      image = epath.Path(path).read_bytes()
    except (OSError, ValueError) as e:
      err = pp_lib.CorruptRecordError(f"cannot read image {path!r}: {e}")
      err.reason = "missing_file"
      raise err from e
    return {"image": image, "caption": caption, "text": caption,
            "__key__": name}

  def __repr__(self):
    return f"CaptionFileSource({self.path!r}, {len(self)} rows)"


@registry.register("source", "jsonl")
def jsonl_source(name, *, split=None, data_dir=None, **options):
  """`jsonl:FILE`: one JSON object per line (see `CaptionFileSource`)."""
  del split, data_dir
  return CaptionFileSource(name, "jsonl", **options)


@registry.register("source", "csv")
def csv_source(name, *, split=None, data_dir=None, **options):
  """`csv:FILE[?sep=\t&image_key=..&caption_key=..]` (see
  `CaptionFileSource`)."""
  del split, data_dir
  return CaptionFileSource(name, "csv", **options)


@registry.register("source", "wds")
def wds_source(name, *, split=None, data_dir=None, **options):
  """`wds:PATTERN[?shuffle_buffer=N]`: WebDataset shards (streaming).

  Returns a `big_vl.data.wds.WebDataset` (a grain IterDataset); the pipeline
  sets its seed, epochs and process sharding.
  """
  del split, data_dir
  return wds_lib.WebDataset(name, **options)


def _parse_options(text):
  """'sep=%09&shuffle_buffer=10' -> {'sep': '\t', 'shuffle_buffer': 10}."""
  options = {}
  for key, value in urllib.parse.parse_qsl(text, keep_blank_values=True):
    value = value.replace("\\t", "\t")
    try:
      value = json.loads(value)
    except ValueError:
      pass
    options[key] = value
  return options


@dataclasses.dataclass
class Mixture:
  """Sources mixed with normalised weights (built by `get` for a list).

  Attributes:
    sources: the opened sources (random-access or IterDataset).
    weights: floats summing to 1.
    names: the specs, for messages.
  """
  sources: list[Any]
  weights: list[float]
  names: list[str]

  def __len__(self):
    """Examples in one pass over all components (random-access only)."""
    return sum(len(s) for s in self.sources)


def mixture_components(data):
  """[(spec, weight)] from a list/tuple of pairs or a {spec: weight} dict."""
  items = list(data.items()) if hasattr(data, "items") else [
      tuple(pair) for pair in data]
  for pair in items:
    if len(pair) != 2 or not isinstance(pair[0], str) or not isinstance(
        pair[1], (int, float)) or pair[1] < 0:
      raise ValueError(f"Mixture entry {pair!r}: expected (spec, weight>=0).")
  total = sum(w for _, w in items)
  if not items or total <= 0:
    raise ValueError(f"Mixture {data!r} needs a positive total weight.")
  return [(spec, w / total) for spec, w in items]


def get(spec, *, split=None, data_dir=None, **options):
  """Opens the source named by `spec` ("KIND:NAME[:SPLIT]"), or a mixture.

  Args:
    spec: e.g. "tfds:big_vl_demo_shapes", "tfds:mnist:test",
      "wds:/d/{000..009}.tar", "csv:/d/pairs.csv?sep=\t", or a list of
      (spec, weight) pairs / a {spec: weight} dict for a mixture (in a
      ConfigDict use pairs: ConfigDict keys cannot hold dots).
    split: split to read, unless `spec` names one (tfds only).
    data_dir: data directory passed to the source.
    **options: keyword arguments for the source (as after `?` in the spec).

  Returns:
    A random-access source, a grain IterDataset (streaming) or a `Mixture`.
  """
  if not isinstance(spec, str):
    pairs = mixture_components(spec)
    return Mixture([get(s, split=split, data_dir=data_dir, **options)
                    for s, _ in pairs], [w for _, w in pairs],
                   [s for s, _ in pairs])
  kind, sep, rest = spec.partition(":")
  if not sep:
    raise ValueError(f"Data spec {spec!r} needs a kind, e.g. 'tfds:{spec}'.")
  if kind in PATH_KINDS:
    path, _, query = rest.partition("?")
    return registry.get("source", kind)(
        path, split=split, data_dir=data_dir,
        **{**_parse_options(query), **options})
  name, sep, spec_split = rest.partition(":")
  if sep and spec_split:
    split = spec_split
  if split is None:
    raise ValueError(f"No split given for data {spec!r}.")
  return registry.get("source", kind)(name, split=split, data_dir=data_dir,
                                      **options)


def class_names(source, key="label"):
  """Class names of a TFDS source's ClassLabel feature `key`, or None."""
  info = getattr(source, "dataset_info", None)
  feature = info.features[key] if info is not None and key in info.features \
      else None
  return list(feature.names) if feature is not None else None
