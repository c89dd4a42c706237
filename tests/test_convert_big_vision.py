"""Tests for big_vl.convert.big_vision (big_vision SigLIP `.npz` in and out).

Round trips go through a randomly initialised small big_vl SigLIP model
("mu"-sized towers, MAP-pooled image tower, last-token text pooling, logit
bias): export with `to_npz_dict`, write with `np.savez`, read back with
`load`, and compare configs, every leaf and the model outputs.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vl import config as config_lib
from big_vl import models
from big_vl.convert import big_vision
from big_vl.data import pp
from big_vl.models import text_transformer
from big_vl.models import two_towers
from big_vl.models import vit

RES = 32
MAX_LEN = 16
VOCAB = 1000
_DIMS = {"width": 64, "depth": 2, "mlp_dim": 256, "num_heads": 2}
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model_config(image_head=True):
  """A SigLIP-style config in exactly the form `convert` returns."""
  image = {**_DIMS, "patch_size": 8, "pool_type": "map", "posemb": "learn",
           "act": "gelu", "norm_eps": 1e-6, "image_size": RES}
  text = {**_DIMS, "vocab_size": VOCAB, "max_len": MAX_LEN, "causal": False,
          "pool_type": "last", "mask_pad": False, "pad_id": 1, "act": "gelu",
          "norm_eps": 1e-6}
  if not image_head:  # As the released SigLIP models: out_dim = image width.
    image["num_classes"] = 0
  return {"name": "two_towers", "out_dim": 32 if image_head else 64,
          "image": image, "text": text, "temperature_init": 10.0,
          "bias_init": -10.0}


def _init(model_config, seed=0, res=RES):
  model = models.get(model_config)
  params = two_towers.init_params(model, jax.random.key(seed),
                                  (1, res, res, 3), (1, MAX_LEN))
  # Move t and b away from their init so that a mix-up would show.
  params = dict(params, t=params["t"] + 0.25, b=params["b"] + 0.5)
  return model, jax.tree.map(np.asarray, params)


def _batch(res=RES, seed=1):
  rng = np.random.default_rng(seed)
  image = rng.uniform(-1, 1, (2, res, res, 3)).astype(np.float32)
  text = rng.integers(2, VOCAB, (2, MAX_LEN)).astype(np.int32)
  text[0, 5:] = 1  # SigLIP-style padding with the EOS id.
  return image, text


def _write(tmp_path, arrays, name="ckpt.npz"):
  path = os.path.join(tmp_path, name)
  np.savez(path, **arrays)
  return path


def _assert_same_params(got, want):
  flat_got = jax.tree_util.tree_flatten_with_path(got)[0]
  flat_want = jax.tree_util.tree_flatten_with_path(want)[0]
  assert [k for k, _ in flat_got] == [k for k, _ in flat_want]
  for (key, a), (_, b) in zip(flat_got, flat_want):
    assert a.dtype == np.float32, key
    np.testing.assert_array_equal(a, b, err_msg=str(key))


@pytest.fixture(scope="module", params=[True, False],
                ids=["image_head", "released_layout"])
def siglip(request):
  """(model_config, model, params, outputs on `_batch()`)."""
  cfg = _model_config(image_head=request.param)
  model, params = _init(cfg)
  image, text = _batch()
  out = jax.jit(model.apply)({"params": params}, image, text)
  return cfg, model, params, out


def test_round_trip_is_exact(siglip, tmp_path):
  cfg, model, params, (zimg, ztxt, aux) = siglip
  arrays = big_vision.to_npz_dict(cfg, params)
  assert arrays["params/t"].shape == (1,)
  assert arrays["params/b"].shape == (1,)
  assert arrays["params/img/MAPHead_0/probe"].shape == (1, 1, 64)
  assert ("params/img/head/kernel" in arrays) == (cfg["out_dim"] == 32)
  assert arrays["params/txt/head/kernel"].shape == (64, cfg["out_dim"])
  assert arrays["params/txt/Encoder_0/encoderblock_1/"
                "MultiHeadDotProductAttention_0/query/kernel"].shape == (
                    64, 2, 32)
  path = _write(tmp_path, arrays)

  got_cfg, got = big_vision.load(path)
  assert got_cfg == cfg
  _assert_same_params(got, params)
  assert got["t"].shape == () and got["b"].shape == ()

  # The config alone builds a model that gives the same outputs.
  image, text = _batch()
  zimg2, ztxt2, aux2 = jax.jit(models.get(got_cfg).apply)(
      {"params": got}, image, text)
  np.testing.assert_array_equal(zimg2, zimg)
  np.testing.assert_array_equal(ztxt2, ztxt)
  np.testing.assert_array_equal(aux2["t"], aux["t"])
  np.testing.assert_array_equal(aux2["b"], aux["b"])
  assert model == models.get(got_cfg)


def test_scanned_and_prefixless_files(siglip, tmp_path):
  cfg, _, params, _ = siglip
  scanned = big_vision.to_npz_dict(cfg, params, scan=True, prefix="")
  assert "t" in scanned and not any(k.startswith("params/") for k in scanned)
  key = "img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"
  assert scanned[key].shape == (2, 64, 256)
  assert not any("encoderblock_" in k for k in scanned)
  # big_vision's own scalars are [1]; bare [] ones are accepted too.
  scanned["b"] = scanned["b"].reshape(())
  got_cfg, got = big_vision.load(_write(tmp_path, scanned))
  assert got_cfg == cfg
  _assert_same_params(got, params)


def test_nested_tree_and_bfloat16_leaves(siglip):
  cfg, _, params, _ = siglip
  tree = {"params": jax.tree.map(np.array, dict(params))}
  tree["params"]["t"] = tree["params"]["t"].reshape(1)
  # numpy stores bfloat16 as 2-byte void; big_vision recovers it on load.
  bf16 = np.asarray(params["txt"]["pos_embedding"], jnp.bfloat16)
  tree["params"]["txt"]["pos_embedding"] = bf16.view(np.dtype("V2"))
  tree["opt"] = {"mu": np.zeros(3, np.float32)}  # Optimiser state: ignored.
  got_cfg, got = big_vision.convert(tree)
  assert got_cfg == cfg
  np.testing.assert_array_equal(got["txt"]["pos_embedding"],
                                bf16.astype(np.float32))
  np.testing.assert_array_equal(got["t"], params["t"])


def test_siglip_config_round_trip(tmp_path):
  """configs/siglip.py:runlocal's model (variants, bfloat16-free)."""
  module = config_lib.load_config_module(
      os.path.join(_REPO, "configs", "siglip.py"))
  model_cfg = {"name": "two_towers",
               **module.get_config("runlocal").model.to_dict()}
  model = models.get(model_cfg)
  max_len = model_cfg["text"]["max_len"]
  params = jax.tree.map(np.asarray, two_towers.init_params(
      model, jax.random.key(3), (1, RES, RES, 3), (1, max_len)))
  path = big_vision.save(os.path.join(tmp_path, "siglip"), model_cfg, params)
  assert path.endswith("siglip") and os.path.exists(path)
  got_cfg, got = big_vision.load(path)
  _assert_same_params(got, params)
  assert got_cfg["out_dim"] == model_cfg["out_dim"]
  assert got_cfg["bias_init"] == model_cfg["bias_init"]
  want_img = vit.ViT(**model_cfg["image"])
  got_img = vit.ViT(**got_cfg["image"])
  assert got_img.dims() == want_img.dims()
  for key in ("pool_type", "posemb", "act", "norm_eps"):
    assert getattr(got_img, key) == getattr(want_img, key), key
  want_txt = text_transformer.TextTransformer(**model_cfg["text"])
  got_txt = text_transformer.TextTransformer(**got_cfg["text"])
  assert got_txt.dims() == want_txt.dims()
  for key in ("vocab_size", "max_len", "causal", "pool_type", "mask_pad",
              "act", "norm_eps"):
    assert getattr(got_txt, key) == getattr(want_txt, key), key


