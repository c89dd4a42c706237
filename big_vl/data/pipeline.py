"""grain input pipelines: training stream and exact evaluation batches.

Training: this process's shard of a random-access source, shuffled with a
seed (reshuffled every epoch), preprocessed by a pp string, records that fail
(e.g. undecodable images) skipped and counted, batched to the per-process
batch, prefetched. The iterator's position is saved and restored through grain
checkpointing, so a resumed run sees exactly the batches it would have seen.

    it = make_train_iterator(source, pp="decode|value_range(-1,1)|...",
                             batch_size=64, seed=0)
    batch = next(it)   # {"image": f32[64,H,W,3], "text": i32[64,L],
                       #  "_skipped": i32[64]} (records skipped before each)

Evaluation: `eval_batches` visits every example exactly once, padded to
full batches with a `_mask`, the same number of batches on every process.
"""

import math

import grain
import jax
import numpy as np

from big_vl.data import pp as pp_lib

SKIPPED_KEY = "_skipped"
MASK_KEY = "_mask"


class _CountSkippedIterator(grain.DatasetIterator):
  """Drops None elements (failed records), counting them on the next element."""

  def __next__(self):
    skipped = 0
    while True:
      element = next(self._parent)
      if element is not None:
        element = dict(element)
        element[SKIPPED_KEY] = np.int32(skipped)
        return element
      skipped += 1

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class _CountSkipped(grain.IterDataset):
  """IterDataset version of `_CountSkippedIterator`."""

  def __iter__(self):
    return _CountSkippedIterator(self._parent.__iter__())


def _safe(fn):
  """Wraps a pp function so a CorruptRecordError gives None (skipped)."""

  def apply(example, rng=None):
    try:
      return fn(example, rng)
    except pp_lib.CorruptRecordError:
      return None

  return apply


def _process_shard(ds, process_index, process_count):
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if process_count > 1:
    ds = ds[process_index::process_count]
  return ds


def make_train_iterator(source, *, pp, batch_size, seed, num_epochs=None,
                        shuffle=True, workers=0, read_threads=4,
                        prefetch_buffer=4, process_index=None,
                        process_count=None):
  """Builds the training iterator over this process's shard of `source`.

  Args:
    source: random-access source (`len`, `[i]`) of example dicts.
    pp: pp string applied to each example (with a per-example rng).
    batch_size: examples per batch on this process (global / processes).
    seed: shuffling and random-pp seed.
    num_epochs: None repeats forever.
    shuffle: shuffle (differently each epoch).
    workers: grain worker processes (0: threads in this process).
    read_threads: threads reading and preprocessing in each process.
    prefetch_buffer: elements each thread reads ahead.
    process_index, process_count: default to JAX's.

  Returns:
    A grain DatasetIterator of batches (dicts of numpy arrays) with
    `get_state()` / `set_state()`; each batch has `_skipped`: how many failed
    records were dropped before each of its examples.
  """
  pp_fn = _safe(pp_lib.build(pp))
  ds = grain.MapDataset.source(source)
  ds = _process_shard(ds, process_index, process_count)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.random_map(pp_fn, seed=seed)
  ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=read_threads,
                        prefetch_buffer_size=prefetch_buffer),
      allow_nones=True)
  ds = _CountSkipped(ds)
  ds = ds.batch(batch_size, drop_remainder=True)
  if workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(ds)


def num_eval_batches(num_examples, batch_size, process_count):
  """Batches every process runs so each of its examples is seen once."""
  per_process = math.ceil(num_examples / process_count)
  return max(math.ceil(per_process / batch_size), 1)


def _padding_template(source, pp_fn, tries=64):
  """Zeros shaped like a preprocessed example (fills padding rows)."""
  for i in range(min(tries, len(source))):
    example = pp_fn(source[i], None)
    if example is not None:
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
    padding rows and for records that failed preprocessing). Every process
    yields the same number of batches.
  """
  process_index = jax.process_index() if process_index is None else \
      process_index
  process_count = jax.process_count() if process_count is None else \
      process_count
  n_batches = num_eval_batches(len(source), batch_size, process_count)
  pp_fn = _safe(pp_lib.build(pp))
  ds = grain.MapDataset.source(source)
  ds = ds[process_index::process_count] if process_count > 1 else ds
  ds = ds.map(lambda x: pp_fn(x, None))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads),
                          allow_nones=True)
  template = _padding_template(source, pp_fn)
  rows = []
  done = 0

  def emit(rows):
    mask = np.zeros([batch_size], bool)
    full = []
    for i in range(batch_size):
      row = rows[i] if i < len(rows) else None
      mask[i] = row is not None
      full.append(row if row is not None else template)
    batch = {k: np.stack([np.asarray(r[k]) for r in full]) for k in template}
    batch[MASK_KEY] = mask
    return batch

  for element in ds:
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
