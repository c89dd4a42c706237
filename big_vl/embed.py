r"""Embeds a corpus: image and text embeddings of every record, in shards.

    python -m big_vl.embed --checkpoint=workdirs/demo \
        --data=tfds:big_vl_demo_noisy --split=train --out=/data/noisy_emb
    python -m big_vl.embed --checkpoint=converted/ViT-B-32 \
        --data="wds:/data/cc3m/{00000..00331}.tar" --out=gs://b/cc3m_emb \
        --format=parquet        # on every host of a pod, as in training

`--data` is any source spec big_vl trains on (`tfds:`, `wds:`, `jsonl:`,
`csv:`, or a mixture: every component is embedded whole, the weights are
ignored). Each record goes through the checkpoint's evaluation pp
(`Predictor`), its image and (first) caption are embedded, and the rows
are written in shards of the input:

* a random-access source (tfds, jsonl, csv): shard k holds records
  [k * shard_size, (k+1) * shard_size) of its component;
* a WebDataset: shard k is input tar shard k.

Files in `--out`, per shard k (5 digits):

    --format=npy:      img-k.npy  f32[n, D] unit-norm image embeddings
                       txt-k.npy  f32[n, D] unit-norm text embeddings
                       meta-k.jsonl one row per embedding: {"key",
                                  "component", "index", "caption"}
    --format=parquet:  part-k.parquet with the columns key, component,
                       index, caption, img (list<f32>[D]), txt
    done-k.json        {"rows", "skipped": {reason: n}, ...}, written last
    run.json           the settings (another run's settings are refused)
    manifest.json      every shard and the totals, once all are done

`key` is a record's WebDataset key, a jsonl/csv image path, or the record
index as a string; `index` is the record's position in its component, so
`sources.get(spec)[index]` is the record of a random-access row (a
WebDataset's: the sample's position in its tar shard, the one `done-k.json`
names).

Nothing lost, nothing silent: a record whose image does not decode, or
whose caption is missing or empty, is skipped and counted by reason
(`done-k.json`, the manifest's totals, and the end-of-run line). A killed
run restarted with the same flags redoes only the shards without a
`done-k.json` (a shard is written to temporary names and renamed), and
writes the same files an uninterrupted run writes.

Multi-process: with `jax.distributed` (flags as `big_vl.train`: on a TPU
pod or under SLURM joined automatically), process p embeds shards k with
k % process_count == p, on its local devices (a batch is split over them);
process 0 writes the manifest when every process is done. Rows do not
depend on the process count.

Library:

    manifest = run(predictor, "tfds:big_vl_demo_noisy/small", "/tmp/e",
                   split="train", shard_size=256)
    table = curation.shards.load("/tmp/e")  # .img f32[N, D], .txt, .keys
"""

import collections
import concurrent.futures
import itertools
import json
import sys
import time

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import numpy as np
import tqdm

from big_vl import cli
from big_vl import config as config_lib
from big_vl import distributed
from big_vl import predict
from big_vl.curation import shards as shards_lib
from big_vl.data import pp as pp_lib
from big_vl.data import sources
from big_vl.data import wds as wds_lib

TEXT_FIELDS = ("caption", "text", "captions", "texts")
VERSION = 1


def _components(data):
  """[(spec, weight)] of a mixture, or [(data, 1.0)]."""
  return (sources.mixture_components(data) if not isinstance(data, str)
          else [(data, 1.0)])


def plan(opened, shard_size):
  """The shards of opened components (`sources.get` of each component).

  Args:
    opened: the opened sources, one per mixture component.
    shard_size: records per shard of a random-access component.

  Returns:
    A list of `Shard`s, numbered from 0 in component order.
  """
  shards = []
  for c, source in enumerate(opened):
    if isinstance(source, wds_lib.WebDataset):
      pattern = source.shards
      for i in range(len(pattern)):
        shards.append(shards_lib.Shard(len(shards), c, i, -1, pattern[i]))
    else:
      for start in range(0, len(source), shard_size):
        shards.append(shards_lib.Shard(
            len(shards), c, start, min(start + shard_size, len(source))))
  return shards


