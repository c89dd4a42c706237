"""NaFlex: the `naflex` pp op, position-embedding resizing and the ViT on
native-aspect patch sequences (big_vl.models.naflex, big_vl.models.vit)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from big_vl.data import device_pp
from big_vl.data import pp
from big_vl.models import naflex
from big_vl.models import two_towers
from big_vl.models import vit


def _bisection_grid(height, width, patch, budget, eps=1e-5):
  """big_vision's `_get_image_size_for_seq` (ops_naflex.py), in numpy
  float32: bisect the scale, then round each side up to whole patches."""
  def grid(ratio):
    hw = np.float32(ratio) * np.asarray([height, width], np.float32)
    return np.maximum(np.ceil(hw / patch), 1).astype(np.int64)

  lb, rb = np.float32(eps / 10), np.float32(100.0)
  while rb - lb >= eps:
    mid = (lb + rb) / np.float32(2)
    if np.prod(grid(mid)) <= budget:
      lb = mid
    else:
      rb = mid
  return tuple(int(v) for v in grid(lb))


@pytest.mark.parametrize("height,width,budget", [
    (480, 640, 256), (640, 480, 256), (224, 224, 256), (100, 1000, 64),
    (37, 53, 1024), (1, 500, 16), (900, 30, 100), (333, 333, 49),
    (17, 16, 4), (300, 200, 1)])
def test_naflex_grid_matches_big_visions_bisection(height, width, budget):
  rows, cols = pp.naflex_grid(height, width, 16, budget)
  assert (rows, cols) == _bisection_grid(height, width, 16, budget)
  assert rows * cols <= budget
  # Maximal: any larger scale gives a bigger grid over the budget.
  scale = max(rows * 16 / height, cols * 16 / width) * 1.0001
  assert (max(1, np.ceil(height * scale / 16))
          * max(1, np.ceil(width * scale / 16))) > budget


def test_naflex_grid_examples():
  assert pp.naflex_grid(480, 640, 16, 256) == (14, 18)
  assert pp.naflex_grid(224, 224, 16, 256) == (16, 16)
  assert pp.naflex_grid(64, 32, (8, 4), 32) == (5, 5)


def test_naflex_op_cuts_the_resized_image_into_padded_patches():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (44, 28, 3), np.uint8)
  ex = pp.build("naflex(16, 8)")({"image": image})
  rows, cols = pp.naflex_grid(44, 28, 8, 16)
  assert (rows, cols) == (5, 3)  # 15 patches; (6, 4) would be 24.
  resized = np.asarray(Image.fromarray(image).resize(
      (cols * 8, rows * 8), Image.BILINEAR))
  patches, pos = ex["image"], ex["image_pos"]
  assert patches.shape == (16, 8, 8, 3) and patches.dtype == np.uint8
  assert pos.shape == (16, 2) and pos.dtype == np.int32
  for i in range(rows * cols):
    r, c = divmod(i, cols)
    assert pos[i].tolist() == [r, c]
    np.testing.assert_array_equal(
        patches[i], resized[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8])
  assert (pos[rows * cols:] == -1).all()
  assert (patches[rows * cols:] == 0).all()
  # And back: the picture helper reassembles the resized image.
  canvas = naflex.to_images(patches[None], pos[None])[0]
  np.testing.assert_array_equal(canvas[:40, :24], resized)
  # value_range / normalize work on patches as on images, host and device.
  host = pp.build("naflex(16, 8)|value_range(0, 1)|normalize")(
      {"image": image})["image"]
  dev = device_pp.build("value_range(0, 1)|normalize")(
      {"image": jnp.asarray(patches[None])})["image"][0]
  np.testing.assert_allclose(dev, host, atol=1e-6)


def _reference_posemb(posemb, pos):
  """big_vision's `naflex_vit._pos_emb_resize`: the whole grid resized to
  each image's grid (scale_and_translate, bilinear, antialiased) into a
  static canvas, then gathered at the patch positions."""
  gh, gw, d = posemb.shape
  side = 16

  def one(shape, coords):
    emb = jax.image.scale_and_translate(
        posemb, (side, side, d), (0, 1),
        shape.astype(jnp.float32) / jnp.asarray([gh, gw], jnp.float32),
        jnp.zeros([2]), method="bilinear", antialias=True)
    return emb[coords[:, 0], coords[:, 1]]

  return jax.vmap(one)(pos.max(axis=1) + 1, jnp.maximum(pos, 0))


def _grid_pos(rows, cols, budget):
  pos = np.full((budget, 2), -1, np.int32)
  pos[:rows * cols] = np.stack(np.meshgrid(
      np.arange(rows), np.arange(cols), indexing="ij"), -1).reshape(-1, 2)
  return pos


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_posemb_resize_equals_big_visions_resize(grid):
  posemb = jax.random.normal(jax.random.key(1), (*grid, 8))
  shapes = [(4, 4), (2, 7), (9, 1), (6, 5), (1, 1), (3, 5)]
  pos = jnp.asarray(np.stack([_grid_pos(r, c, 32) for r, c in shapes]))
  got = naflex.posemb_at(posemb, pos)
  want = _reference_posemb(posemb, pos)
  ok = np.asarray(naflex.valid(pos))
  np.testing.assert_allclose(np.asarray(got)[ok], np.asarray(want)[ok],
                             atol=1e-5)
  assert not np.asarray(got)[~ok].any()
  # At the embedding's own grid: the embedding itself, exactly.
  own = jnp.asarray(_grid_pos(*grid, grid[0] * grid[1])[None])
  np.testing.assert_array_equal(naflex.posemb_at(posemb, own)[0],
                                posemb.reshape(-1, 8))


def _patches(images, patch=8):
  """[B, H, W, C] -> [B, N, p, p, C] patches and int32 [B, N, 2] positions
  of the whole grid (the `naflex` op's layout without resizing)."""
  b, h, w, c = images.shape
  rows, cols = h // patch, w // patch
  x = images.reshape(b, rows, patch, cols, patch, c).transpose(
      0, 1, 3, 2, 4, 5).reshape(b, rows * cols, patch, patch, c)
  pos = np.broadcast_to(_grid_pos(rows, cols, rows * cols), (b, rows * cols,
                                                             2))
  return x, jnp.asarray(pos)


def _pad(patches, pos, extra, seed=0):
  """Appends `extra` padding slots holding random values."""
  b, _, ph, pw, c = patches.shape
  junk = jax.random.normal(jax.random.key(seed), (b, extra, ph, pw, c)) * 5
  return (jnp.concatenate([patches, junk], 1),
          jnp.concatenate([pos, -jnp.ones((b, extra, 2), jnp.int32)], 1))


@pytest.mark.parametrize("pool_type", ["map", "gap", "cls"])
@pytest.mark.parametrize("posemb", ["learn", "sincos2d"])
def test_square_full_budget_equals_fixed_resolution(pool_type, posemb):
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  fixed = vit.ViT(variant="mu/8", pool_type=pool_type, posemb=posemb,
                  num_classes=16)
  flex = fixed.clone(posemb_grid=4)
  params = fixed.init(jax.random.key(0), images)["params"]
  want, _ = fixed.apply({"params": params}, images)
  patches, pos = _patches(images)
  got, aux = flex.apply({"params": params}, {"patches": patches, "pos": pos})
  np.testing.assert_array_equal(got, want)
  assert aux["mask"].all()
  # The same model on the plain images (patchified in the model).
  np.testing.assert_array_equal(flex.apply({"params": params}, images)[0],
                                want)
  # Padding (garbage patches at (-1, -1)) changes nothing.
  padded, _ = flex.apply({"params": params},
                         dict(zip(("patches", "pos"),
                                  _pad(patches, pos, 7))))
  np.testing.assert_allclose(padded, want, atol=2e-6)


def test_padding_gets_no_gradient_and_order_does_not_matter():
  model = vit.ViT(variant="mu/8", pool_type="map", num_classes=16,
                  posemb_grid=4)
  # A 2x3-patch image (16x24) in a budget of 10.
  images = jax.random.normal(jax.random.key(3), (2, 16, 24, 3))
  patches, pos = _pad(*_patches(images), 4)
  params = model.init(jax.random.key(0),
                      {"patches": patches, "pos": pos})["params"]
  assert params["pos_embedding"].shape == (1, 16, 64)

  def f(p):
    out, _ = model.apply({"params": params}, {"patches": p, "pos": pos})
    return jnp.sum(out ** 2)

  grad = jax.jit(jax.grad(f))(patches)
  assert not np.asarray(grad[:, 6:]).any()
  assert np.asarray(grad[:, :6]).any()
  # Patches carry their positions: shuffling the sequence changes nothing.
  perm = np.random.default_rng(0).permutation(10)
  a, _ = model.apply({"params": params}, {"patches": patches, "pos": pos})
  b, _ = model.apply({"params": params},
                     {"patches": patches[:, perm], "pos": pos[:, perm]})
  np.testing.assert_allclose(a, b, atol=2e-6)
  # A fixed-size image of another grid runs with the resized embedding,
  # equal to the NaFlex input of that grid.
  c, _ = model.apply({"params": params}, images)
  np.testing.assert_allclose(c, a, atol=2e-6)


def test_patch_dropout_and_masking_draw_among_real_patches():
  model = vit.ViT(variant="mu/8", pool_type="gap", posemb_grid=4,
                  patch_keep=0.5)
  images = jax.random.normal(jax.random.key(3), (3, 32, 32, 3))
  patches, pos = _patches(images)
  # Rows with 16, 6 and 10 real patches in a budget of 16.
  pos = np.asarray(pos).copy()
  pos[1, 6:] = -1
  pos[2, 10:] = -1
  x = {"patches": patches, "pos": jnp.asarray(pos)}
  params = model.init(jax.random.key(0), x)["params"]
  _, aux = model.apply({"params": params}, x, train=True,
                       rngs={"dropout": jax.random.key(1)})
  assert aux["tokens"].shape[1] == 8
  np.testing.assert_array_equal(aux["mask"].sum(axis=1), [8, 3, 5])
  masked = vit.ViT(variant="mu/8", pool_type="gap", posemb_grid=4,
                   mask_ratio=0.4)
  params = masked.init(jax.random.key(0), x)["params"]
  _, aux = masked.apply({"params": params}, x, train=True,
                        rngs={"dropout": jax.random.key(1)})
  mask = np.asarray(aux["patch_mask"])
  np.testing.assert_array_equal(mask.sum(axis=1), [6, 2, 4])
  assert not (mask & (pos[..., 0] < 0)).any()
  # Without padding the draw is the fixed-resolution one.
  full = {"patches": patches, "pos": _patches(images)[1]}
  _, flex_aux = masked.apply({"params": params}, full, train=True,
                             rngs={"dropout": jax.random.key(1)})
  _, fixed_aux = masked.clone(posemb_grid=None).apply(
      {"params": params}, images, train=True,
      rngs={"dropout": jax.random.key(1)})
  np.testing.assert_array_equal(flex_aux["patch_mask"],
                                fixed_aux["patch_mask"])


def test_two_towers_take_naflex_batches():
  model = two_towers.Model(
      image={"variant": "mu/8", "pool_type": "map", "posemb_grid": 4},
      text={"variant": "mu", "vocab_size": 100, "max_len": 8}, out_dim=32)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  text = jnp.ones((2, 8), jnp.int32)
  params = model.init(jax.random.key(0), images, text)["params"]
  patches, pos = _pad(*_patches(images), 3)
  out = two_towers.outputs(model, {"params": params},
                           {"image": patches, "image_pos": pos, "text": text})
  plain = two_towers.outputs(model, {"params": params},
                             {"image": images, "text": text})
  np.testing.assert_allclose(out["zimg"], plain["zimg"], atol=2e-6)
  assert out["img/mask"].shape == (2, 19)
  # Patches without their positions: a message that says what to keep.
  with pytest.raises(ValueError, match="image_pos"):
    two_towers.outputs(model, {"params": params}, {"image": patches})


def _decoding_params(model, images, text, decoder):
  """A decoding model's params, its decoder head given random values (it
  starts at zero: uniform predictions, every caption alike)."""
  params = model.init(jax.random.key(0), images, text)["params"]
  head = params[decoder]["head"]
  head["kernel"] = jax.random.normal(jax.random.key(1), head["kernel"].shape)
  return params


def test_coca_on_naflex_inputs_equals_the_unpadded_images():
  """CoCa's attentional pooler skips the padding: embeddings, caption
  logits and greedy captions of padded patch sequences equal those of the
  plain images (a 2x3-patch grid, with 5 padding slots of junk)."""
  from big_vl import decode  # pylint: disable=g-import-not-at-top
  from big_vl.models import coca  # pylint: disable=g-import-not-at-top
  tower = {"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 2}
  model = coca.CoCa(image={"variant": "mu/8", "posemb_grid": 4}, text=tower,
                    decoder=tower, out_dim=32, vocab_size=50, max_len=9,
                    num_queries=5, pool_heads=2)
  images = jax.random.normal(jax.random.key(6), (3, 16, 24, 3))
  text = jax.random.randint(jax.random.key(7), (3, 9), 1, 48)
  params = _decoding_params(model, images, text, "dec")
  flex = dict(zip(("image", "image_pos"), _pad(*_patches(images), 5)))
  want = coca.outputs(model, {"params": params},
                      {"image": images, "text": text})
  got = coca.outputs(model, {"params": params}, {**flex, "text": text})
  for key in ("zimg", "ztxt", "logits"):
    np.testing.assert_allclose(got[key], want[key], atol=2e-5, err_msg=key)
  flex_input = {"patches": flex["image"], "pos": flex["image_pos"]}
  np.testing.assert_array_equal(
      decode.greedy(model, params, flex_input, start_id=48, end_id=49),
      decode.greedy(model, params, images, start_id=48, end_id=49))


def _captioner(**kw):
  from big_vl.models import captioner  # pylint: disable=g-import-not-at-top
  return captioner.Captioner(
      image={"variant": "mu/8", "posemb_grid": 4},
      decoder={"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 2},
      vocab_size=50, max_len=8, **kw)


def test_captioner_decodes_naflex_inputs_as_the_unpadded_images():
  from big_vl import decode  # pylint: disable=g-import-not-at-top
  from big_vl.models import captioner  # pylint: disable=g-import-not-at-top
  model = _captioner(uncond_prob=0.5)
  # A 2x3-patch image (16x24), as a plain image and padded to 10 patches.
  images = jax.random.normal(jax.random.key(4), (3, 16, 24, 3))
  text = jax.random.randint(jax.random.key(5), (3, 8), 1, 48)
  params = _decoding_params(model, images, text, "decoder")
  flex = dict(zip(("image", "image_pos"), _pad(*_patches(images), 4)))
  want = captioner.outputs(model, {"params": params},
                           {"image": images, "text": text})["logits"]
  got = captioner.outputs(model, {"params": params},
                          {**flex, "text": text})["logits"]
  np.testing.assert_allclose(got, want, atol=2e-5)
  # LocCa's [B, T, L] rows read the same (repeated) masked memory.
  rows = jnp.stack([text, text[::-1]], axis=1)
  got_rows = captioner.outputs(model, {"params": params},
                               {**flex, "text": rows})["logits"]
  np.testing.assert_allclose(got_rows[:, 0], want, atol=2e-5)
  # Cached decoding (greedy, guided, beam) on the padded input equals
  # the plain image's; and the uncached reference.
  flex_in = naflex.image_input(flex)
  kw = dict(start_id=48, end_id=49)
  for fn, extra in ((decode.greedy, {}), (decode.greedy, {"guidance": 2.0}),
                    (decode.greedy_uncached, {}),
                    (decode.beam_search, {"beam": 2})):
    a = fn(model, params, images, **kw, **extra)
    b = fn(model, params, flex_in, **kw, **extra)
    if isinstance(a, tuple):
      a, b = a[0], b[0]
    np.testing.assert_array_equal(a, b)
  assert len({tuple(r) for r in np.asarray(a).tolist()}) > 1  # Not constant.


def test_naflex_model_needs_a_posemb_grid():
  model = vit.ViT(variant="mu/8")
  patches, pos = _patches(jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match="posemb_grid"):
    model.init(jax.random.key(0), {"patches": patches, "pos": pos})


def test_trainer_trains_and_evaluates_naflex_batches(demo_data, tmp_path):
  """configs/demo.py:runlocal with the `naflex` op in every pp: trains,
  evaluates zero-shot and retrieval on NaFlex batches, draws the retrieval
  picture from reassembled patches, and its Predictor embeds like the
  model on hand-made batches."""
  del demo_data
  import os  # pylint: disable=g-import-not-at-top
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl import predict  # pylint: disable=g-import-not-at-top
  from big_vl import train as train_lib  # pylint: disable=g-import-not-at-top
  from big_vl.data import sources  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config(
      os.path.join(root, "configs", "demo.py") + ":runlocal,steps=4")
  # Square 64 px images in a budget of 20: 4x4 grids and 4 padding slots.
  flex = lambda spec: spec.replace("resize(32)", "naflex(20, 8)").replace(
      "keep('image',", "keep('image','image_pos',")
  config.input.pp = flex(config.input.pp)
  config.evals.zeroshot.pp_img = flex(config.evals.zeroshot.pp_img)
  config.evals.retrieval.pp = flex(config.evals.retrieval.pp)
  assert "image_pos" in config.input.pp + config.evals.retrieval.pp
  config.model.image.posemb_grid = 4
  config.mesh = (("data", 2),)
  result = train_lib.train(config, str(tmp_path), devices=jax.devices()[:2])
  final = result["final"]
  assert 0 <= final["zeroshot/demo_shapes/top1"] <= 1
  assert 0 <= final["retrieval/demo_shapes/img2txt_r@1"] <= 1
  with open(tmp_path / "retrieval.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  predictor = predict.Predictor.load(
      str(tmp_path), pp_img=config.evals.zeroshot.pp_img.replace(
          ",'label'", ""), pp_txt="tokenize(max_len=24)")
  test = sources.get("tfds:big_vl_demo_shapes", split="test")
  images = [test[i]["image"] for i in range(3)]
  got = predictor.embed_images(images)
  batch = [pp.build(predictor.pp_img)({"image": x}) for x in images]
  want = two_towers.outputs(
      predictor.model, {"params": predictor.params},
      {k: jnp.stack([b[k] for b in batch]) for k in ("image", "image_pos")}
  )["zimg"]
  np.testing.assert_allclose(got, want, atol=1e-5)
