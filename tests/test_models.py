"""Tests for big_vl.models: ViT, TextTransformer and the two-tower Model."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vl import registry
from big_vl.models import common
from big_vl.models import text_transformer
from big_vl.models import two_towers
from big_vl.models import vit

VOCAB = 100
MAX_LEN = 12


def _image(batch=2, size=32, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def _text(batch=2, length=8, seed=0):
  """Random non-pad tokens followed by pads; row i has 3 + i real tokens."""
  rng = np.random.default_rng(seed)
  text = rng.integers(1, VOCAB, size=(batch, length)).astype(np.int32)
  for i in range(batch):
    text[i, 3 + i:] = 0
  return jnp.asarray(text)


def _txt_model(**kw):
  kw = {"variant": "mu", "vocab_size": VOCAB, "max_len": MAX_LEN, **kw}
  return text_transformer.TextTransformer(**kw)


# Forward passes run eagerly: all tests share the same few shapes (width 64,
# 16 image / 8 text tokens), so op-by-op dispatch reuses compiled kernels
# across tests, which is cheaper than compiling each model with jit.
# Gradients are jitted.
def _init(model, *inputs, seed=0):
  return model.init(jax.random.key(seed), *inputs)["params"]


def _apply(model, params, *inputs, **kw):
  return model.apply({"params": params}, *inputs, **kw)


def _init_apply(model, x, **apply_kw):
  params = _init(model, x)
  return params, _apply(model, params, x, **apply_kw)


def _two_towers(**kw):
  kw = {
      "image": {"variant": "mu/8", "pool_type": "map"},
      "text": {"variant": "mu", "vocab_size": VOCAB, "max_len": MAX_LEN},
      "out_dim": 32,
      **kw,
  }
  return two_towers.Model(**kw)


# --- variants -------------------------------------------------------------


def test_parse_variant():
  assert common.parse_variant("B/16") == {
      "width": 768, "depth": 12, "mlp_dim": 3072, "num_heads": 12,
      "patch_size": 16}
  assert common.parse_variant("mu") == {
      "width": 64, "depth": 2, "mlp_dim": 256, "num_heads": 2}
  assert common.parse_variant("L/14")["depth"] == 24
  assert common.parse_variant(None) == {}
  dims = vit.ViT(variant="B/16").dims()
  assert dims["width"] == 768 and dims["patch_size"] == 16
  # Explicit dimensions override the variant.
  assert vit.ViT(variant="S/32", depth=3).dims()["depth"] == 3
  # The text tower ignores a patch suffix.
  assert _txt_model(variant="M/16").dims() == {
      "width": 512, "depth": 12, "mlp_dim": 2048, "num_heads": 8}
  with pytest.raises(ValueError, match="Unknown model variant"):
    common.parse_variant("XL/16")
  with pytest.raises(ValueError, match="patch"):
    common.parse_variant("B/x")
  with pytest.raises(ValueError, match="missing patch_size"):
    vit.ViT(variant="B").dims()
  with pytest.raises(ValueError, match="divisible by num_heads"):
    vit.ViT(width=10, depth=1, mlp_dim=8, num_heads=3, patch_size=4).dims()


# --- ViT ------------------------------------------------------------------


@pytest.mark.parametrize("pool_type", ["cls", "gap", "map"])
def test_vit_pool_types(pool_type):
  model = vit.ViT(variant="mu/8", pool_type=pool_type, num_classes=32)
  params, (out, aux) = _init_apply(model, _image())
  assert out.shape == (2, 32) and out.dtype == jnp.float32
  assert aux["tokens"].shape == (2, 16, 64)
  assert aux["pre_logits"].shape == (2, 64)
  assert ("cls" in params) == (pool_type == "cls")
  assert ("MAPHead_0" in params) == (pool_type == "map")
  assert params["pos_embedding"].shape == (1, 16, 64)
  assert np.all(np.isfinite(out))
  # The head is not zero-initialised.
  assert np.std(out) > 1e-3
  if pool_type == "gap":
    np.testing.assert_allclose(aux["pre_logits"], aux["tokens"].mean(axis=1),
                               atol=1e-5)
  # Head is a plain Dense on pre_logits.
  manual = aux["pre_logits"] @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(out, manual, atol=1e-5)


def test_vit_sincos_no_head_explicit_dims_any_size():
  model = vit.ViT(width=64, depth=2, mlp_dim=256, num_heads=2, patch_size=8,
                  posemb="sincos2d", pool_type="gap")
  params, (out, aux) = _init_apply(model, _image())
  assert "pos_embedding" not in params and "head" not in params
  assert out.shape == (2, 64)
  assert aux["tokens"].shape == (2, 16, 64)
  # sincos posemb has no size-dependent params: other (non-square) sizes work.
  out2, aux2 = _apply(model, params, jnp.zeros((2, 16, 32, 3), jnp.float32))
  assert out2.shape == (2, 64) and aux2["tokens"].shape == (2, 8, 64)


def test_vit_rejects_indivisible_image():
  model = vit.ViT(variant="mu/8")
  with pytest.raises(ValueError, match="not divisible by the patch"):
    model.init(jax.random.key(0), _image(size=30))


def test_posemb_sincos_and_resample():
  pe = common.posemb_sincos_2d(3, 4, 16)
  assert pe.shape == (1, 12, 16) and pe.dtype == jnp.float32
  # Position (0, 0): sin parts 0, cos parts 1.
  np.testing.assert_allclose(pe[0, 0], [0.0] * 4 + [1.0] * 4 + [0.0] * 4 +
                             [1.0] * 4, atol=1e-7)
  old = jax.random.normal(jax.random.key(1), (1, 16, 8))
  assert vit.resample_posemb(old, 4) is old
  new = vit.resample_posemb(old, (8, 6))
  assert new.shape == (1, 48, 8)
  # A constant embedding stays constant under bilinear resizing.
  const = jnp.ones((1, 16, 8))
  np.testing.assert_allclose(vit.resample_posemb(const, 7), 1.0, atol=1e-6)


def test_vit_remat_matches_and_dropout():
  image = _image()
  # depth=1 keeps the two gradient compilations cheap.
  model = vit.ViT(variant="mu/8", depth=1, pool_type="gap", num_classes=32)
  remat = model.clone(remat=True)
  params = _init(model, image)
  params_remat = _init(remat, image)
  assert (jax.tree_util.tree_structure(params) ==
          jax.tree_util.tree_structure(params_remat))

  def loss(p, m):
    return jnp.sum(m.apply({"params": p}, image)[0] ** 2)

  grad_fn = jax.value_and_grad(loss)
  (l1, g1), (l2, g2) = jax.jit(
      lambda p: (grad_fn(p, model), grad_fn(p, remat)))(params)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
      g1, g2)

  drop = model.clone(dropout=0.5)
  out_eval = _apply(drop, params, image)[0]
  np.testing.assert_allclose(out_eval, _apply(model, params, image)[0],
                             atol=1e-6)
  out_train = _apply(drop, params, image, train=True,
                         rngs={"dropout": jax.random.key(3)})[0]
  assert not np.allclose(out_train, out_eval, atol=1e-3)



def test_keep_patches_draws_a_subset_per_row_in_order():
  x = jnp.arange(2 * 10 * 3, dtype=jnp.float32).reshape(2, 10, 3)
  kept = vit.keep_patches(x, 0.5, jax.random.key(0))
  assert kept.shape == (2, 5, 3)
  rows = np.asarray(kept[..., 0]) // 3 % 10  # token index of each kept row
  for r in rows:
    assert list(r) == sorted(set(r))  # distinct, in their order
  assert list(rows[0]) != list(rows[1])  # each image draws its own
  np.testing.assert_array_equal(
      kept, vit.keep_patches(x, 0.5, jax.random.key(0)))
  assert vit.keep_patches(x, 0.01, jax.random.key(0)).shape == (2, 1, 3)
  # Over many draws every token is kept about half the time.
  counts = np.zeros(10)
  for i in range(200):
    got = vit.keep_patches(x[:1], 0.5, jax.random.key(i))
    counts[np.asarray(got[0, :, 0]).astype(int) // 3] += 1
  assert counts.min() > 70 and counts.max() < 130, counts


def test_vit_patch_dropout_runs_the_blocks_on_the_kept_patches():
  """FLIP: training sees a random half of the patches, evaluation all."""
  image = _image()
  model = vit.ViT(variant="mu/8", pool_type="gap")
  drop = model.clone(patch_keep=0.5)
  params = _init(model, image)
  # Evaluation: every patch, the plain model's numbers.
  np.testing.assert_array_equal(_apply(drop, params, image)[0],
                                _apply(model, params, image)[0])
  _, aux = _apply(drop, params, image, train=True,
                  rngs={"dropout": jax.random.key(1)})
  assert aux["tokens"].shape == (2, 8, 64)  # 8 of the 16 patches
  # With no blocks each token is its own LayerNorm: the kept tokens are
  # exactly the rows of the full image's tokens at the kept positions.
  flat = vit.ViT(variant="mu/8", depth=0, pool_type="gap")
  fparams = _init(flat, image)
  full = _apply(flat, fparams, image)[1]["tokens"]
  out, aux = _apply(flat.clone(patch_keep=0.5), fparams, image, train=True,
                    rngs={"dropout": jax.random.key(1)})
  for b in range(2):
    hits = [int(np.argmin(np.abs(full[b] - t).sum(-1))) for t in
            aux["tokens"][b]]
    np.testing.assert_allclose(aux["tokens"][b], full[b][np.array(hits)],
                               atol=1e-6)
    assert hits == sorted(set(hits))
  np.testing.assert_allclose(out, aux["tokens"].mean(axis=1), atol=1e-6)
  with pytest.raises(ValueError, match="patch_keep=0"):
    _apply(model.clone(patch_keep=0.0), params, image)



def test_vit_masked_patches_are_the_mask_token_in_training_only():
  """mask_ratio: training replaces a random half of the patch embeddings by
  the learned mask token (before the position embedding) and marks them;
  evaluation is the plain model."""
  image = _image()
  model = vit.ViT(variant="mu/8", depth=0, pool_type="gap", mask_ratio=0.5)
  params = _init(model, image)
  assert params["mask_token"].shape == (1, 1, 64)
  plain = {k: v for k, v in params.items() if k != "mask_token"}
  out, aux = _apply(model, params, image)
  assert not np.asarray(aux["patch_mask"]).any()
  np.testing.assert_array_equal(
      out, _apply(model.clone(mask_ratio=0.0), plain, image)[0])
  full = aux["tokens"]
  _, aux = _apply(model, params, image, train=True,
                  rngs={"dropout": jax.random.key(2)})
  mask = np.asarray(aux["patch_mask"])
  assert mask.shape == (2, 16) and (mask.sum(axis=1) == 8).all()
  assert (mask[0] != mask[1]).any()
  tokens = np.asarray(aux["tokens"])
  # No blocks: an unmasked token is the plain one; a masked one is the mask
  # token at its position, the same in every image.
  np.testing.assert_allclose(tokens[~mask], np.asarray(full)[~mask],
                             atol=1e-6)
  assert np.abs(tokens[mask] - np.asarray(full)[mask]).max() > 0.1
  both = mask[0] & mask[1]
  assert both.any()
  np.testing.assert_allclose(tokens[0][both], tokens[1][both], atol=1e-6)
  with pytest.raises(ValueError, match="does not combine with patch_keep"):
    _apply(model.clone(patch_keep=0.5), params, image)


# --- TextTransformer ------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
def test_text_causality(causal):
  model = _txt_model(causal=causal, pool_type="last", mask_pad=False)
  text = jnp.asarray(np.arange(1, 9, dtype=np.int32)[None].repeat(2, 0))
  params, (_, aux) = _init_apply(model, text)
  k = 3
  changed = text.at[:, k + 1:].set(jnp.asarray([50, 60, 70, 80], jnp.int32))
  _, aux2 = _apply(model, params, changed)
  before, after = aux["tokens"][:, :k + 1], aux2["tokens"][:, :k + 1]
  if causal:
    np.testing.assert_allclose(before, after, atol=1e-6)
  else:
    assert np.max(np.abs(before - after)) > 1e-3
  # Later positions see the change in both cases.
  assert np.max(np.abs(aux["tokens"][:, k + 1:] -
                       aux2["tokens"][:, k + 1:])) > 1e-3


def test_text_eot_pooling_is_last_non_pad():
  model = _txt_model(causal=True, pool_type="eot")
  text = jnp.asarray([[5, 6, 7, 99, 0, 0, 0, 0],
                      [5, 6, 7, 8, 9, 10, 11, 99]], jnp.int32)
  _, (out, aux) = _init_apply(model, text)
  assert out.shape == (2, 64)
  np.testing.assert_array_equal(aux["mask"], text != 0)
  assert aux["mask"].dtype == jnp.bool_
  idx = np.array([3, 7])
  # With CLIP's BPE, EOT is the argmax id; here 99 plays that role.
  np.testing.assert_array_equal(np.argmax(text, axis=1), idx)
  manual = np.asarray(aux["tokens"])[np.arange(2), idx]
  np.testing.assert_allclose(out, manual, atol=1e-6)
  # Differs from "last" pooling on the padded row.
  assert np.max(np.abs(out[0] - aux["tokens"][0, -1])) > 1e-3
  mask = jnp.asarray([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]], bool)
  np.testing.assert_array_equal(text_transformer.last_valid_index(mask),
                                [0, 1, 2, 0])


def test_text_mean_pooling_ignores_pads():
  model = _txt_model(pool_type="mean", num_classes=32)
  text = _text()
  params, (out, aux) = _init_apply(model, text)
  mask = np.asarray(text != 0, np.float32)[..., None]
  manual = (np.asarray(aux["tokens"]) * mask).sum(1) / mask.sum(1)
  np.testing.assert_allclose(aux["pre_logits"], manual, atol=1e-5)
  # Appending more pads changes nothing (pad keys are masked; pads excluded).
  longer = jnp.pad(text, ((0, 0), (0, MAX_LEN - 8)))
  out2, aux2 = _apply(model, params, longer)
  assert aux2["tokens"].shape == (2, MAX_LEN, 64)
  np.testing.assert_allclose(out, out2, atol=1e-5)
  np.testing.assert_allclose(aux["tokens"][:, :3], aux2["tokens"][:, :3],
                             atol=1e-5)
  # Without the pad mask, the pads leak into the real tokens' features.
  unmasked = _txt_model(pool_type="mean", num_classes=32, mask_pad=False)
  out3 = _apply(unmasked, params, text)[0]
  out4 = _apply(unmasked, params, longer)[0]
  assert np.max(np.abs(out3 - out4)) > 1e-4


@pytest.mark.parametrize("pool_type", ["map", "first", "last"])
def test_text_other_pool_types(pool_type):
  model = _txt_model(pool_type=pool_type, num_classes=32)
  text = _text()
  params, (out, aux) = _init_apply(model, text)
  assert out.shape == (2, 32) and out.dtype == jnp.float32
  assert aux["tokens"].shape == (2, 8, 64)
  assert params["pos_embedding"].shape == (1, MAX_LEN, 64)
  if pool_type == "first":
    np.testing.assert_allclose(aux["pre_logits"], aux["tokens"][:, 0],
                               atol=1e-6)
  elif pool_type == "last":
    np.testing.assert_allclose(aux["pre_logits"], aux["tokens"][:, -1],
                               atol=1e-6)
  else:
    assert "MAPHead_0" in params
    # MAP pooling with masked pads: appending pads changes nothing.
    longer = jnp.pad(text, ((0, 0), (0, MAX_LEN - 8)))
    np.testing.assert_allclose(out, _apply(model, params, longer)[0],
                               atol=1e-5)


def test_text_too_long_raises():
  model = _txt_model()
  with pytest.raises(ValueError, match="exceeds max_len"):
    model.init(jax.random.key(0), jnp.ones((1, MAX_LEN + 1), jnp.int32))


# --- two towers -----------------------------------------------------------


def test_registry_lookup():
  # registry.get imports every built-in module: one that fails to import
  # fails this test (and every lookup), it is not skipped.
  model_cls = registry.get("model", "two_towers")
  assert model_cls is two_towers.Model


def test_registry_import_errors_are_raised_naming_the_module(tmp_path,
                                                             monkeypatch):
  (tmp_path / "big_vl_broken_builtin.py").write_text(
      "import big_vl_missing_dependency\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setattr(registry, "BUILTIN_MODULES",
                      registry.BUILTIN_MODULES + ("big_vl_broken_builtin",))
  for lookup in (lambda: registry.get("model", "two_towers"),
                 lambda: registry.names("loss")):
    with pytest.raises(ModuleNotFoundError) as e:
      lookup()
    assert e.value.name == "big_vl_missing_dependency"
    assert ("registry: built-in module big_vl_broken_builtin failed to "
            "import") in "\n".join(getattr(e.value, "__notes__", []))


@pytest.mark.parametrize("bias_init", [None, -10.0])
def test_two_towers_outputs_and_params(bias_init):
  model = _two_towers(bias_init=bias_init)
  params = _init(model, _image(), _text())
  expected = {"img", "txt", "t"} | ({"b"} if bias_init is not None else set())
  assert set(params) == expected
  assert params["t"].shape == () and params["t"].dtype == jnp.float32
  assert not params["t"].weak_type
  np.testing.assert_allclose(params["t"], np.log(10.0), rtol=1e-6)
  if bias_init is not None:
    assert params["b"].shape == () and params["b"].dtype == jnp.float32
    assert not params["b"].weak_type
    np.testing.assert_allclose(params["b"], -10.0)
  assert params["img"]["head"]["kernel"].shape == (64, 32)
  assert params["txt"]["head"]["kernel"].shape == (64, 32)
  assert {"Transformer", "embedding", "MAPHead_0"} <= set(params["img"])
  assert {"Encoder_0", "Embed_0"} <= set(params["txt"])

  image, text = _image(), _text()
  zimg, ztxt, aux = _apply(model, params, image, text)
  assert zimg.shape == (2, 32) and ztxt.shape == (2, 32)
  assert zimg.dtype == jnp.float32 and ztxt.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(zimg, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(ztxt, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(aux["t"], 10.0, rtol=1e-5)
  assert aux["t"].shape == () and aux["t"].dtype == jnp.float32
  np.testing.assert_allclose(aux["t_log"], np.log(10.0), rtol=1e-6)
  keys = {"t", "t_log", "img/tokens", "img/pre_logits", "txt/tokens",
          "txt/mask", "txt/pre_logits"}
  assert set(aux) == keys | ({"b"} if bias_init is not None else set())
  assert aux["img/tokens"].shape == (2, 16, 64)
  assert aux["txt/tokens"].shape == (2, 8, 64)
  np.testing.assert_array_equal(aux["txt/mask"], text != 0)

  # Either input may be None.
  zimg2, none_txt, aux2 = _apply(model, params, image, None)
  assert none_txt is None and "txt/tokens" not in aux2
  np.testing.assert_allclose(zimg2, zimg, atol=1e-6)
  none_img, ztxt2, aux3 = _apply(model, params, None, text)
  assert none_img is None and "img/tokens" not in aux3
  np.testing.assert_allclose(ztxt2, ztxt, atol=1e-6)

  # Different examples give different embeddings (heads are not zero-init).
  assert np.max(np.abs(zimg[0] - zimg[1])) > 1e-3
  assert np.max(np.abs(ztxt[0] - ztxt[1])) > 1e-3


def test_two_towers_clip_style_configdict_and_grads():
  config = ml_collections.ConfigDict({
      "image": {"variant": "mu/8", "depth": 1, "pool_type": "cls",
                "posemb": "sincos2d", "pre_norm": True, "act": "quick_gelu"},
      "text": {"variant": "mu", "depth": 1, "vocab_size": VOCAB,
               "max_len": MAX_LEN, "causal": True, "pool_type": "eot"},
      "out_dim": 32,
      "temperature_init": 1 / 0.07,
  })
  model = two_towers.Model(**config)
  image, text = _image(), _text()
  params = _init(model, image, text, seed=1)
  assert set(params) == {"img", "txt", "t"}
  assert "pre_norm" in params["img"] and "cls" in params["img"]
  # init_params builds the same tree from shapes (checked without compiling).
  shapes = jax.eval_shape(lambda: two_towers.init_params(
      model, jax.random.key(1), (1, 32, 32, 3), (1, MAX_LEN)))
  assert (jax.tree_util.tree_structure(shapes) ==
          jax.tree_util.tree_structure(params))
  assert all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(
      jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(params)))
  img_only = jax.eval_shape(lambda: two_towers.init_params(
      model, jax.random.key(1), (1, 32, 32, 3)))
  assert set(img_only) == {"img", "t"}

  def loss(p):
    zimg, ztxt, aux = model.apply({"params": p}, image, text)
    logits = aux["t"] * zimg @ ztxt.T
    return -jnp.mean(jnp.diag(jax.nn.log_softmax(logits, axis=1)))

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(value)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert np.abs(grads["t"]) > 0
  assert np.max(np.abs(grads["img"]["head"]["kernel"])) > 0
  assert np.max(np.abs(grads["txt"]["Embed_0"]["embedding"])) > 0


def test_two_towers_bfloat16():
  # One jitted bf16 forward (eager would compile every op anew for bf16).
  model = _two_towers(dtype="bfloat16", bias_init=-10.0)
  params = _init(_two_towers(bias_init=-10.0), _image(), _text())
  zimg, ztxt, aux = jax.jit(model.apply)({"params": params}, _image(), _text())
  # bf16 towers create the same float32 params.
  shapes = jax.eval_shape(model.init, jax.random.key(0), _image(), _text())
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(shapes))
  assert (jax.tree_util.tree_structure(shapes["params"]) ==
          jax.tree_util.tree_structure(params))
  assert zimg.dtype == jnp.float32 and ztxt.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(zimg, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(ztxt, axis=-1), 1.0, atol=1e-5)
  assert aux["img/tokens"].dtype == jnp.bfloat16
  assert aux["t"].dtype == jnp.float32 and aux["b"].dtype == jnp.float32
  # bf16 compute stays close to the float32 model with the same params.
  zimg32, ztxt32, _ = _apply(_two_towers(bias_init=-10.0), params, _image(),
                             _text())
  assert np.max(np.abs(zimg - zimg32)) < 0.05
  assert np.max(np.abs(ztxt - ztxt32)) < 0.05


def test_two_towers_rejects_conflicting_num_classes():
  model = _two_towers(image={"variant": "mu/8", "num_classes": 7})
  with pytest.raises(ValueError, match="conflicts with out_dim"):
    model.init(jax.random.key(0), _image(), None)


_PARAM_MODULES = {"Dense", "DenseGeneral", "LayerNorm", "RMSNorm", "Conv",
                  "Embed", "MultiHeadDotProductAttention", "MlpBlock",
                  "GeGluMlpBlock", "MAPHead", "Encoder", "EncoderBlock",
                  "ViT", "TextTransformer", "ViTamin", "MBConv", "Stem"}


def test_modules_with_params_are_named_explicitly():
  """Path rules, checkpoints and converters name parameters by path: a
  module built without `name=` gets a linen auto-number (`Dense_1`) that
  shifts when a layer is added before it. Every such module in big_vl/models
  is named (tests/data/param_shapes.json pins the resulting paths)."""
  import ast  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  folder = os.path.dirname(common.__file__)
  unnamed = []
  for file in sorted(os.listdir(folder)):
    if not file.endswith(".py"):
      continue
    with open(os.path.join(folder, file)) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Call):
        func = node.func
        name = (func.attr if isinstance(func, ast.Attribute) else
                func.id if isinstance(func, ast.Name) else None)
        if name in _PARAM_MODULES and not any(
            k.arg == "name" for k in node.keywords):
          unnamed.append(f"models/{file}:{node.lineno} {name}(...)")
  assert not unnamed, "give these modules a name=: " + ", ".join(unnamed)
