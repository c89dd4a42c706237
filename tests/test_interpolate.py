"""Fine-tuning from a checkpoint (configs/finetune.py) and WiSE-FT
(big_vl.interpolate): the mixes at alpha 0 and 1 are the endpoints exactly."""

import json
import os

import jax
import numpy as np
import pytest

from big_vl import checkpoint as ckpt_lib
from big_vl import config as config_lib
from big_vl import evaluate as evaluate_lib
from big_vl import interpolate
from big_vl import pretrained
from big_vl import train as train_lib


def test_interpolate_endpoints_exact_and_midpoint_mean():
  rng = np.random.default_rng(0)
  a = {"w": rng.normal(size=(3, 4)).astype(np.float32),
       "t": np.float32(1.5)}
  b = {"w": rng.normal(size=(3, 4)).astype(np.float32),
       "t": np.float32(-2.0)}
  for alpha, want in ((0.0, a), (1.0, b)):
    mixed = interpolate.interpolate(a, b, alpha)
    for x, y in zip(jax.tree.leaves(mixed), jax.tree.leaves(want)):
      np.testing.assert_array_equal(x, y)
  half = interpolate.interpolate(a, b, 0.5)
  np.testing.assert_allclose(half["w"], (a["w"] + b["w"]) / 2, rtol=1e-6)
  with pytest.raises(ValueError, match="different parameters"):
    interpolate.interpolate(a, {"w": b["w"]}, 0.5)
  with pytest.raises(ValueError, match="Shapes differ"):
    interpolate.interpolate(a, {"w": b["w"][:2], "t": b["t"]}, 0.5)


@pytest.fixture(scope="module")
def zeroshot_and_finetuned(demo_data, tmp_path_factory):
  """A runlocal demo model (A) and its contrastive fine-tuning (B)."""
  del demo_data
  root = tmp_path_factory.mktemp("wise")
  a, b = str(root / "zeroshot"), str(root / "finetuned")
  config = config_lib.load_config("configs/demo.py:runlocal")
  config.evals = {}
  train_lib.train(config, a)
  ft = config_lib.load_config(f"configs/finetune.py:runlocal,init={a}")
  result = train_lib.train(ft, b)
  return a, b, ft, result


@pytest.mark.slow
def test_finetune_loads_every_param_and_decays_per_layer(
    zeroshot_and_finetuned):
  a, b, ft, result = zeroshot_and_finetuned
  assert result["step"] == 6
  assert ft.layer_decay.to_dict() == {"img": 0.75, "txt": 0.75}
  assert ft.model.to_dict() == pretrained.read_config(a)[2].model.to_dict()
  _, params_a = pretrained.load(a)
  _, params_b = pretrained.load(b)
  # Every parameter moved from A; the first block's MLP moved less than the
  # last one's (layer-wise decay 0.75 per block).
  step = lambda p: np.abs(np.asarray(p[1]) - np.asarray(p[0])).mean()
  for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    assert x.shape == y.shape
  enc = lambda p: p["img"]["Transformer"]
  depth = len([k for k in enc(params_a) if k.startswith("encoderblock_")])
  first = step((enc(params_a)["encoderblock_0"]["MlpBlock_0"]["Dense_0"][
      "kernel"], enc(params_b)["encoderblock_0"]["MlpBlock_0"]["Dense_0"][
          "kernel"]))
  last = step((enc(params_a)[f"encoderblock_{depth - 1}"]["MlpBlock_0"][
      "Dense_0"]["kernel"], enc(params_b)[f"encoderblock_{depth - 1}"][
          "MlpBlock_0"]["Dense_0"]["kernel"]))
  assert depth >= 2 and 0 < first < last


@pytest.mark.slow
def test_wise_ft_sweep_reproduces_both_endpoints_exactly(
    zeroshot_and_finetuned, tmp_path):
  a, b, _, _ = zeroshot_and_finetuned
  eval_config = config_lib.load_config("configs/finetune.py:runlocal,eval")
  rows = interpolate.sweep(a, b, [0.0, 0.5, 1.0], str(tmp_path / "wise"),
                           eval_config, log=lambda *_: None)
  assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
  for alpha, endpoint, row in ((0.0, a, rows[0]), (1.0, b, rows[2])):
    want = evaluate_lib.evaluate(eval_config, endpoint, progress=False)
    got = {k: v for k, v in row.items() if k != "alpha"}
    assert got == {k: v for k, v in want["metrics"].items()
                   if not k.startswith("eval_time/")}, alpha
    _, mixed = pretrained.load(str(tmp_path / "wise" /
                                   interpolate.alpha_name(alpha)))
    _, original = pretrained.load(endpoint)
    for x, y in zip(jax.tree.leaves(mixed), jax.tree.leaves(original)):
      np.testing.assert_array_equal(x, y)
  for name in ("wise_ft.md", "wise_ft.csv", "wise_ft.png"):
    assert (tmp_path / "wise" / name).exists()
  assert "| 0.5 |" in (tmp_path / "wise" / "wise_ft.md").read_text()
  meta = ckpt_lib.read_meta(
      os.path.join(tmp_path / "wise" / "alpha_0.5", "checkpoints"), 0)
  assert meta["config"]["converted"]["wise_ft"]["alpha"] == 0.5


@pytest.mark.slow
def test_cli_writes_one_mix(zeroshot_and_finetuned, tmp_path):
  a, b, _, _ = zeroshot_and_finetuned
  out = str(tmp_path / "mix")
  interpolate.main([f"--a={a}", f"--b={b}", "--alpha=0.25", f"--out={out}"])
  _, mixed = pretrained.load(out)
  _, pa = pretrained.load(a)
  _, pb = pretrained.load(b)
  for m, x, y in zip(*map(jax.tree.leaves, (mixed, pa, pb))):
    np.testing.assert_allclose(m, 0.75 * x + 0.25 * y, rtol=1e-5, atol=1e-7)
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["model_name"] == "two_towers"
