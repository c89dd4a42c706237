"""Sources (wds, jsonl, csv, tfds errors), mixtures, exact resume, skip reasons."""

import collections
import contextlib
import io
import json
import logging
import os
import re
import tarfile

from absl import logging as absl_logging
import numpy as np
import pytest
from PIL import Image

from big_vl.data import pipeline
from big_vl.data import sources
from big_vl.data import wds

FORMATS = (("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"))
KEYS_PP = "keep('__key__', '__url__')"


def _image(value, fmt="PNG", size=8):
  buf = io.BytesIO()
  Image.fromarray(np.full((size, size, 3), value % 256, np.uint8)).save(
      buf, fmt)
  return buf.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _write_shards(folder, num_shards, per_shard, *, extra=None):
  """Writes shards `shard-{000..N-1}.tar`; returns {key: (ext, bytes, text)}.

  `extra(tar, shard)` may add more members at the start of a shard.
  """
  written = {}
  for s in range(num_shards):
    with tarfile.open(os.path.join(folder, f"shard-{s:03d}.tar"), "w") as tar:
      if extra:
        extra(tar, s)
      for i in range(per_shard):
        key = f"{s:03d}{i:04d}"
        ext, fmt = FORMATS[(s + i) % 3]
        img = _image(s * per_shard + i, fmt)
        text = f"caption {s} {i} é"
        _add(tar, f"{key}.{ext}", img)
        _add(tar, f"{key}.txt", text.encode())
        if i % 2 == 0:
          _add(tar, f"{key}.json", json.dumps({"i": i}).encode())
        written[key] = (ext, img, text)
  return written, os.path.join(folder, f"shard-{{000..{num_shards - 1:03d}}}.tar")


def test_shard_pattern_is_lazy_and_ordered():
  p = wds.ShardPattern("gs://b/x-{000000..999999}-{a,b}.tar::/l/y{1..3}.tar")
  assert len(p) == 2_000_003
  assert p[0] == "gs://b/x-000000-a.tar" and p[3] == "gs://b/x-000001-b.tar"
  assert p[1_999_999] == "gs://b/x-999999-b.tar" and p[2_000_002] == "/l/y3.tar"
  with pytest.raises(IndexError):
    p[len(p)]
  assert sources.get("wds:gs://b/s-{0..9}.tar?shuffle_buffer=7").shuffle_buffer == 7


def test_wds_reads_back_exactly(tmp_path):
  written, pattern = _write_shards(tmp_path, 3, 4)
  ds = sources.get(f"wds:{pattern}").configure(
      shuffle_buffer=0, shuffle_shards=False, num_epochs=1, process_count=1,
      process_index=0)
  got = list(ds)
  assert [g["__key__"] for g in got] == sorted(written)
  for g in got:
    ext, img, text = written[g["__key__"]]
    assert g["image"] == img and g["text"] == g["caption"] == text
    assert g["__url__"].endswith(f"shard-{g['__key__'][:3]}.tar")
    i = int(g["__key__"][3:])
    assert g["json"] == ({"i": i} if i % 2 == 0 else None)
  assert wds.count_samples(pattern) == 12


def _keys(batches):
  return [k for b in batches for k in b["__key__"].tolist()]


@pytest.mark.slow
def test_wds_splits_over_processes_and_workers_without_overlap(tmp_path):
  written, pattern = _write_shards(tmp_path, 8, 3)
  seen = []
  for p in range(2):
    it = pipeline.make_train_iterator(
        sources.get(f"wds:{pattern}"), pp=KEYS_PP, batch_size=1, seed=0,
        num_epochs=1, workers=2, process_index=p, process_count=2)
    seen.append(_keys(it))
  assert len(seen[0]) == len(seen[1]) == 12
  assert set(seen[0]).isdisjoint(seen[1])
  assert sorted(seen[0] + seen[1]) == sorted(written)
  # Process 0 reads shards 0, 2, 4, 6 only.
  assert {k[:3] for k in seen[0]} == {"000", "002", "004", "006"}


