"""Records that cannot be used: their reasons, error records and counts.

A pp op or a source that cannot use a record raises `pp.CorruptRecordError`
(or returns None); `safe` / `SafeSource` turn that into an error record
`{"__error__": reason}`, so every record gives an element and nothing is
lost silently. `CountSkipped` drops the error records of a stream and
attaches to each good element how many were dropped before it, by reason
(`_skipped`, `_skipped_by_reason`); the trainer sums them into
`data/skipped/<reason>`.
"""

import grain
import numpy as np

from big_vl.data import pp as pp_lib
from big_vl.data import wds as wds_lib

SKIPPED_KEY = "_skipped"


SKIPPED_BY_REASON_KEY = "_skipped_by_reason"


# Reasons counted separately; any other reason is counted as "other".
# "decode", "missing_image", "missing_text", "decode_text" come from pp ops,
# "missing_file" from jsonl/csv sources, "read_error" from unreadable shards,
# "bad_caption" (null / empty / whitespace-only caption, `pp.caption_text`)
# from every source's caption field and from `tokenize`, "bad_record" from a
# jsonl line that is not a JSON object.
SKIP_REASONS = ("decode", "missing_file", "missing_image", "missing_text",
                "decode_text", "bad_caption", "read_error", "bad_record",
                "other")


ERROR_KEY = wds_lib.ERROR_KEY


def reason_index(reason):
  """Position of `reason` in SKIP_REASONS ("other" if unknown)."""
  try:
    return SKIP_REASONS.index(reason)
  except ValueError:
    return SKIP_REASONS.index("other")


def skipped_by_reason(batch_counts):
  """{reason: int} from summed `_skipped_by_reason` rows ([..., R] array)."""
  counts = np.asarray(batch_counts).reshape(-1, len(SKIP_REASONS)).sum(0)
  return {r: int(c) for r, c in zip(SKIP_REASONS, counts)}


def _count_or_tag(element, counts):
  """A failed record (None: reason "decode", or `{"__error__": reason}`) is
  counted in `counts` (int32[len(SKIP_REASONS)], updated in place) and gives
  None; a good one is returned with the counts so far attached as
  `_skipped` / `_skipped_by_reason`."""
  if element is None:
    counts[reason_index("decode")] += 1
    return None
  if isinstance(element, dict) and ERROR_KEY in element:
    counts[reason_index(element[ERROR_KEY])] += 1
    return None
  element = dict(element)
  element[SKIPPED_KEY] = np.int32(counts.sum())
  element[SKIPPED_BY_REASON_KEY] = counts
  return element


class _CountSkippedIterator(grain.DatasetIterator):
  """Drops failed records, counting them (by reason) on the next element.

  A failed record is None (reason "decode") or a dict with `__error__`.
  """

  def __next__(self):
    counts = np.zeros([len(SKIP_REASONS)], np.int32)
    while True:
      element = _count_or_tag(next(self._parent), counts)
      if element is not None:
        return element

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


class CountSkipped(grain.IterDataset):
  """Drops a stream's error records, counting them on the next element
  (`_CountSkippedIterator`)."""

  def __iter__(self):
    return _CountSkippedIterator(self._parent.__iter__())


def _error(e):
  return {ERROR_KEY: str(getattr(e, "reason", "decode"))}


def safe(fn):
  """Wraps a pp function: a CorruptRecordError, or None from `fn` or the
  source, gives an error record `{"__error__": reason}` (skipped and
  counted; None's reason is "decode"); error records pass through. Every
  record gives an element, so that grain workers' outputs line up."""

  def apply(example, rng=None):
    if example is None:
      return {ERROR_KEY: "decode"}
    if isinstance(example, dict) and ERROR_KEY in example:
      return example
    try:
      out = fn(example, rng)
    except pp_lib.CorruptRecordError as e:
      return _error(e)
    return {ERROR_KEY: "decode"} if out is None else out

  return apply


class SafeSource:
  """A random-access source whose failing reads become error records."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    try:
      return self._source[i]
    except pp_lib.CorruptRecordError as e:
      return _error(e)

  def __repr__(self):
    return f"SafeSource({self._source!r})"
