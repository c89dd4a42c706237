"""The trainer end to end on the demo data (runlocal sizes, 8 CPU devices)."""

import logging
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from big_vl import checkpoint as ckpt_lib
from big_vl import config as config_lib
from big_vl import metrics as metrics_lib
from big_vl import registry
from big_vl import sharding
from big_vl import train as train_lib


def _config(arg="runlocal", evals=False, **overrides):
  config = config_lib.load_config_module("configs/demo.py").get_config(arg)
  if not evals:
    config.evals = ml_collections.ConfigDict()
  config.log_steps = 1
  for k, v in overrides.items():
    config[k] = v
  return config


def _params(workdir):
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  step = ckpt.latest_step()
  state, meta = ckpt.restore(step, None)
  ckpt.close()
  return jax.tree.map(np.asarray, state["params"]), meta


def _losses(workdir):
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.mark.slow
def test_runlocal_trains_evaluates_and_draws(demo_data, tmp_path):
  config = _config(evals=True)
  result = train_lib.train(config, str(tmp_path))
  assert result["step"] == config.total_steps
  losses = _losses(tmp_path)
  assert sorted(losses) == list(range(1, config.total_steps + 1))
  # A random model is no better than chance (softmax loss >= ln(batch));
  # training brings the loss down by a clear margin.
  assert losses[1] > np.log(config.input.batch_size) - 0.05
  assert np.mean([losses[s] for s in (18, 19, 20)]) < losses[1] - 0.5
  final = result["final"]
  for key in ("zeroshot/demo_shapes/top1", "zeroshot/demo_shapes/top5",
              "retrieval/demo_shapes/img2txt_r@1",
              "retrieval/demo_shapes/txt2img_r@1",
              "retrieval/demo_shapes/img2txt_r@10"):
    assert 0.0 <= final[key] <= 1.0, key
  assert final["zeroshot/demo_shapes/top5"] >= final[
      "zeroshot/demo_shapes/top1"]
  rows = metrics_lib.read_jsonl(tmp_path / "metrics.jsonl")
  assert any("zeroshot/demo_shapes/top1" in r for r in rows)
  for png in ("curves.png", "retrieval.png"):
    with open(tmp_path / png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.listdir(tmp_path / "tb")


SHARDED_SETUPS = {
    # 2-way data parallel x 4-way FSDP (text tower replicated).
    "fsdp": dict(mesh=[("data", 2), ("fsdp", 4)],
                 sharding_rules=[("txt/.*", "replicate"), (".*", "fsdp")]),
    # 4-way data parallel x 2-way Megatron tensor parallelism.
    "tensor_parallel": dict(
        mesh=[("data", 4), ("model", 2)],
        sharding_rules=[*sharding.TENSOR_PARALLEL_RULES, (".*", "replicate")]),
}


@pytest.mark.slow
@pytest.mark.parametrize("setup", sorted(SHARDED_SETUPS))
def test_sharded_step_equals_single_device_step(demo_data, tmp_path, setup):
  # Adam's first step is lr * g / (|g| + eps): with a tiny eps it turns
  # float-rounding differences of near-zero gradients (different reduction
  # orders on different meshes) into lr-sized ones. A larger eps keeps the
  # update proportional to the gradient there, so the comparison is fair.
  common = dict(total_steps=1, warmup_steps=0, lr=1e-2, ckpt_steps=1,
                optim=dict(name="adamw", b1=0.9, b2=0.98, eps=1e-3))
  single = _config(mesh=[("data", 1)], **common)
  train_lib.train(single, str(tmp_path / "one"), devices=jax.devices()[:1])
  sharded = _config(**SHARDED_SETUPS[setup], **common)
  train_lib.train(sharded, str(tmp_path / "eight"))
  p1, _ = _params(tmp_path / "one")
  p8, _ = _params(tmp_path / "eight")
  moved = jax.tree.map(
      lambda a, b: float(np.abs(a - b).max()), p1,
      _params_init(single))
  assert max(jax.tree.leaves(moved)) > 1e-3  # the step really changed params
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def _params_init(config):
  model = train_lib.make_model(config)
  image = np.zeros((1, 32, 32, 3), np.float32)
  text = np.zeros((1, config.model.text.max_len), np.int32)
  init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  return jax.tree.map(np.asarray, model.init({"params": init_rng}, image,
                                             text)["params"])


@pytest.mark.slow
def test_device_pp_trains_like_host_normalisation(demo_data, tmp_path):
  # uint8 batches normalised inside the train step == float32 ones
  # normalised by the host pipeline.
  host = _config(total_steps=3, ckpt_steps=100)
  assert "|value_range(-1,1)|" in host.input.pp
  on_device = _config(total_steps=3, ckpt_steps=100)
  on_device.input.pp = host.input.pp.replace("|value_range(-1,1)|", "|")
  on_device.input.device_pp = "value_range(-1,1)"
  want = train_lib.train(host, str(tmp_path / "host"))["losses"]
  got = train_lib.train(on_device, str(tmp_path / "device"))["losses"]
  assert sorted(got) == [1, 2, 3] and len(set(want.values())) == 3
  for step, loss in want.items():
    assert got[step] == pytest.approx(loss, rel=1e-5, abs=1e-6)
  with pytest.raises(ValueError, match="not a device op"):
    bad = _config(total_steps=1)
    bad.input.device_pp = "flip_lr"
    train_lib.train(bad, str(tmp_path / "bad"))


@pytest.mark.slow
def test_resume_gives_the_same_losses(demo_data, tmp_path):
  config = _config(total_steps=8, ckpt_steps=100)
  full = train_lib.train(config, str(tmp_path / "full"))
  first = train_lib.train(config, str(tmp_path / "cut"), stop_after_steps=3)
  assert first["step"] == 3 and sorted(first["losses"]) == [1, 2, 3]
  second = train_lib.train(config, str(tmp_path / "cut"))
  assert sorted(second["losses"]) == list(range(4, 9))
  resumed = {**first["losses"], **second["losses"]}
  assert resumed == full["losses"]  # bit-identical, step by step
  assert _losses(tmp_path / "cut") == full["losses"]
  p_full, _ = _params(tmp_path / "full")
  p_cut, _ = _params(tmp_path / "cut")
  for a, b in zip(jax.tree.leaves(p_full), jax.tree.leaves(p_cut)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_checkpoint_restores_on_another_mesh(demo_data, tmp_path):
  fsdp = dict(mesh=[("data", 2), ("fsdp", 4)],
              sharding_rules=[(".*", "fsdp")], total_steps=6, ckpt_steps=100)
  full = train_lib.train(_config(**fsdp), str(tmp_path / "full"))
  train_lib.train(_config(**fsdp), str(tmp_path / "cut"), stop_after_steps=3)
  # Resume the (2 x 4, FSDP) checkpoint on one device, fully replicated
  # (a changed config.mesh / sharding_rules: allowed explicitly).
  single = _config(mesh=[("data", 1)], sharding_rules=[(".*", "replicate")],
                   total_steps=6, ckpt_steps=100)
  with pytest.raises(ValueError,
                     match=r"(?s)config\.mesh: .*--allow_config_change"):
    train_lib.train(single, str(tmp_path / "cut"), devices=jax.devices()[:1])
  resumed = train_lib.train(single, str(tmp_path / "cut"),
                            devices=jax.devices()[:1],
                            allow_config_change=True)
  assert sorted(resumed["losses"]) == [4, 5, 6]
  for step in (4, 5, 6):
    np.testing.assert_allclose(resumed["losses"][step], full["losses"][step],
                               rtol=1e-5)


class _CorruptEvery:
  """Wraps a source, replacing the image of every k-th record with junk."""

  def __init__(self, source, k):
    self.source, self.k = source, k

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    example = dict(self.source[i])
    if i % self.k == 0:
      example["image"] = b"\x89PNG truncated"
    return example


@pytest.fixture
def corrupt_source():
  from big_vl.data import sources  # pylint: disable=g-import-not-at-top
  name = "corrupt_every_7"
  registry.get("source", "tfds")  # Loads the built-ins first.
  registry._TABLES["source"][name] = lambda n, **kw: _CorruptEvery(  # pylint: disable=protected-access
      sources.tfds_source(n, **kw), 7)
  yield name
  del registry._TABLES["source"][name]  # pylint: disable=protected-access


@pytest.mark.slow
def test_corrupt_records_are_skipped_and_counted(demo_data, tmp_path,
                                                 corrupt_source):
  config = _config(total_steps=4)
  config.input.data = f"{corrupt_source}:big_vl_demo_shapes"
  config.input.shuffle = False  # Records are read in order 0, 1, 2, ...
  train_lib.train(config, str(tmp_path))
  rows = metrics_lib.read_jsonl(tmp_path / "metrics.jsonl")
  skipped = [r["data/skipped"] for r in rows if "data/skipped" in r]

  def corrupt_before(good):
    """Corrupt records read before the `good`-th good one (every 7th)."""
    index = seen = corrupt = 0
    while seen < good:
      corrupt, seen = (corrupt + 1, seen) if index % 7 == 0 else (
          corrupt, seen + 1)
      index += 1
    return corrupt

  assert skipped == [corrupt_before(32 * s) for s in (1, 2, 3, 4)]
  assert skipped[-1] == 22


@pytest.mark.slow
@pytest.mark.parametrize("ckpt_steps", [1, 100])
def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(
    demo_data, tmp_path, ckpt_steps):
  # ckpt_steps=1 reads every step's metrics before its checkpoint; with 100
  # the non-finite step is found one step later (metrics are read after the
  # next step is dispatched) and must still be named and never saved.
  config = _config(total_steps=6, ckpt_steps=100)
  train_lib.train(config, str(tmp_path), stop_after_steps=2)
  # lr = 1e30 (a NaN lr is refused by the config check): step 3's update
  # puts params near 1e30, whose squared norm overflows float32 to inf.
  bad = _config(total_steps=6, ckpt_steps=ckpt_steps, lr=1e30)
  with pytest.raises(train_lib.NonFiniteLossError,
                     match=r"at step 3:.*last good checkpoint is step 2"):
    train_lib.train(bad, str(tmp_path), allow_config_change=True)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.latest_step() == 2
  ckpt.close()


@pytest.mark.slow
def test_five_steps_compile_the_train_step_once(demo_data, tmp_path, caplog):
  # A recompilation (e.g. a weakly typed or differently sharded state coming
  # back from step 1) would show as a second "Compiling jit(train_step)".
  config = _config(total_steps=5, ckpt_steps=100)
  with caplog.at_level(logging.DEBUG, logger="jax"), jax.log_compiles():
    result = train_lib.train(config, str(tmp_path))
  assert sorted(result["losses"]) == [1, 2, 3, 4, 5]
  compiles = [m for m in caplog.messages
              if m.startswith("Compiling jit(train_step)")]
  assert len(compiles) == 1, compiles


@pytest.mark.slow
def test_cli_runs_with_a_relative_workdir(demo_data, tmp_path):
  """The README's way of running: `python -m big_vl.train`, relative paths."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=(
      jax.config.jax_compilation_cache_dir))
  result = subprocess.run(
      [sys.executable, "-m", "big_vl.train",
       f"--config={repo}/configs/demo.py:runlocal", "--workdir=wd/run",
       "--config.total_steps=3", "--config.ckpt_steps=2"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "zeroshot/demo_shapes/top1" in result.stdout
  assert sorted(os.listdir(tmp_path / "wd/run/checkpoints")) == ["2", "3"]
  assert os.path.exists(tmp_path / "wd/run/retrieval.png")
