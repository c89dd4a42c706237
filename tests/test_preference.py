"""Preference scorers (issue #21): the preference data, the loss (K = 2 is
the logistic pairwise loss), K candidates per row through the model, the
rank metrics, and configs/preference.py trained with its frozen blocks."""

import json

import jax
import numpy as np
import pytest

from big_vl import config as config_lib
from big_vl import models
from big_vl import pretrained
from big_vl import score
from big_vl import train as train_lib
from big_vl.data import pp as pp_lib
from big_vl.data import sources
from big_vl.data.builders import demo_prefs
from big_vl.evaluators import preference as preference_eval
from big_vl.losses import preference
from big_vl.models import two_towers
from big_vl.predict import Predictor


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_two_candidates_give_the_logistic_pairwise_loss():
  rng = np.random.default_rng(0)
  zimg = _unit(rng.normal(size=(6, 2, 8))).astype(np.float32)
  ztxt = _unit(rng.normal(size=(6, 8))).astype(np.float32)
  choice = np.array([0, 1, 1, 0, 1, 0])
  t = np.float32(7.0)
  loss, metrics = preference.preference_loss(
      {"zimg": zimg, "ztxt": ztxt, "t": t}, {"choice": choice})
  s = t * np.einsum("bkd,bd->bk", zimg, ztxt)
  chosen, other = s[np.arange(6), choice], s[np.arange(6), 1 - choice]
  want = np.mean(np.log1p(np.exp(-(chosen - other))))  # -log sigmoid
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert float(metrics["choice_acc"]) == pytest.approx(
      np.mean(chosen > other))
  # K captions per image: the same numbers with the roles swapped.
  loss_t, _ = preference.preference_loss(
      {"zimg": ztxt, "ztxt": zimg, "t": t}, {"choice": choice})
  assert float(loss_t) == pytest.approx(want, rel=1e-5)
  with pytest.raises(ValueError, match="K candidate"):
    preference.preference_loss({"zimg": ztxt, "ztxt": ztxt, "t": t},
                               {"choice": choice})
  # Gradients favour the chosen candidate.
  grad = jax.grad(lambda z: preference.preference_loss(
      {"zimg": z, "ztxt": ztxt, "t": t}, {"choice": choice})[0])(zimg)
  step = -np.einsum("bkd,bd->bk", np.asarray(grad), ztxt)
  assert (step[np.arange(6), choice] > step[np.arange(6), 1 - choice]).all()


def test_rank_metrics_on_known_orders():
  ratings = np.array([[0.9, 0.5, 0.1, 0.3], [0.2, 0.8, 0.4, 0.6]])
  perfect = preference_eval.rank_metrics(ratings * 2, ratings)
  assert perfect == {"pairwise_acc": 1.0, "choice_acc": 1.0,
                     "spearman": pytest.approx(1.0),
                     "kendall": pytest.approx(1.0)}
  reverse = preference_eval.rank_metrics(-ratings, ratings)
  assert reverse["pairwise_acc"] == 0.0 and reverse["choice_acc"] == 0.0
  assert reverse["spearman"] == pytest.approx(-1.0)
  assert reverse["kendall"] == pytest.approx(-1.0)
  flat = preference_eval.rank_metrics(np.zeros((2, 4)), ratings)
  assert flat["pairwise_acc"] == 0.5 and flat["kendall"] == 0.0
  # Row 0 right, row 1: one swapped pair (0.4 vs 0.6) of 6.
  scores = np.array([[4, 3, 1, 2], [1, 4, 3, 2]], np.float64)
  defects = np.array([[0, 1, 2, 3], [0, 1, 2, 3]])
  got = preference_eval.rank_metrics(scores, ratings, defects,
                                     ("a", "b", "c", "d"))
  assert got["pairwise_acc"] == pytest.approx(11 / 12)
  assert got["pairwise_acc/c"] == pytest.approx(5 / 6)
  assert got["pairwise_acc/a"] == 1.0
  assert got["kendall"] == pytest.approx((1 + 4 / 6) / 2)
  assert got["spearman"] == pytest.approx((1 + 0.8) / 2)


