"""Tests of big_vl.convert.open_clip and big_vl.export.

The first group needs no PyTorch: random big_vl CLIP models go to an
open_clip state dict and back. The `peer` group compares embeddings and
logits with the real open_clip (skipped without torch + open_clip).
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as st_numpy

from big_vl import export as export_lib
from big_vl import models
from big_vl.convert import open_clip as oc
from big_vl.models import two_towers

# A tiny open_clip config: 2 image heads of width 32, MLP ratio 3.
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64,
                   "head_width": 32, "mlp_ratio": 3.0, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 64,
                 "heads": 2, "layers": 2},
}
# Head widths 64, so that shapes alone determine the architecture.
TINY_INFERABLE = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 128,
                   "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 128,
                 "heads": 2, "layers": 1},
}


def _random_params(model_config, seed=0):
  """Random params for a model config, with random (non-zero) biases too."""
  model = models.get(model_config)
  size = model_config["image"]["image_size"]
  params = two_towers.init_params(
      model, jax.random.key(seed), (1, size, size, 3),
      (1, model_config["text"]["max_len"]))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
      lambda x: np.asarray(x) + rng.normal(0, 0.02, np.shape(x)).astype(
          np.float32), params)
  # open_clip's conv1 has no bias: keep big_vl's at zero.
  params["img"]["embedding"]["bias"] = np.zeros_like(
      params["img"]["embedding"]["bias"])
  return params


def _flat(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_same_params(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]),
                                  err_msg=k)


@pytest.fixture(scope="module")
def tiny():
  model_config = oc.model_config_from_open_clip(TINY)
  return model_config, _random_params(model_config)


def test_model_config_from_open_clip():
  mc = oc.model_config_from_open_clip(TINY)
  json.dumps(mc)
  assert mc["out_dim"] == 32
  assert mc["image"]["num_heads"] == 2 and mc["image"]["mlp_dim"] == 192
  assert mc["image"]["pool_type"] == "cls" and mc["image"]["pre_norm"]
  assert mc["image"]["norm_eps"] == 1e-5 and not mc["image"]["head_bias"]
  assert mc["text"]["causal"] and mc["text"]["pool_type"] == "eot"
  assert not mc["text"]["mask_pad"]
  assert mc["temperature_init"] == pytest.approx(1 / 0.07)
  quick = oc.model_config_from_open_clip(oc.ARCHS["ViT-B-16-quickgelu"])
  assert quick["image"]["act"] == quick["text"]["act"] == "quick_gelu"


def test_round_trip_exact(tiny):
  model_config, params = tiny
  arch, state_dict = oc.to_state_dict(model_config, params)
  assert arch == TINY
  assert all(v.dtype == np.float32 for v in state_dict.values())
  np.testing.assert_array_equal(
      state_dict["visual.positional_embedding"][0], 0.0)
  model_config2, params2 = oc.convert(state_dict, arch)
  assert model_config2 == model_config
  _assert_same_params(params2, params)


def test_round_trip_keeps_the_function(tiny):
  model_config, params = tiny
  _, state_dict = oc.to_state_dict(model_config, params)
  # A checkpoint whose positional_embedding[0] is not zero: the class token
  # absorbs it.
  state_dict = dict(state_dict)
  row = np.full([64], 0.25, np.float32)
  state_dict["visual.positional_embedding"] = np.concatenate(
      [row[None], state_dict["visual.positional_embedding"][1:]])
  state_dict["visual.class_embedding"] = (
      state_dict["visual.class_embedding"] - row)
  _, params2 = oc.convert(state_dict, TINY)
  np.testing.assert_allclose(params2["img"]["cls"], params["img"]["cls"],
                             atol=1e-6)


def test_scanned_params_export(tiny):
  from big_vl.models import common  # pylint: disable=g-import-not-at-top
  model_config, params = tiny
  _, expected = oc.to_state_dict(model_config, params)
  _, got = oc.to_state_dict(model_config, common.stack_block_params(params))
  assert sorted(got) == sorted(expected)
  for k in expected:
    np.testing.assert_array_equal(got[k], expected[k])


def test_shape_inference_recovers_the_config():
  model_config = oc.model_config_from_open_clip(TINY_INFERABLE)
  params = _random_params(model_config, seed=1)
  _, state_dict = oc.to_state_dict(model_config, params)
  inferred, params2 = oc.convert(state_dict)
  assert inferred == model_config
  _assert_same_params(params2, params)


def test_shape_inference_takes_heads_from_known_archs():
  # What shapes tell about a ViT-H-14: head widths 64 (wrong: 80).
  config = json.loads(json.dumps(oc.ARCHS["ViT-H-14"]))
  del config["vision_cfg"]["head_width"]
  config["text_cfg"]["heads"] = 1024 // 64
  config = oc._adopt_known_heads(config)  # pylint: disable=protected-access
  assert config["vision_cfg"]["head_width"] == 80
  assert oc.arch_name(config) == "ViT-H-14"


def test_arch_table_round_trips_by_name():
  for name, config in oc.ARCHS.items():
    mc = oc.model_config_from_open_clip(config)
    assert oc.arch_name(oc.open_clip_config(mc)) == name, name


def test_preprocessing():
  mc = oc.model_config_from_open_clip(oc.ARCHS["ViT-L-14-336"])
  pp = oc.preprocessing(mc)
  assert pp == {
      "pp_img": "clip_preprocess(336)",
      "pp_txt": "tokenize(max_len=77, tokenizer='clip_bpe')",
      "tokenizer": {"name": "clip", "max_len": 77},
      "image_size": 336}
  json.dumps(pp)
  assert oc.preprocessing(mc, image_size=224)["pp_img"] == (
      "clip_preprocess(224)")
  from big_vl.data import pp as pp_lib  # pylint: disable=g-import-not-at-top
  from big_vl.data import tokenizers  # pylint: disable=g-import-not-at-top
  text = pp_lib.get_preprocess_fn(pp["pp_txt"])({"text": "a photo"})["text"]
  np.testing.assert_array_equal(
      text, tokenizers.get(**pp["tokenizer"])(["a photo"])[0])
  assert text.shape == (77,) and text[0] == 49406


@pytest.mark.parametrize("where,key,value,feature", [
    ("vision_cfg", "ls_init_value", 1e-4, "layer scale"),
    ("vision_cfg", "attentional_pool", True, "attentional pooler"),
    ("vision_cfg", "no_ln_pre", True, "no_ln_pre"),
    ("vision_cfg", "pool_type", "avg", "pooling"),
    ("vision_cfg", "layers", [3, 4, 6, 3], "ModifiedResNet"),
    ("vision_cfg", "timm_model_name", "vit_base", "timm"),
    ("text_cfg", "proj_bias", True, "projection bias"),
    ("text_cfg", "hf_model_name", "roberta-base", "Hugging Face"),
    ("text_cfg", "pool_type", "eos", "pool_type"),
    ("text_cfg", "qk_norm", True, "q/k LayerNorm"),
    ("text_cfg", "frobnicate", 1, "unknown"),
    (None, "custom_text", True, "custom"),
])
def test_unsupported_config_features(where, key, value, feature):
  config = json.loads(json.dumps(TINY))
  (config[where] if where else config)[key] = value
  with pytest.raises(ValueError, match=feature):
    oc.model_config_from_open_clip(config)


@pytest.mark.parametrize("key,feature", [
    ("visual.transformer.resblocks.0.ls_1.gamma", "layer scale"),
    ("visual.attn_pool.query", "attentional pooler"),
    ("text.transformer.embeddings.word_embeddings.weight", "text tower"),
    ("text_projection.weight", "projection bias"),
])
def test_unsupported_state_dict_features(tiny, key, feature):
  _, state_dict = oc.to_state_dict(*tiny)
  state_dict = {**state_dict, key: np.zeros([4], np.float32)}
  with pytest.raises(ValueError, match=feature):
    oc.convert(state_dict)


def test_wrong_arch_or_extra_keys(tiny):
  _, state_dict = oc.to_state_dict(*tiny)
  with pytest.raises(ValueError, match="does not use|do not fit"):
    oc.convert(state_dict, TINY_INFERABLE)
  smaller = json.loads(json.dumps(TINY))
  smaller["embed_dim"] = 16
  with pytest.raises(ValueError, match="do not fit"):
    oc.convert(state_dict, smaller)
  with pytest.raises(ValueError, match="does not use"):
    oc.convert({**state_dict, "extra": np.zeros([1], np.float32)}, TINY)
  with pytest.raises(ValueError, match="Unknown open_clip architecture"):
    oc.convert(state_dict, "ViT-Q-99")


@pytest.mark.parametrize("tower,key,value,message", [
    ("image", "pool_type", "map", "pool_type"),
    ("image", "posemb", "sincos2d", "posemb"),
    ("image", "pre_norm", False, "pre_norm"),
    ("text", "mask_pad", True, "mask_pad"),
    ("text", "pool_type", "mean", "pool_type"),
    ("text", "norm_position", "post", "norm_position"),
    ("text", "act", "quick_gelu", "QuickGELU"),
    ("text", "num_classes", 0, "projection head"),
])
def test_export_errors_for_unrepresentable_configs(tiny, tower, key, value,
                                                   message):
  model_config, params = tiny
  model_config = json.loads(json.dumps(model_config))
  model_config[tower][key] = value
  with pytest.raises(ValueError, match=message):
    oc.to_state_dict(model_config, params)


def test_export_rejects_non_zero_head_bias(tiny):
  model_config, params = tiny
  model_config = json.loads(json.dumps(model_config))
  model_config["image"]["head_bias"] = True
  params = dict(params, img=dict(params["img"]))
  params["img"]["head"] = {"kernel": params["img"]["head"]["kernel"],
                           "bias": np.zeros([32], np.float32)}
  assert oc.to_state_dict(model_config, params)[1]  # zero bias: dropped
  params["img"]["head"]["bias"] = np.ones([32], np.float32)
  with pytest.raises(ValueError, match="non-zero bias"):
    oc.to_state_dict(model_config, params)


def test_export_non_default_eps_and_gelu(tiny):
  model_config, params = tiny
  model_config = json.loads(json.dumps(model_config))
  model_config["image"]["norm_eps"] = 1e-6
  model_config["text"]["act"] = "gelu"
  config, state_dict = oc.to_state_dict(model_config, params)
  assert config["vision_cfg"]["norm_kwargs"] == {"eps": 1e-6}
  assert config["text_cfg"]["act_kwargs"] == {"approximate": "tanh"}
  assert oc.convert(state_dict, config)[0] == model_config


def test_logit_bias_round_trip(tiny):
  model_config, params = tiny
  model_config = dict(model_config, bias_init=-10.0)
  params = dict(params, b=np.float32(-3.5))
  config, state_dict = oc.to_state_dict(model_config, params)
  assert config["init_logit_bias"] == -3.5
  assert state_dict["logit_bias"] == np.float32(-3.5)
  model_config2, params2 = oc.convert(state_dict)
  assert model_config2["bias_init"] == -3.5
  assert params2["b"] == np.float32(-3.5)


def test_posemb_resampling(tiny):
  model_config, params = tiny
  _, state_dict = oc.to_state_dict(model_config, params)
  state_dict = dict(state_dict)
  # A smooth ramp over the 4x4 grid (value = row + column, every channel).
  rows, cols = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
  ramp = (rows + cols).reshape(16, 1).astype(np.float32) * np.ones([1, 64])
  state_dict["visual.positional_embedding"] = np.concatenate(
      [np.zeros([1, 64], np.float32), ramp]).astype(np.float32)
  model_config2, params2 = oc.convert(state_dict, TINY, image_size=64)
  assert model_config2["image"]["image_size"] == 64
  pos = params2["img"]["pos_embedding"]
  assert pos.shape == (1, 64, 64)
  grid = pos[0, :, 0].reshape(8, 8)
  assert grid.min() >= 0.0 and grid.max() <= 6.0
  # Symmetric under the ramp's symmetry and increasing along both axes.
  np.testing.assert_allclose(grid, grid.T, atol=1e-5)
  assert np.all(np.diff(grid, axis=0) >= -1e-6)
  # The centre of the new grid keeps the old centre value (3 = 1.5 + 1.5).
  assert grid[3:5, 3:5].mean() == pytest.approx(3.0, abs=1e-5)
  np.testing.assert_array_equal(params2["img"]["cls"],
                                oc.convert(state_dict, TINY)[1]["img"]["cls"])
  model = models.get(model_config2)
  zimg, _, _ = model.apply({"params": params2}, jnp.zeros([1, 64, 64, 3]),
                           None)
  assert zimg.shape == (1, 32)
  assert oc.preprocessing(model_config2)["pp_img"] == "clip_preprocess(64)"


def test_export_open_clip_files_and_load(tiny, tmp_path):
  model_config, params = tiny
  out = str(tmp_path / "tiny.safetensors")
  arch, oc_config, paths = export_lib.export_open_clip(model_config, params,
                                                       out)
  assert arch is None and oc_config == TINY
  assert paths == [out, str(tmp_path / "tiny.json")]
  with open(paths[1]) as f:
    assert json.load(f) == TINY
  # load() finds the sibling tiny.json.
  model_config2, params2 = oc.load(out)
  assert model_config2 == model_config
  _assert_same_params(params2, params)
  text = export_lib.open_clip_instructions(arch, out)
  assert "add_model_config" in text and "create_model('tiny')" in text
  assert "create_model('ViT-B-32')" in export_lib.open_clip_instructions(
      "ViT-B-32", out)


def test_load_half_precision_safetensors(tiny, tmp_path):
  model_config, params = tiny
  _, state_dict = oc.to_state_dict(model_config, params)
  half = {k: v.astype(np.float16) for k, v in state_dict.items()}
  st_numpy.save_file(half, str(tmp_path / "half.safetensors"))
  model_config2, params2 = oc.load(str(tmp_path / "half.safetensors"),
                                   TINY)
  assert model_config2 == model_config
  for leaf in jax.tree.leaves(params2):
    assert leaf.dtype == np.float32
  np.testing.assert_array_equal(
      params2["txt"]["Embed_0"]["embedding"],
      half["token_embedding.weight"].astype(np.float32))


def test_export_cli_function(tiny, tmp_path):
  from big_vl import pretrained  # pylint: disable=g-import-not-at-top
  model_config, params = tiny
  pretrained.save(str(tmp_path / "ckpt"), model_config, params)
  text = export_lib.export(str(tmp_path / "ckpt"),
                           str(tmp_path / "out" / "m.safetensors"))
  assert "load_state_dict" in text
  model_config2, params2 = oc.load(str(tmp_path / "out" / "m.safetensors"))
  assert model_config2 == model_config
  _assert_same_params(params2, params)


# ---------------------------------------------------------------------------
# Against the real open_clip.

SMALL_160 = {
    "embed_dim": 96,
    "vision_cfg": {"image_size": 160, "layers": 2, "width": 128,
                   "head_width": 32, "mlp_ratio": 3.0, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128,
                 "heads": 2, "layers": 2},
}
SENTENCES = ["a photo of a cat sitting on a mat.",
             "A diagram of the solar system, drawn by hand!"]


def _torch_model(arch, torch, open_clip):
  """A seeded open_clip model with every parameter randomised."""
  torch.manual_seed(0)
  if isinstance(arch, str):
    model = open_clip.create_model(arch, pretrained=None)
  else:
    model = open_clip.CLIP(**arch)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name == "logit_scale":
        p.fill_(math.log(42.0))
      else:  # Zero biases, unit LayerNorm scales: make them random too.
        p.add_(0.02 * torch.randn_like(p))
  return model.eval()


def _compare_with_open_clip(arch, tmp_path, *, sibling_config=False):
  torch = pytest.importorskip("torch")
  open_clip = pytest.importorskip("open_clip")
  st_torch = pytest.importorskip("safetensors.torch")
  model = _torch_model(arch, torch, open_clip)
  path = str(tmp_path / "open_clip_model.safetensors")
  st_torch.save_file(model.state_dict(), path)
  if sibling_config:
    with open(tmp_path / "open_clip_config.json", "w") as f:
      json.dump({"model_cfg": arch, "preprocess_cfg": {}}, f)
    model_config, params = oc.load(path)
  else:
    model_config, params = oc.load(path, arch)
  size = model_config["image"]["image_size"]

  images = torch.randn(2, 3, size, size, generator=torch.Generator()
                       .manual_seed(1))
  tokens = open_clip.tokenize(SENTENCES)
  with torch.no_grad():
    ref_img = model.encode_image(images, normalize=True).numpy()
    ref_txt = model.encode_text(tokens, normalize=True).numpy()
    ref_logits = (model.logit_scale.exp() * torch.from_numpy(ref_img)
                  @ torch.from_numpy(ref_txt).T).numpy()

  bv_model = models.get(model_config)
  zimg, ztxt, aux = jax.jit(bv_model.apply)(
      {"params": params}, jnp.asarray(images.permute(0, 2, 3, 1).numpy()),
      jnp.asarray(tokens.numpy()))
  logits = np.asarray(aux["t"] * zimg @ ztxt.T)
  diffs = {"img": float(np.abs(np.asarray(zimg) - ref_img).max()),
           "txt": float(np.abs(np.asarray(ztxt) - ref_txt).max()),
           "logits": float(np.abs(logits - ref_logits).max())}
  print(f"\n{arch if isinstance(arch, str) else 'config'}: max abs diff "
        f"{diffs}")
  assert max(diffs.values()) <= 1e-4, diffs

  # Export: back into the same open_clip model, exactly.
  arch_out, state_dict = oc.to_state_dict(model_config, params)
  assert arch_out == arch
  original = {k: v.numpy() for k, v in model.state_dict().items()}
  model.load_state_dict({k: torch.from_numpy(v) for k, v in
                         state_dict.items()}, strict=True)
  assert sorted(state_dict) == sorted(original)
  for k, v in original.items():
    if k in ("visual.class_embedding", "visual.positional_embedding"):
      continue
    np.testing.assert_array_equal(state_dict[k], v, err_msg=k)
  np.testing.assert_array_equal(state_dict["visual.positional_embedding"][1:],
                                original["visual.positional_embedding"][1:])
  np.testing.assert_array_equal(
      state_dict["visual.class_embedding"],
      original["visual.class_embedding"]
      + original["visual.positional_embedding"][0])
  return model, params, model_config


@pytest.mark.peer
def test_peer_vit_b_32(tmp_path):
  _compare_with_open_clip("ViT-B-32", tmp_path)


@pytest.mark.peer
def test_peer_vit_b_16_quickgelu(tmp_path):
  _compare_with_open_clip("ViT-B-16-quickgelu", tmp_path)


@pytest.mark.peer
def test_peer_small_config_160(tmp_path):
  _compare_with_open_clip(SMALL_160, tmp_path, sibling_config=True)


@pytest.mark.peer
def test_peer_arch_table_matches_open_clip():
  open_clip = pytest.importorskip("open_clip")
  for name, config in oc.ARCHS.items():
    assert open_clip.get_model_config(name) == config, name


@pytest.mark.peer
def test_peer_torch_files(tmp_path):
  torch = pytest.importorskip("torch")
  open_clip = pytest.importorskip("open_clip")
  model = _torch_model(SMALL_160, torch, open_clip)
  state_dict = model.state_dict()
  wrapped = {"state_dict": {f"module.{k}": v for k, v in state_dict.items()},
             "epoch": 3}
  torch.save(wrapped, tmp_path / "epoch_3.pt")
  from_pt, is_openai = oc.read_state_dict(str(tmp_path / "epoch_3.pt"))
  assert not is_openai
  assert sorted(from_pt) == sorted(state_dict)
  for k, v in state_dict.items():
    np.testing.assert_array_equal(from_pt[k], v.numpy())
  # A TorchScript archive (as OpenAI's releases) with their extra keys.
  scripted = torch.jit.script(model)
  scripted.save(str(tmp_path / "scripted.pt"))
  with pytest.raises(ValueError, match="allow_torchscript"):
    oc.read_state_dict(str(tmp_path / "scripted.pt"))
  from_jit, is_openai = oc.read_state_dict(str(tmp_path / "scripted.pt"),
                                           allow_torchscript=True)
  assert is_openai
  assert sorted(from_jit) == sorted(state_dict)
  # Loaded as OpenAI's: QuickGELU, architecture from the shapes.
  model_config, _ = oc.load(str(tmp_path / "scripted.pt"),
                            allow_torchscript=True)
  assert model_config["image"]["act"] == "quick_gelu"
  assert model_config["image"]["image_size"] == 160
  _, params = oc.load(str(tmp_path / "epoch_3.pt"), SMALL_160)
  np.testing.assert_array_equal(
      params["txt"]["Embed_0"]["embedding"],
      state_dict["token_embedding.weight"].numpy())


# A pickle whose unpickling runs code: it creates the file named in argv.
class _Payload:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def _crafted_torchscript(path, marker):
  """A zip laid out as a TorchScript archive, its pickles malicious."""
  import pickle  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  payload = pickle.dumps(_Payload(str(marker)))
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", payload)
    zf.writestr("archive/constants.pkl", payload)
    zf.writestr("archive/code/__torch__.py", "import os\nos.system('true')\n")
    zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "ViT-B-32.pt"])
def test_torchscript_archive_refused(tmp_path, name):
  """Refused by zip member names, before torch is imported or run."""
  import sys  # pylint: disable=g-import-not-at-top
  from big_vl import convert as convert_lib  # pylint: disable=g-import-not-at-top
  path, marker = tmp_path / name, tmp_path / "pwned"
  _crafted_torchscript(path, marker)
  had_torch = "torch" in sys.modules
  for load in (lambda: oc.read_state_dict(str(path)),
               lambda: oc.load(str(path)),
               lambda: convert_lib.load("openai", str(path)),
               lambda: convert_lib.load("open_clip", str(path), arch="ViT-B-32")):
    with pytest.raises(ValueError) as e:
      load()
    msg = str(e.value)
    assert "TorchScript archive" in msg and "constants.pkl" in msg
    assert "runs the TorchScript code" in msg
    assert "--allow_torchscript" in msg and "allow_torchscript=True" in msg
  assert not marker.exists()
  assert ("torch" in sys.modules) == had_torch  # torch was not imported.


def test_convert_cli_refuses_torchscript(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  path, marker = tmp_path / "model.pt", tmp_path / "pwned"
  _crafted_torchscript(path, marker)
  out = subprocess.run(
      [sys.executable, "-m", "big_vl.convert", "--from=openai",
       f"--src={path}", f"--out={tmp_path / 'out'}"],
      capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode != 0
  assert "--allow_torchscript" in out.stderr, out.stderr[-3000:]
  assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.peer
def test_peer_crafted_pickles_do_not_run(tmp_path):
  """weights_only=True: a .bin pickle with a malicious __reduce__ is refused;
  with --allow_torchscript a crafted archive still fails in torch's reader."""
  import pickle  # pylint: disable=g-import-not-at-top
  torch = pytest.importorskip("torch")
  marker = tmp_path / "pwned"
  legacy = tmp_path / "legacy.bin"
  legacy.write_bytes(pickle.dumps(_Payload(str(marker))))
  zipped = tmp_path / "zipped.bin"
  torch.save({"w": torch.zeros(2)}, zipped)
  import zipfile  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(zipped) as zf:
    members = {n: zf.read(n) for n in zf.namelist()}
  data_pkl = next(n for n in members if n.endswith("/data.pkl"))
  members[data_pkl] = pickle.dumps(_Payload(str(marker)))
  with zipfile.ZipFile(zipped, "w") as zf:
    for n, data in members.items():
      zf.writestr(n, data)
  for path in (legacy, zipped):
    with pytest.raises(pickle.UnpicklingError):
      oc.read_state_dict(str(path))
  assert not marker.exists()


