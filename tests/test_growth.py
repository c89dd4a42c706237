"""GrowCLIP-style growth: function preservation, the trainer growing a run,
EMA inheritance, and resuming across a growth step."""

import copy
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vl import config as config_lib
from big_vl import growth
from big_vl import metrics as metrics_lib
from big_vl import models
from big_vl import train
from big_vl.models import two_towers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOWER = dict(width=32, depth=2, mlp_dim=64, num_heads=2)


def _model_config(**grow):
  config = ml_collections.ConfigDict(dict(model=dict(
      image=dict(TOWER, patch_size=8, pool_type="gap"),
      text=dict(TOWER, vocab_size=100, max_len=8, causal=True,
                pool_type="eot"),
      out_dim=16)))
  config.growth = ((3, grow),)
  return config


def _init(model_config, seed):
  model = models.get({"name": "two_towers", **model_config.to_dict()})
  params = two_towers.init_params(model, jax.random.key(seed),
                                  (1, 32, 32, 3), (1, 8))
  return model, jax.tree.map(np.asarray, params)


def test_grown_model_computes_the_same_function():
  config = _model_config(**{"image.depth": 4, "text.depth": 3,
                            "image.mlp_dim": 128, "text.mlp_dim": 96})
  small = growth.stage_config(config, 3)     # the event at 3 not yet applied
  big = growth.stage_config(config, 4)
  assert small.model.image.depth == 2 and big.model.image.depth == 4
  model_small, old = _init(small.model, seed=0)
  model_big, fresh = _init(big.model, seed=1)
  grown = growth.grow_params(old, fresh, growth.tower_depths(small))
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.normal(size=(3, 32, 32, 3)), jnp.float32)
  text = jnp.asarray(rng.integers(1, 100, size=(3, 8)), jnp.int32)
  want = model_small.apply({"params": old}, image, text)
  got = model_big.apply({"params": grown}, image, text)
  np.testing.assert_allclose(got[0], want[0], atol=1e-6)
  np.testing.assert_allclose(got[1], want[1], atol=1e-6)
  # ... and it really is bigger, with the new parts free to learn.
  blocks = grown["img"]["Transformer"]
  assert "encoderblock_3" in blocks
  assert np.abs(blocks["encoderblock_3"]["MlpBlock_0"]["Dense_0"][
      "kernel"]).sum() > 0
  assert blocks["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"].shape \
      == (32, 128)
  # A fresh (not grown) big model computes something else.
  other = model_big.apply({"params": fresh}, image, text)
  assert np.abs(np.asarray(other[0]) - np.asarray(want[0])).max() > 1e-3


def test_growth_events_are_validated():
  config = _model_config(**{"image.width": 64})
  with pytest.raises(ValueError, match="cannot grow 'image.width'"):
    growth.events(config)
  config.growth = ((0, {"image.depth": 3}),)
  with pytest.raises(ValueError, match=">= 1"):
    growth.events(config)


def _run_config(**kw):
  config = config_lib.load_config_module(
      os.path.join(ROOT, "configs", "demo.py")).get_config("runlocal")
  config.model.image = dict(TOWER, patch_size=8, pool_type="gap")
  config.model.text = dict(TOWER, vocab_size=49408, max_len=24,
                           causal=True, pool_type="eot")
  config.total_steps, config.log_steps, config.ckpt_steps = 10, 1, 100
  config.evals = {}
  config.growth = ((5, {"image.depth": 3, "text.depth": 3,
                        "image.mlp_dim": 128}),)
  config.growth_ema = 0.9
  for k, v in kw.items():
    config[k] = v
  return config


@pytest.mark.slow
def test_trainer_grows_keeps_the_loss_and_resumes(tmp_path, demo_data):
  del demo_data
  full = train.train(_run_config(), str(tmp_path / "full"))
  rows = metrics_lib.read_jsonl(str(tmp_path / "full" / "metrics.jsonl"))
  grew = [r for r in rows if "growth/loss_before" in r]
  assert len(grew) == 1 and grew[0]["step"] == 5
  np.testing.assert_allclose(grew[0]["growth/loss_after"],
                             grew[0]["growth/loss_before"], rtol=1e-5)
  assert grew[0]["growth/params"] > 0
  losses = [full["losses"][s] for s in range(1, 11)]
  assert np.all(np.isfinite(losses))
  # The grown run trains on: its loss keeps falling after the growth.
  assert losses[-1] < losses[5]
  # Stopped before (at 5, pre-growth) or after (at 7) the growth step, a
  # run resumes to the same losses as the uninterrupted one.
  for stop in (5, 7):
    workdir = str(tmp_path / f"stop{stop}")
    first = train.train(_run_config(), workdir, stop_after_steps=stop)
    assert first["step"] == stop
    second = train.train(_run_config(), workdir)
    assert second["step"] == 10
    np.testing.assert_allclose(
        [second["losses"][s] for s in range(stop + 1, 11)],
        [full["losses"][s] for s in range(stop + 1, 11)], rtol=1e-5)
  # The final checkpoint holds the grown model, readable as a run.
  from big_vl import pretrained  # pylint: disable=g-import-not-at-top
  model_config, params = pretrained.load(str(tmp_path / "full"))
  assert model_config["image"]["depth"] == 3
  assert "encoderblock_2" in params["img"]["Transformer"]
