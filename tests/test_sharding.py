"""Meshes, regex sharding rules and global batch assembly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from big_vl import sharding


def test_make_mesh_fills_minus_one():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", -1)])
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  assert sharding.batch_axes(mesh) == ("data", "fsdp")
  assert sharding.batch_size_divisor(mesh) == 8


def test_make_mesh_errors_say_what_to_change():
  with pytest.raises(ValueError, match="does not divide the 8 devices"):
    sharding.make_mesh([("data", 3), ("fsdp", -1)])
  with pytest.raises(ValueError, match="needs 6 devices but 8"):
    sharding.make_mesh([("data", 2), ("fsdp", 3)])


def test_rules_first_match_wins_and_fsdp_picks_largest_divisible_dim():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 4)])
  tree = {"params": {"img": {"head": {"kernel": jnp.zeros((6, 16)),
                                      "bias": jnp.zeros((16,))},
                             "odd": jnp.zeros((3, 5))},
                     "txt": {"embedding": jnp.zeros((40, 8))},
                     "t": jnp.zeros(())},
          "opt": {"mu": {"img": {"head": {"kernel": jnp.zeros((6, 16))}}}}}
  rules = [("txt/.*", "replicate"), (".*", "fsdp")]
  s = sharding.tree_shardings(tree, mesh, rules)
  assert s["params"]["img"]["head"]["kernel"].spec == P(None, "fsdp")
  assert s["params"]["img"]["head"]["bias"].spec == P("fsdp")
  assert s["params"]["img"]["odd"].spec == P()  # Nothing divisible by 4.
  assert s["params"]["txt"]["embedding"].spec == P()
  assert s["params"]["t"].spec == P()
  # Optimiser moments follow their parameter's rule through the path suffix.
  assert s["opt"]["mu"]["img"]["head"]["kernel"].spec == P(None, "fsdp")
  explicit = sharding.tree_shardings(tree, mesh, [(".*kernel", ("fsdp", None))])
  assert explicit["params"]["img"]["head"]["kernel"].spec == P("fsdp", None)
  with pytest.raises(ValueError, match="axis 'model'"):
    sharding.tree_shardings(tree, mesh, [(".*kernel", ("model", None))])


def test_match_rules_match_the_whole_parameter_path():
  rules = [("img/.*", "a"), ("t", "b")]
  assert sharding.match_rules(rules, "img/x/kernel") == "a"
  assert sharding.match_rules(rules, "t") == "b"
  assert sharding.match_rules(rules, "txt/x") is None  # not "t" alone
  assert sharding.match_rules(rules, "myimg/x") is None
  assert sharding.match_rules(rules, "txt/img/x") is None  # whole path


def test_state_leaves_follow_their_parameter_and_bad_rules_fail():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 4)])
  params = {"img": {"head": {"kernel": jnp.zeros((8, 16))}},
            "txt": {"head": {"kernel": jnp.zeros((8, 16))}}}
  state = {"params": params, "ema": params, "step": jnp.zeros((), jnp.int32),
           "opt": ({"count": jnp.zeros((8,), jnp.int32), "mu": params},)}
  s = sharding.tree_shardings(state, mesh, [("img/.*", "fsdp")])
  for tree in (s["params"], s["ema"], s["opt"][0]["mu"]):
    assert tree["img"]["head"]["kernel"].spec == P(None, "fsdp")
    assert tree["txt"]["head"]["kernel"].spec == P()
  assert s["opt"][0]["count"].spec == P()  # No parameter's copy.
  # A rule matching no parameter, or one that never applies, is an error.
  with pytest.raises(ValueError, match=r"config\.sharding_rules: rule "
                     r"'image/\.\*' matches no parameter.*img/\.\*"):
    sharding.tree_shardings(state, mesh, [("image/.*", "fsdp")])
  with pytest.raises(ValueError, match=r"rule #1 'img/head/kernel' never "
                     r"applies.*taken by '\.\*'"):
    sharding.tree_shardings(state, mesh, [(".*", "fsdp"),
                                          ("img/head/kernel", "replicate")])


def test_a_rule_may_only_name_axes_of_the_mesh():
  """('.*', 'fsdp') on a data-only mesh used to replicate silently."""
  params = {"img": {"head": {"kernel": jnp.zeros((8, 16))}}}
  data_only = sharding.make_mesh([("data", -1)])
  with pytest.raises(ValueError, match=r"config\.sharding_rules: rule "
                     r"\('\.\*', 'fsdp'\) names mesh axis 'fsdp', but the "
                     r"mesh has only \('data',\)"):
    sharding.tree_shardings(params, data_only, [(".*", "fsdp")])
  with pytest.raises(ValueError, match=r"names mesh axis 'model'"):
    sharding.tree_shardings(params, data_only,
                            [(".*", (None, "model"))])
  with pytest.raises(ValueError, match=r"unknown sharding spec 'fdsp'"):
    sharding.tree_shardings(params, data_only, [(".*", "fdsp")])
  specs = sharding.tree_shardings(params, sharding.make_mesh(
      [("fsdp", -1)]), [(".*", "fsdp")])
  assert specs["img"]["head"]["kernel"].spec == P(None, "fsdp")


def test_to_global_splits_batch_over_data_axes():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 4)])
  batch = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
  g = sharding.to_global(batch, mesh)["image"]
  assert g.shape == (16, 3)
  assert g.sharding.spec == P(("data", "fsdp"))
  np.testing.assert_array_equal(np.asarray(g), batch["image"])
  shard_rows = sorted(s.data.shape[0] for s in g.addressable_shards)
  assert shard_rows == [2] * 8
