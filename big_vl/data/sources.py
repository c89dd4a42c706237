"""Data sources selected by a name in the config.

    config.input.data = "tfds:big_vl_demo_shapes"   # or "tfds:NAME/CONFIG[:SPLIT]"
    config.input.data = "wds:/data/cc3m/{00000..00331}.tar?shuffle_buffer=5000"
    config.input.data = "jsonl:/data/pairs.jsonl"   # {"image": path, "caption": ..}
    config.input.data = "csv:/data/pairs.csv?sep=\t&image_key=filepath&caption_key=title"
    config.input.data = "subset:/data/curated"   # a `big_vl.curate` output
    config.input.data = (("tfds:big_vl_demo_shapes", 0.7), ("wds:...", 0.3))
    config.input.split = "train"   # for tfds specs

`get(spec, split=..., data_dir=...)` returns
- a random-access source (`len`, `[i]`) for `tfds:` (read with
  `tfds.data_source` from an array_record-prepared TFDS dataset; datasets whose
  builder ships with big_vl, the demo set, are built on first use) and for
  `jsonl:` / `csv:` (rows of image path + caption; see `CaptionFileSource`);
- a random-access `Subset` for `subset:DIR` (the records of a
  random-access source at the indices `big_vl.curate` wrote to DIR);
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

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from big_vl import registry
from big_vl.data import pp as pp_lib
from big_vl.data import wds as wds_lib

# Kinds whose name is a path (it may hold ':', as in gs://); no split.
PATH_KINDS = ("wds", "jsonl", "csv", "subset")

# TFDS builders shipped with big_vl: dataset name -> module with prepare().
SHIPPED_BUILDERS = {
    "big_vl_demo_shapes": "big_vl.data.builders.demo_shapes",
    "big_vl_mnist_idx": "big_vl.data.builders.mnist_idx",
    "big_vl_image_folder": "big_vl.data.builders.image_folder",
    "big_vl_demo_noisy": "big_vl.data.builders.demo_noisy",
    "big_vl_demo_prefs": "big_vl.data.builders.demo_prefs",
}


# TFDS features checked as captions (`pp.caption_text`) when they are Text
# (or a Sequence of Text): a record whose caption is empty, or whose list of
# captions has no usable entry, is skipped with reason "bad_caption".
CAPTION_FIELDS = ("caption", "captions", "text", "texts")


def _image_keys(features):
  return [k for k, f in features.items() if isinstance(f, tfds.features.Image)]


def _caption_keys(features):
  """(scalar Text keys, Sequence-of-Text keys) among CAPTION_FIELDS."""
  scalars, lists = [], []
  for k in CAPTION_FIELDS:
    f = features[k] if k in features else None
    if isinstance(f, tfds.features.Text):
      scalars.append(k)
    elif isinstance(f, tfds.features.Sequence) and isinstance(
        f.feature, tfds.features.Text):
      lists.append(k)
  return scalars, lists


class CaptionChecked:
  """A random-access source whose caption fields are checked on read.

  `source[i]` raises `pp.CorruptRecordError` (reason "bad_caption", see
  `pp.caption_text`) for a record whose caption field in `scalar_keys` is
  null / empty / whitespace-only, or whose list field in `list_keys` has no
  usable caption. A list with some usable entries is returned unchanged
  (`choice` draws among the usable ones; `tokenize` of the whole list skips
  the record). Other attributes (`dataset_info`, ...) are the source's.

  Args:
    source: the random-access source.
    scalar_keys: fields holding one caption.
    list_keys: fields holding a list of captions.
  """

  def __init__(self, source, scalar_keys=(), list_keys=()):
    self._source = source
    self.scalar_keys, self.list_keys = tuple(scalar_keys), tuple(list_keys)

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    record = self._source[i]
    for k in self.scalar_keys:
      pp_lib.caption_text(record[k], k)
    for k in self.list_keys:
      pp_lib.caption_list(record[k], k)
    return record

  def __getitems__(self, indices):
    return [self[i] for i in indices]

  def __getattr__(self, name):
    if name.startswith("__") or name == "_source":  # e.g. while unpickling
      raise AttributeError(name)
    return getattr(self._source, name)

  def __repr__(self):
    return f"CaptionChecked({self._source!r})"


@registry.register("source", "tfds")
def tfds_source(name, *, split, data_dir=None):
  """A TFDS dataset prepared as array_record, with images left encoded.

  Args:
    name: "NAME" or "NAME/CONFIG" (optionally with ":VERSION").
    split: TFDS split string, e.g. "train", "test[:1000]".
    data_dir: TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).

  Returns:
    A random-access `tfds` data source; `source.dataset_info` has features,
    class names and split sizes. Caption features (`CAPTION_FIELDS`) are
    checked on read (`CaptionChecked`): a record with an empty caption is
    skipped and counted as "bad_caption".
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
    source = tfds.data_source(name, split=split, data_dir=data_dir,
                              decoders=decoders or None)
  except (NotImplementedError, ValueError) as e:
    raise ValueError(
        f"Cannot read TFDS dataset {name!r} split {split!r} as a random-access "
        f"source ({e}). big_vl reads array_record files: prepare it with "
        f"`tfds build {name} --file_format=array_record` or "
        f"`builder.download_and_prepare(file_format='array_record')`.") from e
  scalars, lists = _caption_keys(builder.info.features)
  return CaptionChecked(source, scalars, lists) if scalars or lists else \
      source


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


