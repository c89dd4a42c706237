"""Few-shot adaptation (big_vl.adapt): methods, protocol, prompts, the CLI."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from big_vl import config as config_lib
from big_vl import models
from big_vl.adapt import adapters
from big_vl.adapt import backbone as backbone_lib
from big_vl.adapt import prompt
from big_vl.adapt import protocol
from big_vl.adapt import run as run_lib
from big_vl.models import two_towers

CLASSES = ["red circle", "blue square", "green triangle", "yellow star"]
MAX_LEN = 12


@pytest.fixture(scope="module")
def backbone():
  """A small random two-tower model with the CLIP BPE tokenizer."""
  model = models.get({"name": "two_towers",
                      "image": {"variant": "mu/8", "depth": 1},
                      "text": {"variant": "mu", "depth": 2, "max_len": MAX_LEN,
                               "causal": True, "pool_type": "eot"},
                      "out_dim": 16})
  params = jax.tree.map(np.asarray, two_towers.init_params(
      model, jax.random.key(0), (1, 16, 16, 3), (1, MAX_LEN)))
  return backbone_lib.Backbone(
      model, params, pp_img="keep('image','label')",
      pp_txt=f"tokenize(max_len={MAX_LEN})", batch_size=8)


def _task(backbone=None, *, k=8, n_test=200, seed=0, dim=16, sep=3.0):
  """Synthetic features: 4 Gaussian classes; zero-shot weights that point
  only loosely at them (so adaptation has something to fix)."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(len(CLASSES), dim))

  def draw(n_per):
    y = np.repeat(np.arange(len(CLASSES)), n_per)
    x = sep * means[y] + rng.normal(size=(len(y), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(
        np.float32), y

  pool_x, pool_y = draw(k + 8)
  test_x, test_y = draw(n_test // len(CLASSES))
  if backbone is not None:
    weights = backbone.zeroshot_weights(CLASSES, ["a photo of a {}."])
    scale = backbone.scale
  else:
    w = means + 2.5 * rng.normal(size=means.shape)
    weights = (w / np.linalg.norm(w, axis=1, keepdims=True)).T.astype(
        np.float32)
    scale = 20.0
  task = protocol.make_task(pool_x, pool_y, test_x, k=k, seed=seed,
                            classnames=CLASSES, zs_weights=weights,
                            templates=["a photo of a {}."], scale=scale,
                            backbone=backbone)
  return task, test_y


def test_split_draws_disjoint_shots_and_validation_per_class():
  labels = np.repeat(np.arange(3), 20)
  shots, val = protocol.draw_split(labels, 8, 3, seed=1)
  assert len(np.intersect1d(shots, val)) == 0
  assert np.bincount(labels[shots]).tolist() == [8, 8, 8]
  assert np.bincount(labels[val]).tolist() == [4, 4, 4]  # min(k, 4)
  again, _ = protocol.draw_split(labels, 8, 3, seed=1)
  other, _ = protocol.draw_split(labels, 8, 3, seed=2)
  np.testing.assert_array_equal(shots, again)
  assert not np.array_equal(shots, other)
  assert protocol.val_shots(1) == 1 and protocol.val_shots(16) == 4
  assert protocol.val_shots(16, 2) == 2


def test_test_labels_cannot_be_read_before_scoring():
  # By construction: a Task has no test labels, and the labels given to the
  # scorer raise on any read until the scorer itself reveals them.
  assert "test_y" not in {f.name for f in dataclasses.fields(protocol.Task)}
  hidden = protocol.HiddenLabels([0, 1, 1])
  for read in (np.asarray, lambda h: h.tolist(), lambda h: h[0],
               lambda h: h == 1):
    with pytest.raises((protocol.HiddenLabelsError, TypeError)):
      read(hidden)
  with pytest.raises(protocol.HiddenLabelsError):
    np.asarray(hidden)
  metrics = protocol.score(np.eye(3)[[0, 1, 0]], hidden)
  assert metrics["acc1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("method", ["zeroshot", "linear_probe",
                                    "clip_adapter", "tip_adapter",
                                    "tip_adapter_f"])
def test_feature_methods_fit_on_validation_and_beat_weak_zero_shot(method):
  task, test_y = _task()
  labels = protocol.HiddenLabels(test_y)
  hparams = {"clip_adapter": dict(steps=100, eval_every=25),
             "tip_adapter_f": dict(steps=40, eval_every=20)}.get(method, {})
  metrics, result = run_lib.fit_and_score(method, task, labels, hparams)
  assert result["logits"].shape == (len(test_y), len(CLASSES))
  assert np.all(np.isfinite(result["logits"]))
  assert 0.0 <= result["val_acc"] <= 1.0
  zs = protocol.accuracy(adapters.zeroshot_logits(task, task.test_x), test_y)
  if method == "zeroshot":
    assert metrics["acc1"] == pytest.approx(zs)
  else:
    # Well-separated classes, poorly aimed zero-shot weights: 8 shots fix
    # most of it.
    assert metrics["acc1"] > max(zs + 0.1, 0.8), (metrics, zs)


def test_tip_adapter_with_alpha_zero_is_zero_shot_exactly():
  task, _ = _task()
  tip = adapters.tip_adapter(task, alphas=[0.0], betas=[1.0, 5.0])
  np.testing.assert_array_equal(
      tip["logits"], adapters.zeroshot_logits(task, task.test_x))
  assert tip["hparams"]["alpha"] == 0.0
  # And the cache does change predictions once alpha > 0.
  cached = adapters.tip_adapter(task, alphas=[5.0], betas=[5.0])
  assert not np.array_equal(cached["logits"], tip["logits"])


def test_clip_adapter_at_ratio_zero_is_zero_shot():
  task, _ = _task()
  params = {"image": adapters._adapter_init(16, 4, jax.random.key(0))}
  np.testing.assert_allclose(
      adapters.clip_adapter_logits(params, task.test_x, task.zs_weights,
                                   task.scale, 0.0, "image"),
      adapters.zeroshot_logits(task, task.test_x), rtol=1e-5, atol=1e-5)


def test_prompt_layouts_put_the_class_where_asked(backbone):
  tok = backbone.tokenize
  end = prompt.PromptLayout.build(tok, CLASSES, n_ctx=4, position="end")
  assert end.tokens.shape == (4, MAX_LEN)
  # [SOT, 4 slots, class tokens..., ".", EOT]
  np.testing.assert_array_equal(end.slots[:, 1:5], np.tile(np.arange(4),
                                                           (4, 1)))
  middle = prompt.PromptLayout.build(tok, CLASSES, n_ctx=4,
                                     position="middle")
  front = prompt.PromptLayout.build(tok, CLASSES, n_ctx=4, position="front")
  for layout in (middle, front):
    assert sorted(layout.slots[layout.slots >= 0].tolist()) == sorted(
        list(range(4)) * 4)
  assert middle.slots[0, 1:3].tolist() == [0, 1]  # 2 slots before the class
  assert front.slots[0, 1] == -1                  # the class comes first
  shared = end.init_context(backbone, None, seed=0)
  csc = end.init_context(backbone, None, class_specific=True)
  assert shared.shape == (4, 64) and csc.shape == (4, 4, 64)
  table = backbone.token_embedding_table()
  assert end.embeddings(table, csc).shape == (4, MAX_LEN, 64)
  with pytest.raises(ValueError, match="tokenize to 4"):
    end.init_context(backbone, "a photo of")


def test_coop_started_from_words_predicts_like_the_handwritten_prompt(
    backbone):
  task, _ = _task(backbone)
  layout = prompt.PromptLayout.build(backbone.tokenize, CLASSES, n_ctx=4)
  ctx = layout.init_context(backbone, "a photo of a")
  z = np.asarray(prompt.class_features(backbone, backbone.device_params,
                                       layout, ctx))
  np.testing.assert_allclose(z, task.zs_weights.T, atol=2e-6)
  coop_logits = task.scale * task.test_x @ z.T
  zs_logits = adapters.zeroshot_logits(task, task.test_x)
  np.testing.assert_array_equal(coop_logits.argmax(1), zs_logits.argmax(1))


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_prompt_methods_train_and_predict(backbone, method):
  task, test_y = _task(backbone, k=4, n_test=40)
  hparams = dict(steps=30, eval_every=10, lr=5e-3)
  if method == "cocoop":
    hparams.update(batch_size=4, chunk=8)
  metrics, result = run_lib.fit_and_score(
      method, task, protocol.HiddenLabels(test_y), hparams)
  assert result["logits"].shape == (len(test_y), len(CLASSES))
  assert np.all(np.isfinite(result["logits"]))
  assert result["hparams"]["steps"] in (10, 20, 30)
  # The learned prompts fit the shots better than the hand-written one.
  zs_train = protocol.accuracy(
      adapters.zeroshot_logits(task, task.train_x), task.train_y)
  train = protocol.accuracy(result["classify"](task.train_x, CLASSES),
                            task.train_y)
  assert train > zs_train, (train, zs_train)
  # New classes are named through the learned context.
  new = result["classify"](task.test_x, ["purple hexagon", "black dot"])
  assert new.shape == (len(test_y), 2)


@pytest.mark.slow
def test_cli_runs_every_method_writes_results_and_resumes(demo_data,
                                                          tmp_path):
  from big_vl import train as train_lib  # pylint: disable=g-import-not-at-top
  del demo_data
  ckpt = str(tmp_path / "model")
  config = config_lib.load_config("configs/demo.py:runlocal")
  config.evals = {}
  train_lib.train(config, ckpt)
  adapt = config_lib.load_config(f"configs/adapt/demo.py:runlocal,ckpt={ckpt}")
  adapt.shots = (1, 2)
  adapt.seeds = 2
  adapt.test_split = "test[:64]"
  out = run_lib.run(adapt, str(tmp_path / "adapt"), log=lambda *_: None)
  runs = out["runs"]
  assert len(runs) == 2 * 2 * len(adapt.methods)
  names = sorted(os.listdir(tmp_path / "adapt" / "results"))
  assert len(names) == len(runs)
  assert "demo_shapes_coop_2shot_seed1.json" in names
  with open(tmp_path / "adapt" / "results" / names[0]) as f:
    record = json.load(f)
  for key in ("dataset", "model", "pretrained", "task", "metrics", "method",
              "shots", "seed", "hparams", "val_acc"):
    assert key in record
  assert {r["method"] for r in out["base_to_new"]} == {"zeroshot", "coop",
                                                       "cocoop"}
  for r in out["base_to_new"]:
    m = r["metrics"]
    assert m["hm"] == pytest.approx(protocol.harmonic_mean(
        m["base_acc1"], m["new_acc1"]))
  table = (tmp_path / "adapt" / "adapt.md").read_text()
  assert "| coop |" in table and "Base-to-new" in table
  assert (tmp_path / "adapt" / "adapt.png").stat().st_size > 10_000
  # Zero-shot does not depend on the shots.
  zs = [r["metrics"]["acc1"] for r in runs if r["method"] == "zeroshot"]
  assert len(set(zs)) == 1
  # A second command finds every result and fits nothing.
  again = run_lib.run(adapt, str(tmp_path / "adapt"),
                      log=lambda *_: None)
  assert [r["metrics"] for r in again["runs"]] == [r["metrics"]
                                                    for r in runs]
