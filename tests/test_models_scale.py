"""Scale options of the towers against their plain twins: remat policies,
scan over layers (with param layout conversion) and tensor parallelism over a
`model` mesh axis. Every check compares numbers (outputs and gradients)."""

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from big_vl import sharding
from big_vl.models import common
from big_vl.models import text_transformer
from big_vl.models import two_towers
from big_vl.models import vit

VOCAB = 100
LENGTH = 8
BATCH = 4
DEPTH = 2
MLP_BLOCK = "MlpBlock_0/Dense_0/kernel"


def _model(**tower_kw):
  """Tiny two towers (width 64, 4 heads, mlp 128); tower_kw go to both."""
  dims = dict(width=64, depth=DEPTH, mlp_dim=128, num_heads=4, **tower_kw)
  return two_towers.Model(
      image=dict(patch_size=8, pool_type="map", **dims),
      text=dict(vocab_size=VOCAB, max_len=LENGTH, causal=True,
                pool_type="eot", **dims),
      out_dim=32, bias_init=-10.0)


def _inputs():
  image = jax.random.normal(jax.random.key(0), (BATCH, 32, 32, 3))
  rng = np.random.default_rng(0)
  text = rng.integers(1, VOCAB, size=(BATCH, LENGTH)).astype(np.int32)
  for i in range(BATCH):
    text[i, 4 + i:] = 0  # rows have 4..7 real tokens, then pads
  return image, jnp.asarray(text)


def _loss_fn(model):
  """(params, image, text) -> (loss, outputs): a SigLIP-like loss.

  The loss also reads the token features so that every block parameter gets
  a gradient through more than the pooled output.
  """
  def loss_fn(params, image, text):
    zimg, ztxt, aux = model.apply({"params": params}, image, text)
    logits = aux["t"] * zimg @ ztxt.T + aux["b"]
    labels = 2 * jnp.eye(zimg.shape[0]) - 1
    loss = -jnp.mean(jax.nn.log_sigmoid(labels * logits))
    loss += 1e-2 * jnp.mean(aux["img/tokens"] ** 2)
    loss += 1e-2 * jnp.mean(aux["txt/tokens"] ** 2)
    outputs = {"zimg": zimg, "ztxt": ztxt, "img/tokens": aux["img/tokens"],
               "txt/tokens": aux["txt/tokens"]}
    return loss, outputs
  return loss_fn


def _loss_and_grads(model, params, image, text, jit_kw=None):
  fn = jax.value_and_grad(_loss_fn(model), has_aux=True)
  return jax.jit(fn, **(jit_kw or {}))(params, image, text)


def _assert_close(actual, expected, tol):
  assert (jax.tree.structure(actual) == jax.tree.structure(expected))
  for path, a, b in zip(jax.tree.leaves(sharding.tree_paths(expected)),
                        jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol,
                               atol=tol, err_msg=path)


def _remat_policies(jaxpr):
  """Policies of all remat (checkpoint) equations, recursively."""
  found = [e.params["policy"] for e in jaxpr.eqns
           if e.primitive.name in ("remat2", "checkpoint")]
  for sub in jax_core.subjaxprs(jaxpr):
    found += _remat_policies(sub)
  return found


@pytest.fixture(scope="module")
def reference():
  """Plain model (no remat, no scan): params and jitted loss, outputs, grads."""
  model = _model()
  image, text = _inputs()
  params = two_towers.init_params(model, jax.random.key(1), (1, 32, 32, 3),
                                  (1, LENGTH))
  (loss, outputs), grads = _loss_and_grads(model, params, image, text)
  return {"params": params, "loss": loss, "outputs": outputs, "grads": grads}


# --- remat ----------------------------------------------------------------


@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_policies_match_plain(reference, policy):
  model = _model(remat_policy=policy)
  image, text = _inputs()
  params = reference["params"]
  # Same param tree as the plain model.
  shapes = jax.eval_shape(model.init, jax.random.key(1), image, text)
  assert (jax.tree.structure(shapes["params"]) ==
          jax.tree.structure(params))
  # The blocks really are rematerialised, with the requested policy.
  policies = _remat_policies(jax.make_jaxpr(_loss_fn(model))(
      params, image, text).jaxpr)
  assert len(policies) == 2 * DEPTH
  assert all(p is common.REMAT_POLICIES[policy] for p in policies)
  (loss, outputs), grads = _loss_and_grads(model, params, image, text)
  _assert_close(loss, reference["loss"], 1e-6)
  _assert_close(outputs, reference["outputs"], 1e-6)
  _assert_close(grads, reference["grads"], 1e-6)


