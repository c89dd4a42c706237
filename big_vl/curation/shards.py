"""The on-disk embedding shards of `python -m big_vl.embed`: writing one
shard, the manifest, and loading them all back.

    table = load("/data/noisy_emb")   # table.img f32[N, D], table.txt, ..
    for row, record in records_of(table, rows): ...   # the source records

File layout (per shard k, 5 digits): `img-k.npy`, `txt-k.npy`,
`meta-k.jsonl` (format "npy") or `part-k.parquet` (format "parquet"),
then `done-k.json`; `manifest.json` once every shard is done (see
`big_vl.embed`). Every file is written under a temporary name and renamed,
so a killed writer leaves no half-written file under a final name.
"""

import collections
import dataclasses
import io
import json
import os
from typing import Any

from etils import epath
import numpy as np

from big_vl.data import pp as pp_lib
from big_vl.data import sources
from big_vl.data import wds as wds_lib

FORMATS = ("npy", "parquet")


@dataclasses.dataclass(frozen=True)
class Shard:
  """One output shard: a record range of a component, or one tar shard.

  Attributes:
    index: the shard's number (file names).
    component: the mixture component (0 for a single source).
    start, stop: record range (random access), or the tar shard's number
      in its pattern (start) and -1 (stop).
    url: the tar shard's path (WebDataset), else None.
  """
  index: int
  component: int
  start: int
  stop: int
  url: str | None = None

  def as_dict(self):
    return dataclasses.asdict(self)


def write_atomic(path, data):
  """Writes bytes to `path` through a temporary name (a rename)."""
  tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
  tmp.write_bytes(data)
  tmp.replace(path)  # Overwrites what a killed run left.


def _npy_bytes(array):
  buf = io.BytesIO()
  np.save(buf, np.asarray(array, np.float32))
  return buf.getvalue()


def write_shard(out, shard, fmt, img, txt, meta, skipped, component_spec,
                seconds):
  """Writes one shard's files, its `done-k.json` last."""
  k = f"{shard.index:05d}"
  meta = [{**m, "component": shard.component} for m in meta]
  if fmt == "npy":
    write_atomic(out / f"img-{k}.npy", _npy_bytes(img))
    if txt is not None:
      write_atomic(out / f"txt-{k}.npy", _npy_bytes(txt))
    write_atomic(out / f"meta-{k}.jsonl", "".join(
        json.dumps(m) + "\n" for m in meta).encode())
  else:
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    columns = {name: [m[name] for m in meta]
               for name in ("key", "component", "index", "caption")}
    dim = img.shape[1] if len(meta) else 0
    for name, array in (("img", img), ("txt", txt)):
      if array is not None:
        columns[name] = pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray(array, np.float32).reshape(-1)), dim)
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    write_atomic(out / f"part-{k}.parquet", buf.getvalue())
  done = {"shard": shard.as_dict(), "spec": component_spec,
          "rows": len(meta), "skipped": dict(sorted(skipped.items())),
          "seconds": round(seconds, 3)}
  write_atomic(out / f"done-{k}.json", json.dumps(done, indent=1).encode())


def is_done(out, shard):
  return (out / f"done-{shard.index:05d}.json").exists()


def write_manifest(out, shards, settings, processes):
  """manifest.json from every shard's done file (all must exist)."""
  entries, total, skipped = [], 0, collections.Counter()
  for shard in shards:
    done = json.loads((out / f"done-{shard.index:05d}.json").read_text())
    entries.append(done)
    total += done["rows"]
    skipped.update(done["skipped"])
  manifest = {**settings, "processes": processes, "rows": total,
              "skipped": dict(sorted(skipped.items())),
              "shards": entries}
  write_atomic(out / "manifest.json",
                json.dumps(manifest, indent=1).encode())
  return manifest


@dataclasses.dataclass
class Table:
  """The embeddings of an `embed` folder, concatenated in shard order.

  Attributes:
    img: f32[N, D] unit-norm image embeddings.
    txt: f32[N, D] text embeddings, or None (images only).
    keys: N keys (str).
    component, index: int64[N] each row's mixture component and record
      index (see the module docstring).
    captions: N captions (None for images only).
    shard: int32[N] each row's shard.
    manifest: the manifest dict.
    folder: the folder it was loaded from.
  """
  img: np.ndarray
  txt: np.ndarray | None
  keys: list[str]
  component: np.ndarray
  index: np.ndarray
  captions: list[Any]
  shard: np.ndarray
  manifest: dict[str, Any]
  folder: str | None = None

  def __len__(self):
    return len(self.keys)