def _path_cell(value):
  """An image path cell as a str ("" for a null or missing one: the read
  then fails as "missing_file")."""
  return "" if value is None else str(value)


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
    "missing_file"; a row whose caption is empty, whitespace-only, a JSON
    null, absent from the row, or missing from a short CSV row raises one
    with reason "bad_caption" (see `pp.caption_text`); the pipeline skips
    and counts such records. A jsonl caption may be a list of captions:
    empty entries are dropped (the record is skipped if none is left) and
    "caption" / "text" are the list.
  """

  IMAGE_KEYS = ("image", "filepath")
  CAPTION_KEYS = ("caption", "text", "title")

  def __init__(self, path, kind, *, image_key=None, caption_key=None,
               sep=","):
    self.path = str(path)
    self.root = os.path.dirname(self.path)
    text = _read_text(self.path)
    bad = {}  # row index -> (line number, what is wrong)
    if kind == "jsonl":
      rows = []
      for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
          if not isinstance(row, dict):
            raise ValueError(f"a JSON {type(row).__name__}, not an object")
        except ValueError as e:
          bad[len(rows)] = (number, str(e))
          row = {}
        rows.append(row)
      if bad and len(bad) == len(rows):
        number, error = next(iter(bad.values()))
        raise ValueError(f"{self.path}: no line is a JSON object (line "
                         f"{number}: {error}); is it a JSONL file?")
      if bad:
        logging.warning(
            "%s: %d of %d lines are not JSON objects and are skipped "
            "(counted as bad_record), e.g. line %d: %s", self.path, len(bad),
            len(rows), *next(iter(bad.values())))
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
    # Captions are kept as read (None for a null, a missing column or a
    # short CSV row) and checked on read, so a bad one is skipped, never
    # turned into "" or "None".
    self._rows = [(_path_cell(r.get(self.image_key)), r.get(self.caption_key))
                  for r in rows]
    self._bad = bad

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

  def caption(self, i):
    """Row i's caption (a str, or a list of str for a jsonl list).

    Raises:
      pp.CorruptRecordError: reason "bad_caption" (or "decode_text").
    """
    if i in self._bad:
      number, error = self._bad[i]
      raise pp_lib.CorruptRecordError(
          f"{self.path} line {number} is not a JSON object: {error}",
          reason="bad_record")
    value = self._rows[i][1]
    where = f"{self.path} row {i + 1} {self.caption_key}"
    if isinstance(value, (list, tuple)):
      return pp_lib.caption_list(value, where)
    return pp_lib.caption_text(value, where)

  def __getitem__(self, i):
    name = self._rows[i][0]
    caption = self.caption(i)  # Checked first: no image read for a bad one.
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


class Subset:
  """Records `indices` of a random-access source, in that order.

  Args: `source` (random access), `indices` (int64[K]), `name` (for
  messages). Other attributes (`dataset_info`, ...) are the source's, so
  class names and caption checks carry over.
  """

  def __init__(self, source, indices, name=""):
    self._source, self.indices, self.name = source, indices, name

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, j):
    return self._source[int(self.indices[j])]

  def __getitems__(self, js):
    return [self[j] for j in js]

  def __getattr__(self, name):
    if name.startswith("__") or name == "_source":  # e.g. while unpickling
      raise AttributeError(name)
    return getattr(self._source, name)

  def __repr__(self):
    return f"Subset({self.name!r}, {len(self)} of {self._source!r})"


@registry.register("source", "subset")
def subset_source(name, *, split=None, data_dir=None, **options):
  """`subset:DIR`: the records a curation kept (`big_vl.curate`'s
  subset.json names the source and split, subset.npy the indices)."""
  del split, options
  from big_vl.curation import write  # pylint: disable=g-import-not-at-top
  meta, indices = write.read_subset(name)
  base = get(meta["data"], split=meta.get("split"),
             data_dir=meta.get("data_dir") or data_dir)
  if not hasattr(base, "__getitem__") or isinstance(base, Mixture):
    raise ValueError(f"subset:{name} names {meta['data']!r}, which is not "
                     "a random-access source.")
  if len(indices) and (indices.min() < 0 or indices.max() >= len(base)):
    raise ValueError(f"subset:{name} has indices outside [0, {len(base)}) "
                     f"of {meta['data']!r}: written for another source?")
  return Subset(base, indices, name)


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
    raise ValueError(f"Data spec {spec!r} needs a kind, e.g. "
                     f"'{suggest_kind(spec)}' (kinds: tfds:NAME, "
                     "wds:SHARDS, jsonl:FILE, csv:FILE).")
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


def suggest_kind(spec):
  """`spec` with the kind its extension suggests, e.g. "jsonl:/d/a.jsonl"."""
  path = spec.partition("?")[0].lower()
  if path.endswith(".jsonl"):
    return f"jsonl:{spec}"
  if path.endswith(".tsv"):
    return f"csv:{spec}" + ("" if "sep=" in spec else "?sep=\\t")
  if path.endswith(".csv"):
    return f"csv:{spec}"
  if path.endswith((".tar", ".tar.gz", ".tgz")) or "{" in path:
    return f"wds:{spec}"
  return f"tfds:{spec}"


def class_names(source, key="label"):
  """Class names of a TFDS source's ClassLabel feature `key`, or None."""
  info = getattr(source, "dataset_info", None)
  feature = info.features[key] if info is not None and key in info.features \
      else None
  return list(feature.names) if feature is not None else None
