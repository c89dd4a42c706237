"""Evaluator numbers: retrieval ranks, zero-shot classifier, probes, data."""

import json

import jax
import numpy as np
import pytest

from big_vl import registry
from big_vl.evaluators import common, fewshot, linear_probe, prompts
from big_vl.evaluators import retrieval, zeroshot


def _brute_force(img, txt, t2i, ks):
  """Per-query sort with wrong items first on ties (independent loop)."""
  n_img = len(img)
  i_ranks, t_ranks = [], []
  for i in range(n_img):
    if not (t2i == i).any():
      continue
    scores = [float(np.dot(img[i], t)) for t in txt]
    order = sorted(range(len(txt)), key=lambda j: (-scores[j], t2i[j] == i))
    i_ranks.append(next(r for r, j in enumerate(order) if t2i[j] == i))
  for j in range(len(txt)):
    scores = [float(np.dot(im, txt[j])) for im in img]
    order = sorted(range(n_img), key=lambda i: (-scores[i], i == t2i[j]))
    t_ranks.append(order.index(t2i[j]))
  i_ranks, t_ranks = np.array(i_ranks), np.array(t_ranks)
  out = {f"img2txt_r@{k}": float((i_ranks < k).mean()) for k in ks}
  out.update({f"txt2img_r@{k}": float((t_ranks < k).mean()) for k in ks})
  out["img2txt_mean_rank"] = float(i_ranks.mean() + 1)
  out["txt2img_mean_rank"] = float(t_ranks.mean() + 1)
  return out


def test_recall_at_k_random_five_captions():
  rng = np.random.default_rng(0)
  img = rng.normal(size=(40, 8)).astype(np.float32)
  t2i = np.repeat(np.arange(40), 5)
  txt = (img[t2i] + 1.5 * rng.normal(size=(200, 8))).astype(np.float32)
  got = retrieval.recall_at_k(img, txt, t2i, ks=(1, 5, 10), chunk=7)
  want = _brute_force(img, txt, t2i, (1, 5, 10))
  assert got.keys() == want.keys()
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-12), k
  assert 0 < got["img2txt_r@1"] < 1 and 0 < got["txt2img_r@1"] < 1


def test_recall_at_k_ties_count_against():
  # Small-integer embeddings: every dot product is exact, so ties are real.
  rng = np.random.default_rng(1)
  base = rng.integers(-2, 3, size=(6, 4)).astype(np.float32)
  img = np.concatenate([base, base[:3]])          # images 6..8 duplicate 0..2
  t2i = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 3])
  txt = np.concatenate([base, base[:2], base[2:3], base[2:3], base[3:4],
                        base[3:4]])[:len(t2i)]
  got = retrieval.recall_at_k(img, txt, t2i, ks=(1, 2, 5))
  want = _brute_force(img, txt, t2i, (1, 2, 5))
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-12), k
  # A collapsed model (all embeddings equal) ranks every item last.
  ones = np.ones((4, 3), np.float32)
  col = retrieval.recall_at_k(ones, ones, np.arange(4), ks=(1, 4))
  assert col["img2txt_r@1"] == 0 and col["txt2img_r@1"] == 0
  assert col["img2txt_mean_rank"] == 4 and col["txt2img_r@4"] == 1


def test_zeroshot_classifier_known_logits():
  words = ["cat", "dog", "bird"]
  vocab = {w: i for i, w in enumerate(words)}
  templates = ["a {}.", "the {} here."]

  def tokenizer(texts):
    # Token = id of the class word (plus a template id, to check the mean).
    return np.array([[next(vocab[w] for w in vocab if w in t),
                      int(t.startswith("the"))] for t in texts], np.int32)

  def encode(tokens):
    z = np.zeros((len(tokens), 4), np.float32)
    z[np.arange(len(tokens)), tokens[:, 0]] = 2.0   # class direction
    z[:, 3] = np.where(tokens[:, 1] == 1, 2.0, -2.0)  # cancels in the mean
    return z

  w = zeroshot.classifier(encode, tokenizer, words, templates)
  assert w.shape == (4, 3)
  np.testing.assert_allclose(w, np.eye(4)[:, :3], atol=1e-6)
  img = np.array([[0.2, 0.9, 0.1, 0.0], [0.0, 0.0, 1.0, 5.0]], np.float32)
  np.testing.assert_allclose(img @ w, img[:, :3], atol=1e-6)
  m = zeroshot.classification_metrics(img @ w, np.array([1, 0]), 3)
  assert m["top1"] == 0.5 and m["mean_per_class_recall"] == 0.5