def _records(source, shard):
  """(key, index, record or CorruptRecordError) of one shard, in order."""
  if shard.url is not None:
    for index, sample in wds_lib.read_shard(shard.url):
      if wds_lib.ERROR_KEY in sample:
        yield sample.get("__key__", ""), index, pp_lib.CorruptRecordError(
            f"{shard.url}: {sample[wds_lib.ERROR_KEY]}",
            reason=sample[wds_lib.ERROR_KEY])
      else:
        yield sample["__key__"], index, sample
    return
  for i in range(shard.start, shard.stop):
    try:
      record = source[i]
    except pp_lib.CorruptRecordError as e:
      yield str(i), i, e
      continue
    except (OSError, ValueError) as e:
      yield str(i), i, pp_lib.CorruptRecordError(str(e), reason="read_error")
      continue
    key = record.get("__key__", None) if isinstance(record, dict) else None
    yield (str(i) if key is None else _text(key)), i, record


def _text(value):
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  return value.decode("utf-8", "replace") if isinstance(
      value, (bytes, np.bytes_)) else str(value)


def text_field(record, text_key):
  """The caption field of `record` that `text_key` names ("auto": the first
  of `TEXT_FIELDS` the record has; None: none)."""
  if text_key is None or text_key == "none":
    return None
  if text_key != "auto":
    return text_key
  return next((k for k in TEXT_FIELDS if k in record), None)


def _caption(record, field):
  """The record's (first usable) caption as a str."""
  value = record.get(field) if field else None
  if value is None:
    raise pp_lib.CorruptRecordError(f"no caption field {field!r}",
                                    reason="missing_text")
  if isinstance(value, (list, tuple)) or (
      isinstance(value, np.ndarray) and value.ndim == 1):
    return pp_lib.caption_list(value, field)[0]
  return pp_lib.caption_text(value, field)


class _Prepared:
  """A record turned into model inputs, or the reason it was skipped."""

  __slots__ = ("key", "index", "caption", "pixels", "pos", "tokens",
               "reason")

  def __init__(self, key, index):
    self.key, self.index = key, index
    self.caption = self.pixels = self.pos = self.tokens = self.reason = None


def _prepare(predictor, field, item):
  """One record through the pp (run on a worker thread)."""
  key, index, record = item
  out = _Prepared(key, index)
  try:
    if isinstance(record, Exception):
      raise record
    if field is not None:
      out.caption = _caption(record, field)
      out.tokens = np.asarray(predictor.tokenize([out.caption])[0], np.int32)
    image = record.get("image")
    if image is None or (isinstance(image, bytes) and not image):
      raise pp_lib.CorruptRecordError("no image", reason="missing_image")
    pixels, pos = predictor.preprocess_images([image], with_pos=True)
    out.pixels, out.pos = pixels[0], None if pos is None else pos[0]
  except pp_lib.CorruptRecordError as e:
    out.reason = e.reason
  except (OSError, ValueError) as e:  # PIL and numpy on a bad record.
    out.reason = "decode"
    logging.debug("record %s skipped: %s", key, e)
  return out


def embed_records(predictor, items, field, *, threads=4):
  """Embeddings of (key, index, record) items (one shard).

  Records are preprocessed on `threads` threads, a few batches at a time,
  and embedded a batch (`predictor.batch_size` usable records) at a time,
  so memory holds a few batches of pixels, not the shard's.

  Args:
    predictor: a two-tower `Predictor`.
    items: an iterable of (key, index, record or exception).
    field: the caption field (None: images only).
    threads: pp threads.

  Returns:
    (img f32[n, D], txt f32[n, D] or None, meta [{"key", "index",
    "caption"}], skipped Counter of reasons).
  """
  skipped, meta, imgs, txts, batch = collections.Counter(), [], [], [], []

  def flush():
    if not batch:
      return
    pos = None if batch[0].pos is None else [r.pos for r in batch]
    imgs.append(predictor.embed_pixels([r.pixels for r in batch], pos))
    if field is not None:
      txts.append(predictor.embed_tokens(np.stack([r.tokens for r in batch])))
    meta.extend({"key": r.key, "index": r.index, "caption": r.caption}
                for r in batch)
    batch.clear()

  items = iter(items)
  chunk = 4 * predictor.batch_size
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    while True:
      part = list(itertools.islice(items, chunk))
      if not part:
        break
      for prepared in pool.map(lambda it: _prepare(predictor, field, it),
                               part):
        if prepared.reason is not None:
          skipped[prepared.reason] += 1
          continue
        batch.append(prepared)
        if len(batch) == predictor.batch_size:
          flush()
  flush()
  if not meta:
    return np.zeros((0, 0), np.float32), None, meta, skipped
  return (np.concatenate(imgs), np.concatenate(txts) if txts else None, meta,
          skipped)