@pytest.fixture(scope="module")
def flat():
  """A flat big_vision dict of the image-head model (shared, copy it)."""
  cfg = _model_config()
  _, params = _init(cfg, seed=2)
  return big_vision.to_npz_dict(cfg, params)


@pytest.mark.parametrize("drop,match", [
    ("params/img/embedding/kernel", "missing required key 'img/embedding"),
    ("params/t", r"missing required keys \['t'\]"),
    ("params/txt/Encoder_0/encoder_norm/scale",
     "missing keys: txt/Encoder_0/encoder_norm/scale"),
])
def test_missing_keys_are_named(flat, drop, match):
  arrays = {k: v for k, v in flat.items() if k != drop}
  with pytest.raises(ValueError, match=match):
    big_vision.convert(arrays)
  txt_only = {k: v for k, v in flat.items() if not k.startswith("params/img")}
  with pytest.raises(ValueError, match=r"missing required keys \['img'\]"):
    big_vision.convert(txt_only)


def test_inconsistent_shapes_are_errors(flat):
  key = "params/img/Transformer/encoderblock_1/MlpBlock_0/Dense_1/kernel"
  bad = dict(flat, **{key: np.zeros((128, 64), np.float32)})
  with pytest.raises(ValueError, match="inconsistent shapes: img/Transformer/"
                     "encoderblock_1/MlpBlock_0/Dense_1/kernel"):
    big_vision.convert(bad)
  bad = dict(flat, **{"params/txt/head/kernel": np.zeros((64, 48)),
                      "params/txt/head/bias": np.zeros(48)})
  with pytest.raises(ValueError, match="one out_dim"):
    big_vision.convert(bad)
  bad = dict(flat, **{"params/t": np.zeros(2, np.float32)})
  with pytest.raises(ValueError, match=r"t: expected shape \[\] or \[1\]"):
    big_vision.convert(bad)
  bad = dict(flat, **{"params/img/extra/kernel": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match="unexpected keys: img/extra/kernel"):
    big_vision.convert(bad)
  bad = dict(flat, **{"params/img/pre_logits/kernel": np.zeros((64, 64))})
  with pytest.raises(ValueError, match="rep_size"):
    big_vision.convert(bad)
  bad = dict(flat, **{"params/txt/Embed_0/embedding": np.zeros((VOCAB,))})
  with pytest.raises(ValueError, match="2-D array"):
    big_vision.convert(bad)
  with pytest.raises(ValueError, match="not a positive multiple"):
    big_vision.convert(flat, image_size=36)


def test_export_rejects_what_big_vision_cannot_express(siglip):
  cfg, _, params, _ = siglip
  causal = {**cfg, "text": {**cfg["text"], "causal": True, "mask_pad": True}}
  with pytest.raises(ValueError, match="causal=True.*mask_pad=True"):
    big_vision.to_npz_dict(causal, params)
  assert big_vision.to_npz_dict(causal, params, strict=False)
  with pytest.raises(ValueError, match="prefix"):
    big_vision.to_npz_dict(cfg, params, prefix="params")
  wrong = {**cfg, "text": {**cfg["text"], "max_len": 8}}
  with pytest.raises(ValueError, match="inconsistent shapes: txt/pos_emb"):
    big_vision.to_npz_dict(wrong, params)


def test_legacy_layouts_are_repaired(flat):
  arrays = dict(flat)
  pe = arrays.pop("params/img/pos_embedding")
  arrays["params/img/Transformer/pos_embedding"] = pe
  extra = np.full_like(arrays["params/txt/pos_embedding"], 0.5)
  arrays["params/txt/Encoder_0/pos_embedding"] = extra
  for k in [k for k in arrays if k.startswith("params/img/MAPHead_0/")]:
    arrays[k.replace("MAPHead_0/", "")] = arrays.pop(k)
  _, got = big_vision.convert(arrays)
  np.testing.assert_array_equal(got["img"]["pos_embedding"], pe)
  np.testing.assert_array_equal(got["txt"]["pos_embedding"],
                                flat["params/txt/pos_embedding"] + extra)
  np.testing.assert_array_equal(got["img"]["MAPHead_0"]["probe"],
                                flat["params/img/MAPHead_0/probe"])


def test_resample_to_new_image_size(flat):
  cfg, got = big_vision.convert(flat, image_size=48)
  old = flat["params/img/pos_embedding"]
  assert old.shape == (1, 16, 64)
  assert got["img"]["pos_embedding"].shape == (1, 36, 64)
  np.testing.assert_allclose(
      got["img"]["pos_embedding"],
      vit.resample_posemb(jnp.asarray(old), 6), rtol=1e-6, atol=1e-6)
  image, text = _batch(res=48)
  zimg, ztxt, _ = jax.jit(models.get(cfg).apply)({"params": got}, image, text)
  assert zimg.shape == (2, 32) and ztxt.shape == (2, 32)
  assert np.all(np.isfinite(zimg))
  assert big_vision.preprocessing(cfg, params=got)["image_size"] == 48
  # The same size as the checkpoint changes nothing.
  _, same = big_vision.convert(flat, image_size=RES)
  np.testing.assert_array_equal(same["img"]["pos_embedding"], old)


def test_preprocessing(flat, tmp_path):
  cfg, params = big_vision.convert(flat)
  out = big_vision.preprocessing(cfg, params=params)
  assert out["pp_img"] == f"decode|resize({RES})|value_range(-1, 1)"
  assert out["image_size"] == RES and out["vocabulary"] is None
  assert out["pp_txt"] is None  # No SentencePiece model given.
  assert out["tokenizer"] == {"name": "sentencepiece", "model": None,
                              "max_len": MAX_LEN, "eos": "sticky",
                              "pad_id": 1}
  image = np.random.default_rng(0).integers(0, 256, (50, 40, 3), np.uint8)
  pixels = pp.get_preprocess_fn(out["pp_img"])({"image": image})["image"]
  assert pixels.shape == (RES, RES, 3)
  assert pixels.min() >= -1 and pixels.max() <= 1
  # The config's (informational) image.image_size is enough on its own.
  assert big_vision.preprocessing(cfg)["image_size"] == RES
  no_size = {**cfg, "image": {k: v for k, v in cfg["image"].items()
                              if k != "image_size"}}
  with pytest.raises(ValueError, match="image_size"):
    big_vision.preprocessing(no_size)
  assert big_vision.preprocessing(cfg, image_size=64)["pp_img"].startswith(
      "decode|resize(64)|")

  sp_path = os.path.join(tmp_path, "spm.model")
  with_model = big_vision.preprocessing(cfg, sp_path, image_size=64)
  assert with_model["tokenizer"]["model"] == sp_path
  # pp's `tokenize` takes the model: pp_txt is a string (None would have
  # let the rest of this test pass without running).
  assert with_model["pp_txt"] is not None
  assert with_model["pp_txt"].startswith(
      f"tokenize(max_len={MAX_LEN}, tokenizer='sentencepiece', "
      f"model={sp_path!r}")
  import sentencepiece  # pylint: disable=g-import-not-at-top
  words = ("a photo of the cat dog bird tree runs fast two on in big small "
           "red green blue house car street").split()
  rng = np.random.default_rng(0)
  sentences = [" ".join(rng.choice(words, 6)) for _ in range(300)]
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_prefix=sp_path[:-6],
      vocab_size=40, model_type="unigram", character_coverage=1.0,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2, num_threads=1)
  from big_vl.data import tokenizers  # pylint: disable=g-import-not-at-top
  tok = tokenizers.get(**with_model["tokenizer"])
  ids = pp.get_preprocess_fn(with_model["pp_txt"])({"text": "a cat"})["text"]
  np.testing.assert_array_equal(ids, tok("a cat")[0])
  assert ids[-1] == 1  # SigLIP pads with the EOS id.