def _separable(n, d=16, c=4, seed=0, margin=3.0):
  rng = np.random.default_rng(seed)
  centers = margin * np.eye(c, d)
  y = rng.integers(0, c, size=n)
  x = centers[y] + 0.5 * rng.normal(size=(n, d))
  return x.astype(np.float32), y


def test_linear_probe_separable_and_no_test_peeking():
  x, y = _separable(600, seed=0)
  xt, yt = _separable(300, seed=1)
  params, wd, scores = linear_probe.train_probe(
      x, y, num_classes=4, wds=(1e-4, 1e-2, 1.0), steps=50)
  assert set(scores) == {1e-4, 1e-2, 1.0}
  assert linear_probe.accuracy(params, xt, yt) >= 0.99
  # wd selection takes train only: same choice whatever the test labels.
  fit, val = linear_probe.split_val(600, 0.2, 0)
  assert len(val) == 120 and not set(fit) & set(val)
  wd2, _ = linear_probe.select_wd(x[fit], y[fit], x[val], y[val],
                                  num_classes=4, wds=(1e-4, 1e-2, 1.0),
                                  steps=50)
  assert wd2 == wd


def test_fewshot_separable():
  x, y = _separable(400, seed=2, margin=4.0)
  xt, yt = _separable(200, seed=3, margin=4.0)
  out = fewshot.fewshot_results(x, y, xt, yt, num_classes=4, shots=(1, 4),
                                seeds=2, wds=(1e-3, 1e-1), steps=30)
  assert set(out) == {"1shot", "1shot_std", "1shot_ridge", "1shot_ridge_std",
                      "4shot", "4shot_std", "4shot_ridge", "4shot_ridge_std"}
  assert out["4shot"] >= 0.97 and out["4shot_ridge"] >= 0.97
  idx = fewshot.sample_shots(y, 3, 4, seed=0)
  assert np.bincount(y[idx], minlength=4).tolist() == [3, 3, 3, 3]


def test_ridge_matches_direct_solve():
  x, y = _separable(30, d=8, c=3, seed=4)
  for n in (30, 5):  # N >= D and N < D branches
    cache = fewshot.ridge_fit(x[:n], y[:n], 3)
    xw = (x[:n] - cache["mean"]) / cache["std"]
    xw = np.pad(xw, ((0, 0), (0, 1)), constant_values=fewshot.BIAS_CONSTANT)
    t = 2.0 * np.eye(3)[y[:n]] - 1.0
    want = np.linalg.solve(xw.T @ xw + 0.5 * np.eye(9), xw.T @ t)
    np.testing.assert_allclose(fewshot.ridge_weights(cache, 0.5), want,
                               rtol=1e-6, atol=1e-8)


def test_package_data():
  names = prompts.classnames("imagenet")
  assert len(names) == 1000 and names[0] == "tench"
  assert names[-1] == "toilet paper"
  # CLIP's cleaned list names two pairs of classes alike.
  assert len(set(names)) == 998
  assert len(prompts.get("imagenet")) == 80
  sizes = {"cifar10": 10, "cifar100": 100, "fashion_mnist": 10, "mnist": 10,
           "food101": 101, "oxford_pets": 37, "flowers102": 102, "dtd": 47,
           "eurosat": 10}
  for name, size in sizes.items():
    assert len(prompts.classnames(name)) == size, name
    assert all("{}" in t for t in prompts.get(name)), name
  from big_vl.data.builders import demo_shapes  # pylint: disable=g-import-not-at-top
  assert prompts.get("demo_shapes") == list(demo_shapes.ZEROSHOT_TEMPLATES)
  assert prompts.classnames("demo_shapes") == demo_shapes.CLASS_NAMES
  with pytest.raises(KeyError, match="imagenet"):
    prompts.get("nope")
  for name in ("linear_probe", "fewshot", "zeroshot", "retrieval"):
    assert registry.get("evaluator", name)