def test_remat_policy_names_and_legacy_flag():
  assert common.resolve_remat_policy("none", remat=True) == "full"
  assert common.resolve_remat_policy("full", remat=False) == "full"
  assert common.resolve_remat_policy("dots_saveable") == "dots_saveable"
  # The legacy flag reaches the encoder as "full".
  image = jnp.zeros((1, 32, 32, 3))
  legacy = vit.ViT(variant="mu/8", depth=1, remat=True)
  policies = _remat_policies(jax.make_jaxpr(
      lambda: legacy.init_with_output(jax.random.key(0), image))().jaxpr)
  assert policies == [None]
  with pytest.raises(ValueError, match="unknown remat_policy 'dots'"):
    vit.ViT(variant="mu/8", remat_policy="dots").init(jax.random.key(0),
                                                      image)
  with pytest.raises(ValueError, match="conflicts with remat_policy"):
    text_transformer.TextTransformer(
        variant="mu", vocab_size=VOCAB, max_len=LENGTH, remat=True,
        remat_policy="dots_saveable").init(jax.random.key(0),
                                           jnp.ones((1, 4), jnp.int32))


# --- scan -----------------------------------------------------------------


def test_stack_unstack_block_params(reference):
  params = reference["params"]
  stacked = common.stack_block_params(params, DEPTH)
  assert set(stacked["img"]["Transformer"]) == {"encoderblock", "encoder_norm"}
  assert set(stacked["txt"]["Encoder_0"]) == {"encoderblock", "encoder_norm"}
  blocks = stacked["img"]["Transformer"]["encoderblock"]
  assert blocks["MlpBlock_0"]["Dense_0"]["kernel"].shape == (DEPTH, 64, 128)
  for i in range(DEPTH):
    np.testing.assert_array_equal(
        blocks["MultiHeadDotProductAttention_0"]["query"]["kernel"][i],
        params["img"]["Transformer"][f"encoderblock_{i}"][
            "MultiHeadDotProductAttention_0"]["query"]["kernel"])
  # The MAP head is not an encoder block and stays as it is.
  assert (jax.tree.structure(stacked["img"]["MAPHead_0"]) ==
          jax.tree.structure(params["img"]["MAPHead_0"]))
  back = common.unstack_block_params(stacked, DEPTH)
  _assert_close(back, params, 0.0)
  # The stacked tree is exactly the scanned model's layout.
  scanned = jax.eval_shape(_model(scan=True).init, jax.random.key(0),
                           *_inputs())["params"]
  assert jax.tree.structure(scanned) == jax.tree.structure(stacked)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(scanned),
                                                jax.tree.leaves(stacked)))
  with pytest.raises(ValueError, match="expected depth 3"):
    common.stack_block_params(params, 3)
  with pytest.raises(ValueError, match="not 0..0"):
    common.stack_block_params({"encoderblock_1": {"w": jnp.zeros(2)}})
  with pytest.raises(ValueError, match="stacked depth 2, expected 5"):
    common.unstack_block_params(stacked, 5)


@pytest.mark.parametrize("policy", ["none", "dots_saveable"])
def test_scan_matches_unscanned(reference, policy):
  model = _model(scan=True, remat_policy=policy)
  image, text = _inputs()
  params = common.stack_block_params(reference["params"], DEPTH)
  (loss, outputs), grads = _loss_and_grads(model, params, image, text)
  # Gradients come back in the scanned layout; compare them unstacked.
  assert grads["img"]["Transformer"]["encoderblock"]["MlpBlock_0"][
      "Dense_1"]["kernel"].shape == (DEPTH, 128, 64)
  _assert_close(loss, reference["loss"], 1e-5)
  _assert_close(outputs, reference["outputs"], 1e-5)
  _assert_close(common.unstack_block_params(jax.device_get(grads)),
                reference["grads"], 1e-5)


# --- tensor parallelism ---------------------------------------------------


