"""ViTamin image tower: layout, parameter counts, conversion from timm.

Parity against timm (which ships with open_clip) runs with the peers
(`pytest -m peer`); the parameter counts are also checked here against the
numbers timm 1.0.31 gives, so a plain run catches a layout change.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vl import models
from big_vl.models import vitamin

# timm 1.0.31: sum of parameter sizes of create_model(name, num_classes=1000).
TIMM_PARAMS = {
    ("S", "vitamin_small_224", 224): 22_262_696,
    ("B", "vitamin_base_224", 224): 87_901_032,
    ("L", "vitamin_large_224", 224): 333_556_616,
    ("XL", "vitamin_xlarge_256", 256): 435_879_976,
}


def _count(variant, size, num_classes=1000):
  shapes = jax.eval_shape(
      vitamin.ViTamin(variant=variant, num_classes=num_classes).init,
      jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("key", list(TIMM_PARAMS), ids=lambda k: k[0])
def test_parameter_counts_equal_timm(key):
  variant, _, size = key
  assert _count(variant, size) == TIMM_PARAMS[key]


def test_layout_and_two_tower_use():
  tower = vitamin.ViTamin(variant="mu", num_classes=8)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)),
                       jnp.float32)
  params = tower.init(jax.random.key(0), images)["params"]
  out, aux = tower.apply({"params": params}, images)
  assert out.shape == (2, 8)
  assert aux["tokens"].shape == (2, 16, 64)         # 64 px / 16 = 4 x 4
  assert aux["pre_logits"].shape == (2, 64)
  blocks = params["Transformer"]["encoderblock_0"]
  assert set(blocks["GeGluMlpBlock_0"]) == {"LayerNorm_0", "Dense_0",
                                            "Dense_1", "Dense_2"}
  assert "encoder_norm" not in params["Transformer"]  # fc_norm after pooling
  assert "shortcut" not in params["stage0_block0"]    # 16 -> 16: pool only
  assert params["stage1_block0"]["shortcut"]["kernel"].shape == (1, 1, 16,
                                                                 32)
  model = models.get({"name": "two_towers", "out_dim": 16,
                      "image": {"arch": "vitamin", "variant": "mu"},
                      "text": {"variant": "mu", "max_len": 8,
                               "vocab_size": 50}})
  text = jnp.ones((2, 8), jnp.int32)
  p = model.init(jax.random.key(1), images, text)["params"]
  zimg, _, _ = model.apply({"params": p}, images, text)
  assert zimg.shape == (2, 16)
  np.testing.assert_allclose(jnp.linalg.norm(zimg, axis=-1), 1, rtol=1e-5)
  with pytest.raises(ValueError, match="image.arch"):
    models.get({"name": "two_towers", "image": {"arch": "convnext"},
                "text": {"variant": "mu"}}).init(jax.random.key(0), images,
                                                 text)


@pytest.mark.peer
def test_converted_timm_model_gives_timm_features():
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  from big_vl.convert import timm_vitamin  # pylint: disable=g-import-not-at-top
  model = timm.create_model("vitamin_small_224", pretrained=False,
                            num_classes=1000).eval()
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  config, params = timm_vitamin.convert(sd)
  assert config == {"variant": "S", "num_classes": 1000}
  x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(
      np.float32)
  with torch.no_grad():
    feats = model.forward_head(model.forward_features(torch.from_numpy(x)),
                               pre_logits=True).numpy()
    logits = model(torch.from_numpy(x)).numpy()
  out, aux = vitamin.ViTamin(**config).apply({"params": params},
                                             x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(aux["pre_logits"], feats, atol=1e-4)
  np.testing.assert_allclose(out, logits, atol=1e-4)
  # A tensor the converter does not know is an error, not silently dropped.
  with pytest.raises(ValueError, match="not converted"):
    timm_vitamin.convert({**sd, "extra.weight": np.zeros(3)})


@pytest.mark.peer
@pytest.mark.parametrize("key", list(TIMM_PARAMS), ids=lambda k: k[0])
def test_parameter_counts_equal_timm_live(key):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  variant, name, size = key
  with torch.device("meta"):
    model = timm.create_model(name, pretrained=False, num_classes=1000)
  assert _count(variant, size) == sum(p.numel() for p in model.parameters())
