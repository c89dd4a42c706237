"""Curation (issue #21): the noisy demo data, `big_vl.embed`, the filters,
`big_vl.curate`'s outputs (a `subset:` source, WebDataset shards) and
`big_vl.knn`, on planted data whose truth the tools never read."""

import collections
import io
import json
import os
import subprocess
import sys
import tarfile

import jax
import numpy as np
from PIL import Image
import pyarrow.parquet as pq
import pytest

from big_vl import curate
from big_vl import embed
from big_vl import knn
from big_vl import models
from big_vl import pretrained
from big_vl.curation import filters
from big_vl.curation import shards
from big_vl.curation import write as write_lib
from big_vl.data import pipeline
from big_vl.data import sources
from big_vl.data.builders import demo_noisy
from big_vl.data.builders import demo_shapes
from big_vl.models import two_towers
from big_vl.predict import Predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"name": "two_towers", "out_dim": 16, "temperature_init": 7.0,
        "image": {"width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2,
                  "patch_size": 8, "pool_type": "gap"},
        "text": {"width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2,
                 "vocab_size": 49408, "max_len": 8, "pool_type": "eot"}}
PP_IMG = "decode|resize(32)|value_range(-1,1)"
PP_TXT = "tokenize(max_len=8)"
NOISY = "tfds:big_vl_demo_noisy/small"
TEST = "tfds:big_vl_demo_shapes/small"
# Identical bytes embed identically; distinct demo images stay below this
# with the random model (checked by the precision asserts below).
COPY = 0.9999


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  model = models.get(TINY)
  params = jax.tree.map(np.asarray, two_towers.init_params(
      model, jax.random.key(1), (1, 32, 32, 3), (1, 8)))
  return os.fspath(pretrained.save(
      tmp_path_factory.mktemp("ckpt"), TINY, params,
      preprocessing={"pp_img": PP_IMG, "pp_txt": PP_TXT}))


@pytest.fixture(scope="module")
def predictor(checkpoint):
  return Predictor.load(checkpoint, batch_size=32)


@pytest.fixture(scope="module")
def noisy():
  src = sources.get(NOISY, split="train")
  return src, [src[i]["hidden"] for i in range(len(src))]


