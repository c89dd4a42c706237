"""grain input pipelines: training stream and exact evaluation batches.

Training: a source shuffled with a seed (reshuffled every epoch),
preprocessed by a pp string, records that fail (e.g. undecodable images,
missing files) skipped and counted by reason, batched to the per-process
batch, prefetched. The iterator's position is saved and restored through
grain checkpointing, so a resumed run sees exactly the batches it would have
seen. Sources may be random-access (`len`, `[i]`: tfds, jsonl, csv),
streaming (`grain.IterDataset`: wds) or a `sources.Mixture` of either.

Processes: a random-access source is shuffled, mixed and preprocessed as one
global stream (random pp ops draw from the record's global position), and
process p of P reads the p-th block of `batch_size` records out of every
`P * batch_size`. The global batch is therefore the same on any number of
processes: 2 processes x 4 devices train on the same batches as 1 x 8
(`ProcessBlocks`; exact while no record is skipped). Streaming sources are
split by shard files instead (`wds.py`).

Threads: `read_threads` threads preprocess in each process (in each grain
worker, if any): grain's read threads for random-access sources,
`ThreadedPreprocess` for streaming ones. PIL and numpy release the GIL, so
they use several cores even without worker processes; the batches are the
same for any number of threads.

Workers (`workers` grain processes): worker w of W preprocesses blocks w,
w + W, ... of `worker_block` consecutive records and hands each block over
at once (`pack`); grain interleaves them round robin, and the training
process unpacks them in stream order, then skips, counts and batches. So
the batches are the same for any number of workers too, and a run may
resume with another count (random-access sources).

Pieces: `skips.py` (failed records: reasons, error records, counts),
`threaded_pp.py` (a stream preprocessed on threads), `worker_blocks.py`
(grain workers' blocks of records).

    it = make_train_iterator(source, pp="decode|value_range(-1,1)|...",
                             batch_size=64, seed=0)
    batch = next(it)   # {"image": f32[64,H,W,3], "text": i32[64,L],
                       #  "_skipped": i32[64] (records skipped before each),
                       #  "_skipped_by_reason": i32[64, len(SKIP_REASONS)]}

Evaluation: `eval_batches` visits every example exactly once, padded to
full batches with a `_mask`, the same number of batches on every process;
a record that fails is masked out with its reason in `_skip_reason`, so
evaluators report it (`<evaluator>/<dataset>/skipped`).
"""

import math

import grain
import jax
import numpy as np

from big_vl.data import pp as pp_lib
from big_vl.data import skips
from big_vl.data import sources as sources_lib
from big_vl.data import threaded_pp
from big_vl.data import worker_blocks

# The skip bookkeeping (big_vl/data/skips.py), as the pipeline's callers
# name it: each batch's `_skipped` / `_skipped_by_reason`.
SKIPPED_KEY = skips.SKIPPED_KEY
SKIPPED_BY_REASON_KEY = skips.SKIPPED_BY_REASON_KEY
SKIP_REASONS = skips.SKIP_REASONS
reason_index = skips.reason_index
skipped_by_reason = skips.skipped_by_reason
ThreadedPreprocess = threaded_pp.ThreadedPreprocess
MASK_KEY = "_mask"
# Eval batches: int32[batch], the SKIP_REASONS index of a failed record's
# reason, -1 for used rows and padding.
SKIP_REASON_KEY = "_skip_reason"


def is_streaming(source):
  """Whether `source` (or a mixture component) is a grain IterDataset."""
  if isinstance(source, sources_lib.Mixture):
    return any(is_streaming(s) for s in source.sources)
  return isinstance(source, grain.IterDataset)


def num_examples(source):
  """Examples in one epoch of `source`, or None for streaming sources."""
  return None if is_streaming(source) else len(source)


def first_example(source, pp_fn, tries=16):
  """The first example of `source` that `pp_fn` preprocesses (for shapes).

  Args:
    source: random-access, streaming or Mixture source.
    pp_fn: `fn(example, rng)` from `pp.build`.
    tries: records to try before giving up.

  Returns:
    One preprocessed example dict.
  """
  if isinstance(source, sources_lib.Mixture):
    source = source.sources[0]
  if isinstance(source, grain.IterDataset):
    ds = source.configure(shuffle_buffer=0, process_index=0,
                          process_count=1) if hasattr(
                              source, "configure") else source
    records = iter(ds)
  else:
    records = (skips.SafeSource(source)[i] for i in range(len(source)))
  for _, record in zip(range(tries), records):
    out = skips.safe(pp_fn)(record, np.random.default_rng(0))
    if out is not None and skips.ERROR_KEY not in out:
      return out
  raise ValueError(f"None of the first {tries} training records could be "
                   "preprocessed; check the data and config.input.pp.")