def test_every_torch_load_is_weights_only():
  """Static: each torch.load in big_vl passes weights_only=True, and
  torch.jit.load appears only behind read_state_dict's allow_torchscript."""
  import ast  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(oc.__file__))
  loads, jit_loads = [], []
  for folder, _, files in os.walk(root):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      with open(path) as f:
        tree = ast.parse(f.read())
      for node in ast.walk(tree):
        if not (isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"):
          continue
        owner = ast.unparse(node.func.value)
        where = f"{os.path.relpath(path, root)}:{node.lineno}"
        if owner == "torch":
          kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
          assert kwargs.get("weights_only") == "True", where
          loads.append(where)
        elif owner == "torch.jit":
          jit_loads.append(where)
  assert len(loads) == 2, loads  # open_clip and hf_bert.
  assert [w.split(":")[0] for w in jit_loads] == ["convert/open_clip.py"]


def test_convert_names_a_missing_or_wrong_source_without_unsafe_advice(
    tmp_path):
  from big_vl import convert as convert_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(FileNotFoundError, match=r"--src .*nope.safetensors: no "
                     r"such file or folder \(open_clip expects"):
    convert_lib.load("open_clip", str(tmp_path / "nope.safetensors"))
  garbage = tmp_path / "garbage.npz"
  garbage.write_text("not a checkpoint")
  with pytest.raises(convert_lib.ConvertError) as e:
    convert_lib.load("big_vision", str(garbage))
  message = str(e.value)
  assert "is not a big_vision .npz checkpoint that big_vl can read" in message
  assert "allow_pickle" not in message and "never does" in message
  bad = tmp_path / "garbage.safetensors"
  bad.write_text("not a checkpoint")
  with pytest.raises(convert_lib.ConvertError, match=r"is not an open_clip "
                     r".safetensors / .bin / .pt state dict"):
    convert_lib.load("open_clip", str(bad))
  (tmp_path / "empty").mkdir()
  with pytest.raises(convert_lib.ConvertError, match=r"config.json"):
    convert_lib.load("hf_bert", str(tmp_path / "empty"))


@pytest.mark.slow
def test_convert_cli_errors_are_one_sentence(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  garbage = tmp_path / "garbage.npz"
  garbage.write_text("not a checkpoint")
  for src in (garbage, tmp_path / "missing.npz"):
    out = subprocess.run(
        [sys.executable, "-m", "big_vl.convert", "--from=big_vision",
         f"--src={src}", f"--out={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("ERROR: ")
    assert not (tmp_path / "out").exists()
