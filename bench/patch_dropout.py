r"""FLIP patch dropout in miniature (Li et al. 2023, "Scaling Language-Image
Pre-training via Masking"): accuracy and step time at keep 1.0 / 0.5 / 0.25.

    python bench/patch_dropout.py                  # writes bench/RESULTS.md
    python bench/patch_dropout.py --seeds=0 --steps=50 --no_write

Each run is bench/methods.py's CLIP baseline (configs/demo.py at 32 px:
16 patches of 8 px per image, demo-size towers, 400 steps of 64) with
`config.model.image.patch_keep` set: in training each image keeps a random
`round(keep * 16)` of its patches (8 or 4), evaluation sees all of them.
Scored as bench/methods.py scores (512 test images: zero-shot top-1,
image->text retrieval R@1, attribute R@1), once per seed; the step time is
the median of the trainer's logged examples/s after its first log (so
compilation is left out), as a ratio to keep 1.0 of the same seed, measured
in the same run of this script. Results (mean ± std over the seeds) go to
the "## Patch dropout in miniature" section of RESULTS.md; only a run at
the default flags writes it. Runs are resumable (bench/runs.py).

A second table times the trainer's jitted step where patch dropout is
meant to pay: `--speed_arch` (open_clip's ViT-B-16: 196 patches at 224 px)
at `--speed_batch` 8, float32, one CPU device (bench/train_throughput.py's
big_vl side), each keep's step compiled once and timed in alternation;
GFLOPs and temporary memory from the compiled step.

FLIP's claim: at equal steps, dropping half the patches costs a little
accuracy and makes each step much cheaper (so more steps fit in the same
time). At 32 px the image tower is a small part of a step (the text tower
and the loss are the same at every keep), so the time ratio here is a
floor, not FLIP's 2-3x.

Measured 2026-12-07 (bench/RESULTS.md, "Patch dropout in miniature"; 2 CPU
cores, 3 seeds): at equal steps keep 0.5 costs 8.8 points of zero-shot
top-1 (35.4% -> 26.6%, far outside the spread of about 1 point) and keep
0.25 11.4; retrieval R@1 falls 17.4% -> 14.1% -> 10.3%. Steps take 0.85x
and 0.80x as long, with a spread of 0.07 between seeds (other jobs shared
the machine during part of the runs). With 16 patches per image, half of
them leaves 8: far fewer than FLIP's 98 of 196, which may be why the loss
here is larger than the paper's; FLIP's unmasked fine-tuning at the end was
not run. Where the image tower dominates, the saving is FLIP's: the
ViT-B/16 step (196 patches, batch 8) takes 0.57x the time at keep 0.5 and
0.39x at 0.25 (3.79 s -> 2.15 s -> 1.47 s; compiled FLOPs 990 -> 564 -> 357
GFLOP, temporary memory 2,561 -> 1,505 -> 1,068 MiB).
"""

import argparse
import collections
import datetime
import json
import os
import sys

from absl import flags

flags.FLAGS.mark_as_parsed()

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from big_vl import metrics as metrics_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data.builders import demo_shapes  # pylint: disable=g-import-not-at-top,wrong-import-position
import host  # pylint: disable=g-import-not-at-top,wrong-import-position
import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
import results_md  # pylint: disable=g-import-not-at-top,wrong-import-position
import runs  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

HEADING = "## Patch dropout in miniature (bench/patch_dropout.py)"
METRICS = ("zeroshot_top1", "retrieval_r1", "attribute_r1", "step_ratio",
           "final_loss")


def make_config(keep, seed, steps, batch):
  """bench/methods.py's baseline with patch dropout `keep`."""
  config = methods.base(steps, batch)
  config.seed = seed
  config.model.image.patch_keep = keep
  return config


def examples_per_sec(workdir):
  """Median logged training throughput after the first log."""
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  speeds = [r["train/examples_per_sec"] for r in rows
            if "train/examples_per_sec" in r][1:]
  return float(np.median(speeds))


def step_times(arch, batch, keeps, reps):
  """(patches per image, {keep: (median s/step, GFLOP/step, temp MiB)}) of
  the trainer's jitted step on `arch` (bench/train_throughput.py's big_vl
  side, one CPU device), the keeps alternating, their order reversed every
  repetition."""
  sides = {k: train_throughput.BigVlSide(arch, batch, patch_keep=k)
           for k in keeps}
  times = collections.defaultdict(list)
  for rep in range(reps):
    for k in (keeps if rep % 2 == 0 else keeps[::-1]):
      times[k].append(sides[k].train(2))
  patches = sides[keeps[0]].run.abstract_state["params"]["img"][
      "pos_embedding"].shape[1]
  return patches, {k: (float(np.median(times[k])), sides[k].flops / 1e9,
                       sides[k].temp_bytes / 2**20) for k in keeps}


