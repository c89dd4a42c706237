"""Grain workers: blocks of consecutive records, packed into shared memory.

Worker w of W preprocesses blocks w, w + W, ... of `WORKER_BLOCK`
consecutive records and hands each over as one element (`pack`): its usable
records' arrays stacked (grain moves them through shared memory), its
failed records' reasons. Grain interleaves the workers round robin, so
unpacking (`Unpack`, in the training process) gives the stream in its order
for any W; skipping and batching run after that. One element per block (not
per record) keeps grain's per-element cost (a queue message, shared memory
segments, the iterator state) off the records. `MapBlocks` blocks a
random-access dataset, `Blocks` a `ThreadedPreprocess` stream.
"""

import concurrent.futures

import grain
import numpy as np

from big_vl.data import skips
from big_vl.data import threaded_pp

# Records per block a worker hands over at once.
WORKER_BLOCK = threaded_pp.PREPROCESS_CHUNK


def _stack(values):
  """Numeric arrays of equal shapes stacked (grain's worker moves arrays
  into shared memory, so the training process gets them without a copy);
  anything else as a list."""
  first = np.asarray(values[0])
  if first.dtype.kind not in "biufc" or any(
      np.shape(v) != first.shape for v in values):
    return list(values)
  return np.stack(values)


def pack(records):
  """A block of preprocessed records as one element.

  Args:
    records: preprocessed records in stream order; a failed one is None or
      `{"__error__": reason}`.

  Returns:
    {"reasons": int32[n] (-1 for a usable record, else its
    `skips.SKIP_REASONS` index), "fields": {key: the usable records' values,
    stacked}}.
  """
  reasons = np.full([len(records)], -1, np.int32)
  good = []
  for i, record in enumerate(records):
    if record is None:
      reasons[i] = skips.reason_index("decode")
    elif isinstance(record, dict) and skips.ERROR_KEY in record:
      reasons[i] = skips.reason_index(record[skips.ERROR_KEY])
    else:
      good.append(record)
  fields = {k: _stack([r[k] for r in good]) for k in (good[0] if good
                                                        else ())}
  return {"reasons": reasons, "fields": fields}


def unpack(block):
  """The records of a `pack`ed block, in order (failed ones as
  `{"__error__": reason}`)."""
  fields, j = block["fields"], 0
  for reason in block["reasons"]:
    if reason >= 0:
      yield {skips.ERROR_KEY: skips.SKIP_REASONS[int(reason)]}
    else:
      yield {k: (np.asarray(v[j]) if isinstance(v, np.ndarray) else v[j])
             for k, v in fields.items()}
      j += 1


class MapBlocks(grain.MapDataset):
  """Element k: records `k * size ... (k + 1) * size - 1` of a MapDataset,
  preprocessed on `threads` threads and `pack`ed."""

  def __init__(self, parent, size, threads):
    super().__init__(parent)
    self._size, self._threads, self._pool = int(size), int(threads), None

  def __len__(self):
    return -(-len(self._parent) // self._size)

  def __getitem__(self, k):
    if isinstance(k, slice):
      return self.slice(k)
    first = k * self._size
    indices = range(first, min(first + self._size, len(self._parent)))
    if self._threads > 1:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self._threads, thread_name_prefix="big_vl-pp")
      return pack(list(self._pool.map(self._parent.__getitem__, indices)))
    return pack([self._parent[i] for i in indices])

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_pool"] = None  # Each worker makes its own.
    return state

  def __str__(self):
    return f"MapBlocks(size={self._size}, threads={self._threads})"


class Blocks(grain.IterDataset):
  """A `ThreadedPreprocess` stream `pack`ed in blocks of `size` records.

  Grain's `mp_prefetch` calls `set_slice(slice(w, None, W))` on worker w's
  copy, which passes it to the stream as `keep_blocks(size, w, W)`: the
  worker preprocesses only its blocks.
  """

  def __init__(self, parent, size):
    super().__init__(parent)
    self._size = int(size)

  def set_slice(self, sl, sequential_slice=False):
    if sequential_slice or sl.stop is not None or (sl.start or 0) < 0:
      raise ValueError(f"Blocks takes strided worker slices only, not {sl}.")
    self._parent.keep_blocks(self._size, sl.start or 0, sl.step or 1)

  def __iter__(self):
    return _BlocksIterator(self._parent.__iter__(), self._size)

  def __str__(self):
    return f"Blocks(size={self._size})"


class _BlocksIterator(grain.DatasetIterator):
  """See `Blocks`; its state is the stream's, between blocks."""

  def __init__(self, parent, size):
    super().__init__(parent)
    self._size = size

  def __next__(self):
    records = []
    for _ in range(self._size):
      try:
        records.append(next(self._parent))
      except StopIteration:
        break
    if not records:
      raise StopIteration
    return pack(records)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class _UnpackIterator(grain.DatasetIterator):
  """Records of a stream of `pack`ed blocks.

  State: {"blocks": the block stream's state before the current block,
  "in_block": its records handed out}.
  """

  def __init__(self, parent):
    super().__init__(parent)
    self._before = None  # The block stream's state before `self._records`.
    self._records, self._pos = [], 0

  def __next__(self):
    while self._pos >= len(self._records):
      before = self._parent.get_state()
      self._records = list(unpack(next(self._parent)))
      self._before, self._pos = before, 0
    self._pos += 1
    return self._records[self._pos - 1]

  def get_state(self):
    if self._before is None or self._pos >= len(self._records):
      return {"blocks": self._parent.get_state(), "in_block": 0}
    return {"blocks": self._before, "in_block": self._pos}

  def set_state(self, state):
    self._parent.set_state(state["blocks"])
    self._records, self._pos, self._before = [], 0, None
    skip = int(state["in_block"])
    if skip:
      self._before = self._parent.get_state()
      self._records = list(unpack(next(self._parent)))
      self._pos = skip


class Unpack(grain.IterDataset):

  def __iter__(self):
    return _UnpackIterator(self._parent.__iter__())
