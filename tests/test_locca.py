"""LocCa: task sequences with box tokens, several rows per image, and the
localisation evaluator's scoring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vl import losses
from big_vl import registry
from big_vl.data import locca
from big_vl.data import pp as pp_lib
from big_vl.evaluators import locca as locca_eval
from big_vl.models import captioner as captioner_lib

SOT, EOT = 49406, 49407
LAYOUT = locca.Layout(text_vocab=49408, num_bins=64)
BIN0 = 49408
CAP, AREF, GCAP, SEP = 49472, 49473, 49474, 49475


def test_layout_ids_and_box_quantisation():
  assert LAYOUT.vocab_size == 49476
  assert [LAYOUT.task_id(t) for t in locca.TASKS] == [CAP, AREF, GCAP]
  assert LAYOUT.sep_id == SEP
  assert locca.Layout.of_model(49476, 49408) == LAYOUT  # bins read back
  assert locca.Layout.of_model(49412 + 16, 49408).num_bins == 16
  # floor(v * 64), the last bin for 1.0.
  assert LAYOUT.box_ids([0.25, 0.5, 0.75, 1.0]) == [
      BIN0 + 16, BIN0 + 32, BIN0 + 48, BIN0 + 63]
  assert LAYOUT.box_ids([0.0, 0.999, -0.1, 1.5]) == [
      BIN0, BIN0 + 63, BIN0, BIN0 + 63]
  np.testing.assert_allclose(
      LAYOUT.box_of([BIN0 + 16, BIN0 + 32, BIN0 + 48, BIN0 + 63]),
      [16.5 / 64, 32.5 / 64, 48.5 / 64, 63.5 / 64])
  # Any box comes back within half a bin.
  rng = np.random.default_rng(0)
  for _ in range(50):
    lo = rng.uniform(0, 0.5, 2)
    box = np.concatenate([lo, lo + rng.uniform(0.01, 0.5, 2)])
    back = LAYOUT.box_of(LAYOUT.box_ids(box))
    assert np.all(np.abs(back - box) <= 0.5 / 64 + 1e-12)
  # Not a box: a text id, 3 ids, a reversed box.
  assert LAYOUT.box_of([BIN0, 320, BIN0 + 5, BIN0 + 5]) is None
  assert LAYOUT.box_of([BIN0, BIN0, BIN0 + 5]) is None
  assert LAYOUT.box_of([BIN0 + 9, BIN0, BIN0 + 5, BIN0 + 5]) is None
  assert LAYOUT.box_of([BIN0 + 5, BIN0, BIN0 + 5, BIN0 + 5]) is not None
  with pytest.raises(ValueError, match="Unknown LocCa task 'det'"):
    LAYOUT.task_id("det")
  with pytest.raises(ValueError, match="at least 2 bins"):
    locca.Layout(num_bins=1)


def test_iou_by_hand():
  assert locca.iou([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
  assert locca.iou([0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]) == 0.0
  # Overlap 0.5 x 1 = 0.5; union 1 + 0.5 - 0.5 = 1.
  assert locca.iou([0, 0, 1, 1], [0, 0, 0.5, 1]) == pytest.approx(0.5)
  # Overlap 0.25 of two unit-ish boxes: 0.25 / (0.5 + 0.5 - 0.25) = 1/3.
  assert locca.iou([0, 0, 0.5, 1], [0.25, 0, 0.75, 1]) == pytest.approx(1 / 3)


def test_sequences_by_hand():
  box = [0.25, 0.5, 0.75, 1.0]
  bins = [BIN0 + 16, BIN0 + 32, BIN0 + 48, BIN0 + 63]
  kw = dict(caption=[1, 2, 3], region=[7, 8], box=box, max_len=14,
            sot_id=SOT, eot_id=EOT)
  ids, w = locca.sequence(LAYOUT, "cap", **kw)
  assert ids.tolist() == [SOT, CAP, 1, 2, 3, EOT] + [0] * 8
  # The task token is the prompt (weight 0); the words and the end count.
  assert w.tolist() == [0, 0, 1, 1, 1, 1] + [0] * 8
  ids, w = locca.sequence(LAYOUT, "aref", **kw)
  assert ids.tolist() == [SOT, AREF] + bins + [SEP, 7, 8, EOT] + [0] * 4
  assert w.tolist() == [0, 0] + [1] * 8 + [0] * 4
  ids, w = locca.sequence(LAYOUT, "gcap", **kw)
  assert ids.tolist() == [SOT, GCAP, 7, 8, SEP] + bins + [EOT] + [0] * 4
  # Too long: the words are cut, never the box or the end token.
  ids, _ = locca.sequence(LAYOUT, "gcap", **{**kw, "max_len": 9,
                                             "region": [7, 8, 9]})
  assert ids.tolist() == [SOT, GCAP, 7, SEP] + bins + [EOT]
  ids, _ = locca.sequence(LAYOUT, "cap", **{**kw, "max_len": 4})
  assert ids.tolist() == [SOT, CAP, 1, EOT]
  with pytest.raises(ValueError, match="no room for a box task"):
    locca.sequence(LAYOUT, "aref", **{**kw, "max_len": 8})


def _record():
  return {"captions": [b"a red circle", b"a red circle next to a star"],
          "objects": {"label": [0, 8], "bbox": [
              np.array([0.1, 0.1, 0.5, 0.5], np.float32),
              np.array([0.6, 0.6, 0.9, 0.95], np.float32)]}}


def test_the_pp_op_writes_every_task_row():
  classes = [f"class {i}" for i in range(10)]
  classes[0], classes[8] = "red circle", "green star"
  op = pp_lib.build(f"locca_tasks(16, classes={classes!r})")
  tok = registry.get("tokenizer", "clip_bpe")()
  out = op(_record(), None)  # Evaluation: the first caption and object.
  assert out["text"].shape == (3, 16) and out["text"].dtype == np.int32
  assert out["text_weights"].shape == (3, 16)
  kw = dict(max_len=16, sot_id=SOT, eot_id=EOT,
            box=[0.1, 0.1, 0.5, 0.5], caption=tok.encode("a red circle"),
            region=tok.encode("red circle"))
  for row, task in zip(out["text"], locca.TASKS):
    np.testing.assert_array_equal(row, locca.sequence(LAYOUT, task, **kw)[0])
  # Training draws the caption and the object: both objects show up.
  rng = np.random.default_rng(0)
  seen = {tuple(op(_record(), rng)["text"][2][2:4]) for _ in range(40)}
  assert seen == {tuple(tok.encode("red circle")),
                  tuple(tok.encode("green star"))}
  only = pp_lib.build(f"locca_tasks(16, classes={classes!r}, "
                      "tasks=('gcap',))")
  assert only(_record(), None)["text"].shape == (1, 16)
  # Without objects a box task has nothing to say: the record is skipped.
  record = _record()
  record["objects"] = {"label": [], "bbox": np.zeros((0, 4))}
  with pytest.raises(pp_lib.CorruptRecordError) as e:
    op(record, None)
  assert e.value.reason == "bad_caption"
  with pytest.raises(ValueError, match="choose from"):
    pp_lib.build(f"locca_tasks(16, classes={classes!r}, tasks=('det',))")



class _Unreadable:
  """Records of `_record()`; reading those in `bad` fails (a corrupt file)."""

  def __init__(self, n, bad):
    self.n, self.bad = n, bad

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if i in self.bad:
      raise pp_lib.CorruptRecordError(f"record {i}", reason="decode")
    return _record()


def test_one_query_per_object_and_unreadable_records_are_counted():
  from big_vl.data import pipeline  # pylint: disable=g-import-not-at-top
  view = locca_eval._OneObject(_Unreadable(3, {1}), "objects", True)
  # Two objects per readable record; the unreadable one stays one entry.
  assert view.pairs == [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)]
  np.testing.assert_array_equal(view[1]["objects"]["label"], [8])
  np.testing.assert_allclose(view[1]["objects"]["bbox"],
                             [[0.6, 0.6, 0.9, 0.95]])
  firsts = locca_eval._OneObject(_Unreadable(3, {0}), "objects", False)
  assert firsts.pairs == [(0, 0), (1, 0), (2, 0)]
  with pytest.raises(ValueError, match="have no 'boxes' field"):
    locca_eval._OneObject(_Unreadable(3, {0}), "boxes", True)
  # The evaluation pipeline skips it with its reason, as any other.
  classes = [f"class {i}" for i in range(10)]
  batches = list(pipeline.eval_batches(
      view, pp=f"locca_tasks(16, classes={classes!r})|keep('text')",
      batch_size=8))
  reasons = np.concatenate([b[pipeline.SKIP_REASON_KEY] for b in batches])
  mask = np.concatenate([b[pipeline.MASK_KEY] for b in batches])
  assert mask.tolist() == [True, True, False, True, True] + [False] * 3
  assert [pipeline.SKIP_REASONS[r] for r in reasons[:5] if r >= 0] == [
      "decode"]


def test_rows_of_an_image_equal_the_image_repeated():
  """text [B, T, L]: the image is encoded once and each row decoded from
  it, as if each row came with its own copy of the image."""
  model = captioner_lib.Captioner(
      image={"variant": "mu/8"},
      decoder={"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 2},
      vocab_size=60, max_len=9)
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
  text = jnp.asarray(rng.integers(1, 60, size=(2, 3, 9)), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), image, text)["params"]
  params["decoder"]["head"]["kernel"] = jax.random.normal(
      jax.random.PRNGKey(1), params["decoder"]["head"]["kernel"].shape)
  rows = model.apply({"params": params}, image, text)
  assert rows.shape == (2, 3, 8, 60)
  flat = model.apply({"params": params}, jnp.repeat(image, 3, axis=0),
                     text.reshape(6, 9))
  np.testing.assert_allclose(rows.reshape(6, 8, 60), flat, atol=1e-6)
  # The loss over [B, T, L] is the loss over the B * T rows.
  weights = jnp.asarray(rng.integers(0, 2, size=(2, 3, 9)), jnp.float32)
  got = losses.get("caption")({"logits": rows}, {"text": text, "w": weights},
                              weights_key="w")
  want = losses.get("caption")(
      {"logits": flat}, {"text": text.reshape(6, 9),
                         "w": weights.reshape(6, 9)}, weights_key="w")
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  np.testing.assert_allclose(got[1]["token_acc"], want[1]["token_acc"])
  with pytest.raises(ValueError, match="shaped"):
    losses.get("caption")({"logits": rows}, {"text": text,
                                             "w": weights[:, 0]},
                          weights_key="w")


def test_prefixes_force_each_row_up_to_its_separator():
  text = jnp.asarray([[SOT, AREF, BIN0, BIN0 + 1, BIN0 + 2, BIN0 + 3, SEP, 7,
                       EOT, 0],
                      [SOT, GCAP, 7, 8, SEP, BIN0, BIN0, BIN0, BIN0, EOT],
                      [SOT, CAP, 5, 6, EOT, 0, 0, 0, 0, 0]])
  got = locca_eval.prefixes(text, SEP).tolist()
  assert got == [[AREF, BIN0, BIN0 + 1, BIN0 + 2, BIN0 + 3, SEP, -1, -1, -1],
                 [GCAP, 7, 8, SEP, -1, -1, -1, -1, -1],
                 [CAP, -1, -1, -1, -1, -1, -1, -1, -1]]


def test_a_query_is_scored_against_its_true_box_and_description():
  tok = registry.get("tokenizer", "clip_bpe")()
  words = tok.encode("red circle")
  box = [0.25, 0.5, 0.75, 1.0]
  kw = dict(caption=[], region=words, box=box, max_len=16, sot_id=SOT,
            eot_id=EOT)
  text = np.stack([locca.sequence(LAYOUT, t, **kw)[0]
                   for t in ("aref", "gcap")])
  # A decoder that writes the truth: a hit on both tasks; the decoded box
  # is the bin centres, IoU with the true box by hand.
  row = locca_eval.score_query(LAYOUT, tok, text, text[:, 1:], box)
  assert row["description"] == "red circle"
  assert row["predicted_description"] == "red circle"
  assert row["description_hit"] is True
  centres = [16.5 / 64, 32.5 / 64, 48.5 / 64, 63.5 / 64]
  assert row["predicted_box"] == pytest.approx(centres)
  assert row["iou"] == pytest.approx(locca.iou(centres, box))
  assert row["iou"] > 0.9  # Bins of 1/64: at most half a bin off.
  # A box shifted by half its height (IoU 1/3) and another description.
  wrong = text[:, 1:].copy()
  sep = list(wrong[1]).index(SEP)
  wrong[1, sep + 1] += 16  # ymin 0.25 -> 0.5
  wrong[1, sep + 3] = BIN0 + 63  # ymax -> 1.0
  wrong[0, 6:8] = tok.encode("red star") + [EOT] * (
      2 - len(tok.encode("red star")))
  row = locca_eval.score_query(LAYOUT, tok, text, wrong, box)
  assert row["description_hit"] is False
  assert row["predicted_description"] != "red circle"
  want = locca.iou([32.5 / 64, 32.5 / 64, 63.5 / 64, 63.5 / 64], box)
  assert row["iou"] == pytest.approx(want)
  # Tokens that are not a box: invalid, IoU 0.
  wrong[1, sep + 1] = words[0]
  row = locca_eval.score_query(LAYOUT, tok, text, wrong, box)
  assert row["predicted_box"] is None and row["iou"] == 0.0


@pytest.mark.slow
def test_locca_runlocal_trains_and_evaluates(demo_data, tmp_path):
  """configs/locca.py:runlocal trains on all three tasks; its evaluators
  decode with the task prompts, and the locca metrics are those of the
  rows it writes; a query's decoded tokens equal the uncached decoder's."""
  del demo_data
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from big_vl import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl import decode  # pylint: disable=g-import-not-at-top
  from big_vl import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from big_vl import train as train_lib  # pylint: disable=g-import-not-at-top
  from big_vl.data import sources  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config(os.path.join(root, "configs", "locca.py")
                                  + ":runlocal")
  config.mesh = (("data", 1),)
  result = train_lib.train(config, str(tmp_path), devices=jax.devices()[:1])
  assert result["step"] == 20
  rows = [r for r in metrics_lib.read_jsonl(tmp_path / "metrics.jsonl")
          if "train/caption/loss" in r]
  # From about ln(49476) = 10.81 down.
  assert rows[0]["train/caption/loss"] < 10.82
  assert rows[-1]["train/caption/loss"] < rows[0]["train/caption/loss"] - 0.5
  final = result["final"]
  assert final["captioning/demo_shapes/skipped"] == 0
  assert final["locca/demo_shapes/skipped"] == 0
  queries = [json.loads(line) for line in
             (tmp_path / "locca.jsonl").read_text().splitlines()]
  # Every object of the first 32 test images is a query.
  source = sources.get(config.evals.locca.data, split="test[:32]")
  counts = [len(source[i]["objects"]["label"]) for i in range(32)]
  assert final["locca/demo_shapes/queries"] == len(queries) == sum(counts)
  assert [(q["index"], q["object"]) for q in queries] == [
      (i, k) for i in range(32) for k in range(counts[i])]
  ious = np.array([q["iou"] for q in queries])
  assert final["locca/demo_shapes/grounding_acc"] == pytest.approx(
      np.mean(ious >= 0.5))
  assert final["locca/demo_shapes/grounding_miou"] == pytest.approx(
      ious.mean())
  first = np.array([q["object"] == 0 for q in queries])
  assert final["locca/demo_shapes/grounding_acc_first"] == pytest.approx(
      np.mean(ious[first] >= 0.5))
  assert final["locca/demo_shapes/grounding_acc_others"] == pytest.approx(
      np.mean(ious[~first] >= 0.5))
  assert final["locca/demo_shapes/region_caption_acc"] == pytest.approx(
      np.mean([q["description_hit"] for q in queries]))
  names = {q["description"] for q in queries}
  assert names <= set(config_lib.load_config_module(
      os.path.join(root, "configs", "locca.py")).demo_shapes.CLASS_NAMES)
  assert (tmp_path / "locca.png").exists()
  captions = [json.loads(line) for line in
              (tmp_path / "captions.jsonl").read_text().splitlines()]
  assert len(captions) == 64
  # The evaluator's decoding is the plain greedy decoder's with the same
  # prefix: query 1's rows, cached and uncached.
  params = ckpt_lib.restore_params(str(tmp_path / "checkpoints"), 20)
  model = train_lib.make_model(config)
  example = pp_lib.build(config.evals.locca.pp)(source[0], None)
  text = jnp.asarray(example["text"])
  image = jnp.repeat(jnp.asarray(example["image"])[None], 2, axis=0)
  prefix = locca_eval.prefixes(text, SEP)
  ends = dict(start_id=SOT, end_id=EOT, prefix=prefix)
  cached = decode.greedy(model, params, image, **ends)
  np.testing.assert_array_equal(
      cached, decode.greedy_uncached(model, params, image, **ends))
  tok = registry.get("tokenizer", "clip_bpe")()
  row = locca_eval.score_query(LAYOUT, tok, np.asarray(text),
                               np.asarray(cached),
                               source[0]["objects"]["bbox"][0])
  assert {k: v for k, v in queries[0].items()
          if k not in ("index", "object")} == json.loads(json.dumps(row))
  # A Predictor of the run captions, locates and describes as its
  # evaluators decode (their first rows).
  from big_vl import predict  # pylint: disable=g-import-not-at-top
  predictor = predict.Predictor.load(str(tmp_path), batch_size=8)
  images = [source[q["index"]]["image"] for q in queries[:5]]
  boxes = predictor.locate(images, [q["description"] for q in queries[:5]])
  for q, box in zip(queries[:5], boxes):
    if q["predicted_box"] is None:
      assert np.isnan(box).all()
    else:
      np.testing.assert_allclose(box, q["predicted_box"])
  assert predictor.describe(images, [q["box"] for q in queries[:5]]) == [
      q["predicted_description"] for q in queries[:5]]
  assert predictor.caption([source[i]["image"] for i in range(3)]) == [
      c["caption"] for c in captions[:3]]
  with pytest.raises(ValueError, match="task prompt"):
    predictor.caption(images[:1], beam=2)


def _one_locca_step(grad_accum_steps):
  """(params before, after, metrics) of one trainer step of the runlocal
  LocCa on 8 demo images (3 task rows each), Adam with a huge eps so that
  the update is proportional to the gradient."""
  import os  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl import sharding  # pylint: disable=g-import-not-at-top
  from big_vl import train as train_lib  # pylint: disable=g-import-not-at-top
  from big_vl.data import sources  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config(os.path.join(root, "configs", "locca.py")
                                  + ":runlocal")
  config.evals = ml_collections.ConfigDict()
  config.mesh = (("data", 1),)
  config.lr, config.wd, config.grad_clip_norm = 1e3, 0.0, None
  config.optim = dict(name="adam", b1=0.9, b2=0.999, eps=1e3)
  config.schedule, config.warmup_steps = dict(name="constant"), 0
  config.total_steps = config.log_steps = config.ckpt_steps = 1
  config.grad_accum_steps = grad_accum_steps
  source = sources.get(config.input.data, split="train")
  pp = pp_lib.build(config.input.pp)
  rng = np.random.default_rng(0)
  examples = [pp(source[i], rng) for i in range(8)]
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  run = train_lib.build(config, mesh, examples[0], 1, 0)
  state = run.init_state()
  before = jax.tree.map(np.array, state["params"])
  state, metrics = run.train_step(state, sharding.to_global(batch, mesh))
  return before, jax.tree.map(np.array, state["params"]), jax.device_get(
      metrics)


def test_accumulated_locca_step_equals_the_full_batch_step(demo_data):
  """GradCache splits the images, each with its task rows and weights: 2
  micro-batches give the full batch's update and losses."""
  del demo_data
  before, full, m_full = _one_locca_step(1)
  moved = jax.tree.map(lambda x, y: np.abs(x - y).max(), before, full)
  assert moved["decoder"]["head"]["kernel"] > 1e-3  # a real step
  _, acc, m_acc = _one_locca_step(2)
  for x, y, b in zip(jax.tree.leaves(acc), jax.tree.leaves(full),
                     jax.tree.leaves(before)):
    np.testing.assert_allclose(x - b, y - b, rtol=1e-4,
                               atol=1e-6 * np.abs(y - b).max() + 1e-6)
  for key in ("train/loss", "train/caption/loss",
              "train/caption/token_acc"):
    np.testing.assert_allclose(m_acc[key], m_full[key], rtol=2e-6,
                               err_msg=key)
