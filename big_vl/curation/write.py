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
({"count", "successes"}). Tar members carry no time or owner, so the same
rows give the same bytes.
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


def write_webdataset(out, rows, shard_size=MAX_SHARD_SIZE):
  """Writes rows as WebDataset shards in img2dataset's layout.

  Args:
    out: the folder.
    rows: an iterable of dicts {"image": bytes, "caption": str, **meta}
      (meta: JSON-serialisable values, e.g. the source key and scores).
    shard_size: samples per shard (at most 10,000: keys have 4 digits for
      the position).

  Returns:
    {"shards": count, "samples": count, "pattern": "out/{00000..0000N}.tar"}.
  """
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  if not 0 < shard_size <= MAX_SHARD_SIZE:
    raise ValueError(f"shard_size={shard_size} is not in [1, "
                     f"{MAX_SHARD_SIZE}].")
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  shard, samples, buf, tar, table = 0, 0, None, None, []

  def close():
    tar.close()
    name = f"{shard:0{SHARD_DIGITS}d}"
    (out / f"{name}.tar").write_bytes(buf.getvalue())
    columns = {k: [r.get(k) for r in table] for k in table[0]
               if all(isinstance(r.get(k), (str, int, float, bool,
                                            type(None))) for r in table)}
    parquet = io.BytesIO()
    pq.write_table(pa.table(columns), parquet)
    (out / f"{name}.parquet").write_bytes(parquet.getvalue())
    (out / f"{name}_stats.json").write_text(json.dumps(
        {"count": len(table), "successes": len(table)}))

  for row in rows:
    if tar is None:
      buf = io.BytesIO()
      tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT)
      table = []
    position = len(table)
    key = f"{shard:0{SHARD_DIGITS}d}{position:0{KEY_DIGITS}d}"
    meta = {k: v for k, v in row.items() if k not in ("image", "caption")}
    meta = {"key": key, "caption": row["caption"], **meta}
    _add(tar, f"{key}.{image_extension(row['image'])}", row["image"])
    _add(tar, f"{key}.txt", row["caption"].encode("utf-8"))
    _add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
    table.append(meta)
    samples += 1
    if len(table) == shard_size:
      close()
      shard, tar = shard + 1, None
  if tar is not None:
    close()
    shard += 1
  last = f"{max(shard - 1, 0):0{SHARD_DIGITS}d}"
  return {"shards": shard, "samples": samples,
          "pattern": str(out / f"{{{0:0{SHARD_DIGITS}d}..{last}}}.tar")}
