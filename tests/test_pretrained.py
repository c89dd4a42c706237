"""Converted checkpoints: save/load, merging into a model, training from one."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from big_vl import config as config_lib
from big_vl import models
from big_vl import pretrained
from big_vl import train as train_lib
from big_vl.models import common
from big_vl.models import two_towers

TINY = {"name": "two_towers", "out_dim": 16,
        "image": {"width": 16, "depth": 2, "mlp_dim": 32, "num_heads": 2,
                  "patch_size": 8, "pool_type": "cls", "pre_norm": True},
        "text": {"width": 16, "depth": 2, "mlp_dim": 32, "num_heads": 2,
                 "vocab_size": 50, "max_len": 8, "pool_type": "eot"}}


def _init(model_config, seed=0, image_size=32, max_len=8):
  model = models.get(model_config)
  params = two_towers.init_params(model, jax.random.key(seed),
                                  (1, image_size, image_size, 3),
                                  (1, max_len))
  return jax.tree.map(np.asarray, params)


def _leaves(tree):
  return jax.tree_util.tree_flatten_with_path(tree)[0]


def test_save_load_round_trip_is_exact(tmp_path):
  params = _init(TINY, seed=3)
  out = pretrained.save(tmp_path / "ckpt", TINY, params,
                        preprocessing={"pp_img": "resize(32)"},
                        source={"from": "test"})
  model_config, loaded = pretrained.load(out)
  assert model_config == TINY
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  for (path, a), (_, b) in zip(_leaves(params), _leaves(loaded)):
    assert isinstance(b, np.ndarray), path
    np.testing.assert_array_equal(a, b)
  with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
  assert config["model_name"] == "two_towers"
  assert config["preprocessing"] == {"pp_img": "resize(32)"}
  assert config["converted"] == {"from": "test"}
  with pytest.raises(FileNotFoundError, match="step 5"):
    pretrained.load(out, step=5)


def test_merge_loads_keeps_and_reports():
  fresh, other = _init(TINY, seed=0), _init(TINY, seed=1)
  merged, report = pretrained.merge(fresh, other, dont_load=("img/.*",))
  flat_m = dict(_leaves(merged))
  for path, value in _leaves(fresh):
    name = "/".join(k.key for k in path)
    source = fresh if name.startswith("img/") else other
    np.testing.assert_array_equal(flat_m[path], dict(_leaves(source))[path])
  assert all(n.startswith("img/") for n in report["kept"])
  assert "t" in report["loaded"] and report["unused"] == []
  # A text-only checkpoint: image params must be named in dont_load.
  text_only = {"txt": other["txt"]}
  with pytest.raises(ValueError, match=r"not in the checkpoint.*img/"):
    pretrained.merge(fresh, text_only)
  merged, report = pretrained.merge(fresh, {**text_only, "extra": {"w": 1.0}},
                                    dont_load=("img/.*", "t"))
  np.testing.assert_array_equal(merged["txt"]["Embed_0"]["embedding"],
                                other["txt"]["Embed_0"]["embedding"])
  assert report["unused"] == ["extra/w"]


def test_merge_adapts_position_tables_and_layouts():
  bigger = {**TINY, "image": {**TINY["image"]}, "text": {**TINY["text"],
                                                         "max_len": 12}}
  source = _init(bigger, seed=1, image_size=32, max_len=12)   # 4x4 grid
  fresh = _init(TINY, seed=0, image_size=48)                  # 6x6 grid
  merged, report = pretrained.merge(fresh, source)
  assert merged["img"]["pos_embedding"].shape == (1, 36, 16)
  assert report["adapted"]["img/pos_embedding"] == "resampled 4x4 -> 6x6"
  np.testing.assert_array_equal(merged["txt"]["pos_embedding"],
                                source["txt"]["pos_embedding"][:, :8])
  # A shape that cannot be adapted is an error naming the param.
  wide = {**TINY, "text": {**TINY["text"], "vocab_size": 60}}
  with pytest.raises(ValueError, match=r"Embed_0/embedding: checkpoint"):
    pretrained.merge(_init(wide), _init(TINY))
  # Unscanned checkpoint into a scanned image tower, and back.
  scanned = {**TINY, "image": {**TINY["image"], "scan": True}}
  fresh_scan = _init(scanned)
  merged, _ = pretrained.merge(fresh_scan, source | {"img": {
      **source["img"], "pos_embedding": fresh_scan["img"]["pos_embedding"]}})
  block = merged["img"]["Transformer"]["encoderblock"]
  np.testing.assert_array_equal(
      block["MlpBlock_0"]["Dense_0"]["kernel"][1],
      source["img"]["Transformer"]["encoderblock_1"]["MlpBlock_0"][
          "Dense_0"]["kernel"])
  back, _ = pretrained.merge(_init(TINY), merged)
  np.testing.assert_array_equal(
      back["img"]["Transformer"]["encoderblock_1"]["MlpBlock_0"]["Dense_0"][
          "kernel"], block["MlpBlock_0"]["Dense_0"]["kernel"][1])
  assert common.unstack_block_params(merged)["img"]["Transformer"].keys() == \
      back["img"]["Transformer"].keys()


def _demo_config(**overrides):
  config = config_lib.load_config_module("configs/demo.py").get_config(
      "runlocal")
  config.evals = ml_collections.ConfigDict()
  config.log_steps = 1
  for k, v in overrides.items():
    config[k] = v
  return config


@pytest.mark.slow
def test_training_starts_from_a_converted_checkpoint(demo_data, tmp_path):
  """model_init: the text tower comes from a checkpoint and stays frozen (a
  LiT-style run); the image tower and temperature start from the init."""
  config = _demo_config(total_steps=2, ckpt_steps=100)
  model_config = {"name": "two_towers", **config.model.to_dict()}
  # "Pretrained" weights: the same architecture at another seed.
  text_len = config.model.text.max_len
  donor = _init(model_config, seed=7, image_size=32, max_len=text_len)
  src = pretrained.save(tmp_path / "donor", model_config,
                        {"txt": donor["txt"]})
  config.model_init = src
  config.model_load = ml_collections.ConfigDict(
      {"dont_load": ("img/.*", "t")})
  config.frozen = ("txt/.*",)
  out = train_lib.train(config, str(tmp_path / "run"))
  assert out["step"] == 2
  _, trained = pretrained.load(tmp_path / "run")
  for (path, a), (_, b) in zip(_leaves(donor["txt"]),
                               _leaves(trained["txt"])):
    np.testing.assert_array_equal(a, b, err_msg=str(path))  # loaded, frozen
  assert not np.array_equal(trained["img"]["embedding"]["kernel"],
                            donor["img"]["embedding"]["kernel"])
  # Without dont_load the missing image tower is an error before training.
  config.model_load = ml_collections.ConfigDict({"dont_load": ()})
  with pytest.raises(ValueError, match="not in the checkpoint"):
    train_lib.train(config, str(tmp_path / "run2"))


@pytest.mark.slow
def test_evaluate_reads_a_converted_checkpoint_like_a_run(demo_data, tmp_path):
  # pylint: disable=g-import-not-at-top
  from big_vl import evaluate as evaluate_lib
  config = _demo_config(total_steps=2, ckpt_steps=100)
  train_lib.train(config, str(tmp_path / "run"))
  model_config, params = pretrained.load(tmp_path / "run")
  converted = pretrained.save(tmp_path / "converted", model_config, params)
  eval_config = config_lib.load_config_module(
      "configs/eval/demo.py").get_config("runlocal")
  from_run = evaluate_lib.evaluate(eval_config, str(tmp_path / "run"))
  from_converted = evaluate_lib.evaluate(eval_config, converted)
  assert from_converted["step"] == pretrained.CONVERTED_STEP
  metrics = {k: v for k, v in from_run["metrics"].items()
             if not k.startswith("eval_time/")}
  assert metrics and all(
      from_converted["metrics"][k] == v for k, v in metrics.items())
