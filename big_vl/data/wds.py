"""WebDataset tar shards (img2dataset layout) as a resumable grain IterDataset.

A shard is a tar file whose members are grouped by key:
`KEY.jpg|jpeg|png|webp` (the image, left encoded), `KEY.txt` (the caption) and
optionally `KEY.json` (metadata). Shards are named by a brace pattern,
expanded lazily (`ShardPattern`), and read in stream mode with `tarfile`
from any path `etils.epath` can open (local, gs://, ...).

    ds = WebDataset("/data/cc3m/{00000..00331}.tar", shuffle_buffer=1000,
                    seed=0, process_index=0, process_count=1)
    it = iter(ds)
    next(it)  # {"image": b"\\xff\\xd8...", "text": "a dog", "caption": "a dog",
              #  "json": {...} or None, "__key__": "000000012",
              #  "__url__": "/data/cc3m/00000.tar"}

Sharding: shard i belongs to process `i % process_count`. Every epoch
visits this process's shards in a new order (a permutation seeded by
(seed, epoch)). Grain workers do not split the shards: each reads the
process's whole stream and preprocesses every W-th sample
(`pipeline.ThreadedPreprocess`), so the batches do not depend on the number
of workers.

Shuffling: a buffer of `shuffle_buffer` samples, refilled from the stream;
the element emitted at step n is buffer[h(seed, n) % len(buffer)] (swapped
with the last one and popped), so the order depends only on the seed and the
stream, not on timing.

State (JSON): {"epoch", "shard", "offset": where the reader goes on (shard
position in this process's epoch order, sample index within it), "emitted":
samples emitted so far, "buffer": [[epoch, shard, offset], ...] the stream
positions of the samples in the buffer, in buffer order}. `set_state`
re-reads the buffered samples from their shards and reopens the reader
shard at its offset, so the next sample after a restore is exactly the one an
uninterrupted iterator would have given. Cost of a restore: reading the
shards the buffered samples come from (usually the current one or two, each
up to the furthest buffered offset) plus the reader's shard up to its offset;
tar streams cannot seek, so skipping means reading through (no decoding).

Records that cannot be used are yielded as `{"__error__": reason, ...}`
(the pipeline counts them as skipped by reason): a sample without an image
("missing_image"), without a caption ("missing_text"), with an empty or
whitespace-only `KEY.txt` ("bad_caption", see `pp.caption_text`) or one that
is not UTF-8 ("decode_text"), or a shard that fails to read ("read_error", once per
failed shard; its remaining samples are lost, deterministically). A shard cut
short anywhere is a failed shard too: inside a member's data `tarfile`
fails; cut at or inside a header block `tarfile` would just stop (it takes a
short or missing header after the first as the end of the archive), so
`read_shard` checks that the archive ends with its two zero end-of-archive
blocks and otherwise reports the shard ("read_error", with a warning naming
it; the sample being read when the data ended is dropped, as it may be
incomplete).

Reading is sequential; the pipeline preprocesses the samples on
`config.input.read_threads` threads (`pipeline.ThreadedPreprocess`) in each
of `config.input.workers` grain workers (if any).
"""

import json
import re
import tarfile

from absl import logging
from etils import epath
import grain
import jax
import numpy as np

from big_vl.data import pp as pp_lib

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
ERROR_KEY = "__error__"
_MASK64 = (1 << 64) - 1


def _mix64(seed, n):
  """A splitmix64-style hash of (seed, n): cheap, stable across platforms."""
  z = (seed * 0x9E3779B97F4A7C15 + n + 1) & _MASK64
  z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
  return z ^ (z >> 31)


class _Range:
  """`{START..END}` as a lazy sequence of (zero-padded) strings."""

  def __init__(self, start, end):
    self.start, self.end = int(start), int(end)
    self.width = len(start) if start.startswith("0") or len(start) == len(
        end) else 0
    if self.end < self.start:
      raise ValueError(f"Brace range {{{start}..{end}}} is empty.")

  def __len__(self):
    return self.end - self.start + 1

  def __getitem__(self, i):
    return str(self.start + i).zfill(self.width)