@pytest.mark.parametrize("buffer,stops", [(0, (1, 6)), (7, (2, 5, 9, 13))])
def test_wds_resumes_on_the_exact_next_batch(tmp_path, buffer, stops):
  written, pattern = _write_shards(tmp_path, 4, 5)
  make = lambda: pipeline.make_train_iterator(
      sources.get(f"wds:{pattern}"), pp=KEYS_PP, batch_size=3, seed=5,
      shuffle_buffer=buffer, process_index=0, process_count=1)
  ref_it = make()
  ref = [next(ref_it) for _ in range(16)]  # 48 samples: 2.4 epochs of 20
  keys = _keys(ref)
  if not buffer:
    assert sorted(keys[:20]) == sorted(written)  # an epoch is a permutation
    assert keys[:20] != keys[20:40]  # the next one is in another order
  else:  # The buffer mixes samples across the epoch boundary.
    assert set(keys[:40]) == set(written) and keys[:20] != sorted(keys[:20])
    assert max(collections.Counter(keys[:40]).values()) <= 3
  for stop in stops:
    it = make()
    for _ in range(stop):
      next(it)
    state = json.loads(json.dumps(it.get_state()))  # as in a checkpoint
    resumed = make()
    resumed.set_state(state)
    for want in ref[stop:]:
      got = next(resumed)
      assert got["__key__"].tolist() == want["__key__"].tolist(), stop


def _shards_with_bad_images(folder, num_shards, per_shard, bad_every):
  """Shards of 16x16 PNGs of distinct content; every `bad_every`-th sample's
  image bytes do not decode. Returns (pattern, number of bad samples)."""
  bad = 0
  for s in range(num_shards):
    with tarfile.open(folder / f"bad-{s}.tar", "w") as tar:
      for i in range(per_shard):
        n = s * per_shard + i
        if n % bad_every == bad_every - 1:
          data, bad = b"not an image", bad + 1
        else:
          rng = np.random.default_rng(n)
          buf = io.BytesIO()
          Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(
              buf, "PNG")
          data = buf.getvalue()
        _add(tar, f"{n:05d}.png", data)
        _add(tar, f"{n:05d}.txt", f"sample {n}".encode())
  return str(folder / f"bad-{{0..{num_shards - 1}}}.tar"), bad


def test_threaded_preprocessing_is_independent_of_threads_and_resumes(
    tmp_path):
  # Random pp ops, undecodable records dropped in between: batches straddle
  # the chunks the threads work on, and a restore lands inside a chunk.
  pattern, bad = _shards_with_bad_images(tmp_path, 3, 7, bad_every=4)
  pp = ("decode|random_resized_crop(8, scale=(0.3, 1.0))|flip_lr|"
        "keep('image','__key__')")
  make = lambda threads: pipeline.make_train_iterator(
      sources.get(f"wds:{pattern}"), pp=pp, batch_size=3, seed=4,
      shuffle_buffer=5, read_threads=threads, process_index=0,
      process_count=1)
  runs = {}
  for threads in (0, 1, 3):
    it = make(threads)
    runs[threads] = [next(it) for _ in range(10)]  # 30 of 16 good per epoch
  ref = runs[0]
  for threads in (1, 3):
    for want, got in zip(ref, runs[threads]):
      assert got["__key__"].tolist() == want["__key__"].tolist()
      np.testing.assert_array_equal(got["image"], want["image"])
  keys = [k for b in ref for k in b["__key__"].tolist()]
  assert len(set(keys)) == 16  # every good sample, bad ones counted:
  counts = pipeline.skipped_by_reason(np.concatenate(
      [b[pipeline.SKIPPED_BY_REASON_KEY] for b in ref]))
  assert counts["decode"] >= bad and sum(counts.values()) == counts["decode"]
  # The random crops differ between epochs of the same sample.
  first = {}
  for b in ref:
    for k, img in zip(b["__key__"].tolist(), b["image"]):
      first.setdefault(k, []).append(img)
  assert any(not np.array_equal(*v[:2]) for v in first.values() if len(v) > 1)
  for stop in (1, 4, 7):
    it = make(3)
    for _ in range(stop):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    assert state  # restorable from JSON, as in a checkpoint
    resumed = make(3)
    resumed.set_state(state)
    for want in ref[stop:]:
      got = next(resumed)
      assert got["__key__"].tolist() == want["__key__"].tolist(), stop
      np.testing.assert_array_equal(got["image"], want["image"])
      np.testing.assert_array_equal(got[pipeline.SKIPPED_BY_REASON_KEY],
                                    want[pipeline.SKIPPED_BY_REASON_KEY])


