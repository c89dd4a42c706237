"""Preprocessing a stream on a pool of threads, in stream order.

`ThreadedPreprocess` runs a pp function over a streaming source's records
on `read_threads` threads (PIL and numpy release the GIL), keeping the
stream order and a per-record rng, with an exact iterator state; grain
workers make it preprocess only their blocks (`keep_blocks`).
"""

import concurrent.futures
import copy
import sys

import grain
import numpy as np

# Most records of a stream `ThreadedPreprocess` reads at a time (twice this
# many are in flight: the chunk handed out and the next one).
PREPROCESS_CHUNK = 256


class _Chunk:
  """Records `first`, `first + 1`, ... of a stream, being preprocessed.

  `state` is the parent's state before the first of them; `results` holds,
  in stream order, futures (or, for records skipped on restore, None).
  """

  def __init__(self, state, first, results):
    self.state, self.first, self.results = state, first, results


class _ThreadedPreprocessIterator(grain.DatasetIterator):
  """See `ThreadedPreprocess`."""

  def __init__(self, parent, pp_fn, seed, threads, chunk, records):
    super().__init__(parent)
    self._pp_fn, self._seed, self._chunk = pp_fn, int(seed), int(chunk)
    self._block, self._start, self._step = records
    self._pool = (concurrent.futures.ThreadPoolExecutor(
        threads, thread_name_prefix="big_vl-pp") if threads > 1 else None)
    self._next_record = 0  # Index of the next record pulled from the parent.
    self._exhausted = False
    self._current = None  # The _Chunk being handed out ...
    self._pos = 0  # ... and how many of its records were handed out.
    self._ahead = None  # The next _Chunk, already being preprocessed.

  def _preprocess(self, record, index):
    rng = np.random.Generator(np.random.Philox(
        key=(self._seed << 64) + index))
    return self._pp_fn(record, rng)

  def _pull(self, skip=0):
    """Reads the next chunk of records and starts preprocessing them (all
    but the first `skip`, already handed out before a restore)."""
    # A copy: the parent may hand out its live state.
    state = copy.deepcopy(self._parent.get_state())
    first, results = self._next_record, []
    while len(results) < max(self._chunk, skip) and not self._exhausted:
      try:
        record = next(self._parent)
      except StopIteration:
        self._exhausted = True
        break
      index = self._next_record
      self._next_record += 1
      if (index // self._block) % self._step != self._start:
        continue  # Another worker's record.
      if len(results) < skip:
        results.append(None)
      elif self._pool is None:
        results.append(_Done(self._preprocess(record, index)))
      else:
        results.append(self._pool.submit(self._preprocess, record, index))
    return _Chunk(state, first, results)

  def __next__(self):
    if self._current is None or self._pos >= len(self._current.results):
      self._current = self._ahead if self._ahead is not None else \
          self._pull()
      self._ahead, self._pos = None, 0
      if not self._current.results:
        raise StopIteration
    if self._ahead is None and self._pool is not None:
      self._ahead = self._pull()  # Overlaps with handing out this chunk.
    element = self._current.results[self._pos].result()
    self._current.results[self._pos] = None  # Free it once handed out.
    self._pos += 1
    return element

  def get_state(self):
    if self._current is None:
      return {"parent": self._parent.get_state(),
              "next_record": self._next_record, "handed_out": 0}
    return {"parent": self._current.state, "next_record": self._current.first,
            "handed_out": self._pos}

  def set_state(self, state):
    self._cancel()
    self._parent.set_state(state["parent"])
    self._next_record = int(state["next_record"])
    self._exhausted = False
    self._pos = int(state["handed_out"])
    self._current = self._pull(skip=self._pos)

  def _cancel(self):
    for chunk in (self._current, self._ahead):
      for future in (chunk.results if chunk is not None else ()):
        if future is not None:
          future.cancel()
    self._current = self._ahead = None

  # Held here: at interpreter exit (`__del__`) module globals may be None.
  _finalizing = staticmethod(sys.is_finalizing)

  def close(self):
    # At interpreter exit the pool's module is half torn down; its threads
    # end with the process.
    if not self._finalizing():
      self._cancel()
      if self._pool is not None:
        self._pool.shutdown(wait=False, cancel_futures=True)
    super().close()


class _Done:
  """A finished "future" (preprocessing without threads)."""

  def __init__(self, value):
    self._value = value

  def result(self):
    return self._value

  def cancel(self):
    pass


class ThreadedPreprocess(grain.IterDataset):
  """A stream preprocessed by a pool of threads, in stream order.

  Records are read from `parent` in chunks of `chunk`; while one chunk is
  handed out, the next one is read and preprocessed. Record i of the stream
  is preprocessed with its own rng (Philox keyed by (seed, i)) and the
  output keeps the stream order, so the result does not depend on the number
  of threads or on timing. PIL's decoding and resizing and numpy release the
  GIL, so the threads use several cores in one process (in the main process
  without grain workers, or inside each worker).

  Every record gives one element: failed ones come out as error records
  (None or `{"__error__": reason}` from `_safe`) for `_CountSkipped` to drop
  and count, in the training process.

  With grain workers, `Blocks` calls `keep_blocks(size, w, W)` on worker w's
  copy: it then reads the whole stream but preprocesses and hands out only
  the records of blocks w, w + W, ... (block k: records k * size ...
  (k + 1) * size - 1), which `Blocks` packs and grain interleaves round
  robin: the stream in its order, whatever W. (Reading, i.e. the tar
  bytes, is repeated by every worker; decoding and the rest of the pp, the
  costly part, are shared.)

  State: the parent's state before the chunk being handed out, that chunk's
  first record index and how many of its (this worker's) records were handed
  out. A restore re-reads the chunk and preprocesses only the records not
  yet handed out.

  Args:
    parent: a grain IterDataset of raw records.
    pp_fn: `fn(record, rng)`, e.g. `_safe(pp.build(...))`.
    seed: random-pp seed.
    threads: preprocessing threads (0 or 1: in the calling thread, one
      record at a time).
    chunk: records (of this worker's) read and preprocessed at a time.
  """

  def __init__(self, parent, pp_fn, *, seed, threads, chunk):
    super().__init__(parent)
    self._args = [pp_fn, seed, threads, chunk]
    self._records = (1, 0, 1)  # (block, start, step): this worker's share.

  def keep_blocks(self, size, start, step):
    """Keeps the records of blocks start, start + step, ... of `size`
    records (one grain worker's share; called by `Blocks`)."""
    self._records = (int(size), int(start), int(step))
    self._args[3] = int(size)  # A chunk is one block.

  def __iter__(self):
    return _ThreadedPreprocessIterator(self._parent.__iter__(), *self._args,
                                       self._records)

  def __str__(self):
    block, start, step = self._records
    return (f"ThreadedPreprocess(threads={self._args[2]}, "
            f"chunk={self._args[3]}, blocks of {block}: {start}::{step})")
