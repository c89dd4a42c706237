"""Curated data out: an index file a `subset:` source reads, or WebDataset
shards in img2dataset's layout.

    write_subset(out, spec, split, indices)    # out/subset.json + .npy
    sources.get(f"subset:{out}")               # records spec[indices[j]]

    write_webdataset(out, rows)                # out/00000.tar, ...

img2dataset's layout: shard `{s:05d}.tar` holds, per sample, `KEY.jpg` (or
.png / .webp, the image's own bytes, by their magic number), `KEY.txt` (the
caption) and `KEY.json` (metadata), KEY being `{s:05d}{i:04d}` (shard,
position); beside each tar, `{s:05d}.parquet` (one row per sample: key,
caption and the metadata's scalar fields) and `{s:05d}_stats.json`
({"count", "successes", "failed"}). Tar members carry no time or owner,
so the same rows give the same bytes, whichever engine writes them.
"""

import io
import json
import tarfile

from etils import epath
import numpy as np

SUBSET_META = "subset.json"
SUBSET_INDICES = "subset.npy"
SHARD_DIGITS = 5
KEY_DIGITS = 4
MAX_SHARD_SIZE = 10 ** KEY_DIGITS


def write_subset(out, spec, split, indices, data_dir=None, **info):
  """Writes the index files of a `subset:` source.

  Args:
    out: the folder.
    spec: the random-access source the indices are into.
    split: its split (tfds).
    indices: int[K] record indices, in the order the subset reads them.
    data_dir: the TFDS data dir (None: the default).
    **info: more fields for subset.json (e.g. what made it).
  """
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  np.save(buf, np.asarray(indices, np.int64))
  (out / SUBSET_INDICES).write_bytes(buf.getvalue())
  (out / SUBSET_META).write_text(json.dumps(
      {"data": spec, "split": split, "data_dir": data_dir,
       "count": int(len(indices)), **info}, indent=1))


def read_subset(folder):
  """(subset.json dict, int64[K] indices) of a `write_subset` folder."""
  folder = epath.Path(folder)
  if not (folder / SUBSET_META).exists():
    raise FileNotFoundError(
        f"{folder} has no {SUBSET_META}: a subset: source names a folder "
        "written by `python -m big_vl.curate` (or curation.write_subset).")
  meta = json.loads((folder / SUBSET_META).read_text())
  indices = np.load(io.BytesIO((folder / SUBSET_INDICES).read_bytes()))
  if len(indices) != meta["count"]:
    raise ValueError(f"{folder}: {SUBSET_INDICES} has {len(indices)} "
                     f"indices, {SUBSET_META} says {meta['count']}.")
  return meta, indices


def image_extension(data):
  """The file extension of encoded image bytes, by their magic number."""
  if data[:8] == b"\x89PNG\r\n\x1a\n":
    return "png"
  if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
    return "webp"
  if data[:3] == b"\xff\xd8\xff":
    return "jpg"
  raise ValueError("Not a PNG, JPEG or WebP image (the formats a "
                   "WebDataset reader takes).")


def _add(tar, name, data):
  member = tarfile.TarInfo(name)
  member.size = len(data)
  member.mode = 0o644
  tar.addfile(member, io.BytesIO(data))


def sample_key(shard, position):
  """img2dataset's key of the sample at `position` of `shard`."""
  return f"{shard:0{SHARD_DIGITS}d}{position:0{KEY_DIGITS}d}"


def write_shard(out, shard, samples):
  """Writes one shard: its tar, parquet and stats files.

  Args:
    out: the folder (an `epath.Path`).
    shard: the shard's number.
    samples: [(position, row)] in position order; row is {"image": bytes,
      "caption": str, **meta}, or None for a planned sample that could not
      be read (its key is left unused, and counted as failed).

  Returns:
    The number of samples written.
  """
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  table = []
  with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
    for position, row in samples:
      if row is None:
        continue
      key = sample_key(shard, position)
      meta = {"key": key, "caption": row["caption"],
              **{k: v for k, v in row.items()
                 if k not in ("image", "caption")}}
      _add(tar, f"{key}.{image_extension(row['image'])}", row["image"])
      _add(tar, f"{key}.txt", row["caption"].encode("utf-8"))
      _add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
      table.append(meta)
  name = f"{shard:0{SHARD_DIGITS}d}"
  (out / f"{name}.tar").write_bytes(buf.getvalue())
  columns = {k: [r.get(k) for r in table] for k in (table[0] if table else ())
             if all(isinstance(r.get(k), (str, int, float, bool, type(None)))
                    for r in table)}
  parquet = io.BytesIO()
  pq.write_table(pa.table(columns) if columns else pa.table({"key": []}),
                 parquet)
  (out / f"{name}.parquet").write_bytes(parquet.getvalue())
  (out / f"{name}_stats.json").write_text(json.dumps(
      {"count": len(samples), "successes": len(table),
       "failed": len(samples) - len(table)}))
  return len(table)


def pattern(out, shards):
  """The brace pattern of `shards` shards in `out`."""
  last = f"{max(shards - 1, 0):0{SHARD_DIGITS}d}"
  return str(epath.Path(out) / f"{{{0:0{SHARD_DIGITS}d}..{last}}}.tar")


def write_webdataset(out, rows, shard_size=MAX_SHARD_SIZE):
  """Writes rows as WebDataset shards in img2dataset's layout.

  Row j goes to shard j // shard_size at position j % shard_size, so a
  row that could not be read (None) leaves its key unused instead of
  moving the others (what a distributed writer does too,
  `curation.beam`).

  Args:
    out: the folder.
    rows: an iterable of dicts {"image": bytes, "caption": str, **meta}
      (meta: JSON-serialisable values, e.g. the source key and scores), or
      None for a row that could not be read.
    shard_size: samples per shard (at most 10,000: keys have 4 digits for
      the position).

  Returns:
    {"shards": count, "samples": written, "failed": rows that were None,
    "pattern": "out/{00000..0000N}.tar"}.
  """
  check_shard_size(shard_size)
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  shard, pending, written, planned = 0, [], 0, 0
  for j, row in enumerate(rows):
    planned += 1
    if j // shard_size != shard:
      written += write_shard(out, shard, pending)
      shard, pending = j // shard_size, []
    pending.append((j % shard_size, row))
  if pending:
    written += write_shard(out, shard, pending)
  shards = -(-planned // shard_size)
  return {"shards": shards, "samples": written, "failed": planned - written,
          "pattern": pattern(out, shards)}


def check_shard_size(shard_size):
  if not 0 < shard_size <= MAX_SHARD_SIZE:
    raise ValueError(f"shard_size={shard_size} is not in [1, "
                     f"{MAX_SHARD_SIZE}].")
