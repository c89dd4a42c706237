"""Training learns: zero-shot and retrieval far above chance after 300 steps.

One end-to-end run of the trainer, as a user starts it
(`big_vl.train.train(config, workdir)`), of the demo config's runlocal
model (ViT mu/8 at 32 px + text mu, 3.4M params, batch 32) for 300 steps on
the demo shapes data, evaluated on the runlocal eval split (`test[:256]`:
256 images of held-out colour+shape pairs, 1,280 captions).

Chance levels (35 classes; 256 images x 5 captions; see
big_vl/evaluators/retrieval.py for the conservative tie rule):
- zero-shot top-5: 5/35 = 14.3%;
- image->text R@5: 1 - C(1275, 5)/C(1280, 5) = 1.9% (an image hits if one of
  its 5 captions beats all but 4 of the 1,275 other captions);
- text->image R@5: 5/256 = 2.0%.

Measured (2026-12-03, CPU, 1 device, 300 steps; seeds 0 / 1 / 2):
- zero-shot top-5      0.973 / 0.969 / 0.988
- image->text R@5      0.266 / 0.363 / 0.328
- text->image R@5      0.302 / 0.302 / 0.302
(the same run on the 8 simulated devices gave the same numbers to 4
decimals for seed 0, 2.6x slower.) The thresholds below sit about 0.05-0.07
under the lowest seed and 6-12x above chance.

The thresholds have teeth: evaluating the same trained params with
`value_range(0,1)` instead of the training pp's `value_range(-1,1)`
measured top-5 0.734 / 0.488 / 0.418, image->text R@5 0.086 / 0.063 / 0.059,
text->image R@5 0.166 / 0.178 / 0.158 (seeds 0 / 1 / 2): every metric falls
under its threshold, and the test checks that for seed 0. (CLIP mean/std
normalisation instead, `value_range(0,1)|normalize()`, measured top-5
0.83-0.84 and text->image R@5 0.21-0.24: also caught. A resize mismatch that
keeps the input size, `resize(40)|central_crop(32)`, changes the numbers by
less than the seed does: this test does not catch that one.)

Time (2026-12-03, 2 CPU cores shared with other jobs): 57 s of CPU time
(user + sys, empty compilation cache); wall 54 s at load ~7 with a warm
cache, 127 s at load ~13 with an empty one. Each seed's training alone took
34-36 s of wall time when the machine was less loaded.
"""

import os

import jax
import numpy as np
import pytest

from big_vl import checkpoint as ckpt_lib
from big_vl import config as config_lib
from big_vl import evaluators as evaluators_lib
from big_vl import sharding
from big_vl import train as train_lib

STEPS = 300
TRAIN_IMG_PP = "value_range(-1,1)"
MISMATCHED_IMG_PP = "value_range(0,1)"

CHANCE = {
    "zeroshot/demo_shapes/top5": 5 / 35,
    "retrieval/demo_shapes/img2txt_r@5": 1 - np.prod(
        [(1275 - i) / (1280 - i) for i in range(5)]),
    "retrieval/demo_shapes/txt2img_r@5": 5 / 256,
}
# Lowest of 3 seeds minus a margin of 0.05-0.07 (the seeds' spread of
# image->text R@5 is 0.10, the others' under 0.02).
THRESHOLD = {
    "zeroshot/demo_shapes/top5": 0.90,       # measured 0.969-0.988
    "retrieval/demo_shapes/img2txt_r@5": 0.20,  # measured 0.266-0.363
    "retrieval/demo_shapes/txt2img_r@5": 0.25,  # measured 0.302
}


def _config():
  config = config_lib.load_config_module("configs/demo.py").get_config(
      "runlocal")
  config.total_steps = STEPS
  config.warmup_steps = STEPS // 10
  config.ckpt_steps = STEPS
  config.log_steps = 50
  return config


def _mismatched_evals(config):
  """config.evals with the images scaled to [0, 1] instead of [-1, 1]."""
  evals = config.evals.copy_and_resolve_references()
  for block, key in ((evals.zeroshot, "pp_img"), (evals.retrieval, "pp")):
    assert block[key].count(TRAIN_IMG_PP) == 1, block[key]
    block[key] = block[key].replace(TRAIN_IMG_PP, MISMATCHED_IMG_PP)
  return evals


@pytest.mark.slow
def test_training_learns_and_eval_pp_must_match(demo_data, tmp_path):
  config = _config()
  assert f"|{TRAIN_IMG_PP}|" in config.input.pp
  # One device: 8 simulated devices on 2 cores give the same numbers, 2.6x
  # slower.
  devices = jax.devices()[:1]
  result = train_lib.train(config, str(tmp_path), devices=devices)
  assert result["step"] == STEPS
  final = result["final"]
  for key, threshold in THRESHOLD.items():
    assert threshold > 6 * CHANCE[key], key
    assert final[key] >= threshold, (key, final[key], threshold)

  # The same params, evaluated with an image pp that differs from
  # training's, fall under every threshold.
  ckpt = ckpt_lib.Checkpointer(os.path.join(tmp_path, "checkpoints"))
  state, _ = ckpt.restore(ckpt.latest_step(), None)
  ckpt.close()
  mismatched = _config()
  mismatched.evals = _mismatched_evals(config)
  mesh = sharding.make_mesh(mismatched.mesh, devices)
  bad = {}
  for _, _, ev in evaluators_lib.make_evaluators(
      mismatched, train_lib.make_model(mismatched), mesh):
    bad.update(dict(ev.run(state["params"])))
  for key, threshold in THRESHOLD.items():
    assert bad[key] < threshold, (key, bad[key], threshold)