class ShardPattern:
  """A lazily expanded brace pattern: `len` and `[i]`, no list of names.

  Supports numeric ranges `{00000..01023}` (zero padding kept), alternatives
  `{a,b,c}`, several groups (the last varies fastest, as in bash) and several
  patterns joined by `::` (concatenated).

  Args:
    pattern: e.g. "gs://b/cc12m/{00000..01242}.tar::/data/extra-{0..9}.tar".

  Example:
    p = ShardPattern("shard-{000..002}-{a,b}.tar")
    len(p) == 6; p[0] == "shard-000-a.tar"; p[3] == "shard-001-b.tar"
  """

  def __init__(self, pattern):
    self.pattern = pattern
    self._parts = [self._parse(p) for p in pattern.split("::") if p]
    self._lens = [int(np.prod([len(g) for g in groups], dtype=object))
                  for _, groups in self._parts]
    if not self._parts:
      raise ValueError(f"Empty shard pattern {pattern!r}.")

  @staticmethod
  def _parse(pattern):
    pieces = re.split(r"\{([^{}]*)\}", pattern)
    literals, groups = pieces[0::2], []
    for body in pieces[1::2]:
      m = re.fullmatch(r"(\d+)\.\.(\d+)", body)
      groups.append(_Range(m.group(1), m.group(2)) if m else body.split(","))
    return literals, groups

  def __len__(self):
    return sum(self._lens)

  def __getitem__(self, i):
    if not 0 <= i < len(self):
      raise IndexError(f"Shard {i} out of range for {self.pattern!r}.")
    for (literals, groups), n in zip(self._parts, self._lens):
      if i < n:
        break
      i -= n
    chosen = []
    for group in reversed(groups):
      i, r = divmod(i, len(group))
      chosen.append(group[r])
    out = [literals[0]]
    for value, literal in zip(reversed(chosen), literals[1:]):
      out += [value, literal]
    return "".join(out)


def _split_name(name):
  """'dir/000123.jpg' -> ('dir/000123', 'jpg'); the key ends at the first dot
  of the base name, as in webdataset."""
  slash = name.rfind("/")
  dot = name.find(".", slash + 1)
  if dot < 0:
    return name, ""
  return name[:dot], name[dot + 1:].lower()


def _make_sample(key, files, url):
  """Members of one key -> the output dict (or an error record)."""
  out = {"__key__": key, "__url__": url}
  image = next((files[e] for e in IMAGE_EXTS if e in files), None)
  if image is None:
    return {**out, ERROR_KEY: "missing_image"}
  if "txt" not in files:
    return {**out, ERROR_KEY: "missing_text"}
  try:
    text = pp_lib.caption_text(files["txt"], f"{key}.txt")
  except pp_lib.CorruptRecordError as e:  # Empty, or not UTF-8.
    return {**out, ERROR_KEY: e.reason}
  meta = None
  if "json" in files:
    try:
      meta = json.loads(files["json"])
    except ValueError:
      meta = None
  return {**out, "image": image, "text": text, "caption": text, "json": meta}


def read_shard(url, start=0):
  """Yields (offset, sample) of one shard from sample index `start` on.

  Samples before `start` are grouped but not returned (their bytes are read
  through, as a tar stream cannot seek). A shard that fails to read yields one
  `{"__error__": "read_error"}` record and ends.
  """
  offset, key, files = 0, None, {}
  try:
    with epath.Path(url).open("rb") as f, tarfile.open(
        fileobj=f, mode="r|*") as tar:
      for member in tar:
        if not member.isfile():
          continue
        k, ext = _split_name(member.name)
        if k != key and key is not None:
          if offset >= start:
            yield offset, _make_sample(key, files, url)
          offset, files = offset + 1, {}
        key = k
        data = tar.extractfile(member).read() if offset >= start else b""
        files[ext] = data
      if not _ends_with_end_blocks(tar):
        raise tarfile.ReadError(
            "the data ends before the tar end-of-archive blocks: the shard "
            "is truncated")
  except (OSError, tarfile.TarError, EOFError) as e:
    logging.warning("Cannot read shard %s (%s); skipping the rest of it.",
                    url, e)
    if offset >= start:
      yield offset, {"__key__": key or "", "__url__": url,
                     ERROR_KEY: "read_error"}
    return
  if key is not None and offset >= start:
    yield offset, _make_sample(key, files, url)


def _ends_with_end_blocks(tar):
  """Whether a stream-mode `tar`, iterated to its end, ended on the two zero
  blocks that close a tar archive (not on a missing or short header)."""
  block = tarfile.BLOCKSIZE
  f = tar.fileobj
  # The header read that ended the iteration started at `tar.offset`: a full
  # block was read only if the data did not end there.
  if f.tell() - tar.offset != block:
    return False
  return f.read(block) == bytes(block)


