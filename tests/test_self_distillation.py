"""SILC / SigLIP 2 self-distillation: the multi-crop pp op, DINO's head,
the two-tower model's extra views, the `self_distillation` loss against a
reference written here (value and gradients, 1 and 8 devices), and the
trainer's two phases (the views cost nothing before their objectives
count)."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vl import objectives
from big_vl import sharding
from big_vl.data import pp
from big_vl.losses import self_distillation as sd
from big_vl.models import dino_head
from big_vl.models import two_towers


# --- the multi_crop pp op ---------------------------------------------------


def _image(h=64, w=96, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def test_multi_crop_shapes_randomness_and_central_views():
  op = pp.get_multi_crop(32, 16, n_global=2, n_local=4)
  image = _image()
  out = op({"image": image}, np.random.default_rng(0))
  assert out["views_global"].shape == (2, 32, 32, 3)
  assert out["views_local"].shape == (4, 16, 16, 3)
  assert out["views_global"].dtype == np.uint8
  np.testing.assert_array_equal(out["image"], image)  # Left as it is.
  again = op({"image": image}, np.random.default_rng(0))
  np.testing.assert_array_equal(again["views_local"], out["views_local"])
  # Different draws per view.
  assert np.abs(out["views_local"][0].astype(int)
                - out["views_local"][1]).sum() > 0
  # Without rng: every view is random_resized_crop's central crop.
  central = op({"image": image}, None)
  want = pp.get_random_resized_crop(16, scale=(0.05, 0.4))(
      {"image": image}, None)["image"]
  for view in central["views_local"]:
    np.testing.assert_array_equal(view, want)
  none = pp.get_multi_crop(32, 16, n_global=1, n_local=0, out="v")(
      {"image": image}, np.random.default_rng(1))
  assert none["v_global"].shape == (1, 32, 32, 3) and "v_local" not in none
  with pytest.raises(ValueError, match="n_global"):
    pp.get_multi_crop(n_global=0)
  with pytest.raises(ValueError, match="scale"):
    pp.get_multi_crop(local_scale=(0.5, 0.1))


def test_multi_crop_local_views_cover_less_of_the_image():
  """Crops of a gradient image: a local view (5-30% of the area) spans a
  smaller range of the gradient than a global one (50-100%)."""
  ramp = np.tile(np.linspace(0, 255, 200)[None, :, None], (200, 1, 3))
  op = pp.get_multi_crop(32, 32, n_global=2, n_local=8, ratio=(1.0, 1.0),
                         flip=False, global_scale=(0.5, 1.0),
                         local_scale=(0.05, 0.3))
  spans = {"global": [], "local": []}
  for seed in range(10):
    out = op({"image": ramp.astype(np.uint8)}, np.random.default_rng(seed))
    for kind in spans:
      v = out[f"views_{kind}"][..., 0].astype(float)
      spans[kind] += list(v.max(axis=(1, 2)) - v.min(axis=(1, 2)))
  # Square crops span sqrt(area) of the width: global >= 0.71, local <=
  # 0.55.
  assert min(spans["global"]) > 0.63 * 255 > max(spans["local"])
  assert min(spans["local"]) < 0.3 * 255


# --- DINO's head --------------------------------------------------------------


def test_dino_head_gives_cosines_with_unit_prototypes():
  head = dino_head.DINOHead(prototypes=16, hidden_dim=12, bottleneck_dim=8)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 6)), jnp.float32)
  params = head.init(jax.random.key(0), x)["params"]
  out = head.apply({"params": params}, x)
  assert out.shape == (5, 16) and out.dtype == jnp.float32
  # The same maths written out.
  h = x
  for i in range(2):
    h = jax.nn.gelu(h @ params[f"mlp_{i}"]["kernel"]
                    + params[f"mlp_{i}"]["bias"], approximate=False)
  h = h @ params["mlp_2"]["kernel"] + params["mlp_2"]["bias"]
  h = h / np.linalg.norm(h, axis=-1, keepdims=True)
  v = params["prototypes"] / np.linalg.norm(params["prototypes"], axis=0)
  np.testing.assert_allclose(out, h @ v, atol=1e-5)
  assert np.abs(out).max() <= 1 + 1e-6
  # Scaling the prototypes changes nothing (weight normalisation).
  scaled = {**params, "prototypes": params["prototypes"] * 3.0}
  np.testing.assert_allclose(head.apply({"params": scaled}, x), out,
                             atol=1e-6)


# --- the loss -----------------------------------------------------------------


def _reference(glob, local, teacher, ts=0.1, tt=0.04):
  """DINO's multi-crop loss with explicit loops over examples and pairs."""
  glob, teacher = np.asarray(glob, np.float64), np.asarray(teacher,
                                                           np.float64)
  local = np.zeros(glob.shape[:1] + (0, glob.shape[2])) if local is None \
      else np.asarray(local, np.float64)
  b, v, _ = teacher.shape
  center = teacher.reshape(-1, teacher.shape[-1]).mean(0)

  def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()

  terms = []
  for i in range(b):
    for g in range(v):
      p = softmax((teacher[i, g] - center) / tt)
      students = [glob[i, h] for h in range(v) if h != g or v == 1]
      students += list(local[i])
      for s in students:
        terms.append(-np.sum(p * np.log(softmax(s / ts))))
  return np.mean(terms)