def _process_index_count(process_index, process_count):
  """(index, count), each defaulting to JAX's."""
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


class ProcessBlocks(grain.MapDataset):
  """Process p's share of a global stream: block p of every P blocks.

  Element j of process p is element `(j // B) * B * P + p * B + j % B` of
  the parent, B being the block (the per-process batch). Consecutive
  per-process batches of all processes, stacked in process order, are
  consecutive global batches of the parent.

  Example (B = 2, P = 2): the parent 0 1 2 3 4 5 6 7 ... gives process 0
  the elements 0 1 4 5 ... and process 1 the elements 2 3 6 7 ...

  Args:
    parent: the global MapDataset.
    block: records per block (the per-process batch size).
    process_index: p.
    process_count: P.
  """

  _MUTATES_ELEMENT_SPEC = False

  def __init__(self, parent, block, process_index, process_count):
    super().__init__(parent)
    self._block = int(block)
    self._index = int(process_index)
    self._count = int(process_count)

  def __len__(self):
    return len(self._parent) // (self._block * self._count) * self._block

  def parent_index(self, j):
    """The parent position of this process's element j."""
    blocks, offset = divmod(j, self._block)
    return (blocks * self._count + self._index) * self._block + offset

  def __getitem__(self, j):
    if isinstance(j, slice):
      return self.slice(j)
    return self._parent[self.parent_index(j)]

  def _getitems(self, indices):
    return self._parent._getitems(  # pylint: disable=protected-access
        [self.parent_index(j) for j in indices])

  def __str__(self):
    return (f"ProcessBlocks(block={self._block}, process={self._index} of "
            f"{self._count})")