def _settings(checkpoint, data, split, shard_size, fmt, field, predictor):
  return {"version": VERSION, "checkpoint": str(checkpoint),
          "data": data if isinstance(data, str) else [list(p) for p in
                                                     _components(data)],
          "split": split, "shard_size": shard_size, "format": fmt,
          "text_field": field, "pp_img": predictor.pp_img,
          "pp_txt": predictor.pp_txt}


def _check_settings(out, settings, process_index):
  """Writes run.json (process 0), or refuses a folder of another run."""
  path = out / "run.json"
  if path.exists():
    old = json.loads(path.read_text())
    diff = {k: (old.get(k), v) for k, v in settings.items()
            if old.get(k) != v}
    if diff:
      raise ValueError(
          f"{out} holds embeddings of another run (run.json differs: "
          + ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in
                      diff.items())
          + "); give a new --out, or delete it to start over.")
  elif process_index == 0:
    shards_lib.write_atomic(path, json.dumps(settings, indent=1).encode())


def run(predictor, data, out, *, split=None, data_dir=None, shard_size=4096,
        fmt="npy", text_key="auto", threads=4, checkpoint="",
        process_index=None, process_count=None, progress=True):
  """Embeds every record of `data` into shards in `out`.

  Args:
    predictor: a two-tower `Predictor` (its pp and batch size are used).
    data: a source spec or a mixture (see the module docstring).
    out: output folder (local or any epath URL).
    split: a tfds source's split.
    data_dir: TFDS data dir.
    shard_size: records per shard of a random-access source.
    fmt: "npy" or "parquet".
    text_key: the caption field ("auto", a field name, or "none").
    threads: pp threads.
    checkpoint: the checkpoint's path, recorded in run.json.
    process_index, process_count: this process's part (default: JAX's).
    progress: show a progress bar (stderr).

  Returns:
    The manifest dict (every process; process 0 wrote it).
  """
  if fmt not in shards_lib.FORMATS:
    raise ValueError(f"--format={fmt!r}; use one of {shards_lib.FORMATS}.")
  process_index = (jax.process_index() if process_index is None
                   else process_index)
  process_count = (jax.process_count() if process_count is None
                   else process_count)
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  components = _components(data)
  opened = [sources.get(spec, split=split, data_dir=data_dir)
            for spec, _ in components]
  for (spec, _), source in zip(components, opened):
    if not (isinstance(source, wds_lib.WebDataset) or hasattr(
        source, "__getitem__")):
      raise ValueError(f"Cannot embed {spec!r}: neither random-access nor a "
                       "WebDataset.")
  field = _field(opened, text_key, predictor)
  shards = plan(opened, shard_size)
  settings = _settings(checkpoint, data, split, shard_size, fmt, field,
                       predictor)
  _check_settings(out, settings, process_index)
  mine = [s for s in shards
          if s.index % process_count == process_index
          and not shards_lib.is_done(out, s)]
  streaming = any(s.url is not None for s in mine)
  bar = tqdm.tqdm(total=len(mine) if streaming else sum(
      s.stop - s.start for s in mine), unit="shard" if streaming else "rec",
                  desc=f"embed p{process_index}", file=sys.stderr,
                  disable=not progress, dynamic_ncols=True)
  skipped_total = collections.Counter()
  for shard in mine:
    start = time.time()
    source = opened[shard.component]
    img, txt, meta, skipped = embed_records(
        predictor, _records(source, shard), field, threads=threads)
    shards_lib.write_shard(out, shard, fmt, img, txt, meta, skipped,
                           components[shard.component][0],
                           time.time() - start)
    skipped_total.update(skipped)
    bar.update(1 if streaming else shard.stop - shard.start)
    bar.set_postfix(skipped=sum(skipped_total.values()))
  bar.close()
  if process_count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("big_vl.embed: shards written")
  if process_index == 0:
    missing = [s.index for s in shards if not shards_lib.is_done(out, s)]
    if missing:
      raise RuntimeError(f"Shards {missing[:10]} of {out} have no done "
                         "file after every process finished.")
    return shards_lib.write_manifest(out, shards, settings, process_count)
  return json.loads((out / "manifest.json").read_text()) if (
      out / "manifest.json").exists() else {}