def _caption_files(folder, n, *, missing=(), corrupt=()):
  """Images img/i.png (+ list files) with some missing / corrupt entries."""
  os.makedirs(folder / "img", exist_ok=True)
  rows = []
  for i in range(n):
    name = f"img/{i}.png"
    if i not in missing:
      data = b"not an image" if i in corrupt else _image(i)
      (folder / name).write_bytes(data)
    rows.append((name, f"picture {i}, with a comma"))
  with open(folder / "pairs.jsonl", "w") as f:
    for name, cap in rows:
      f.write(json.dumps({"image": name, "caption": cap}) + "\n")
  with open(folder / "pairs.tsv", "w") as f:
    f.write("filepath\ttitle\n")
    for name, cap in rows:
      f.write(f"{folder / name}\t{cap}\n")  # absolute paths
  return rows


def test_jsonl_and_csv_read_back_and_count_skips_by_reason(tmp_path):
  rows = _caption_files(tmp_path, 10, missing={2}, corrupt={7})
  for spec in (f"jsonl:{tmp_path}/pairs.jsonl",
               f"csv:{tmp_path}/pairs.tsv?sep=\\t"):
    src = sources.get(spec)
    assert len(src) == 10
    assert src[4]["caption"] == rows[4][1]
    assert src[4]["image"] == (tmp_path / "img/4.png").read_bytes()
    with pytest.raises(pipeline.pp_lib.CorruptRecordError) as e:
      src[2]  # pylint: disable=pointless-statement
    assert e.value.reason == "missing_file"
    it = pipeline.make_train_iterator(
        src, pp="decode|keep('image','caption')", batch_size=4, seed=0,
        num_epochs=1, shuffle=False)  # failures precede the last good one
    captions, by_reason = [], collections.Counter()
    for batch in it:
      captions += batch["caption"].tolist()
      by_reason.update(pipeline.skipped_by_reason(
          batch[pipeline.SKIPPED_BY_REASON_KEY]))
      assert (batch[pipeline.SKIPPED_KEY] == batch[
          pipeline.SKIPPED_BY_REASON_KEY].sum(-1)).all()
    assert len(captions) == 8 and len(set(captions)) == 8
    assert rows[2][1] not in captions and rows[7][1] not in captions
    assert by_reason["missing_file"] == 1 and by_reason["decode"] == 1
    assert sum(by_reason.values()) == 2
  with pytest.raises(ValueError, match="separator"):
    sources.get(f"csv:{tmp_path}/pairs.tsv")  # ',' finds no such columns


@contextlib.contextmanager
def _absl_warnings():
  """The messages absl logs at WARNING or above inside the block (however
  earlier tests set absl's verbosity and propagation)."""
  messages = []
  handler = logging.Handler(logging.WARNING)
  handler.emit = lambda record: messages.append(record.getMessage())
  logger = logging.getLogger("absl")
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.WARNING)
  logger.addHandler(handler)
  try:
    yield messages
  finally:
    logger.removeHandler(handler)
    absl_logging.set_verbosity(verbosity)


