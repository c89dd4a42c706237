r"""LocCa in miniature: does one captioner learn to caption, to find a
described object and to describe a boxed one?

    python bench/locca.py                       # writes bench/RESULTS.md
    python bench/locca.py --seeds=0 --steps=50 --no_write

Per seed, configs/locca.py at its `runlocal` sizes (32 px, a mu/8 ViT and
a 2-layer 64-wide decoder) is trained for `--steps` steps of `--batch`
images, each image with its three task rows (caption, box -> description,
description -> box). Its greedy decodes of the first `--eval_images` test
images are scored by the `captioning` evaluator (CIDEr-D of the "<cap>"
captions) and the `locca` evaluator (every object a query): grounding
accuracy (IoU >= 0.5) over all objects, over each image's first object
(the largest) and over the others, mean IoU, and region-caption accuracy.

Baselines from the data alone: for grounding, the mean box of the training
objects given for every query, and the image's largest object given for
every description (which a model that ignores the description would
match: perfect on first objects, near zero on the others, since objects
never overlap); for region captions, the most frequent training class.
Results (mean ± std over the seeds) go to the "## LocCa in miniature"
section of RESULTS.md; only a run at the default flags writes it. Runs are
resumable: a finished seed's workdir (under `--root`) is evaluated again,
not retrained, and an unfinished one goes on from its last checkpoint
(every sixth of the steps). Alone on 2 cores a seed trains in about 75
minutes (2.9-3.2 s/step measured 2026-12-07): give it its own session
start and a timeout well above that.
"""

import argparse
import collections
import datetime
import json
import os
import sys

from absl import flags

flags.FLAGS.mark_as_parsed()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from big_vl import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl import evaluators  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data import locca  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data import sources  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data.builders import demo_shapes  # pylint: disable=g-import-not-at-top,wrong-import-position
import host  # pylint: disable=g-import-not-at-top,wrong-import-position
import results_md  # pylint: disable=g-import-not-at-top,wrong-import-position
import runs  # pylint: disable=g-import-not-at-top,wrong-import-position

HEADING = "## LocCa in miniature (bench/locca.py)"
METRICS = ("cider", "grounding_acc", "grounding_acc_first",
           "grounding_acc_others", "grounding_miou", "grounding_invalid",
           "region_caption_acc")


def make_config(seed, steps, batch, eval_images):
  """configs/locca.py:runlocal trained for `steps` of `batch`."""
  config = config_lib.load_config(
      os.path.join(ROOT, "configs", "locca.py")
      + f":runlocal,steps={steps},batch={batch}")
  config.seed = seed
  config.log_steps = max(steps // 20, 1)
  # A checkpoint every sixth of the run: a run stopped part-way (a session
  # ends, a timeout) goes on from there when the script is started again.
  config.ckpt_steps = max(steps // 6, 1)
  config.keep_ckpts = 1
  for block in config.evals.values():
    block.split = f"test[:{eval_images}]"
  return config


def baselines(data, eval_images, train_images=5000):
  """The data-only baselines of the module docstring."""
  train_src = sources.get(data, split=f"train[:{train_images}]")
  boxes, labels = [], collections.Counter()
  for i in range(len(train_src)):
    objects = train_src[i]["objects"]
    boxes += [np.asarray(b, np.float64) for b in objects["bbox"]]
    labels.update(int(l) for l in objects["label"])
  mean_box = np.mean(boxes, axis=0)
  majority = labels.most_common(1)[0][0]
  test = sources.get(data, split=f"test[:{eval_images}]")
  mean_iou, first_hit, first_main, label_hit = [], [], [], []
  for i in range(len(test)):
    objects = test[i]["objects"]
    first = objects["bbox"][0]
    for k, (box, label) in enumerate(zip(objects["bbox"], objects["label"])):
      mean_iou.append(locca.iou(mean_box, box))
      first_hit.append(locca.iou(first, box) >= 0.5)
      first_main.append(k == 0)
      label_hit.append(int(label) == majority)
  mean_iou, first_hit = np.array(mean_iou), np.array(first_hit)
  first_main = np.array(first_main)
  return {
      "mean box": {"grounding_acc": float(np.mean(mean_iou >= 0.5)),
                   "grounding_acc_first": float(np.mean(
                       mean_iou[first_main] >= 0.5)),
                   "grounding_acc_others": float(np.mean(
                       mean_iou[~first_main] >= 0.5)),
                   "grounding_miou": float(np.mean(mean_iou))},
      "largest object": {
          "grounding_acc": float(np.mean(first_hit)),
          "grounding_acc_first": float(np.mean(first_hit[first_main])),
          "grounding_acc_others": float(np.mean(first_hit[~first_main]))},
      "majority class": {"region_caption_acc": float(np.mean(label_hit))},
  }


def make_parser():
  """The command-line flags (`--root` aside, any non-default one makes a
  partial run)."""
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--eval_images", type=int, default=200)
  parser.add_argument("--root", default=os.path.join(ROOT, "workdirs",
                                                     "bench_locca"))
  parser.add_argument("--no_write", action="store_true")
  return parser


def main(argv):
  parser = make_parser()
  args = parser.parse_args(argv)
  partial = results_md.non_default(parser, args, ignore=("root",))
  machine = host.describe(host.facts())
  demo_shapes.prepare()
  mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
  table = collections.defaultdict(list)
  seconds = []
  for seed in [int(s) for s in args.seeds.split(",")]:
    config = make_config(seed, args.steps, args.batch, args.eval_images)
    workdir = os.path.join(args.root, f"seed{seed}_{args.steps}")
    evals, config.evals = config.evals, {}  # Evaluated below, once.
    seconds.append(runs.train_or_reuse(config, workdir))
    config.evals = evals
    params = ckpt_lib.restore_params(os.path.join(workdir, "checkpoints"),
                                     config.total_steps)
    model = train.make_model(config)
    got = {}
    for _, _, ev in evaluators.make_evaluators(config, model, mesh):
      got.update(ev.run(params))
    row = {k: got.get(f"captioning/demo_shapes/{k}",
                      got.get(f"locca/demo_shapes/{k}")) for k in METRICS}
    for k, v in row.items():
      table[k].append(v)
    print(json.dumps({"seed": seed, **row}), flush=True)
  base = baselines(config.evals.locca.data, args.eval_images)
  fmt = lambda v: f"{np.mean(v):.3f} ± {np.std(v):.3f}"
  lines = ["| | " + " | ".join(METRICS) + " |",
           "|---|" + "---:|" * len(METRICS),
           "| LocCa | " + " | ".join(fmt(table[k]) for k in METRICS) + " |"]
  for name, values in base.items():
    lines.append(f"| baseline: {name} | " + " | ".join(
        f"{values[k]:.3f}" if k in values else "" for k in METRICS) + " |")
  section = "\n".join([
      HEADING, "",
      f"Measured {datetime.date.today()} on {machine}. configs/locca.py at "
      f"its `runlocal` sizes (32 px), {args.steps} steps of {args.batch} "
      f"images (x 3 task rows), seeds {args.seeds} (train "
      f"{np.mean(seconds):.0f} s each); greedy decodes of the first "
      f"{args.eval_images} test images, every object a query; mean ± std "
      "over the seeds. Baselines from the data alone (module docstring).",
      "", "```", results_md.command(__file__, argv), "```", "", *lines, ""])
  results_md.publish(HEADING, section, write=not args.no_write,
                     partial=partial)


if __name__ == "__main__":
  main(sys.argv[1:])