def test_retrieval_evaluator_on_listing(tmp_path):
  """jsonl rows grouped by image (repeated rows and caption lists), a
  missing image dropped with its captions, fake model: exact numbers."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from big_vl import sharding  # pylint: disable=g-import-not-at-top
  colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
  for i, c in enumerate(colours):
    Image.new("RGB", (4, 4), c).save(tmp_path / f"{i}.png")
  rows = [{"image": "0.png", "caption": "red"},
          {"image": "1.png", "caption": ["green", "grass"]},
          {"image": "0.png", "caption": "blood"},
          {"image": "missing.png", "caption": "red"},
          {"image": "2.png", "caption": "red"}]   # wrong caption: a miss
  listing = tmp_path / "pairs.jsonl"
  listing.write_text("\n".join(json.dumps(r) for r in rows))

  def predict_fn(params, image=None, text=None):
    del params
    zimg = None if image is None else image.mean(axis=(1, 2))
    ztxt = None
    if text is not None:  # first token id -> colour channel
      ztxt = jax.nn.one_hot(text[:, 1] % 3, 3)
    return zimg, ztxt, {}

  mesh = sharding.make_mesh([("data", -1)])
  ev = registry.get("evaluator", "retrieval")(
      predict_fn, mesh=mesh, data=f"jsonl:{listing}",
      pp_img="decode|resize(4)|value_range(0,1)|keep('image')",
      pp_txt="tokenize(max_len=8)", batch_size=8, keep_images=True)
  got = dict(ev.run(None))
  last = ev.last
  assert len(last["zimg"]) == 3 and len(last["ztxt"]) == 5
  np.testing.assert_array_equal(last["text_to_image"], [0, 0, 1, 1, 2])
  want = retrieval.recall_at_k(last["zimg"], last["ztxt"],
                               last["text_to_image"])
  assert got == {**{f"retrieval/{ev.name}/{k}": v for k, v in want.items()},
                 # missing.png's row, reported:
                 f"retrieval/{ev.name}/skipped": 1,
                 f"retrieval/{ev.name}/skipped/missing_file": 1}
  assert got[f"retrieval/{ev.name}/txt2img_r@1"] < 1  # "red" for blue image
  ev.plot_examples(str(tmp_path / "r.png"),
                   registry.get("tokenizer", "clip_bpe")(), k=2)
  assert (tmp_path / "r.png").exists()


# -- corrupt records are skipped and reported (issue 17) --

_COLOURS = ("red", "green", "blue")


def _png(channel, size=4):
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rgb = [0, 0, 0]
  rgb[channel] = 255
  buf = io.BytesIO()
  Image.new("RGB", (size, size), tuple(rgb)).save(buf, "PNG")
  return buf.getvalue()


@pytest.fixture
def colour_data():
  """A "mem:" source kind of coloured squares (label = colour channel).

  `mem:colours` splits: "train": 18 good + 1 undecodable image; "test": 5
  good, 1 mislabelled (a red square labelled green) and 1 undecodable.
  """
  good = lambda n: [{"image": _png(i % 3), "label": np.int64(i % 3)}
                    for i in range(n)]
  garbage = {"image": b"not a png", "label": np.int64(0)}
  data = {"train": good(18) + [garbage],
          "test": good(5) + [{"image": _png(0), "label": np.int64(1)},
                             garbage]}
  registry.get("source", "tfds")  # load the built-in table first
  registry._TABLES["source"]["mem"] = (  # pylint: disable=protected-access
      lambda name, split, **kw: data[split])
  yield "mem:colours"
  del registry._TABLES["source"]["mem"]  # pylint: disable=protected-access


def _colour_predict_fn():
  """Fake model: an image's embedding is its mean colour; a text's is the
  one-hot colour its first word names."""
  tok = registry.get("tokenizer", "clip_bpe")()
  ids = jax.numpy.asarray([tok.tokenize([c], 8)[0][1] for c in _COLOURS])

  def predict_fn(params, image=None, text=None):
    del params
    zimg = None if image is None else image.mean(axis=(1, 2))
    ztxt = None if text is None else (
        text[:, 1:2] == ids[None, :]).astype(jax.numpy.float32)
    return zimg, ztxt, {}

  return predict_fn


def _mesh():
  from big_vl import sharding  # pylint: disable=g-import-not-at-top
  return sharding.make_mesh([("data", -1)])


PP_IMG = "decode|resize(4)|value_range(0,1)|keep('image','label')"


def test_zeroshot_reports_skipped_records(colour_data, tmp_path):
  from absl import logging  # pylint: disable=g-import-not-at-top
  from big_vl import results  # pylint: disable=g-import-not-at-top
  ev = registry.get("evaluator", "zeroshot")(
      _colour_predict_fn(), mesh=_mesh(), data=colour_data, split="test",
      pp_img=PP_IMG, pp_txt="tokenize(max_len=8)", templates=["{}"],
      class_names=list(_COLOURS), batch_size=8)
  warnings = []
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
    got = dict(ev.run(None))
  # 6 usable records, 5 right: 5/6 (the undecodable one is not a miss, and
  # does not vanish: it is reported).
  assert got["zeroshot/colours/top1"] == pytest.approx(5 / 6)
  assert got["zeroshot/colours/skipped"] == 1
  assert got["zeroshot/colours/skipped/decode"] == 1
  assert len(warnings) == 1 and "zeroshot/colours" in warnings[0]
  assert "1 (decode=1) of 7 records" in warnings[0]
  # The CLIP_benchmark JSON holds the counts; aggregating still works.
  (path,) = results.write(got, str(tmp_path), model="m", pretrained="p")
  record = json.load(open(path))
  assert record["dataset"] == "colours"
  assert record["metrics"]["skipped"] == 1
  assert record["metrics"]["skipped/decode"] == 1
  assert record["metrics"]["acc1"] == pytest.approx(5 / 6)
  table = results.aggregate(str(tmp_path), "markdown")
  assert "skipped/decode" in table.splitlines()[0]


def test_probes_report_skipped_records_of_both_splits(colour_data):
  for kind, extra, key in (
      ("linear_probe", {}, "top1"),
      ("fewshot", {"shots": (1,), "seeds": 1, "probe": False}, "1shot_ridge")):
    ev = registry.get("evaluator", kind)(
        _colour_predict_fn(), mesh=_mesh(), data=colour_data, pp=PP_IMG,
        batch_size=8, steps=50, **extra)
    got = dict(ev.run(None))
    # Train and test each had one undecodable image.
    assert got[f"{kind}/colours/skipped"] == 2, kind
    assert got[f"{kind}/colours/skipped/decode"] == 2, kind
    assert got[f"{kind}/colours/{key}"] == pytest.approx(5 / 6), kind


def test_retrieval_dataset_reports_skipped_records(colour_data):
  records = [{"image": _png(c), "captions": [_COLOURS[c], f"{_COLOURS[c]} x"]}
             for c in range(3)]
  records += [{"image": b"junk", "captions": ["red", "red"]},
              {"image": _png(0), "captions": ["red", ""]}]  # an empty one
  registry._TABLES["source"]["mem"] = (  # pylint: disable=protected-access
      lambda name, split, **kw: records)
  ev = registry.get("evaluator", "retrieval")(
      _colour_predict_fn(), mesh=_mesh(), data=colour_data, split="test",
      pp=("decode|resize(4)|value_range(0,1)|"
          "tokenize(max_len=8, key='captions', out='texts')|"
          "keep('image','texts')"), batch_size=8)
  got = dict(ev.run(None))
  assert len(ev.last["zimg"]) == 3 and len(ev.last["ztxt"]) == 6
  assert got["retrieval/colours/img2txt_r@1"] == 1.0
  assert got["retrieval/colours/skipped"] == 2
  assert got["retrieval/colours/skipped/decode"] == 1
  assert got["retrieval/colours/skipped/bad_caption"] == 1


def test_retrieval_listing_skips_bad_captions_and_counts_rows(tmp_path):
  for c in range(3):
    (tmp_path / f"{c}.png").write_bytes(_png(c))
  rows = [{"image": "0.png", "caption": "red"},
          {"image": "0.png", "caption": ""},          # bad_caption
          {"image": "1.png", "caption": ["", "green"]},  # keeps "green"
          {"image": "1.png", "caption": None},        # bad_caption
          {"image": "2.png", "caption": "   "},       # bad_caption: 2.png
          {"image": "missing.png", "caption": "blue"},  # missing_file
          {"image": "missing.png", "caption": "navy"}]  # (its 2nd row)
  listing = tmp_path / "pairs.jsonl"
  listing.write_text("\n".join(json.dumps(r) for r in rows))
  ev = registry.get("evaluator", "retrieval")(
      _colour_predict_fn(), mesh=_mesh(), data=f"jsonl:{listing}",
      pp_img="decode|resize(4)|value_range(0,1)|keep('image')",
      pp_txt="tokenize(max_len=8)", batch_size=8)
  got = dict(ev.run(None))
  # Images 0.png ("red") and 1.png ("green"); 2.png has no usable caption.
  assert len(ev.last["zimg"]) == 2 and len(ev.last["ztxt"]) == 2
  np.testing.assert_array_equal(ev.last["text_to_image"], [0, 1])
  assert got["retrieval/pairs/img2txt_r@1"] == 1.0
  assert got["retrieval/pairs/skipped"] == 5  # of the 7 rows
  assert got["retrieval/pairs/skipped/bad_caption"] == 3
  assert got["retrieval/pairs/skipped/missing_file"] == 2


def test_curves_leave_skip_counts_out(tmp_path, monkeypatch):
  from big_vl import plots  # pylint: disable=g-import-not-at-top
  figs = []
  monkeypatch.setattr(plots, "save", lambda fig, path, dpi=100: figs.append(
      fig))
  rows = [{"step": 1, "train/loss": 2.0, "data/skipped": 1},
          {"step": 2, "zeroshot/d/top1": 0.5, "zeroshot/d/skipped": 3,
           "zeroshot/d/skipped/decode": 3}]
  plots.plot_curves(rows, str(tmp_path / "c.png"))
  axes = [ax for ax in figs[0].axes if ax.get_title()]
  assert [ax.get_title() for ax in axes] == ["training", "zeroshot/d"]
  assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["top1"]