def make_parser():
  """The command-line flags (`--root` aside, any non-default one makes a
  partial run)."""
  parser = argparse.ArgumentParser()
  parser.add_argument("--keeps", default="1.0,0.5,0.25")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--speed_arch", default="ViT-B-16",
                      help="open_clip architecture of the step-time table")
  parser.add_argument("--speed_batch", type=int, default=8)
  parser.add_argument("--speed_reps", type=int, default=3)
  parser.add_argument("--root", default=os.path.join(ROOT, "workdirs",
                                                     "bench_patch_dropout"))
  parser.add_argument("--no_write", action="store_true")
  return parser


def main(argv):
  parser = make_parser()
  args = parser.parse_args(argv)
  partial = results_md.non_default(parser, args, ignore=("root",))
  machine = host.describe(host.facts())
  demo_shapes.prepare()
  data = methods.eval_data()
  keeps = [float(k) for k in args.keeps.split(",")]
  table = collections.defaultdict(lambda: collections.defaultdict(list))
  for seed in [int(s) for s in args.seeds.split(",")]:
    speed = {}
    for keep in keeps:
      workdir = os.path.join(args.root, f"keep{keep:g}_seed{seed}_"
                             f"{args.steps}x{args.batch}")
      runs.train_or_reuse(make_config(keep, seed, args.steps, args.batch),
                          workdir)
      top1, r1, attr = methods.evaluate(workdir, "cosine", data)
      speed[keep] = examples_per_sec(workdir)
      rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
      row = dict(zeroshot_top1=top1, retrieval_r1=r1, attribute_r1=attr,
                 step_ratio=speed[keeps[0]] / speed[keep],
                 final_loss=[r["train/loss"] for r in rows
                             if "train/loss" in r][-1])
      for k, v in row.items():
        table[keep][k].append(v)
      print(json.dumps({"keep": keep, "seed": seed, **row,
                        "examples_per_sec": speed[keep]}), flush=True)
  fmt = lambda v, pct: (f"{np.mean(v):.1%} ± {np.std(v):.1%}" if pct else
                        f"{np.mean(v):.3f} ± {np.std(v):.3f}")
  lines = ["| patch_keep | zero-shot top-1 | retrieval R@1 | attribute R@1 "
           f"| step time (x keep {keeps[0]:g}) | final loss |",
           "|---:|---:|---:|---:|---:|---:|"]
  for keep in keeps:
    t = table[keep]
    lines.append(f"| {keep:g} | {fmt(t['zeroshot_top1'], True)} | "
                 f"{fmt(t['retrieval_r1'], True)} | "
                 f"{fmt(t['attribute_r1'], True)} | "
                 f"{fmt(t['step_ratio'], False)} | "
                 f"{fmt(t['final_loss'], False)} |")
  patches, speed = step_times(args.speed_arch, args.speed_batch, keeps,
                              args.speed_reps)
  speed_lines = [
      f"| patch_keep | s / step | x keep {keeps[0]:g} | GFLOP / step | "
      "temp memory MiB |", "|---:|---:|---:|---:|---:|"]
  for keep in keeps:
    sec, gflop, mib = speed[keep]
    ratio = sec / speed[keeps[0]][0]
    speed_lines.append(f"| {keep:g} | {sec:.2f} | {ratio:.2f} | "
                       f"{gflop:.0f} | {mib:.0f} |")
  section = "\n".join([
      HEADING, "",
      f"Measured {datetime.date.today()} on {machine}. bench/methods.py's "
      f"CLIP baseline (32 px, 16 patches), {args.steps} steps of "
      f"{args.batch}, seeds {args.seeds}; 512 test images, every patch at "
      "evaluation (chance: zero-shot 2.9%, retrieval about 0.2%, attribute "
      "9.1%); mean ± std over the seeds. Step time: median logged "
      "throughput after the first log, as a ratio to the first keep of the "
      "same seed (lower is faster).", "",
      "```", results_md.command(__file__, argv), "```", "", *lines, "",
      f"The trainer's step at full size: {args.speed_arch} "
      f"({train_throughput.IMAGE_SIZE} px, {patches} patches), batch "
      f"{args.speed_batch}, float32, one CPU device "
      "(bench/train_throughput.py's big_vl side); median of "
      f"{args.speed_reps} alternating repetitions of 2 steps; FLOPs and "
      "temporary memory from the compiled step.", "", *speed_lines, ""])
  results_md.publish(HEADING, section, write=not args.no_write,
                     partial=partial)


if __name__ == "__main__":
  main(sys.argv[1:])