def _field(opened, text_key, predictor):
  """The caption field to embed (None: images only): `text_key`, or found
  in the first readable record."""
  if predictor.pp_txt is None or text_key == "none":
    return None
  if text_key != "auto":
    return text_key
  for source in opened:
    if isinstance(source, wds_lib.WebDataset):
      return "caption"
    for i in range(min(len(source), 16)):
      try:
        return text_field(source[i], "auto")
      except (pp_lib.CorruptRecordError, OSError, ValueError):
        continue
  return None


# Flags (own FlagValues: a library too, next to other entry points).
_FLAGS = flags.FlagValues()
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A two-tower training workdir or converted folder.",
    flag_values=_FLAGS)
_DATA = flags.DEFINE_string("data", None, "Source spec (tfds:, wds:, "
                            "jsonl:, csv:).", flag_values=_FLAGS)
_SPLIT = flags.DEFINE_string("split", "train", "Split of a tfds source.",
                             flag_values=_FLAGS)
_OUT = flags.DEFINE_string("out", None, "Output folder.", flag_values=_FLAGS)
_FORMAT = flags.DEFINE_enum("format", "npy", shards_lib.FORMATS,
                            "Shard file format.", flag_values=_FLAGS)
_SHARD_SIZE = flags.DEFINE_integer(
    "shard_size", 4096, "Records per shard (random-access sources).",
    flag_values=_FLAGS)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Images per call.",
                                   flag_values=_FLAGS)
_TEXT_KEY = flags.DEFINE_string(
    "text_key", "auto", "Caption field ('auto': caption/text/captions; "
    "'none': images only).", flag_values=_FLAGS)
_THREADS = flags.DEFINE_integer("threads", 4, "Preprocessing threads.",
                                flag_values=_FLAGS)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (latest).",
                             flag_values=_FLAGS)
_JOIN = distributed.JoinFlags.define(_FLAGS, heartbeat_timeout_s=30)


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not (_CHECKPOINT.value and _DATA.value and _OUT.value):
    raise app.UsageError("--checkpoint, --data and --out are required.")
  _JOIN.join()
  config_lib.setup_cli_runtime(logging.ERROR)
  predictor = predict.Predictor.load(_CHECKPOINT.value, step=_STEP.value,
                                     batch_size=_BATCH_SIZE.value)
  if predictor.pp_txt is None and _TEXT_KEY.value != "none":
    logging.warning("%s has no text tower: embedding images only.",
                    _CHECKPOINT.value)
  predictor.shard_over(jax.local_devices())
  start = time.time()
  manifest = run(predictor, _DATA.value, _OUT.value, split=_SPLIT.value,
                 shard_size=_SHARD_SIZE.value, fmt=_FORMAT.value,
                 text_key=_TEXT_KEY.value, threads=_THREADS.value,
                 checkpoint=_CHECKPOINT.value)
  if manifest:
    skipped = manifest["skipped"]
    sys.stderr.write(
        f"Embedded {manifest['rows']} records into {len(manifest['shards'])}"
        f" shards in {_OUT.value} ({time.time() - start:.0f} s); skipped "
        f"{sum(skipped.values())}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in skipped.items())})"
           if skipped else "") + ".\n")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(_FLAGS))