class WebDataset(grain.IterDataset):
  """Samples of WebDataset tar shards; resumable (see the module docstring).

  Args:
    pattern: brace pattern (or `ShardPattern`) of shard paths.
    seed: seed of the shard orders and the shuffle buffer.
    shuffle_buffer: samples in the shuffle buffer (0 or 1: stream order).
    shuffle_shards: visit shards in a new random order every epoch.
    num_epochs: None repeats forever.
    process_index, process_count: this process's share of the shards
      (default: JAX's).
  """

  def __init__(self, pattern, *, seed=0, shuffle_buffer=1000,
               shuffle_shards=True, num_epochs=None, process_index=None,
               process_count=None):
    super().__init__()
    self.shards = pattern if isinstance(pattern, ShardPattern) else \
        ShardPattern(pattern)
    self.seed = int(seed)
    self.shuffle_buffer = int(shuffle_buffer)
    self.shuffle_shards = shuffle_shards
    self.num_epochs = num_epochs
    self.process_index = process_index
    self.process_count = process_count

  def configure(self, **kwargs):
    """A copy with some constructor arguments replaced (the pipeline sets
    seed, num_epochs, shuffle and processes this way)."""
    args = dict(seed=self.seed, shuffle_buffer=self.shuffle_buffer,
                shuffle_shards=self.shuffle_shards, num_epochs=self.num_epochs,
                process_index=self.process_index,
                process_count=self.process_count)
    args.update(kwargs)
    return WebDataset(self.shards, **args)

  def shard_indices(self):
    """Indices (into `shards`) this process reads: a lazy range."""
    index = jax.process_index() if self.process_index is None else \
        self.process_index
    count = jax.process_count() if self.process_count is None else \
        self.process_count
    r = range(index, len(self.shards), count)
    if not r:
      raise ValueError(
          f"No shards of {self.shards.pattern!r} ({len(self.shards)} shards) "
          f"for process {index} of {count}: use at least as many shards as "
          "processes.")
    return r

  def __iter__(self):
    return WebDatasetIterator(self)

  def __str__(self):
    return f"WebDataset({self.shards.pattern!r}, seed={self.seed})"


class WebDatasetIterator(grain.DatasetIterator):
  """Iterator of `WebDataset` with exact `get_state` / `set_state`."""

  def __init__(self, ds):
    super().__init__()
    self._ds = ds
    self._indices = ds.shard_indices()
    self._orders = {}
    self._emitted = 0
    self._buffer = []  # [(position [e, s, o], sample)]
    self._open_reader(0, 0, 0)

  def _order(self, epoch):
    """This process's shard indices in epoch `epoch`'s order."""
    if epoch not in self._orders:
      n = len(self._indices)
      if self._ds.shuffle_shards:
        perm = np.random.default_rng([self._ds.seed, epoch]).permutation(n)
      else:
        perm = np.arange(n)
      self._orders = {epoch: perm}  # Only the current epoch is kept.
    return self._orders[epoch]

  def _url(self, epoch, shard):
    return self._ds.shards[self._indices[int(self._order(epoch)[shard])]]

  def _open_reader(self, epoch, shard, offset):
    self._pos = [epoch, shard, offset]
    self._reader = self._read_from(epoch, shard, offset)

  def _read_from(self, epoch, shard, offset):
    """Yields (position, sample) from a stream position on, epoch after
    epoch; updates `self._pos` to the next position to read."""
    n = len(self._indices)
    empty_epoch, from_start = True, shard == 0 and offset == 0
    while self._ds.num_epochs is None or epoch < self._ds.num_epochs:
      while shard < n:
        for o, sample in read_shard(self._url(epoch, shard), offset):
          self._pos = [epoch, shard, o + 1]
          empty_epoch = empty_epoch and ERROR_KEY in sample
          yield [epoch, shard, o], sample
        shard, offset = shard + 1, 0
        self._pos = [epoch, shard, 0]
      if empty_epoch and from_start:
        raise ValueError(f"A whole epoch of {self._ds} had no readable "
                         "samples (are the shard paths right? see the "
                         "warnings above).")
      epoch, shard, empty_epoch, from_start = epoch + 1, 0, True, True
      self._pos = [epoch, 0, 0]

  def __next__(self):
    size = max(self._ds.shuffle_buffer, 1)
    while len(self._buffer) < size:
      item = next(self._reader, None)
      if item is None:
        break
      self._buffer.append(item)
    if not self._buffer:
      raise StopIteration
    j = _mix64(self._ds.seed, self._emitted) % len(self._buffer) \
        if size > 1 else 0
    _, sample = self._buffer[j]
    self._buffer[j] = self._buffer[-1]
    self._buffer.pop()
    self._emitted += 1
    return sample

  def get_state(self):
    epoch, shard, offset = self._pos
    return {"epoch": epoch, "shard": shard, "offset": offset,
            "emitted": self._emitted,
            "buffer": [list(p) for p, _ in self._buffer]}

  def set_state(self, state):
    positions = [tuple(p) for p in state["buffer"]]
    wanted = {}
    for e, s, o in positions:
      wanted.setdefault((e, s), set()).add(o)
    found = {}
    for (e, s), offsets in sorted(wanted.items()):
      last = max(offsets)
      for o, sample in read_shard(self._url(e, s), min(offsets)):
        if o in offsets:
          found[(e, s, o)] = sample
        if o >= last:
          break
    missing = [p for p in positions if p not in found]
    if missing:
      raise ValueError(f"Cannot restore {self._ds}: buffered samples "
                       f"{missing[:3]} are no longer in their shards (did the "
                       "shards or the sharding change?).")
    self._buffer = [(list(p), found[p]) for p in positions]
    self._emitted = int(state["emitted"])
    self._open_reader(state["epoch"], state["shard"], state["offset"])


def count_samples(pattern):
  """Samples in all shards of `pattern` (reads every shard; for tools/tests)."""
  shards = ShardPattern(pattern)
  return sum(1 for i in range(len(shards)) for _ in read_shard(shards[i]))