def _inputs(b=8, v=2, u=3, k=16, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(np.tanh(rng.normal(size=s)), jnp.float32)
  return f(b, v, k), f(b, u, k), f(b, v, k)


@pytest.mark.parametrize("v,u", [(2, 3), (1, 0), (1, 4), (3, 0)])
def test_loss_equals_the_reference(v, u):
  glob, local, teacher = _inputs(v=v, u=max(u, 1))
  outputs = {"view/img/ssl": glob, "teacher/view/img/ssl": teacher}
  if u:
    outputs["local/img/ssl"] = local
  loss, metrics = sd.self_distillation_loss(outputs, {})
  want = _reference(glob, local if u else None, teacher)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert 0 < float(metrics["teacher_entropy"]) < np.log(16)
  assert 0 <= float(metrics["agreement"]) <= 1


def test_loss_gradients_equal_the_reference_and_skip_the_teacher():
  glob, local, teacher = _inputs()

  def f(g, l, t):
    return sd.self_distillation_loss({"view/img/ssl": g, "local/img/ssl": l,
                                      "teacher/view/img/ssl": t}, {})[0]

  grads = jax.grad(f, argnums=(0, 1, 2))(glob, local, teacher)
  eps = 1e-3
  rng = np.random.default_rng(1)
  for which, x in ((0, glob), (1, local)):
    direction = rng.normal(size=x.shape)
    args = [np.asarray(a, np.float64) for a in (glob, local, teacher)]
    plus, minus = [a.copy() for a in args], [a.copy() for a in args]
    plus[which] += eps * direction
    minus[which] -= eps * direction
    numeric = (_reference(plus[0], plus[1], plus[2])
               - _reference(minus[0], minus[1], minus[2])) / (2 * eps)
    np.testing.assert_allclose(np.sum(grads[which] * direction), numeric,
                               rtol=2e-3)
  assert np.abs(grads[0]).sum() > 0 and np.abs(grads[1]).sum() > 0
  assert not np.asarray(grads[2]).any()


def test_loss_sharded_over_8_devices_equals_one_device():
  glob, local, teacher = _inputs(b=16, seed=2)

  def f(g, l, t):
    return sd.self_distillation_loss({"view/img/ssl": g, "local/img/ssl": l,
                                      "teacher/view/img/ssl": t}, {})

  fn = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))
  (want, want_m), want_g = fn(glob, local, teacher)
  mesh = sharding.make_mesh([("data", 8)])
  put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh))
  (got, got_m), got_g = fn(put(glob), put(local), put(teacher))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for key in want_m:
    np.testing.assert_allclose(got_m[key], want_m[key], rtol=1e-6)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(g, w, atol=1e-7)


def test_centring_uses_the_whole_batch_and_errors_name_the_config():
  """The centre is the batch mean: a constant added to every teacher
  output of one prototype changes nothing."""
  glob, local, teacher = _inputs()
  base = sd.self_distillation_loss({"view/img/ssl": glob,
                                    "local/img/ssl": local,
                                    "teacher/view/img/ssl": teacher}, {})[0]
  shifted = teacher.at[..., 3].add(0.7)
  again = sd.self_distillation_loss({"view/img/ssl": glob,
                                     "local/img/ssl": local,
                                     "teacher/view/img/ssl": shifted}, {})[0]
  np.testing.assert_allclose(again, base, rtol=1e-6)
  with pytest.raises(ValueError, match="ssl_head"):
    sd.self_distillation_loss({"view/img/ssl": glob}, {})
  with pytest.raises(ValueError, match="positive"):
    sd.self_distillation_loss({"view/img/ssl": glob,
                               "teacher/view/img/ssl": teacher}, {},
                              teacher_temp=0.0)
  assert objectives.needs_views(objectives.build(
      {"sd": {"loss": "self_distillation"}})[0])