def test_tensor_parallel_rules_specs():
  mesh = sharding.make_mesh([("data", 2), ("model", 4)])
  assert dict(mesh.shape) == {"data": 2, "model": 4}
  assert sharding.batch_axes(mesh) == ("data",)
  assert sharding.batch_size_divisor(mesh) == 2
  rules = (*sharding.TENSOR_PARALLEL_RULES, (".*", "replicate"))
  for scan in (False, True):
    params = jax.eval_shape(_model(scan=scan).init, jax.random.key(0),
                            *_inputs())["params"]
    # Also an optimiser-like tree: the moments follow their parameter.
    specs = jax.tree.map(lambda s: s.spec, sharding.tree_shardings(
        {"params": params, "opt": {"mu": params}}, mesh, rules))
    lead = (None,) if scan else ()
    for tree in (specs["params"], specs["opt"]["mu"]):
      for tower, enc in (("img", "Transformer"), ("txt", "Encoder_0")):
        block = (tree[tower][enc]["encoderblock"] if scan
                 else tree[tower][enc]["encoderblock_1"])
        attn, mlp = block["MultiHeadDotProductAttention_0"], block["MlpBlock_0"]
        for name in ("query", "key", "value"):
          assert attn[name]["kernel"] == P(*lead, None, "model", None)
          assert attn[name]["bias"] == P(*lead, "model", None)
        assert attn["out"]["kernel"] == P(*lead, "model", None, None)
        assert attn["out"]["bias"] == P()
        assert mlp["Dense_0"]["kernel"] == P(*lead, None, "model")
        assert mlp["Dense_0"]["bias"] == P(*lead, "model")
        assert mlp["Dense_1"]["kernel"] == P(*lead, "model", None)
        assert mlp["Dense_1"]["bias"] == P()
        assert tree[tower][enc]["encoder_norm"]["scale"] == P()
        assert tree[tower]["head"]["kernel"] == P()
      # The (never scanned) MAP head is split the same way.
      head = tree["img"]["MAPHead_0"]
      assert head["MlpBlock_0"]["Dense_0"]["kernel"] == P(None, "model")
      assert head["MultiHeadDotProductAttention_0"]["out"]["kernel"] == P(
          "model", None, None)
  # 2-D variant: the width dimension over a second axis.
  rules2d = sharding.tensor_parallel_rules(fsdp_axis="fsdp")
  assert sharding.match_rules(
      rules2d, "img/Transformer/encoderblock_0/MlpBlock_0/Dense_1/kernel") == (
          "model", "fsdp")
  # A spec names one layer's dimensions; a scanned leaf's layer axis stays
  # whole.
  assert sharding.match_rules(
      rules2d, "txt/Encoder_0/encoderblock/"
      "MultiHeadDotProductAttention_0/out/kernel") == ("model", None, "fsdp")
  # A mesh without the axis fails loudly.
  with pytest.raises(ValueError, match="axis 'model'"):
    sharding.tree_shardings(params, sharding.make_mesh([("data", -1)]),
                            sharding.TENSOR_PARALLEL_RULES)


@pytest.mark.parametrize("scan,mesh_config,fsdp_axis", [
    (False, (("data", 2), ("model", 4)), None),
    (True, (("data", 2), ("model", 4)), None),
    (True, (("fsdp", 2), ("model", 4)), "fsdp"),
])
@pytest.mark.slow
def test_tensor_parallel_matches_single_device(reference, scan, mesh_config,
                                               fsdp_axis, run_in_child):
  # Scanned + sharded programs can hit XLA:CPU's collective deadlock
  # (conftest.run_in_child): they run in a child process.
  if scan and run_in_child():
    return
  mesh = sharding.make_mesh(mesh_config)
  model = _model(scan=scan)
  params = reference["params"]
  if scan:
    params = common.stack_block_params(params, DEPTH)
  rules = (*sharding.tensor_parallel_rules(fsdp_axis=fsdp_axis),
           (".*", "replicate"))
  param_shardings = sharding.tree_shardings(params, mesh, rules)
  params = jax.device_put(params, param_shardings)
  image, text = jax.device_put(_inputs(), sharding.batch_sharding(mesh))

  # The MLP and attention kernels really are split over "model".
  block = "encoderblock" if scan else "encoderblock_0"
  lead = (DEPTH,) if scan else ()

  def mlp_kernel(tree):
    return tree["img"]["Transformer"][block]["MlpBlock_0"]["Dense_0"]["kernel"]

  kernel = mlp_kernel(params)
  qkv = params["txt"]["Encoder_0"][block]["MultiHeadDotProductAttention_0"][
      "query"]["kernel"]
  width_shard = 64 // (2 if fsdp_axis else 1)
  assert kernel.sharding.spec == P(*(None,) * len(lead), fsdp_axis, "model")
  assert {s.data.shape for s in kernel.addressable_shards} == {
      (*lead, width_shard, 128 // 4)}
  assert {s.data.shape for s in qkv.addressable_shards} == {
      (*lead, width_shard, 1, 16)}  # one of the 4 heads per device
  assert image.sharding.spec == P(sharding.batch_axes(mesh))

  (loss, outputs), grads = _loss_and_grads(
      model, params, image, text,
      jit_kw={"out_shardings": ((None, None), param_shardings)})
  # Gradients come back with their parameter's sharding, as in the trainer.
  assert mlp_kernel(grads).sharding.spec == kernel.sharding.spec
  if scan:
    grads = common.unstack_block_params(jax.device_get(grads))
  _assert_close(loss, reference["loss"], 1e-5)
  _assert_close(outputs, reference["outputs"], 1e-5)
  _assert_close(grads, reference["grads"], 1e-5)