@pytest.fixture(scope="module")
def embedded(predictor, checkpoint, noisy, tmp_path_factory):
  """The noisy train split and the small demo test split, embedded."""
  del noisy  # Built.
  root = tmp_path_factory.mktemp("emb")
  embed.run(predictor, NOISY, root / "noisy", split="train", shard_size=256,
            checkpoint=checkpoint, progress=False)
  embed.run(predictor, TEST, root / "test", split="test", shard_size=256,
            checkpoint=checkpoint, progress=False)
  return root / "noisy", root / "test"


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(np.asarray(array, np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def test_noisy_data_plants_what_its_truth_says(noisy):
  src, hidden = noisy
  n = len(src)
  assert n == demo_noisy.CONFIGS["small"]["train"] == 600
  for i in (0, 21, 24, 599):  # The builder writes generate_record(i).
    want = demo_noisy.generate_record(i, "small")
    assert src[i]["image"] == want["image"]
    assert src[i]["caption"].decode() == want["caption"]
    assert bool(hidden[i]["is_clean"]) == want["hidden"]["is_clean"]
  noise = collections.Counter(demo_noisy.NOISE_KINDS[h["noise"]]
                              for h in hidden)
  originals = [i for i, h in enumerate(hidden) if h["variant"] == 0]
  # ~93% originals, half of them with a wrong caption, split evenly.
  assert 0.4 < noise["clean"] / n < 0.6, noise
  assert abs(noise["swapped"] - noise["corrupted"]) < 0.15 * len(originals)
  assert all(bool(h["is_clean"]) == (h["noise"] == 0) for h in hidden)
  leaks = [i for i, h in enumerate(hidden) if h["leak_of"] >= 0]
  dups = [i for i, h in enumerate(hidden) if h["duplicate_of"] >= 0]
  assert len(leaks) >= 5 and len(dups) >= 15
  images = [src[i]["image"] for i in range(n)]
  for i in dups:  # A group's original comes first and is no copy.
    root = hidden[i]["duplicate_of"]
    assert root < i and hidden[root]["variant"] == 0 or hidden[root][
        "leak_of"] >= 0
    assert hidden[i]["variant"] != 0
    if demo_noisy.VARIANTS[hidden[i]["variant"]] == "exact":
      assert images[i] in images[:i]
    else:
      assert images[i] not in images[:i]
  test = sources.get(TEST, split="test")
  for i in leaks:
    shown = test[int(hidden[i]["leak_of"])]
    exact = demo_noisy.VARIANTS[hidden[i]["variant"]] == "exact"
    assert (images[i] == shown["image"]) == exact
    assert src[i]["caption"] == shown["captions"][0]


def test_corrupt_replaces_every_colour_and_shape_word():
  rng = np.random.default_rng(0)
  text = "two shapes: an orange circle and two red squares"
  out = demo_noisy.corrupt(text, rng).split()
  before = text.split()
  assert len(out) == len(before) and out[0:2] == ["two", "shapes:"]
  for i in (3, 4, 7, 8):  # Each colour / shape word is another one.
    assert out[i] != before[i]
  assert out[3] in demo_shapes.COLOURS and out[7] in demo_shapes.COLOURS
  assert out[4] in demo_shapes.SHAPES and out[8][-1] == "s"
  assert out[2] == ("an" if out[3][0] in "aeiou" else "a")


def test_embed_equals_the_predictor_in_both_formats(embedded, predictor,
                                                    checkpoint, tmp_path):
  noisy_dir, _ = embedded
  table = shards.load(noisy_dir)
  assert len(table) == 600 and table.manifest["skipped"] == {}
  assert [s["rows"] for s in table.manifest["shards"]] == [256, 256, 88]
  src = sources.get(NOISY, split="train")
  rows = [0, 255, 256, 599]
  np.testing.assert_allclose(
      table.img[rows], predictor.embed_images([src[i]["image"] for i in rows]),
      atol=1e-6)
  captions = [src[i]["caption"].decode() for i in rows]
  assert [table.captions[i] for i in rows] == captions
  np.testing.assert_allclose(table.txt[rows], predictor.embed_texts(captions),
                             atol=1e-6)
  assert table.keys[:3] == ["0", "1", "2"] and table.index[-1] == 599
  embed.run(predictor, NOISY, tmp_path / "pq", split="train",
            shard_size=256, fmt="parquet", checkpoint=checkpoint,
            progress=False)
  parquet = shards.load(tmp_path / "pq")
  np.testing.assert_array_equal(parquet.img, table.img)
  np.testing.assert_array_equal(parquet.txt, table.txt)
  assert parquet.keys == table.keys and parquet.captions == table.captions
  with pytest.raises(ValueError, match="another run"):
    embed.run(predictor, NOISY, tmp_path / "pq", split="train",
              shard_size=100, checkpoint=checkpoint, progress=False)


def test_embed_skips_and_counts_bad_records(predictor, tmp_path):
  rng = np.random.default_rng(0)
  for name in ("a", "b", "c", "d"):
    (tmp_path / f"{name}.png").write_bytes(
        _png(rng.integers(0, 256, (20, 20, 3))))
  (tmp_path / "junk.png").write_bytes(b"not a png")
  rows = [("a.png", "a red circle"), ("missing.png", "gone"),
          ("junk.png", "junk bytes"), ("b.png", "   "), ("c.png", "ok"),
          ("d.png", "fine")]
  (tmp_path / "pairs.jsonl").write_text("".join(
      json.dumps({"image": i, "caption": c}) + "\n" for i, c in rows))
  manifest = embed.run(predictor, f"jsonl:{tmp_path / 'pairs.jsonl'}",
                       tmp_path / "out", shard_size=4, progress=False)
  assert manifest["rows"] == 3
  assert manifest["skipped"] == {"bad_caption": 1, "decode": 1,
                                 "missing_file": 1}
  assert [s["skipped"] for s in manifest["shards"]] == [
      {"bad_caption": 1, "decode": 1, "missing_file": 1}, {}]
  table = shards.load(tmp_path / "out")
  assert table.keys == ["a.png", "c.png", "d.png"]
  assert table.index.tolist() == [0, 4, 5]


def test_an_interrupted_embed_resumes_to_the_same_files(
    embedded, predictor, checkpoint, tmp_path, monkeypatch):
  noisy_dir, _ = embedded
  written = []
  real = shards.write_shard

  def dies_after_two(out, shard, *args):
    if len(written) == 2:  # Mid-way through the third shard's files.
      shards.write_atomic(out / f"img-{shard.index:05d}.npy", b"partial")  # pylint: disable=protected-access
      raise KeyboardInterrupt
    real(out, shard, *args)
    written.append(shard.index)

  monkeypatch.setattr(shards, "write_shard", dies_after_two)
  out = tmp_path / "out"
  with pytest.raises(KeyboardInterrupt):
    embed.run(predictor, NOISY, out, split="train", shard_size=128,
              checkpoint=checkpoint, progress=False)
  assert written == [0, 1] and not (out / "manifest.json").exists()
  with pytest.raises(FileNotFoundError, match="not finished"):
    shards.load(out)
  monkeypatch.setattr(shards, "write_shard", real)
  redone, real_records = [], embed.embed_records
  monkeypatch.setattr(embed, "embed_records", lambda *a, **k: (
      redone.append(1), real_records(*a, **k))[1])
  manifest = embed.run(predictor, NOISY, out, split="train", shard_size=128,
                       checkpoint=checkpoint, progress=False)
  assert len(redone) == 3  # Shards 2, 3 and 4 only.
  assert [s["shard"]["index"] for s in manifest["shards"]] == [0, 1, 2, 3, 4]
  table, whole = shards.load(out), shards.load(noisy_dir)
  np.testing.assert_array_equal(table.img, whole.img)
  np.testing.assert_array_equal(table.txt, whole.txt)
  assert table.keys == whole.keys


def test_filters_on_planted_vectors():
  rng = np.random.default_rng(0)
  base = rng.normal(size=(50, 8)).astype(np.float32)
  base /= np.linalg.norm(base, axis=1, keepdims=True)
  # Rows 50, 51: copies of row 3; row 52 a copy of 51 (one group of 4).
  vectors = np.concatenate([base, base[[3, 3, 3]]])
  score = np.arange(53, dtype=np.float32)
  keep, nn_sim, group = filters.near_duplicates(vectors, 0.999,
                                                priority=score)
  assert np.nonzero(~keep)[0].tolist() == [3, 50, 51]  # 52 scores best.
  assert group[[3, 50, 51, 52]].tolist() == [3] * 4
  assert nn_sim[52] == pytest.approx(1.0, abs=1e-6)
  assert (nn_sim[:50][np.arange(50) != 3] < 0.999).all()
  keep_first = filters.near_duplicates(vectors, 0.999)[0]
  assert np.nonzero(~keep_first)[0].tolist() == [50, 51, 52]

  leaked, sim, ids = filters.contaminated(base, base[[7, 9]], 0.999)
  assert np.nonzero(leaked)[0].tolist() == [7, 9]
  assert ids[[7, 9]].tolist() == [0, 1]

  img, txt = rng.normal(size=(2, 10, 4))
  want = np.sum(img * txt, 1) / np.linalg.norm(img, axis=1) / np.linalg.norm(
      txt, axis=1)
  np.testing.assert_allclose(filters.clip_score(img, txt), want, rtol=1e-5)
  scores = np.array([0.1, 0.5, 0.3, 0.3, 0.9], np.float32)
  assert filters.score_threshold(scores, top_fraction=0.4) == \
      pytest.approx(0.5)
  assert filters.score_threshold(scores, min_score=0.28) == 0.28
  with pytest.raises(ValueError, match="not both"):
    filters.score_threshold(scores, min_score=0.2, top_fraction=0.5)

  captions = (["a red circle"] * 40 + ["a blue square and a red circle"] * 2
              + ["a green star"] * 3 + ["nothing known", None])
  kept, matched, counts = filters.balance(
      captions, ["red circle", "blue square", "green star"], cap=10, seed=0)
  assert counts == {"red circle": 42, "blue square": 2, "green star": 3}
  assert kept[40:45].all()  # Rarer than the cap: all kept.
  assert not kept[45:].any() and not matched[45:].any()
  assert 3 <= kept[:40].sum() <= 20  # About cap * 40 / 42.
  again = filters.balance(captions, ["red circle", "blue square",
                                     "green star"], cap=10, seed=0)[0]
  np.testing.assert_array_equal(kept, again)


def test_curate_finds_every_planted_copy_and_leak(embedded, noisy, tmp_path):
  noisy_dir, test_dir = embedded
  _, hidden = noisy
  variant = [demo_noisy.VARIANTS[h["variant"]] for h in hidden]
  exact_dups = [i for i, h in enumerate(hidden)
                if variant[i] == "exact" and h["duplicate_of"] >= 0]
  exact_leaks = [i for i, h in enumerate(hidden)
                 if variant[i] == "exact" and h["leak_of"] >= 0]
  assert len(exact_dups) >= 5 and len(exact_leaks) >= 2
  options = curate.Options(top_fraction=0.5, dedup=COPY,
                           decontaminate=(os.fspath(test_dir),),
                           decontaminate_threshold=COPY)
  report = curate.run(noisy_dir, tmp_path / "cur", options)
  decisions = pq.read_table(tmp_path / "cur" / "decisions.parquet")
  removed_by = decisions.column("removed_by").to_pylist()
  leaked = [i for i, r in enumerate(removed_by) if r == "decontaminate"]
  # Exact copies of test images, and exact copies of those (leaks too).
  assert set(exact_leaks) <= set(leaked)
  assert all(hidden[i]["leak_of"] >= 0 for i in leaked)
  deduped = [i for i, r in enumerate(removed_by) if r == "dedup"]
  assert set(deduped) == {i for i in exact_dups if i not in leaked}
  filters_by_name = {f["name"]: f for f in report["filters"]}
  assert filters_by_name["decontaminate"]["removed"] == len(leaked)
  assert filters_by_name["dedup"]["removed"] == len(deduped)
  left = 600 - len(leaked) - len(deduped)
  assert filters_by_name["clip_score"]["flagged"] == 300
  assert report["kept"] == left - filters_by_name["clip_score"]["removed"]
  assert report["kept"] == removed_by.count(None)
  for png in ("clip_score", "dedup", "decontamination"):
    assert (tmp_path / "cur" / f"{png}.png").stat().st_size > 5000
  subset = sources.get(f"subset:{tmp_path / 'cur'}")
  kept = [i for i, r in enumerate(removed_by) if r is None]
  src = sources.get(NOISY, split="train")
  assert len(subset) == len(kept)
  assert subset[5]["image"] == src[kept[5]]["image"]


def test_reward_filter_reads_the_reward_models_embeddings(embedded,
                                                         tmp_path):
  noisy_dir, _ = embedded
  table = shards.load(noisy_dir)
  # A "reward model" that embedded only the first two shards of the corpus.
  partial = shards.load(noisy_dir)
  partial.img, partial.txt = table.img[:512], table.txt[:512]
  partial.component, partial.index = table.component[:512], table.index[:512]
  reward = curate.reward_scores(table, partial)
  np.testing.assert_array_equal(
      reward[:512], filters.clip_score(table.img, table.txt)[:512])
  assert np.isneginf(reward[512:]).all()
  options = curate.Options(reward=os.fspath(noisy_dir),
                           reward_top_fraction=0.25)
  report = curate.run(noisy_dir, tmp_path / "cur", options, write="none")
  (step,) = report["filters"]
  assert step["name"] == "reward" and step["removed"] == 450
  assert (tmp_path / "cur" / "reward.png").exists()
  with pytest.raises(ValueError, match="reward_min"):
    curate.decide(table, curate.Options(reward="x"), reward_table=table)


def test_curated_data_trains_and_resumes_exactly(embedded, predictor,
                                                 checkpoint, tmp_path):
  noisy_dir, _ = embedded
  options = curate.Options(dedup=COPY)
  curate.run(noisy_dir, tmp_path / "sub", options, plots_=False)
  report = curate.run(noisy_dir, tmp_path / "wds", options, write="wds",
                      shard_size=100, plots_=False)
  assert report["output"]["shards"] == 6
  assert report["output"]["rows"] == report["kept"]
  assert os.path.exists(tmp_path / "wds" / "00000_stats.json")
  pp = ("decode|resize(16)|value_range(-1,1)|tokenize(max_len=8, "
        "key='caption', out='text')|keep('image','text')")
  for spec in (f"subset:{tmp_path / 'sub'}", report["output"]["spec"]):
    source = sources.get(spec, split="train")
    make = lambda: pipeline.make_train_iterator(  # pylint: disable=cell-var-from-loop
        source, pp=pp, batch_size=16, seed=3, shuffle_buffer=64,  # pylint: disable=cell-var-from-loop
        process_index=0, process_count=1)
    whole = make()
    ref = [next(whole) for _ in range(40)]  # Over one epoch of 570.
    it = make()
    for _ in range(17):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    resumed = make()
    resumed.set_state(state)
    for want in ref[17:]:
      got = next(resumed)
      np.testing.assert_array_equal(got["image"], want["image"])
      np.testing.assert_array_equal(got["text"], want["text"])
  # The curated shards embed back to the rows they were written from.
  manifest = embed.run(predictor, report["output"]["spec"],
                       tmp_path / "again", checkpoint=checkpoint,
                       progress=False)
  again, first = shards.load(tmp_path / "again"), shards.load(noisy_dir)
  kept = np.nonzero(pq.read_table(tmp_path / "wds" / "decisions.parquet")
                    .column("removed_by").is_null().to_numpy(
                        zero_copy_only=False))[0]
  assert manifest["rows"] == len(kept) and again.keys[:2] == ["000000000",
                                                              "000000001"]
  np.testing.assert_allclose(again.img, first.img[kept], atol=1e-6)
  assert again.captions == [first.captions[i] for i in kept]


def _files(folder):
  return {name: (folder / name).read_bytes() for name in sorted(
      os.listdir(folder)) if name.endswith((".tar", ".parquet", ".json"))
          and name != "curate.json"}


@pytest.mark.parametrize("mode", ["in_memory", "multi_processing"])
def test_beam_writes_the_files_the_local_writer_writes(
    predictor, checkpoint, tmp_path, mode):
  rng = np.random.default_rng(1)
  rows = []
  for i in range(11):
    (tmp_path / f"{i}.png").write_bytes(_png(rng.integers(0, 256,
                                                          (20, 20, 3))))
    rows.append({"image": f"{i}.png", "caption": f"picture number {i}"})
  (tmp_path / "pairs.jsonl").write_text("".join(
      json.dumps(r) + "\n" for r in rows))
  embed.run(predictor, f"jsonl:{tmp_path / 'pairs.jsonl'}", tmp_path / "emb",
            shard_size=4, checkpoint=checkpoint, progress=False)
  os.remove(tmp_path / "6.png")  # Gone between embedding and writing.
  options = curate.Options()
  local = curate.run(tmp_path / "emb", tmp_path / "local", options,
                     write="wds", shard_size=3, plots_=False)
  beam = curate.run(
      tmp_path / "emb", tmp_path / "beam", options, write="wds",
      shard_size=3, plots_=False, engine="beam",
      beam_args=["--runner=DirectRunner", "--direct_num_workers=2",
                 f"--direct_running_mode={mode}"])
  for report in (local, beam):
    assert report["output"]["shards"] == 4 and report["output"]["rows"] == 10
    assert report["output"]["skipped"] == {"unreadable": 1}
  assert _files(tmp_path / "local") == _files(tmp_path / "beam")
  names = [m.name for m in tarfile.open(tmp_path / "beam" / "00002.tar")]
  # Kept row 6 (6.png, gone) was shard 2's first: its key stays unused.
  assert names == [f"00002000{p}.{e}" for p in (1, 2)
                   for e in ("png", "txt", "json")]
  stats = json.loads((tmp_path / "beam" / "00002_stats.json").read_text())
  assert stats == {"count": 3, "successes": 2, "failed": 1}


def test_knn_finds_a_corpus_image_first(embedded, predictor, noisy,
                                        tmp_path, capsys):
  noisy_dir, _ = embedded
  src, _ = noisy
  results = predictor.search(os.fspath(noisy_dir), images=[src[42]["image"]],
                             texts=["a red circle"], k=3)
  assert len(results) == 2 and len(results[1]) == 3
  assert results[1][0]["index"] == 42
  assert results[1][0]["score"] == pytest.approx(1.0, abs=1e-5)
  assert os.path.exists(noisy_dir / "index-img-Flat.faiss")
  knn._FLAGS(["knn", f"--index={noisy_dir}", "--query=a red circle",  # pylint: disable=protected-access
              "--k=4", f"--out={tmp_path / 'knn.png'}"])
  knn.main(["knn"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["rank"] for r in rows] == [0, 1, 2, 3]
  assert [r["index"] for r in rows[:3]] == [r["index"] for r in results[0]]
  assert (tmp_path / "knn.png").stat().st_size > 5000


@pytest.mark.slow
def test_two_processes_embed_what_one_does(checkpoint, noisy, tmp_path):
  del noisy  # Built.
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  env.pop("XLA_FLAGS", None)
  common = [sys.executable, "-m", "big_vl.embed", f"--checkpoint={checkpoint}",
            f"--data={NOISY}", "--split=train", "--shard_size=128",
            "--batch_size=32"]
  one = subprocess.run(common + [f"--out={tmp_path / 'one'}",
                                 "--distributed=no"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=240)
  assert one.returncode == 0, one.stderr[-3000:]
  assert "Embedded 600 records into 5 shards" in one.stderr
  procs = [subprocess.Popen(
      common + [f"--out={tmp_path / 'two'}",
                f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                f"--process_id={i}"], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out[-3000:]
  for name in sorted(os.listdir(tmp_path / "one")):
    if name.startswith(("img-", "txt-", "meta-")):
      assert (tmp_path / "one" / name).read_bytes() == (
          tmp_path / "two" / name).read_bytes(), name
  done = [json.loads((tmp_path / "two" / f"done-{k:05d}.json").read_text())
          for k in range(5)]
  assert [d["rows"] for d in done] == [128, 128, 128, 128, 88]
  manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
  assert manifest["processes"] == 2 and manifest["rows"] == 600


def _free_port():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_webdataset_writer_layout(tmp_path):
  rows = [{"image": _png(np.full((4, 4, 3), i)), "caption": f"row {i}",
           "score": i / 10} for i in range(5)]
  out = write_lib.write_webdataset(tmp_path, rows, shard_size=2)
  assert out == {"shards": 3, "samples": 5, "failed": 0,
                 "pattern": f"{tmp_path}/{{00000..00002}}.tar"}
  again = write_lib.write_webdataset(tmp_path / "again", rows, shard_size=2)
  assert (tmp_path / "00001.tar").read_bytes() == (
      tmp_path / "again" / "00001.tar").read_bytes()
  table = pq.read_table(tmp_path / "00002.parquet").to_pydict()
  assert table == {"key": ["000020000"], "caption": ["row 4"],
                   "score": [0.4]}
  assert json.loads((tmp_path / "00000_stats.json").read_text()) == {
      "count": 2, "successes": 2, "failed": 0}
  del again
  with pytest.raises(ValueError, match="Not a PNG"):
    write_lib.image_extension(b"GIF89a")


def test_the_demo_config_trains_on_one_caption_per_record(noisy):
  src, _ = noisy
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl.data import pp as pp_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(
      os.path.join(ROOT, "configs", "demo.py") + ":runlocal,caption=caption")
  out = pp_lib.build(config.input.pp)(src[3], np.random.default_rng(0))
  assert out["image"].shape == (32, 32, 3)
  tokens = pp_lib.build("tokenize(max_len=24)")(
      {"text": src[3]["caption"].decode()})["text"]
  np.testing.assert_array_equal(out["text"], tokens)