def _naflex_fixture():
  """tests/data/big_vision_naflex.npz (tests/make_big_vision_naflex_fixture
  .py): big_vision's own NaFlex two-tower model, its params and outputs."""
  with np.load(os.path.join(_REPO, "tests", "data",
                            "big_vision_naflex.npz")) as f:
    data = dict(f)
  flat = {k: v for k, v in data.items() if k.startswith("params/")}
  return data, flat


def test_siglip2_naflex_import_equals_big_visions_own_model(tmp_path):
  data, flat = _naflex_fixture()
  model_config, params = big_vision.convert(flat)
  assert model_config["image"]["posemb_grid"] == 4
  assert "image_size" not in model_config["image"]
  assert params["img"]["pos_embedding"].shape == (1, 16, 32)
  model = models.get(model_config)
  # big_vision's patchify layout -> big_vl's: [B, N, P * P * 3] patches
  # are [B, N, P, P, 3]; padding (type 0, indices 0) gets position -1.
  b, n, _ = data["patches"].shape
  patches = data["patches"].reshape(b, n, 8, 8, 3)
  pos = np.stack([data["yabs"], data["xabs"]], -1)
  pos = np.where(data["ptype"][..., None] == 1, pos, -1).astype(np.int32)
  out = two_towers.outputs(model, {"params": params},
                           {"image": patches, "image_pos": pos,
                            "text": data["text"]})
  norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  np.testing.assert_allclose(out["zimg"], norm(data["img_out"]), atol=2e-5)
  np.testing.assert_allclose(out["ztxt"], norm(data["txt_out"]), atol=2e-5)
  # Export writes big_vision's NaFlex layout back, leaf for leaf.
  exported = big_vision.to_npz_dict(model_config, params)
  assert sorted(exported) == sorted(flat)
  for k, v in flat.items():
    np.testing.assert_array_equal(exported[k], v, err_msg=k)
  # Evaluation preprocessing: the `naflex` op at the grid's budget.
  prep = big_vision.preprocessing(model_config, params=params)
  assert prep["pp_img"] == "decode|naflex(16, 8)|value_range(-1, 1)"
  assert prep["image_size"] is None
  assert big_vision.preprocessing(model_config, max_patches=64)[
      "pp_img"].startswith("decode|naflex(64, 8)")
  with pytest.raises(ValueError, match="NaFlex"):
    big_vision.convert(flat, image_size=64)


