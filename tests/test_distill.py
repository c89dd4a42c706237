"""Objectives against a teacher: the distill loss (big_vl/losses/distill.py:
a plain reference, the teacher's constancy, the ring against the dense loss
on 8 devices), masked prediction (big_vl/losses/masked_prediction.py), and
runs with a frozen or an EMA teacher (big_vl/train/teacher.py)."""

import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vl import checkpoint as ckpt_lib
from big_vl import config as config_lib
from big_vl import losses
from big_vl import metrics as metrics_lib
from big_vl import objectives
from big_vl import sharding
from big_vl import train as train_lib
from big_vl.losses import distill
from big_vl.losses import masked_prediction


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _inputs(b=16, d=8, dt=6, seed=0):
  """Student embeddings and a teacher of another width that agrees with
  them in part (its embeddings are the student's first dt dimensions plus
  noise)."""
  rng = np.random.default_rng(seed)
  zimg = _unit(rng.normal(size=(b, d)))
  ztxt = _unit(zimg + 0.4 * rng.normal(size=(b, d)))
  timg, ttxt = (_unit(z[:, :dt] + 0.2 * rng.normal(size=(b, dt)))
                for z in (zimg, ztxt))
  return tuple(x.astype(np.float32) for x in (zimg, ztxt, timg, ttxt))


def _aux(t, timg, ttxt, tt):
  return {"t": t, "teacher/zimg": timg, "teacher/ztxt": ttxt,
          "teacher/t": tt}