def test_preference_data_and_pp():
  for kind, defects in (("images", demo_prefs.IMAGE_DEFECTS),
                        ("captions", demo_prefs.CAPTION_DEFECTS)):
    train = sources.get(f"tfds:big_vl_demo_prefs/{kind}_small:train")
    test = sources.get(f"tfds:big_vl_demo_prefs/{kind}_small:test")
    held = defects.index(demo_prefs.HELD_OUT)
    seen = lambda src: {int(d) for i in range(len(src))  # pylint: disable=cell-var-from-loop
                        for d in src[i]["hidden"]["defects"]}
    assert held not in seen(train) and held in seen(test)
    agree = []
    for i in range(len(test)):
      r = test[i]
      assert r["choice"] == int(np.argmax(r["ratings"]))
      quality = r["hidden"]["quality"]
      want = [demo_prefs.IMAGE_QUALITY if kind == "images" else
              demo_prefs.CAPTION_QUALITY][0]
      assert list(quality) == pytest.approx(
          [want[defects[d]] for d in r["hidden"]["defects"]])
      agree.append(np.argmax(r["ratings"]) == np.argmax(quality))
    assert 0.7 < np.mean(agree) < 1.0  # A noisy, mostly right rater.
  record = sources.get("tfds:big_vl_demo_prefs/images_small:test")[0]
  out = pp_lib.build(
      "each('decode|resize(16)|value_range(-1,1)', key='images', "
      "out='image')|tokenize(max_len=12, key='prompt', out='text')|"
      "unnest('hidden')|keep('image','text','defects')")(record)
  assert out["image"].shape == (4, 16, 16, 3)
  assert out["text"].shape == (12,) and out["defects"].shape == (4,)
  with pytest.raises(pp_lib.CorruptRecordError):
    pp_lib.build("each('decode', key='images')")({"images": [b"junk"]})


def test_k_images_per_row_embed_like_single_images():
  model = models.get({
      "name": "two_towers", "out_dim": 8,
      "image": {"width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2,
                "patch_size": 8, "pool_type": "gap"},
      "text": {"width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2,
               "vocab_size": 100, "max_len": 6, "pool_type": "eot"}})
  params = two_towers.init_params(model, jax.random.key(0), (1, 16, 16, 3),
                                  (1, 6))
  images = jax.random.normal(jax.random.key(1), (3, 4, 16, 16, 3))
  out = two_towers.outputs(model, {"params": params}, {"image": images})
  flat = two_towers.outputs(model, {"params": params},
                            {"image": images.reshape(12, 16, 16, 3)})
  assert out["zimg"].shape == (3, 4, 8)
  np.testing.assert_allclose(out["zimg"].reshape(12, 8), flat["zimg"],
                             atol=1e-6)


@pytest.fixture(scope="module")
def demo_run(demo_data, tmp_path_factory):
  del demo_data
  path = str(tmp_path_factory.mktemp("pref") / "demo")
  config = config_lib.load_config("configs/demo.py:runlocal")
  config.evals = {}
  train_lib.train(config, path)
  return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["images", "captions"])
def test_preference_training_keeps_frozen_blocks(demo_run, kind, tmp_path):
  config = config_lib.load_config(
      f"configs/preference.py:runlocal,init={demo_run},kind={kind},"
      "unfreeze=1")
  assert config.frozen == (
      "img/Transformer/encoderblock_(0)/.*",
      "img/(embedding|pos_embedding|Embed_0)(/.*)?",
      "txt/Encoder_0/encoderblock_(0)/.*",
      "txt/(embedding|pos_embedding|Embed_0)(/.*)?")
  result = train_lib.train(config, str(tmp_path / "pref"))
  assert result["step"] == 6
  _, before = pretrained.load(demo_run)
  _, after = pretrained.load(str(tmp_path / "pref"))
  for frozen in (("img", "Transformer", "encoderblock_0"),
                 ("img", "embedding"), ("img", "pos_embedding"),
                 ("txt", "Encoder_0", "encoderblock_0"), ("txt", "Embed_0")):
    assert _same(before, after, frozen), frozen
  for trained in (("img", "Transformer", "encoderblock_1"), ("img", "head"),
                  ("txt", "Encoder_0", "encoderblock_1"), ("t",)):
    assert not _same(before, after, trained), trained
  rows = [json.loads(line) for line in
          open(tmp_path / "pref" / "metrics.jsonl")]
  losses = [r["train/preference/loss"] for r in rows
            if "train/preference/loss" in r]
  assert len(losses) == 6 and np.isfinite(losses).all()
  final = {k: v for r in rows for k, v in r.items()}
  prefix = f"preference/demo_prefs_{kind}"
  for key in ("pairwise_acc", "choice_acc",
              f"pairwise_acc/{demo_prefs.HELD_OUT}"):
    assert 0 <= final[f"{prefix}/{key}"] <= 1, key
  for key in ("spearman", "kendall"):
    assert -1 <= final[f"{prefix}/{key}"] <= 1, key
  # The scorer ranks candidates (score CLI's library functions).
  predictor = Predictor.load(str(tmp_path / "pref"),
                             pp_img="decode|resize(32)|value_range(-1,1)",
                             pp_txt="tokenize(max_len=24)")
  record = sources.get("tfds:big_vl_demo_prefs/images_small:test")[0]
  order, scores = score.rank_images(predictor, record["prompt"].decode(),
                                    list(record["images"]))
  assert sorted(order) == [0, 1, 2, 3]
  assert scores[order[0]] == scores.max()


def _same(a, b, keys):
  return all(np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(_get(a, keys)), jax.tree.leaves(_get(b, keys))))


def _get(tree, keys):
  for k in keys:
    tree = tree[k]
  return tree