# --- the model's extra views --------------------------------------------------


def _model(**kw):
  return two_towers.Model(
      image={"variant": "mu/8", "pool_type": "map", "mask_ratio": 0.5,
             "posemb_grid": 4},
      text={"variant": "mu", "vocab_size": 60, "max_len": 8}, out_dim=32,
      token_features=True,
      ssl_head={"prototypes": 24, "hidden_dim": 16, "bottleneck_dim": 8},
      **kw)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return {"image": f(3, 32, 32, 3), "text": jnp.ones((3, 8), jnp.int32),
          "views_global": f(3, 2, 32, 32, 3), "views_local": f(3, 4, 16, 16,
                                                                3)}


def _init(model, batch):
  return model.init({"params": jax.random.key(0)}, batch["image"],
                    batch["text"],
                    views=two_towers.view_input(batch))["params"]


def test_views_run_masked_globals_and_leave_the_main_image_unmasked():
  model, batch = _model(), _batch()
  params = _init(model, batch)
  assert "ssl_head" in params and "mask_token" in params["img"]
  rngs = {"dropout": jax.random.key(3)}
  out = two_towers.outputs(model, {"params": params}, batch, train=True,
                           rngs=rngs, views=True)
  assert out["view/img/ssl"].shape == (3, 2, 24)
  assert out["local/img/ssl"].shape == (3, 4, 24)
  assert out["view/img/ztokens"].shape == (6, 16, 32)
  assert float(np.mean(out["view/img/patch_mask"])) == 0.5
  assert "img/patch_mask" not in out
  # The main pass: the model without masking, the same params.
  plain = two_towers.outputs(
      _model().clone(image={**_model().image, "mask_ratio": 0.0}),
      {"params": {**params, "img": {k: v for k, v in params["img"].items()
                                    if k != "mask_token"}}},
      batch, train=True, rngs=rngs)
  np.testing.assert_allclose(out["zimg"], plain["zimg"], atol=1e-6)
  # Without views=True: no view outputs, and main outputs unchanged.
  main = two_towers.outputs(model, {"params": params}, batch, train=True,
                            rngs=rngs)
  assert not any(k.startswith(("view/", "local/")) for k in main)
  np.testing.assert_array_equal(main["zimg"], out["zimg"])


def test_without_multi_crop_the_main_image_is_the_one_global_view():
  """Evaluation mode masks nothing: the view features of the main image
  equal its own token features (the EMA teacher's targets)."""
  model, batch = _model(), _batch()
  params = _init(model, batch)
  bare = {k: batch[k] for k in ("image", "text")}
  out = two_towers.outputs(model, {"params": params}, bare, views=True)
  assert out["view/img/ssl"].shape == (3, 1, 24)
  assert "local/img/ssl" not in out
  np.testing.assert_allclose(out["view/img/ztokens"], out["img/ztokens"],
                             atol=1e-6)
  assert not np.asarray(out["view/img/patch_mask"]).any()
  # Without posemb_grid the init image's (square) grid is resized to the
  # smaller local views' the same way.
  grid_less = _model().clone(image={**_model().image, "posemb_grid": None})
  assert jax.tree.map(np.shape, _init(grid_less, batch)) == jax.tree.map(
      np.shape, params)
  got = two_towers.outputs(grid_less, {"params": params}, batch, views=True)
  want = two_towers.outputs(model, {"params": params}, batch, views=True)
  np.testing.assert_array_equal(got["local/img/ssl"], want["local/img/ssl"])


# --- the trainer's two phases -------------------------------------------------


def _siglip2_run(steps=10, views=True):
  """configs/siglip2.py:runlocal's model and objectives on one device
  (without `views`: without its self-supervised objectives and teacher)."""
  import os  # pylint: disable=g-import-not-at-top
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl.train import state as state_lib  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config(
      os.path.join(root, "configs", "siglip2.py") + f":runlocal,steps={steps}")
  config.evals = {}
  config.input.batch_size = 4
  if not views:
    del config.objectives["self_distillation"], config.objectives["masked"]
    del config.teacher
  mesh = sharding.make_mesh([("data", 1)], devices=jax.devices()[:1])
  example = {
      "image": np.zeros((32, 32, 3), np.uint8),
      "text": np.zeros((24,), np.int32),
      "caption": np.zeros((3, 24), np.int32),
      "caption_weights": np.zeros((3, 24), np.float32),
      "views_global": np.zeros((2, 32, 32, 3), np.uint8),
      "views_local": np.zeros((4, 16, 16, 3), np.uint8)}
  run = state_lib.build(config, mesh, example, steps, 1)
  return run, example, mesh


