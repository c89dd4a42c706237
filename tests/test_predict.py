"""big_vl.predict: embeddings and zero-shot probabilities of a saved model,
checked against the model applied by hand."""

import io

import jax
import numpy as np
import pytest
from PIL import Image

from big_vl import models
from big_vl import pretrained
from big_vl.data import pp as pp_lib
from big_vl.models import two_towers
from big_vl.predict import Predictor
from big_vl.predict import default_pp

TINY = {"name": "two_towers", "out_dim": 16, "temperature_init": 7.0,
        "image": {"width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2,
                  "patch_size": 8, "pool_type": "gap"},
        "text": {"width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2,
                 "vocab_size": 49408, "max_len": 8, "pool_type": "eot"}}
PP_IMG = "decode|resize(32)|value_range(-1,1)"
PP_TXT = "tokenize(max_len=8)"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  model = models.get(TINY)
  params = jax.tree.map(np.asarray, two_towers.init_params(
      model, jax.random.key(1), (1, 32, 32, 3), (1, 8)))
  path = pretrained.save(tmp_path_factory.mktemp("ckpt"), TINY, params,
                         preprocessing={"pp_img": PP_IMG, "pp_txt": PP_TXT})
  return path, model, params


def _images(n):
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
          for i in range(n)]


def test_embeddings_and_probabilities_match_the_model(saved, tmp_path):
  path, model, params = saved
  images = _images(5)
  # Paths, bytes, PIL images and arrays are the same image to the predictor.
  Image.fromarray(images[0]).save(tmp_path / "a.png")
  buf = io.BytesIO()
  Image.fromarray(images[1]).save(buf, "PNG")
  mixed = [str(tmp_path / "a.png"), buf.getvalue(),
           Image.fromarray(images[2]), *images[3:]]
  predictor = Predictor.load(path, batch_size=2)  # 5 images: 3 batches
  zimg = predictor.embed_images(mixed)

  pp_img, pp_txt = pp_lib.build(PP_IMG), pp_lib.build(PP_TXT)
  x = np.stack([pp_img({"image": _png(im)})["image"] for im in images])
  want_img, _, aux = model.apply({"params": params}, x, None, train=False)
  np.testing.assert_allclose(zimg, want_img, atol=1e-5)

  classes = ["red circle", "blue square", "green star"]
  probs = predictor.classify(images, classes, templates=["a {}.", "the {}"])
  tokens = np.stack([pp_txt({"text": t.format(c)})["text"]
                     for c in classes for t in ["a {}.", "the {}"]])
  _, ztxt, _ = model.apply({"params": params}, None, tokens, train=False)
  ztxt = np.array(ztxt).reshape(3, 2, -1)
  ztxt /= np.linalg.norm(ztxt, axis=-1, keepdims=True)
  w = ztxt.mean(1)
  w /= np.linalg.norm(w, axis=-1, keepdims=True)
  logits = float(aux["t"]) * np.asarray(want_img) @ w.T
  want = np.exp(logits - logits.max(1, keepdims=True))
  want /= want.sum(1, keepdims=True)
  np.testing.assert_allclose(probs, want, atol=1e-5)
  assert predictor.temperature() == pytest.approx(7.0, rel=1e-5)


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, "PNG")
  return buf.getvalue()


def test_default_pp_from_converted_and_trained_configs():
  assert default_pp({"preprocessing": {"pp_img": "a", "pp_txt": "b"}}) == (
      "a", "b")
  trained = {"evals": {"zeroshot": {
      "pp_img": "decode|resize(32)|keep('image','label')",
      "pp_txt": "tokenize(max_len=8)"}}}
  assert default_pp(trained) == ("decode|resize(32)", "tokenize(max_len=8)")
  assert default_pp({}) == (None, None)


def test_a_checkpoint_without_preprocessing_needs_it_given(saved, tmp_path):
  _, _, params = saved
  path = pretrained.save(tmp_path / "bare", TINY, params)
  with pytest.raises(ValueError, match="pp_img= and pp_txt="):
    Predictor.load(path)
  assert Predictor.load(path, pp_img=PP_IMG, pp_txt=PP_TXT).embed_texts(
      ["a red circle"]).shape == (1, 16)
  with pytest.raises(TypeError, match="Unsupported image type"):
    Predictor.load(path, pp_img=PP_IMG, pp_txt=PP_TXT).embed_images([3.0])