def load(out):
  """The `Table` of a finished `embed` folder.

  Raises:
    FileNotFoundError: when the folder has no manifest.json (the run has
      not finished; rerun the same command to complete it).
  """
  out = epath.Path(out)
  if not (out / "manifest.json").exists():
    raise FileNotFoundError(
        f"{out} has no manifest.json: not an embed folder, or its run has "
        "not finished (rerun the same `python -m big_vl.embed` command to "
        "complete it).")
  manifest = json.loads((out / "manifest.json").read_text())
  imgs, txts, meta, shard_ids = [], [], [], []
  for entry in manifest["shards"]:
    k = f"{entry['shard']['index']:05d}"
    if not entry["rows"]:
      continue
    if manifest["format"] == "npy":
      imgs.append(np.load(io.BytesIO((out / f"img-{k}.npy").read_bytes())))
      if manifest["text_field"]:
        txts.append(np.load(io.BytesIO(
            (out / f"txt-{k}.npy").read_bytes())))
      rows = [json.loads(line) for line in
              (out / f"meta-{k}.jsonl").read_text().splitlines()]
    else:
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
      table = pq.read_table(io.BytesIO(
          (out / f"part-{k}.parquet").read_bytes()))
      cols = table.to_pydict()
      dim = table.schema.field("img").type.list_size
      imgs.append(table.column("img").combine_chunks().flatten()
                  .to_numpy().reshape(-1, dim))
      if "txt" in cols:
        txts.append(table.column("txt").combine_chunks().flatten()
                    .to_numpy().reshape(-1, dim))
      rows = [dict(zip(("key", "component", "index", "caption"), r))
              for r in zip(cols["key"], cols["component"], cols["index"],
                           cols["caption"])]
    meta += rows
    shard_ids.append(np.full(len(rows), entry["shard"]["index"], np.int32))
  dim = imgs[0].shape[1] if imgs else 0
  return Table(
      img=np.concatenate(imgs) if imgs else np.zeros((0, dim), np.float32),
      txt=np.concatenate(txts) if txts else None,
      keys=[m["key"] for m in meta],
      component=np.array([m["component"] for m in meta], np.int64),
      index=np.array([m["index"] for m in meta], np.int64),
      captions=[m["caption"] for m in meta],
      shard=np.concatenate(shard_ids) if shard_ids else np.zeros(0, np.int32),
      manifest=manifest, folder=os.fspath(out))


def locate(table, rows):
  """Where each of `table`'s rows is in its source: a list of {"row",
  "spec", "split", "index", "url"} (url: the WebDataset tar holding it,
  else None), plain values a worker of another process can read with
  `read_located`."""
  manifest = table.manifest
  shards = {e["shard"]["index"]: e for e in manifest["shards"]}
  out = []
  for i in rows:
    entry = shards[int(table.shard[i])]
    out.append({"row": int(i), "spec": entry["spec"],
                "split": manifest["split"], "index": int(table.index[i]),
                "url": entry["shard"]["url"]})
  return out


def read_located(located, data_dir=None):
  """Yields (row, record or None) of `locate`'s entries, read from their
  sources, grouped by source (a WebDataset tar is read once for all its
  rows); None for a record that no longer reads."""
  groups = collections.defaultdict(list)
  for entry in located:
    groups[entry["url"] or entry["spec"], entry["split"]].append(entry)
  for (where, split), entries in groups.items():
    if entries[0]["url"] is not None:
      by_index = {e["index"]: e["row"] for e in entries}
      for offset, sample in wds_lib.read_shard(where):
        if offset in by_index:
          ok = wds_lib.ERROR_KEY not in sample
          yield by_index[offset], sample if ok else None
      continue
    source = sources.get(where, split=split, data_dir=data_dir)
    for e in entries:
      try:
        yield e["row"], source[e["index"]]
      except (pp_lib.CorruptRecordError, OSError, ValueError):
        yield e["row"], None


def records_of(table, rows, data_dir=None):
  """Yields (row, record or None) of `table`'s rows, read from the source
  again (`locate` + `read_located`).

  Args:
    table: a `Table`.
    rows: row numbers into `table`.
    data_dir: the TFDS data dir.
  """
  yield from read_located(locate(table, rows), data_dir)