def test_views_run_only_from_the_first_step_that_reads_them():
  """SigLIP 2's self-supervised terms start at 80%: before step
  round(0.8 * 10) = 8 the step runs no views and no teacher (the FLOPs of
  the same run without those objectives, plus the EMA update), from it on
  the views and the teacher."""
  from big_vl.train import state as state_lib  # pylint: disable=g-import-not-at-top
  run, example, _ = _siglip2_run()
  assert isinstance(run.train_step, state_lib.PhasedStep)
  assert run.train_step.start == 8
  assert run.step_at(7) is run.train_step.early
  assert run.step_at(8) is run.train_step.late
  plain, _, _ = _siglip2_run(views=False)
  assert not isinstance(plain.train_step, state_lib.PhasedStep)
  batch = {k: jax.ShapeDtypeStruct((4, *v.shape), v.dtype)
           for k, v in example.items()}
  flops = {}
  for name, fn, state in (
      ("early", run.train_step.early, run.abstract_state),
      ("late", run.train_step.late, run.abstract_state),
      ("plain", plain.train_step, plain.abstract_state)):
    flops[name] = fn.lower(state, batch).cost_analysis()["flops"]
  # Early = plain + the EMA update (3 FLOPs per parameter).
  params = sum(x.size for x in jax.tree.leaves(run.abstract_state["params"]))
  assert abs(flops["early"] - flops["plain"] - 3 * params) < 0.1 * params, (
      flops, params)
  assert flops["late"] > flops["early"] * 1.02, flops


def test_exported_encoder_drops_the_self_supervised_parts():
  """big_vision export: no ssl_head, token heads or mask token; the
  encoder converts back with equal embeddings."""
  from big_vl import models  # pylint: disable=g-import-not-at-top
  from big_vl.convert import big_vision  # pylint: disable=g-import-not-at-top
  model, batch = _model(), _batch()
  params = _init(model, batch)
  config = {"name": "two_towers", "image": model.image, "text": model.text,
            "out_dim": 32, "token_features": True,
            "ssl_head": model.ssl_head}
  flat = big_vision.to_npz_dict(config, params, strict=False)
  assert not any(part in key for key in flat for part in (
      "ssl_head", "token_head", "mask_token"))
  back_config, back = big_vision.convert(flat)
  assert "mask_ratio" not in back_config["image"]
  inputs = {k: batch[k] for k in ("image", "text")}
  want = two_towers.outputs(model, {"params": params}, inputs)
  got = two_towers.outputs(models.get(back_config), {"params": back}, inputs)
  for key in ("zimg", "ztxt"):
    np.testing.assert_allclose(got[key], want[key], atol=1e-5)


def test_dense_probe_labels_come_from_the_object_boxes():
  """bench/siglip2.py's per-patch labels: the object whose box holds a
  patch centre (the first, largest, where boxes overlap), else
  background."""
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "bench"))
  import siglip2 as bench  # pylint: disable=g-import-not-at-top
  from big_vl.data.builders import demo_shapes  # pylint: disable=g-import-not-at-top
  n_shape = len(demo_shapes.SHAPES)
  # Label 6 = colour 1, shape 1, over the top-left 2x2 patches; label 29
  # (colour 5, shape 4) over columns 1-3, under the first where both are.
  objects = {"label": [6, 29], "bbox": [[0.0, 0.0, 0.5, 0.5],
                                        [0.0, 0.3, 1.0, 1.0]]}
  colour, shape = bench.patch_labels(objects, grid=4)
  colour, shape = colour.reshape(4, 4), shape.reshape(4, 4)
  np.testing.assert_array_equal(colour[:2, :2], [[1, 1], [1, 1]])
  np.testing.assert_array_equal(shape[:2, :2], [[1, 1], [1, 1]])
  assert (colour[:, 2:] == 5).all() and (shape[:, 2:] == 4).all()
  assert (colour[2:, 1] == 5).all() and (shape[2:, 1] == 4).all()
  assert (colour[2:, 0] == len(demo_shapes.COLOURS)).all()
  assert (shape[2:, 0] == n_shape).all()
  # The paired t-interval of its verdicts: mean 2, sd 1, t(0.975, 2) =
  # 4.303 over sqrt(3).
  low, high = bench.paired_interval([1.0, 2.0, 3.0])
  np.testing.assert_allclose([low, high], [2 - 2.4843, 2 + 2.4843],
                             atol=1e-3)
  assert bench.paired_interval([1.0]) == (-np.inf, np.inf)
