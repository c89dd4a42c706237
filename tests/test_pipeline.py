"""pp ops and the grain pipelines on an in-memory source."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from big_vl.data import pipeline
from big_vl.data import pp as pp_lib
from big_vl.data import sources as sources_lib

PP = ("decode|resize(8)|value_range(-1,1)|choice(key='captions', out='text')|"
      "tokenize(max_len=8)|keep('image','text','id')")


def _png(value):
  buf = io.BytesIO()
  Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def _source(n, corrupt=()):
  return [{"image": b"not an image" if i in corrupt else _png(i),
           "captions": [f"shape number {i}".encode(), b"another caption"],
           "id": np.int32(i)} for i in range(n)]


def test_pp_string_builds_ops_in_order():
  fn = pp_lib.build(PP)
  out = fn(_source(3)[2], None)
  assert set(out) == {"image", "text", "id"}
  assert out["image"].shape == (8, 8, 3) and out["image"].dtype == np.float32
  np.testing.assert_allclose(out["image"], 2 * 2 / 255 - 1, rtol=1e-6)
  assert out["text"].shape == (8,) and out["text"].dtype == np.int32
  assert out["text"][0] == 49406 and 49407 in out["text"]
  with pytest.raises(KeyError, match="Unknown pp 'resise'"):
    pp_lib.build("decode|resise(3)")
  with pytest.raises(pp_lib.CorruptRecordError):
    pp_lib.build("decode")({"image": b"junk"}, None)


def test_train_iterator_skips_and_counts_corrupt_records():
  src = _source(20, corrupt={3, 11})
  it = pipeline.make_train_iterator(src, pp=PP, batch_size=6, seed=1,
                                    num_epochs=1)
  ids, skipped = [], 0
  for batch in it:
    ids.extend(batch["id"].tolist())
    skipped += int(batch[pipeline.SKIPPED_KEY].sum())
  # 18 good records -> 3 full batches; the 2 corrupt ones are counted.
  assert sorted(ids) == sorted(set(range(20)) - {3, 11})
  assert skipped == 2


def test_train_iterator_resumes_exactly():
  src = _source(30)
  make = lambda: pipeline.make_train_iterator(src, pp=PP, batch_size=4,
                                              seed=3)
  reference = make()
  ref_batches = [next(reference) for _ in range(12)]  # crosses 1 epoch
  it = make()
  for _ in range(5):
    next(it)
  state = it.get_state()
  resumed = make()
  resumed.set_state(state)
  for ref in ref_batches[5:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["id"], ref["id"])
    np.testing.assert_array_equal(got["text"], ref["text"])
  # Epochs are reshuffled, and each covers every record once.
  all_ids = np.concatenate([b["id"] for b in ref_batches])
  first, second = all_ids[:30], all_ids[30:48]
  assert sorted(first.tolist()) == list(range(30))
  assert not np.array_equal(second, first[:18])


def test_process_shards_are_disjoint():
  src = _source(16)
  seen = []
  for p in range(2):
    it = pipeline.make_train_iterator(src, pp=PP, batch_size=8, seed=0,
                                      num_epochs=1, process_index=p,
                                      process_count=2)
    seen.append(set(next(it)["id"].tolist()))
  assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(16))


def _global_batches(source, procs, global_batch, steps, pp):
  """The first `steps` global batches of a run with `procs` processes."""
  its = [pipeline.make_train_iterator(
      source, pp=pp, batch_size=global_batch // procs, seed=5,
      process_index=p, process_count=procs) for p in range(procs)]
  return [{k: np.concatenate([part[k] for part in parts])
           for k in parts[0] if not k.startswith("_")}
          for parts in ([next(it) for it in its] for _ in range(steps))]


@pytest.mark.parametrize("mixture", [False, True])
def test_global_batches_do_not_depend_on_the_process_count(mixture):
  # Random pp (flip) draws from the record's global position, so the
  # images match too; 7 steps of 8 cross the 20-record epochs.
  src = _source(20)
  if mixture:
    src = sources_lib.Mixture([src, _source(13)], [0.7, 0.3], ["a", "b"])
  pp = "decode|resize(4)|flip_lr|value_range(0,1)|keep('image','id')"
  one = _global_batches(src, 1, 8, 7, pp)
  for procs in (2, 4):
    many = _global_batches(src, procs, 8, 7, pp)
    for a, b in zip(one, many):
      np.testing.assert_array_equal(a["id"], b["id"])
      np.testing.assert_array_equal(a["image"], b["image"])


def _take(source, workers, steps, state=None, **kwargs):
  """`steps` batches of a 4-record-batch iterator with `workers` grain
  workers (from `state`, if given), and its state after them."""
  # Blocks of 3 records per worker: batches of 4 straddle workers.
  it = pipeline.make_train_iterator(source, batch_size=4, seed=3,
                                    workers=workers, worker_block=3, **kwargs)
  try:
    if state is not None:
      it.set_state(json.loads(json.dumps(state)))  # As a checkpoint has it.
    return [next(it) for _ in range(steps)], it.get_state()
  finally:
    it.close()


def _assert_same_batches(got, want):
  assert len(got) == len(want)
  for a, b in zip(got, want):
    assert set(a) == set(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# Random pp (flip) and failed records: what the batches hold, their images
# and the skip counts must not depend on the worker count.
WORKER_PP = "decode|resize(4)|flip_lr|value_range(0,1)|keep('image','id')"


def test_batches_do_not_depend_on_the_worker_count():
  # 9 batches of 4 cross the 30-record epoch (4 of them corrupt) into the
  # reshuffled second one. Grain's worker w of W preprocesses blocks w::W
  # (of 3 records here); records used to be batched inside each worker
  # (batch 0 of W=2 held records 0, 2, 4, 6 of the stream).
  src = _source(30, corrupt={2, 7, 8, 19})
  ref, ref_state = _take(src, 0, 9, pp=WORKER_PP)
  assert sum(int(b[pipeline.SKIPPED_KEY].sum()) for b in ref) >= 4
  for workers in (1, 2, 3):
    got, state = _take(src, workers, 9, pp=WORKER_PP)
    _assert_same_batches(got, ref)
    assert state == ref_state  # {"next_index": records read}, for any W


@pytest.mark.slow
def test_resume_with_another_worker_count_continues_exactly():
  # A random-access source's position is the same for any worker count, so
  # a run may resume with more or fewer workers (or none).
  src = _source(30, corrupt={2, 7, 8, 19})
  ref, _ = _take(src, 0, 10, pp=WORKER_PP)
  for saved_with, resumed_with, at in ((2, 3, 4), (3, 0, 6), (0, 2, 7)):
    _, state = _take(src, saved_with, at, pp=WORKER_PP)
    got, _ = _take(src, resumed_with, 10 - at, state=state, pp=WORKER_PP)
    _assert_same_batches(got, ref[at:])


def test_remap_position_continues_at_the_next_global_batch():
  src = _source(40)
  pp = "keep('id')"
  reference = _global_batches(src, 1, 8, 6, pp)
  # 2 processes read 3 global batches, then 4 processes resume.
  old = [pipeline.make_train_iterator(src, pp=pp, batch_size=4, seed=5,
                                      process_index=p, process_count=2)
         for p in range(2)]
  for it in old:
    for _ in range(3):
      next(it)
  states = [it.get_state() for it in old]
  new = []
  for p in range(4):
    it = pipeline.make_train_iterator(src, pp=pp, batch_size=2, seed=5,
                                      process_index=p, process_count=4)
    it.set_state(pipeline.remap_position(states, 4, 2))
    new.append(it)
  for ref in reference[3:]:
    got = np.concatenate([next(it)["id"] for it in new])
    np.testing.assert_array_equal(got, ref["id"])
  with pytest.raises(ValueError, match="only runs reading a random-access"):
    pipeline.remap_position([{"workers_state": {}}], 4, 2)


@pytest.mark.parametrize("n,batch,procs", [(10, 4, 1), (10, 4, 2), (3, 4, 2),
                                           (8, 4, 2)])
def test_eval_batches_cover_every_example_once(n, batch, procs):
  src = _source(n, corrupt={1})
  pp = "decode|value_range(0,1)|keep('image','id')"
  per_process = [list(pipeline.eval_batches(src, pp=pp, batch_size=batch,
                                            process_index=p,
                                            process_count=procs))
                 for p in range(procs)]
  assert len({len(b) for b in per_process}) == 1  # same count everywhere
  ids = [i for batches in per_process for b in batches
         for i, m in zip(b["id"], b[pipeline.MASK_KEY]) if m]
  assert sorted(ids) == [i for i in range(n) if i != 1]
  # The failed record is not just masked out: its reason comes with it.
  reasons = [r for batches in per_process for b in batches
             for r in b[pipeline.SKIP_REASON_KEY] if r >= 0]
  assert reasons == [pipeline.reason_index("decode")]
  for batches in per_process:
    for b in batches:
      assert b["image"].shape[0] == batch