def test_malformed_jsonl_lines_are_skipped_and_counted_by_line(tmp_path):
  rows = _caption_files(tmp_path, 6)
  lines = (tmp_path / "pairs.jsonl").read_text().splitlines()
  lines[1] = lines[1][:-5]           # a cut line (line 2)
  lines.insert(4, "")                # a blank line is just skipped
  lines.insert(5, "[1, 2]")          # a JSON array, not an object (line 6)
  (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
  with _absl_warnings() as warnings:
    src = sources.get(f"jsonl:{tmp_path}/pairs.jsonl")
  assert "2 of 7 lines are not JSON objects" in warnings[0]
  assert "line 2:" in warnings[0]
  assert len(src) == 7
  with pytest.raises(pipeline.pp_lib.CorruptRecordError,
                     match=r"pairs.jsonl line 6 is not a JSON object: a JSON "
                     r"list") as e:
    src[4]  # pylint: disable=pointless-statement
  assert e.value.reason == "bad_record"
  it = pipeline.make_train_iterator(
      src, pp="decode|keep('image','caption')", batch_size=1, seed=0,
      num_epochs=1, shuffle=False)
  captions, by_reason = [], collections.Counter()
  for batch in it:
    captions += batch["caption"].tolist()
    by_reason.update(pipeline.skipped_by_reason(
        batch[pipeline.SKIPPED_BY_REASON_KEY]))
  assert captions == [rows[i][1] for i in (0, 2, 3, 4, 5)]
  assert +by_reason == {"bad_record": 2}
  (tmp_path / "all_bad.jsonl").write_text("image,caption\nimg/0.png,a\n")
  with pytest.raises(ValueError, match=r"all_bad.jsonl: no line is a JSON "
                     r"object \(line 1: .*is it a JSONL file\?"):
    sources.get(f"jsonl:{tmp_path}/all_bad.jsonl")


def test_a_spec_without_a_kind_suggests_one():
  for spec, want in (("/d/pairs.jsonl", "jsonl:/d/pairs.jsonl"),
                     ("/d/pairs.csv", "csv:/d/pairs.csv"),
                     ("/d/pairs.tsv", "csv:/d/pairs.tsv?sep=\\t"),
                     ("/d/{000..009}.tar", "wds:/d/{000..009}.tar"),
                     ("mnist", "tfds:mnist")):
    with pytest.raises(ValueError, match=re.escape(
        f"Data spec {spec!r} needs a kind, e.g. '{want}'")):
      sources.get(spec)


def _labelled(n, label):
  return [{"id": np.int32(i), "src": np.int32(label)} for i in range(n)]


def test_mixture_proportions_determinism_and_resume(tmp_path):
  spec_a, spec_b = "mem:a", "mem:b"
  data = {"a": _labelled(50, 0), "b": _labelled(30, 1)}
  sources.registry.get("source", "tfds")  # load built-ins
  sources.registry._TABLES["source"]["mem"] = (  # pylint: disable=protected-access
      lambda name, **kw: data[name])
  try:
    mix = sources.get({spec_a: 3.0, spec_b: 1.0}, split="train")
    assert mix.weights == [0.75, 0.25]
    make = lambda: pipeline.make_train_iterator(
        mix, pp="keep('id','src')", batch_size=10, seed=1)
    ref_it = make()
    ref = [next(ref_it) for _ in range(100)]
    frac = np.mean(np.concatenate([b["src"] for b in ref]))
    assert abs(frac - 0.25) < 0.02
    again = make()
    for want in ref[:5]:
      np.testing.assert_array_equal(next(again)["id"], want["id"])
    it = make()
    for _ in range(7):
      next(it)
    resumed = make()
    resumed.set_state(json.loads(json.dumps(it.get_state())))
    for want in ref[7:12]:
      got = next(resumed)
      np.testing.assert_array_equal(got["id"], want["id"])
      np.testing.assert_array_equal(got["src"], want["src"])
  finally:
    del sources.registry._TABLES["source"]["mem"]  # pylint: disable=protected-access


def test_streaming_mixture_with_random_access_source_resumes(tmp_path):
  _, pattern = _write_shards(tmp_path, 2, 5)
  _caption_files(tmp_path, 6)
  mix = sources.get([(f"wds:{pattern}", 1), (f"jsonl:{tmp_path}/pairs.jsonl",
                                             1)])
  assert pipeline.is_streaming(mix) and pipeline.num_examples(mix) is None
  make = lambda: pipeline.make_train_iterator(
      mix, pp="keep('caption')", batch_size=4, seed=2, shuffle_buffer=3,
      process_index=0, process_count=1)
  ref_it = make()
  ref = [next(ref_it)["caption"].tolist() for _ in range(8)]
  flat = [c for b in ref for c in b]
  assert sum(c.startswith("picture") for c in flat) == 16
  it = make()
  for _ in range(3):
    next(it)
  resumed = make()
  resumed.set_state(json.loads(json.dumps(it.get_state())))
  assert [next(resumed)["caption"].tolist() for _ in range(5)] == ref[3:]


def test_wds_bad_samples_are_counted_by_reason(tmp_path):
  def extra(tar, s):
    if s == 1:
      _add(tar, "bad1.txt", b"caption without image")
      _add(tar, "bad2.png", b"garbage bytes")
      _add(tar, "bad2.txt", b"x")
      _add(tar, "bad3.png", _image(1))
  _, pattern = _write_shards(tmp_path, 2, 3, extra=extra)
  with open(tmp_path / "shard-000.tar", "r+b") as f:
    f.truncate(512 + 300)  # cut inside the first image's data
  # In order (shard 0, then 1), so that every failure precedes a good record
  # (failures after the last good record of a finite run are not reported).
  it = pipeline.make_train_iterator(
      sources.get(f"wds:{pattern}"), pp="decode|keep('image','text')",
      batch_size=1, seed=0, num_epochs=1, process_index=0, process_count=1,
      shuffle=False)
  counts = collections.Counter()
  good = 0
  for batch in it:
    good += 1
    counts.update(pipeline.skipped_by_reason(
        batch[pipeline.SKIPPED_BY_REASON_KEY]))
  assert good == 3  # the 3 of shard 1
  assert counts["missing_image"] == 1 and counts["missing_text"] == 1
  assert counts["read_error"] == 1 and counts["decode"] == 1


def test_wds_with_no_readable_shard_fails_instead_of_spinning(tmp_path):
  # A wrong pattern (or unreadable bucket) must not loop forever on
  # read_error records in an endless run: the first empty epoch raises.
  ds = sources.get(f"wds:{tmp_path}/missing-{{0..2}}.tar")
  it = pipeline.make_train_iterator(ds, pp="decode|keep('image','text')",
                                    batch_size=2, seed=0, process_index=0,
                                    process_count=1)
  with pytest.raises(ValueError, match="no readable samples"):
    next(it)


def test_tfds_tfrecord_dataset_gets_a_clear_error(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class TinyPairs(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"caption": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(3):
        yield i, {"caption": f"c{i}"}

  builder = TinyPairs(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  assert len(sources.get("tfds:tiny_pairs", split="train",
                         data_dir=str(tmp_path))) == 3
  info_path = builder.data_path / "dataset_info.json"
  info = json.loads(info_path.read_text())
  info["fileFormat"] = "tfrecord"
  info_path.write_text(json.dumps(info))
  with pytest.raises(ValueError, match=r"prepared as 'tfrecord'.*"
                     r"--file_format=array_record"):
    sources.get("tfds:tiny_pairs:train", data_dir=str(tmp_path))


@pytest.mark.slow
def test_wds_resumes_exactly_with_grain_workers(tmp_path):
  _, pattern = _write_shards(tmp_path, 4, 4)
  make = lambda: pipeline.make_train_iterator(
      sources.get(f"wds:{pattern}"), pp=KEYS_PP, batch_size=2, seed=1,
      shuffle_buffer=3, workers=2, process_index=0, process_count=1)
  ref_it = make()
  ref = [next(ref_it)["__key__"].tolist() for _ in range(12)]  # 1.5 epochs
  it = make()
  for _ in range(5):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  resumed = make()
  resumed.set_state(state)
  assert [next(resumed)["__key__"].tolist() for _ in range(7)] == ref[5:]


def _wds_take(pattern, workers, steps, state=None):
  """`steps` batches of a shuffled wds stream with random pp and `workers`
  grain workers (from `state`, if given), and the state after them."""
  it = pipeline.make_train_iterator(
      sources.get(f"wds:{pattern}?shuffle_buffer=5"),
      pp="decode|resize(8)|flip_lr|value_range(0,1)|keep('image','__key__')",
      batch_size=4, seed=2, workers=workers, process_index=0,
      process_count=1, worker_block=3)  # batches straddle workers' blocks
  try:
    if state is not None:
      it.set_state(json.loads(json.dumps(state)))
    return [next(it) for _ in range(steps)], it.get_state()
  finally:
    it.close()


def test_wds_batches_do_not_depend_on_the_worker_count(tmp_path):
  # 3 shards x 7 samples, sample 0 of each undecodable: 8 batches of 4
  # cross into the third epoch. Workers used to take whole shards each, so
  # their batches came from other samples.
  pattern = _shape_shards(tmp_path, 3, 7)
  ref, _ = _wds_take(pattern, 0, 8)
  assert sum(int(b[pipeline.SKIPPED_KEY].sum()) for b in ref) >= 6
  for workers in (1, 2, 3):
    got, _ = _wds_take(pattern, workers, 8)
    for a, b in zip(got, ref):
      assert a["__key__"].tolist() == b["__key__"].tolist()
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a[pipeline.SKIPPED_BY_REASON_KEY],
                                    b[pipeline.SKIPPED_BY_REASON_KEY])


@pytest.mark.slow
def test_wds_resumes_with_its_worker_count_and_names_a_changed_one(tmp_path):
  pattern = _shape_shards(tmp_path, 3, 7)
  ref, _ = _wds_take(pattern, 0, 8)
  for workers, at in ((2, 3), (3, 5)):
    _, state = _wds_take(pattern, workers, at)
    got, _ = _wds_take(pattern, workers, 8 - at, state=state)
    assert [b["__key__"].tolist() for b in got] == [
        b["__key__"].tolist() for b in ref[at:]]
  _, state = _wds_take(pattern, 2, 3)
  with pytest.raises(ValueError, match=r"saved with config.input.workers=2 "
                     r"and this run has 3.*set config.input.workers=2"):
    _wds_take(pattern, 3, 1, state=state)


def _shape_shards(folder, num_shards, per_shard):
  """Demo-like shards: coloured squares with captions; sample 0 of each
  shard has undecodable image bytes."""
  colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
  names = sorted(colours)
  for s in range(num_shards):
    with tarfile.open(folder / f"part-{s:02d}.tar", "w") as tar:
      for i in range(per_shard):
        name = names[(s + i) % 3]
        img = np.zeros((32, 32, 3), np.uint8)
        img[4 + i % 8:20 + i % 8, 6:22] = colours[name]
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "PNG")
        _add(tar, f"{s:02d}{i:03d}.png", b"junk" if i == 0 else buf.getvalue())
        _add(tar, f"{s:02d}{i:03d}.txt", f"a {name} square".encode())
  return str(folder / f"part-{{00..{num_shards - 1:02d}}}.tar")


@pytest.mark.slow
def test_trainer_runs_on_wds_and_logs_skips_by_reason(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from big_vl import train as train_lib  # pylint: disable=g-import-not-at-top
  pattern = _shape_shards(tmp_path, 4, 20)
  config = config_lib.load_config_module("configs/demo.py").get_config(
      "runlocal")
  config.evals = ml_collections.ConfigDict()
  config.log_steps = 1
  config.total_steps = 2
  config.warmup_steps = 0
  config.input.data = f"wds:{pattern}"
  config.input.shuffle = False  # shards and samples in order
  config.input.pp = ("decode|resize(32)|value_range(-1,1)|"
                     f"tokenize(max_len={config.model.text.max_len})|"
                     "keep('image','text')")
  # Stopped after step 1 and resumed: the counts go on from the checkpoint.
  first = train_lib.train(config, str(tmp_path / "wd"), stop_after_steps=1)
  assert first["step"] == 1
  assert train_lib.train(config, str(tmp_path / "wd"))["step"] == 2
  rows = [r for r in metrics_lib.read_jsonl(tmp_path / "wd/metrics.jsonl")
          if "data/skipped" in r]
  assert [r["step"] for r in rows] == [1, 2]
  # 64 good samples: the junk sample 0 of all 4 shards came before them.
  assert rows[-1]["data/skipped"] == rows[-1]["data/skipped/decode"] == 4
  assert rows[0]["data/skipped/decode"] == 2  # shards 0, 1 by sample 33
  for reason in pipeline.SKIP_REASONS:
    assert f"data/skipped/{reason}" in rows[-1]


# -- empty captions (issue 17): skipped as "bad_caption" by every source --


def _reasons_through_training(src, pp, **kwargs):
  """(good records, {reason: count}) of one ordered epoch, as the trainer
  sums them into data/skipped/<reason>."""
  it = pipeline.make_train_iterator(src, pp=pp, batch_size=1, seed=0,
                                    num_epochs=1, shuffle=False,
                                    process_index=0, process_count=1,
                                    **kwargs)
  good, counts = [], collections.Counter()
  for batch in it:
    good.append(batch)
    counts.update({r: n for r, n in pipeline.skipped_by_reason(
        batch[pipeline.SKIPPED_BY_REASON_KEY]).items() if n})
  return good, counts


def _bad_caption_files(folder):
  """jsonl and csv listings: rows 1-5 (jsonl) / 1-4 (csv) have no usable
  caption; the last row is good (failures before it are reported)."""
  for i in range(8):
    (folder / f"{i}.png").write_bytes(_image(i))
  jsonl = [{"image": "0.png", "caption": "a good one"},
           {"image": "1.png", "caption": ""},
           {"image": "2.png", "caption": "   \t"},
           {"image": "3.png", "caption": None},
           {"image": "4.png"},  # no caption column in this row
           {"image": "5.png", "caption": ["", " "]},
           {"image": "6.png", "caption": ["", "kept", None]},
           {"image": "7.png", "caption": "last"}]
  (folder / "bad.jsonl").write_text("\n".join(json.dumps(r) for r in jsonl))
  (folder / "bad.csv").write_text(
      "filepath,title\n0.png,a good one\n1.png,\n2.png,   \n3.png\n"
      "4.png,\"\"\n7.png,last\n")
  return f"jsonl:{folder}/bad.jsonl", f"csv:{folder}/bad.csv"


def test_jsonl_and_csv_skip_empty_null_and_missing_captions(tmp_path):
  jsonl, csv_spec = _bad_caption_files(tmp_path)
  for spec, bad, n_good in ((jsonl, (1, 2, 3, 4, 5), 3),
                            (csv_spec, (1, 2, 3, 4), 2)):
    src = sources.get(spec)
    for i in bad:  # never "" nor the literal "None"
      with pytest.raises(pipeline.pp_lib.CorruptRecordError) as e:
        src[i]  # pylint: disable=pointless-statement
      assert e.value.reason == "bad_caption", (spec, i)
    assert src[0]["caption"] == src[0]["text"] == "a good one"
    good, counts = _reasons_through_training(
        src, "decode|keep('image','__key__')")
    assert len(good) == n_good, spec
    assert counts == {"bad_caption": len(bad)}, spec
  # A list caption keeps its usable entries only.
  assert sources.get(jsonl)[6]["caption"] == ["kept"]


def test_wds_skips_empty_and_whitespace_captions(tmp_path):
  def extra(tar, s):
    if s == 0:
      _add(tar, "e1.png", _image(1))
      _add(tar, "e1.txt", b"")
      _add(tar, "e2.png", _image(2))
      _add(tar, "e2.txt", b"  \n\t ")
  _, pattern = _write_shards(tmp_path, 1, 2, extra=extra)
  src = sources.get(f"wds:{pattern}")
  good, counts = _reasons_through_training(src, "decode|keep('image','text')")
  assert [b["text"].tolist() for b in good] == [["caption 0 0 é"],
                                                ["caption 0 1 é"]]
  assert counts == {"bad_caption": 2}


def test_tfds_caption_features_are_checked(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  captions = ["", "  ", "fine", "also fine"]
  lists = [["a", "b"], ["c"], ["", " "], ["", "d", " "]]

  class CaptionPairs(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              "caption": tfds.features.Text(),
              "captions": tfds.features.Sequence(tfds.features.Text()),
              "url": tfds.features.Text()}))  # not a caption: unchecked

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(4):
        yield i, {"caption": captions[i], "captions": lists[i], "url": ""}

  CaptionPairs(data_dir=str(tmp_path),
               file_format="array_record").download_and_prepare()
  src = sources.get("tfds:caption_pairs:train", data_dir=str(tmp_path))
  assert src.dataset_info.splits["train"].num_examples == 4
  reasons = []
  for i in range(4):
    try:
      src[i]  # pylint: disable=pointless-statement
      reasons.append(None)
    except pipeline.pp_lib.CorruptRecordError as e:
      reasons.append(e.reason)
  # (TFDS stores them shuffled) two empty captions, one `captions` list
  # without a usable entry, one good record.
  assert collections.Counter(reasons) == {"bad_caption": 3, None: 1}
  it = pipeline.make_train_iterator(src, pp="keep('caption')", batch_size=1,
                                    seed=0, shuffle=False)
  first, second = next(it), next(it)  # the good record, epochs 1 and 2
  assert first["caption"].tolist() == second["caption"].tolist() == [
      b"also fine"]
  # What was skipped between them: one epoch's 3 bad records.
  assert pipeline.skipped_by_reason(
      second[pipeline.SKIPPED_BY_REASON_KEY])["bad_caption"] == 3
  assert second[pipeline.SKIPPED_KEY].tolist() == [3]
  # The demo's training pp (choice, then tokenize): the good record's list
  # ["", "d", " "] keeps its record and `choice` only ever draws "d".
  pp = "choice(key='captions', out='text')|keep('text')"
  it = pipeline.make_train_iterator(src, pp=pp, batch_size=1, seed=0)
  assert [next(it)["text"].tolist() for _ in range(12)] == [[b"d"]] * 12
  # Tokenizing the whole list (retrieval's pp) uses every entry: skipped.
  with pytest.raises(ValueError, match="None of the first 16"):
    pipeline.first_example(src, pipeline.pp_lib.build(
        "tokenize(max_len=8, key='captions', out='texts')"))


def test_mixture_skips_bad_captions_of_every_component(tmp_path):
  jsonl, _ = _bad_caption_files(tmp_path)
  def extra(tar, s):
    del s
    _add(tar, "e1.png", _image(1))
    _add(tar, "e1.txt", b" ")
  _, pattern = _write_shards(tmp_path, 1, 3, extra=extra)
  for mix in ([(jsonl, 1), (jsonl, 1)], [(f"wds:{pattern}", 1), (jsonl, 1)]):
    src = sources.get(mix)
    it = pipeline.make_train_iterator(src, pp="decode|keep('image')",
                                      batch_size=2, seed=0, process_index=0,
                                      process_count=1)
    counts = collections.Counter()
    for _ in range(20):
      counts.update(pipeline.skipped_by_reason(
          next(it)[pipeline.SKIPPED_BY_REASON_KEY]))
    assert counts["bad_caption"] > 0, mix
    assert sum(counts.values()) == counts["bad_caption"], mix


@pytest.mark.parametrize("where", ["at_a_header", "inside_a_header",
                                   "inside_data", "at_the_end_blocks",
                                   "between_the_end_blocks"])
def test_wds_a_truncated_shard_is_a_counted_read_error(tmp_path, where):
  """A shard cut anywhere is reported, not read as a shorter shard."""
  _write_shards(tmp_path, 1, 3)
  path = tmp_path / "shard-000.tar"
  data = path.read_bytes()
  with tarfile.open(path) as tar:
    members = tar.getmembers()
  end = members[-1].offset_data + -(-members[-1].size // 512) * 512
  last_header = [m for m in members if m.name.startswith("0000002.")][0].offset
  cut = {"at_a_header": last_header, "inside_a_header": last_header + 100,
         "inside_data": members[1].offset_data + 10,
         "at_the_end_blocks": end, "between_the_end_blocks": end + 512}[where]
  assert data[end:end + 1024] == bytes(1024)  # The two end blocks.
  path.write_bytes(data[:cut])
  with _absl_warnings() as warnings:
    out = [s for _, s in wds.read_shard(str(path))]
  errors = [s for s in out if wds.ERROR_KEY in s]
  assert [s[wds.ERROR_KEY] for s in errors] == ["read_error"]
  assert out[-1] is errors[0] and len(out) <= 3
  assert str(path) in warnings[0] and "skipping the rest of it" in warnings[0]
  # The whole shard, and one that lost only the padding after its end
  # blocks, read cleanly.
  for size in (len(data), end + 1024):
    path.write_bytes(data[:size])
    assert [s["__key__"] for _, s in wds.read_shard(str(path))] == [
        "0000000", "0000001", "0000002"]