def remap_position(states, old_block, new_block):
  """This process's data position from one saved by another process count.

  With `ProcessBlocks`, every process of a run stands at the same global
  batch (without skipped records, exactly): saved local position k of block
  size B_old means ceil(k / B_old) global batches were read. The new process
  starts at the first global batch none of the old ones had started, so no
  record is read twice (and none is missed unless records were skipped).

  Args:
    states: the saved iterator states, one per old process, each
      `{"next_index": k}` (a random-access source read by threads).
    old_block: the per-process batch size of the run that saved them.
    new_block: this run's per-process batch size.

  Returns:
    The state to `set_state` on this process's new iterator.

  Raises:
    ValueError: for states of another form (streaming sources), which
      cannot be carried to another process count.
  """
  if not states or any(set(s) != {"next_index"} for s in states):
    raise ValueError(
        "The checkpoint's data position was saved by a different number of "
        "processes and cannot be carried over: only runs reading a "
        "random-access source can change their process count (streaming "
        "sources are split by shard; saved state keys: "
        f"{sorted(set().union(*map(set, states)))}). Resume with the "
        "original number of processes.")
  batches = max(-(-int(s["next_index"]) // old_block) for s in states)
  return {"next_index": batches * new_block}


def _map_component(source, seed, shuffle, num_epochs):
  ds = grain.MapDataset.source(skips.SafeSource(source))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  return ds.repeat(num_epochs)


def _iter_component(source, seed, shuffle, num_epochs, process_index,
                    process_count, shuffle_buffer, read_options):
  """A source as an IterDataset (streaming ones configured for this run;
  a random-access one in a streaming mixture: this process's `[p::P]`)."""
  if isinstance(source, grain.IterDataset):
    if hasattr(source, "configure"):
      kwargs = dict(seed=seed, num_epochs=num_epochs, shuffle_shards=shuffle,
                    process_index=process_index, process_count=process_count)
      if not shuffle:
        kwargs["shuffle_buffer"] = 0
      elif shuffle_buffer is not None:
        kwargs["shuffle_buffer"] = shuffle_buffer
      source = source.configure(**kwargs)
    return source
  ds = grain.MapDataset.source(skips.SafeSource(source))
  if process_count > 1:
    ds = ds[process_index::process_count]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  return ds.repeat(num_epochs).to_iter_dataset(read_options)


class _FromPosition(grain.DatasetIterator):
  """Batches of a random-access pipeline, restartable at any record.

  `make(start)` builds the iterator of batches that reads this process's
  stream from record `start` on. The position is counted here from the
  batches (each consumed `batch_size` records plus the `_skipped` ones), so
  the state, `{"next_index": records read}`, is the same for any number of
  grain workers, and `set_state` restarts the pipeline (and its workers) at
  that record: a run may resume with another `config.input.workers`.
  (`{"next_index": k}` is also the state grain's own iterator gave before,
  so older checkpoints restore.)
  """

  def __init__(self, make):
    super().__init__()
    self._make = make
    self._next_index = 0
    self._it = None

  def __next__(self):
    if self._it is None:
      self._it = self._make(self._next_index)
    batch = next(self._it)
    skipped = batch[SKIPPED_KEY]
    self._next_index += len(skipped) + int(skipped.sum())
    return batch

  def get_state(self):
    return {"next_index": self._next_index}

  def set_state(self, state):
    if set(state) != {"next_index"}:
      raise ValueError(
          "This data position (state keys: " + ", ".join(sorted(state)) +
          ") was saved by an older big_vl whose batches depended on "
          "config.input.workers; this version cannot continue that stream "
          "exactly. Finish the run with the version that started it, or "
          "start a new one.")
    self.close()
    self._next_index = int(state["next_index"])

  def close(self):
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None


def saved_workers(state):
  """Grain workers of the run that saved a streaming source's position
  (`make_train_iterator`'s state: ThreadedPreprocess's own state without
  workers, `worker_blocks.Unpack`'s over grain's interleave of W workers)."""
  blocks = state.get("blocks", state) if isinstance(state, dict) else {}
  if "iterators_in_use_states" in blocks:
    return len(blocks["iterators_in_use_states"])
  return 0


class _StreamIterator(grain.DatasetIterator):
  """A streaming pipeline's batches; `set_state` names a changed worker
  count instead of failing inside grain."""

  def __init__(self, it, workers):
    super().__init__()
    self._it, self._workers = it, workers

  def __next__(self):
    return next(self._it)

  def get_state(self):
    return self._it.get_state()

  def set_state(self, state):
    saved = saved_workers(state)
    if saved != self._workers:
      raise ValueError(
          f"The data position of this streaming source was saved with "
          f"config.input.workers={saved} and this run has {self._workers}: "
          "a stream's position holds one reader state per worker, so it "
          f"resumes only with the same count (set config.input.workers="
          f"{saved}; the batches are the same for any count).")
    self._it.set_state(state)

  def close(self):
    if hasattr(self._it, "close"):
      self._it.close()


def make_train_iterator(source, *, pp, batch_size, seed, num_epochs=None,
                        shuffle=True, workers=0, read_threads=4,
                        prefetch_buffer=4, process_index=None,
                        process_count=None, shuffle_buffer=None,
                        worker_block=worker_blocks.WORKER_BLOCK):
  """Builds the training iterator over this process's share of `source`.

  The batches depend on neither `workers` nor `read_threads`: workers and
  threads only preprocess records; which records form a batch (and which
  are skipped) is decided after them, in this process, in stream order.

  Args:
    source: random-access source (`len`, `[i]`) of example dicts, a streaming
      `grain.IterDataset` (e.g. `wds.WebDataset`), or a `sources.Mixture`.
    pp: pp string applied to each example (with a per-example rng).
    batch_size: examples per batch on this process (global / processes).
    seed: shuffling and random-pp seed (mixture component i uses seed + i).
    num_epochs: None repeats forever (per component for a mixture; a
      finite mixture stops when its first component runs out).
    shuffle: shuffle (differently each epoch).
    workers: grain worker processes (0: threads in this process). Worker w
      of W preprocesses blocks w, w + W, ... of `worker_block` records of
      this process's stream; grain hands them out round robin, i.e. in
      stream order.
    read_threads: threads preprocessing in each process (or worker): for
      random-access sources grain's read threads, for streaming ones
      `ThreadedPreprocess`.
    prefetch_buffer: elements each thread reads ahead.
    process_index, process_count: default to JAX's.
    shuffle_buffer: streaming sources' shuffle buffer size (None: theirs).
    worker_block: records per block a grain worker preprocesses and hands
      over at once (see `pack`); the batches do not depend on it.

  Returns:
    A grain DatasetIterator of batches (dicts of numpy arrays) with
    `get_state()` / `set_state()`; each batch has `_skipped`: how many failed
    records were dropped before each of its examples, and
    `_skipped_by_reason` (i32[batch, len(SKIP_REASONS)]): the same by reason.
    A random-access source's state is `{"next_index": records read}` for any
    `workers` (a run may resume with another count); a streaming source's
    holds one reader state per worker and resumes with the same count.
  """
  pp_fn = skips.safe(pp_lib.build(pp))
  read_options = grain.ReadOptions(num_threads=read_threads,
                                   prefetch_buffer_size=prefetch_buffer)
  components = source.sources if isinstance(
      source, sources_lib.Mixture) else [source]
  process_index, process_count = _process_index_count(process_index,
                                                      process_count)

  def finish(ds):
    """Workers (blocks of records), then, in this process, the records in
    stream order, skipped and counted, batched."""
    if workers > 0:
      ds = worker_blocks.Unpack(ds.mp_prefetch(
          grain.MultiprocessingOptions(num_workers=workers)))
    return skips.CountSkipped(ds).batch(batch_size, drop_remainder=True)

  if not is_streaming(source):
    parts = [_map_component(s, seed + i, shuffle, num_epochs)
             for i, s in enumerate(components)]
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(
        parts, source.weights)
    ds = ds.random_map(pp_fn, seed=seed)
    if process_count > 1:
      ds = ProcessBlocks(ds, batch_size, process_index, process_count)

    def make(start):
      records = ds[start:] if start else ds
      if workers > 0:  # One thread per worker reads blocks; each block's
        # records are preprocessed on `read_threads` threads.
        return iter(finish(worker_blocks.MapBlocks(records, worker_block, read_threads)
                           .to_iter_dataset(grain.ReadOptions(
                               num_threads=1, prefetch_buffer_size=1))))
      return iter(finish(records.to_iter_dataset(read_options)))

    return _FromPosition(make)
  common = dict(shuffle=shuffle, num_epochs=num_epochs,
                process_index=process_index, process_count=process_count)
  parts = [_iter_component(s, seed + i, shuffle_buffer=shuffle_buffer,
                           read_options=read_options, **common)
           for i, s in enumerate(components)]
  ds = parts[0] if len(parts) == 1 else grain.IterDataset.mix(
      parts, source.weights)
  ds = threaded_pp.ThreadedPreprocess(ds, pp_fn, seed=seed, threads=read_threads,
                          chunk=min(batch_size, threaded_pp.PREPROCESS_CHUNK))
  if workers > 0:
    ds = worker_blocks.Blocks(ds, worker_block)
  return _StreamIterator(iter(finish(ds)), workers)


def num_eval_batches(num_examples, batch_size, process_count):
  """Batches every process runs so each of its examples is seen once."""
  per_process = math.ceil(num_examples / process_count)
  return max(math.ceil(per_process / batch_size), 1)


def _padding_template(source, pp_fn, tries=64):
  """Zeros shaped like a preprocessed example (fills padding rows)."""
  for i in range(min(tries, len(source))):
    example = pp_fn(skips.SafeSource(source)[i], None)
    if example is not None and skips.ERROR_KEY not in example:
      return {k: np.zeros_like(np.asarray(v)) for k, v in example.items()}
  raise ValueError(f"None of the first {tries} records could be preprocessed;"
                   " check the data and the pp string.")


def eval_batches(source, *, pp, batch_size, process_index=None,
                 process_count=None, read_threads=4):
  """Yields padded batches covering every example of `source` exactly once.

  Args:
    source: random-access source.
    pp: deterministic pp string (applied with rng=None).
    batch_size: examples per batch on this process.
    process_index, process_count: default to JAX's.

  Yields:
    dicts of numpy arrays `[batch_size, ...]` plus `_mask` (bool; False for
    padding rows and for records that failed preprocessing) and
    `_skip_reason` (int32; the `SKIP_REASONS` index of a failed record's
    reason, -1 for other rows). Every process yields the same number of
    batches.
  """
  process_index, process_count = _process_index_count(process_index,
                                                      process_count)
  n_batches = num_eval_batches(len(source), batch_size, process_count)
  pp_fn = skips.safe(pp_lib.build(pp))
  ds = grain.MapDataset.source(skips.SafeSource(source))
  ds = ds[process_index::process_count] if process_count > 1 else ds
  ds = ds.map(lambda x: pp_fn(x, None))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads),
                          allow_nones=True)
  template = _padding_template(source, pp_fn)
  rows = []
  done = 0

  def emit(rows):
    mask = np.zeros([batch_size], bool)
    reasons = np.full([batch_size], -1, np.int32)
    full = []
    for i in range(batch_size):
      row = rows[i] if i < len(rows) else None
      if isinstance(row, int):  # A failed record: its reason's index.
        reasons[i], row = row, None
      mask[i] = row is not None
      full.append(row if row is not None else template)
    batch = {k: np.stack([np.asarray(r[k]) for r in full]) for k in template}
    batch[MASK_KEY] = mask
    batch[SKIP_REASON_KEY] = reasons
    return batch

  for element in ds:
    if element is None:
      rows.append(reason_index("decode"))
    elif skips.ERROR_KEY in element:
      rows.append(reason_index(element[skips.ERROR_KEY]))
    else:
      rows.append(element)
    if len(rows) == batch_size:
      yield emit(rows)
      done += 1
      rows = []
  if rows:
    yield emit(rows)
    done += 1
  while done < n_batches:
    yield emit([])
    done += 1