def _reference(zimg, ztxt, t, timg, ttxt, tt):
  """open_clip's DistillClipLoss in float64 numpy: the mean over images and
  over texts of -sum p_teacher * log p_student, halved."""
  s = t * zimg.astype(np.float64) @ ztxt.T.astype(np.float64)
  q = tt * timg.astype(np.float64) @ ttxt.T.astype(np.float64)

  def ce(teacher, student):
    p = np.exp(teacher - teacher.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    log_q = student - student.max(1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
    return -(p * log_q).sum(1).mean(), -(p * np.log(p)).sum(1).mean()

  rows, cols = ce(q, s), ce(q.T, s.T)
  return (rows[0] + cols[0]) / 2, (rows[1] + cols[1]) / 2


def test_equals_a_plain_reference_and_the_teacher_gets_no_gradient():
  zimg, ztxt, timg, ttxt = _inputs()
  t, tt = np.float32(10.0), np.float32(20.0)
  loss, metrics = distill.distill_loss(zimg, ztxt, _aux(t, timg, ttxt, tt))
  want, entropy = _reference(zimg, ztxt, t, timg, ttxt, tt)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics["kl"], want - entropy, rtol=1e-4,
                             atol=1e-6)
  assert float(metrics["kl"]) > 0.1
  s, q = zimg @ ztxt.T, timg @ ttxt.T
  agree = np.mean(np.concatenate([s.argmax(1) == q.argmax(1),
                                  s.argmax(0) == q.argmax(0)]))
  assert 0 < agree < 1
  np.testing.assert_allclose(metrics["agreement"], agree)
  # Gradients: the student's move, the teacher's are zero.
  grads = jax.grad(lambda *a: distill.distill_loss(
      a[0], a[1], _aux(a[2], a[3], a[4], a[5]))[0], argnums=range(6))(
          zimg, ztxt, t, timg, ttxt, tt)
  assert all(np.abs(g).sum() > 1e-3 for g in grads[:3])
  assert all(np.abs(g).sum() == 0 for g in grads[3:])
  # The reference's gradient by central differences along a direction.
  rng = np.random.default_rng(1)
  dz = rng.normal(size=zimg.shape)
  eps = 1e-4
  numeric = (_reference(zimg + eps * dz, ztxt, t, timg, ttxt, tt)[0]
             - _reference(zimg - eps * dz, ztxt, t, timg, ttxt, tt)[0]) / (
                 2 * eps)
  np.testing.assert_allclose(np.sum(grads[0] * dz), numeric, rtol=1e-3)


def test_a_student_equal_to_its_teacher_has_no_divergence():
  zimg, ztxt, _, _ = _inputs(seed=2)
  t = np.float32(7.0)
  loss, metrics = distill.distill_loss(zimg, ztxt, _aux(t, zimg, ztxt, t))
  np.testing.assert_allclose(metrics["kl"], 0.0, atol=1e-5)
  np.testing.assert_allclose(metrics["agreement"], 1.0)
  np.testing.assert_allclose(loss, _reference(zimg, ztxt, t, zimg, ztxt,
                                              t)[1], rtol=1e-5)


def test_missing_teacher_outputs_are_named_and_objectives_build_it():
  zimg, ztxt, _, _ = _inputs()
  with pytest.raises(ValueError, match=r"teacher/zimg"):
    distill.distill_loss(zimg, ztxt, {"t": 1.0})
  fn = losses.get("distill", impl="ring")
  assert callable(fn)
  objs = objectives.build({"contrastive": {"loss": "softmax", "weight": 1.0},
                           "distill": {"loss": "distill", "weight": 0.5}})
  assert [o.name for o in objs] == ["contrastive", "distill"]


def _value_and_grad(impl, mesh):
  def f(zimg, ztxt, t, timg, ttxt, tt):
    return distill.distill_loss(zimg, ztxt, _aux(t, timg, ttxt, tt),
                                mesh=mesh, impl=impl)
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.parametrize("mesh_config", [[("data", 8)],
                                         [("data", 2), ("fsdp", 4)]])
def test_ring_equals_dense(mesh_config):
  mesh = sharding.make_mesh(mesh_config)
  zimg, ztxt, timg, ttxt = _inputs(b=16, seed=3)
  t, tt = jnp.float32(10.0), jnp.float32(20.0)
  (want, want_m), want_g = _value_and_grad("dense", None)(
      zimg, ztxt, t, timg, ttxt, tt)
  rows = sharding.batch_sharding(mesh)
  put = lambda x: jax.device_put(x, rows)
  (got, got_m), got_g = _value_and_grad("ring", mesh)(
      put(zimg), put(ztxt), t, put(timg), put(ttxt), tt)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for k in want_m:
    np.testing.assert_allclose(got_m[k], want_m[k], rtol=1e-4, atol=1e-6,
                               err_msg=k)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(g, w, atol=1e-6)
  assert np.abs(want_g[0]).sum() > 1e-3 and 0 < float(want_m["agreement"]) < 1


def _demo(steps, ckpt_steps):
  config = config_lib.load_config_module("configs/demo.py").get_config(
      "runlocal")
  config.evals = ml_collections.ConfigDict()
  config.log_steps = 1
  config.total_steps, config.ckpt_steps = steps, ckpt_steps
  return config


def _logged(workdir, key):
  """The metrics rows of a run that hold `key`."""
  return [r for r in metrics_lib.read_jsonl(os.path.join(workdir,
                                                         "metrics.jsonl"))
          if key in r]


def _distill_objectives(impl):
  return ml_collections.ConfigDict(dict(
      contrastive=dict(loss="softmax", weight=1.0),
      distill=dict(loss="distill", weight=0.5, impl=impl)))


@pytest.mark.slow
def test_a_student_learns_from_a_frozen_teacher_and_resumes_exactly(
    demo_data, tmp_path):
  """configs/demo.py:runlocal trained 20 steps is the teacher of a student
  trained with contrastive + distill (ring over the 8 devices): the
  distill terms are logged and add up, the teacher's params are never
  changed (the student's checkpoints hold them bit for bit), and a resume
  from a checkpoint repeats the uninterrupted steps exactly."""
  del demo_data

  teacher_dir = str(tmp_path / "teacher")
  train_lib.train(_demo(20, 20), teacher_dir)
  config = _demo(4, 2)
  config.teacher = ml_collections.ConfigDict({"path": teacher_dir})
  config.objectives = _distill_objectives("ring")
  workdir = str(tmp_path / "student")
  result = train_lib.train(config, workdir)
  rows = _logged(workdir, "train/distill/loss")
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for r in rows:
    assert r["train/loss"] == pytest.approx(
        r["train/contrastive/loss"] + 0.5 * r["train/distill/loss"],
        rel=1e-5)
    assert r["train/distill/kl"] > 0.01
    assert 0.0 <= r["train/distill/agreement"] <= 1.0
  want = ckpt_lib.restore_params(os.path.join(teacher_dir, "checkpoints"), 20)
  for step in (2, 4):
    got = ckpt_lib.restore_params(os.path.join(workdir, "checkpoints"), step,
                                  item="teacher")
    jax.tree.map(np.testing.assert_array_equal, got, want)
  # Resume from step 2: steps 3 and 4 again, bit for bit.
  again = str(tmp_path / "again")
  shutil.copytree(workdir, again)
  shutil.rmtree(os.path.join(again, "checkpoints", "4"))
  resumed = train_lib.train(config, again)
  assert resumed["losses"] == {s: result["losses"][s] for s in (3, 4)}
  # GradCache (2 micro-batches): the teacher's outputs join the whole
  # batch's, and the run trains as the plain one does.
  config.grad_accum_steps = 2
  accumulated = train_lib.train(config, str(tmp_path / "accumulated"))
  for s in (1, 2, 3, 4):
    assert accumulated["losses"][s] == pytest.approx(result["losses"][s],
                                                     rel=1e-4), s
  # A teacher block without a path, or with a typo, is refused up front.
  config.teacher = ml_collections.ConfigDict({"pth": teacher_dir})
  with pytest.raises(ValueError, match=r"Unknown keys \['pth'\] in "
                     "config.teacher"):
    train_lib.train(config, str(tmp_path / "typo"))
  for block, match in (({"path": teacher_dir, "ema": 0.9}, "not both"),
                       ({"ema": 1.0}, r"momentum in \[0, 1\)"),
                       ({"ema": 0.9, "step": 3}, "not to an EMA teacher")):
    config.teacher = ml_collections.ConfigDict(block)
    with pytest.raises(ValueError, match=match):
      train_lib.train(config, str(tmp_path / "bad"))


@pytest.mark.slow
def test_an_ema_teacher_follows_the_student_and_resumes_exactly(demo_data,
                                                                tmp_path):
  """config.teacher.ema: the teacher is the student's moving average
  (state "ema"), so at step 1 it is the student itself (no divergence),
  then it lags; the average follows its formula and resumes bit for bit."""
  del demo_data
  config = _demo(4, 1)
  config.keep_ckpts = 10
  config.teacher = ml_collections.ConfigDict({"ema": 0.5})
  config.objectives = _distill_objectives("dense")
  config.objectives.distill.start_frac = 0.5  # As SigLIP 2: late in training.
  workdir = str(tmp_path / "run")
  result = train_lib.train(config, workdir)
  rows = _logged(workdir, "train/distill/kl")
  for r in rows:  # The distill term counts from step 3 (index 2) on.
    on = float(r["step"] >= 3)
    assert r["train/distill/active"] == on
    assert r["train/loss"] == pytest.approx(
        r["train/contrastive/loss"] + on * 0.5 * r["train/distill/loss"],
        rel=1e-5)
  kl = [r["train/distill/kl"] for r in rows]
  # Step 1's learning rate is 0 (warm-up starts there), so the student is
  # still its initial self at step 2 as well: no divergence until step 3.
  assert rows[0]["train/lr"] == 0.0
  assert max(abs(x) for x in kl[:2]) < 1e-5 and min(kl[2:]) > 1e-4, kl
  assert rows[0]["train/distill/agreement"] == 1.0
  ckpts = os.path.join(workdir, "checkpoints")
  params = {s: ckpt_lib.restore_params(ckpts, s) for s in (1, 2, 3, 4)}
  ema = {s: ckpt_lib.restore_params(ckpts, s, item="ema")
         for s in (1, 2, 3, 4)}
  for s in (2, 3, 4):
    jax.tree.map(lambda e, prev, p: np.testing.assert_allclose(
        e, 0.5 * prev + 0.5 * p, rtol=1e-6, atol=1e-7),
                 ema[s], ema[s - 1], params[s])
  moved = jax.tree.map(lambda e, p: np.abs(e - p).max(), ema[4], params[4])
  assert max(jax.tree.leaves(moved)) > 1e-4  # It lags the student.
  # Resume from step 2: steps 3 and 4 and the average, bit for bit.
  again = str(tmp_path / "again")
  shutil.copytree(workdir, again)
  for s in ("3", "4"):
    shutil.rmtree(os.path.join(again, "checkpoints", s))
  resumed = train_lib.train(config, again)
  assert resumed["losses"] == {s: result["losses"][s] for s in (3, 4)}
  jax.tree.map(np.testing.assert_array_equal, ckpt_lib.restore_params(
      os.path.join(again, "checkpoints"), 4, item="ema"), ema[4])
  config.growth_ema = 0.9
  with pytest.raises(ValueError, match="two averages"):
    train_lib.train(config, str(tmp_path / "bad"))


def test_masked_prediction_is_one_minus_the_cosine_at_masked_patches():
  rng = np.random.default_rng(4)
  student, teacher = (_unit(rng.normal(size=(6, 8))).reshape(2, 3, 8)
                      .astype(np.float32) for _ in range(2))
  mask = np.array([[True, False, True], [False, False, True]])
  outputs = {"view/img/ztokens": student, "teacher/view/img/ztokens": teacher,
             "view/img/patch_mask": mask}
  loss, metrics = masked_prediction.masked_prediction_loss(outputs, {})
  cos = np.sum(student * teacher, axis=-1)[mask]
  np.testing.assert_allclose(loss, 1 - cos.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["cosine"], cos.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["masked"], 0.5)
  # Unmasked patches do not count; the teacher gets no gradient.
  other = student.copy()
  other[~mask] = -other[~mask]
  np.testing.assert_allclose(masked_prediction.masked_prediction_loss(
      {**outputs, "view/img/ztokens": other}, {})[0], loss, rtol=1e-6)
  g_student, g_teacher = jax.grad(
      lambda s, t: masked_prediction.masked_prediction_loss(
          {**outputs, "view/img/ztokens": s, "teacher/view/img/ztokens": t}, {})[0],
      argnums=(0, 1))(student, teacher)
  assert np.abs(g_student[mask]).sum() > 0 and not g_student[~mask].any()
  assert not np.asarray(g_teacher).any()
  same = masked_prediction.masked_prediction_loss(
      {**outputs, "teacher/view/img/ztokens": student}, {})[0]
  np.testing.assert_allclose(same, 0.0, atol=1e-6)
  with pytest.raises(ValueError, match=r"\['view/img/patch_mask'\]"):
    masked_prediction.masked_prediction_loss(
        {k: v for k, v in outputs.items() if k != "view/img/patch_mask"}, {})
  with pytest.raises(ValueError, match="token_keep = 1"):
    masked_prediction.masked_prediction_loss(
        {**outputs, "view/img/ztokens": student[:, :2]}, {})


@pytest.mark.slow
def test_masked_prediction_trains_against_an_ema_teacher(demo_data,
                                                         tmp_path):
  """TIPS-style: the student sees half its patches masked and predicts the
  EMA teacher's features of the whole image there; the term switches on at
  step 3 of 4."""
  del demo_data
  config = _demo(4, 4)
  config.model.token_features = True
  config.model.image.mask_ratio = 0.5
  config.teacher = ml_collections.ConfigDict({"ema": 0.5})
  config.objectives = ml_collections.ConfigDict(dict(
      contrastive=dict(loss="softmax", weight=1.0),
      masked=dict(loss="masked_prediction", weight=0.25, start_frac=0.5)))
  workdir = str(tmp_path / "run")
  train_lib.train(config, workdir)
  rows = _logged(workdir, "train/masked/loss")
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for r in rows:
    on = float(r["step"] >= 3)
    assert r["train/masked/active"] == on
    if not on:  # Before its start the views and the term are not computed.
      assert r["train/masked/loss"] == 0.0 and "train/masked/masked" not in r
      continue
    assert r["train/masked/masked"] == 0.5
    # Masked inputs: the student's features there are not the teacher's.
    assert 0.01 < r["train/masked/loss"] < 2.0
    assert r["train/loss"] == pytest.approx(
        r["train/contrastive/loss"] + on * 0.25 * r["train/masked/loss"],
        rel=1e-5)