def test_siglip2_naflex_convert_command_and_predictor(tmp_path):
  """`python -m big_vl.convert --from big_vision` on a NaFlex file, then
  `Predictor.load(...).embed_images` of images of other aspect ratios:
  the converted folder's pp cuts them to the grid's budget."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from big_vl import predict  # pylint: disable=g-import-not-at-top
  _, flat = _naflex_fixture()
  src = tmp_path / "siglip2_naflex.npz"
  np.savez(src, **flat)
  out = tmp_path / "converted"
  run = subprocess.run(
      [sys.executable, "-m", "big_vl.convert", "--from=big_vision",
       f"--src={src}", f"--out={out}"],
      capture_output=True, text=True, timeout=300, cwd=_REPO, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  predictor = predict.Predictor.load(str(out), pp_txt="tokenize(max_len=8)")
  assert predictor.pp_img == "decode|naflex(16, 8)|value_range(-1, 1)"
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, shape, np.uint8)
            for shape in ((40, 90, 3), (64, 64, 3), (100, 30, 3))]
  got = predictor.embed_images(images)
  model_config, params = big_vision.load(src)
  batch = [pp.build(predictor.pp_img)({"image": im}) for im in images]
  assert [int((b["image_pos"][:, 0] >= 0).sum()) for b in batch] == [
      15, 16, 14]  # 3x5, 4x4 and 7x2 grids.
  want = two_towers.outputs(
      models.get(model_config), {"params": params},
      {k: np.stack([b[k] for b in batch]) for k in ("image", "image_pos")}
  )["zimg"]
  np.testing.assert_allclose(got, want, atol=1e-5)
