"""The one rule matcher (big_vl/paths.py) and every rule list that uses it."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from big_vl import config as config_lib
from big_vl import optim
from big_vl import paths
from big_vl import pretrained
from big_vl import sharding
from big_vl import train
from big_vl.models import two_towers

# Each rule list, and how a config gives one rule in it.
RULE_LISTS = {
    "frozen": lambda c, r: setattr(c, "frozen", (r,)),
    "lr_rules": lambda c, r: setattr(c, "lr_rules", ((r, 0.5),)),
    "wd_rules": lambda c, r: setattr(c, "wd_rules", ((r, 1.0),)),
    "sharding_rules": lambda c, r: setattr(c, "sharding_rules",
                                           ((r, "replicate"),)),
    "layer_decay": lambda c, r: setattr(c, "layer_decay", {r: 0.5}),
    "model_load.dont_load": lambda c, r: setattr(
        c, "model_load", ml_collections.ConfigDict({"dont_load": (r,)})),
}


def test_rules_match_the_whole_path():
  assert paths.matches("img/.*", "img/head/kernel")
  assert not paths.matches("img/.*", "txt/img/kernel")
  assert paths.matches("t", "t") and not paths.matches("t", "txt/t")
  assert not paths.matches("head/kernel", "img/head/kernel")
  assert paths.matches(".*/head/kernel", "img/head/kernel")
  assert paths.first_match([("txt/.*", 1), (".*", 2)], "txt/x") == 1
  assert paths.first_match([("txt/.*", 1)], "img/x") is None
  assert paths.subtree_rest("img", "img/Transformer/x") == "Transformer/x"
  assert paths.subtree_rest("img", "imgs/x") is None
  params = {"img/head/kernel", "t"}
  assert paths.param_path("opt/0/mu/img/head/kernel", params) == (
      "img/head/kernel")
  assert paths.param_path("ema/t", params) == "t"
  assert paths.param_path("opt/0/count", params) is None


def _demo_config():
  config = config_lib.load_config_module("configs/demo.py").get_config(
      "runlocal")
  config.model.image.depth = 1
  config.model.text.depth = 1
  config.evals = {}
  return config


def _build(config):
  mesh = sharding.make_mesh([("data", -1)])
  example = {"image": np.zeros((32, 32, 3), np.float32),
             "text": np.zeros((config.model.text.max_len,), np.int32)}
  return train.build(config, mesh, example, 10, 1)


@pytest.mark.parametrize("key", sorted(RULE_LISTS))
def test_a_rule_matching_nothing_fails_at_start_up(key):
  """`image/.*` (the tower is `img/`) in any rule list: an error naming the
  list, the rule and the real subtree, before any device work."""
  config = _demo_config()
  RULE_LISTS[key](config, "image")  # layer_decay keys name a subtree
  if key != "layer_decay":
    RULE_LISTS[key](config, "image/.*")
  with pytest.raises(ValueError, match=(
      rf"config\.{re.escape(key)}: .*'image(/\.\*)?'.* matches no "
      r"parameter.*Closest paths: .*img/\.\*")):
    _build(config)


@pytest.mark.parametrize("key", sorted(set(RULE_LISTS) - {"layer_decay"}))
def test_a_trailing_part_is_not_a_match_in_any_list(key):
  """`head/kernel` used to freeze both heads but be ignored by dont_load;
  now it is the same error in every list, with the rule that works."""
  config = _demo_config()
  RULE_LISTS[key](config, "head/kernel")
  with pytest.raises(ValueError, match=(
      rf"config\.{re.escape(key)}: rule 'head/kernel' matches no "
      r"parameter.*matches the end of 2 path.*write '\.\*/head/kernel'")):
    _build(config)


def test_a_rule_that_never_applies_is_an_error():
  config = _demo_config()
  config.lr_rules = ((".*", 0.5), ("img/.*", 0.1))
  with pytest.raises(ValueError, match=r"config\.lr_rules: rule #1 'img/\.\*' "
                     r"never applies.*taken by '\.\*'"):
    _build(config)
  config = _demo_config()
  with config.unlocked():  # The demo's `frozen = ()` refuses a str itself.
    del config["frozen"]
  config.frozen = "img/.*"  # A string, not a list of rules.
  with pytest.raises(ValueError, match=r"config\.frozen must be a list"):
    _build(config)


def _params():
  model = two_towers.Model(
      image={"variant": "mu/8", "depth": 1},
      text={"variant": "mu", "depth": 1, "vocab_size": 50, "max_len": 8},
      out_dim=16)
  return two_towers.init_params(model, jax.random.key(0), (1, 16, 16, 3),
                                (1, 8))


def test_one_rule_selects_the_same_params_in_every_list():
  """`.*/head/kernel` selects both towers' head kernels, and nothing else,
  in frozen, lr_rules, wd_rules, sharding_rules and dont_load alike; a
  layer_decay key selects what the rule `KEY/.*` selects in frozen."""
  params = _params()
  rule = ".*/head/kernel"
  names = paths.leaf_paths(params)
  expected = {"img/head/kernel", "txt/head/kernel"}
  assert expected <= set(names) and len(names) > 10
  base = dict(lr=1.0, schedule=dict(name="constant"),
              optim=dict(name="adamw"))

  def selected(tree, pick):
    return {p for p, x in zip(names, jax.tree.leaves(tree)) if pick(x)}

  def update(grads_value=1.0, **config):
    config = ml_collections.ConfigDict({**base, **config})
    tx, _ = optim.make(config, params, 10, 0)
    grads = jax.tree.map(lambda p: jnp.full_like(p, grads_value), params)
    return tx.update(grads, tx.init(params), params)[0]

  frozen = optim.frozen_mask(ml_collections.ConfigDict(
      {"frozen": (rule,)}), params)
  by_list = {
      "frozen": selected(frozen, bool),
      # Adam's first step is lr * sign(g) = 1; lr multiplier 0 stops it.
      "lr_rules": selected(update(lr_rules=((rule, 0.0),)),
                           lambda u: np.all(np.asarray(u) == 0)),
      # Zero gradients: only decayed params move.
      "wd_rules": selected(update(0.0, wd=0.5, wd_rules=((rule, 1.0),)),
                           lambda u: np.any(np.asarray(u) != 0)),
  }
  mesh = sharding.make_mesh([("fsdp", -1)])
  specs = sharding.tree_shardings(params, mesh, [(rule, ("fsdp", None))])
  by_list["sharding_rules"] = selected(
      jax.tree.map(lambda s: s.spec, specs),
      lambda spec: spec == P("fsdp", None))
  loaded = jax.tree.map(np.asarray, params)
  _, report = pretrained.merge(params, loaded, dont_load=(rule,))
  by_list["model_load.dont_load"] = set(report["kept"])
  assert by_list == {key: expected for key in by_list}
  # A layer_decay key K covers the params the rule `K/.*` covers (all get
  # a multiplier below 1 except the tower's final norm and head).
  up = update(layer_decay={"txt": 0.5})
  moved_less = selected(up, lambda u: np.all(np.abs(np.asarray(u)) < 0.99))
  txt_frozen = selected(optim.frozen_mask(ml_collections.ConfigDict(
      {"frozen": ("txt/.*",)}), params), bool)
  assert len(moved_less) > 5 and moved_less <= txt_frozen
  assert all(re.search(r"/(head|encoder_norm)/", p)
             for p in txt_frozen - moved_less), txt_frozen - moved_less
