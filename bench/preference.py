r"""Preference scorers in miniature: does a CLIP tuned on a rater's choices
agree with the rater more than its zero-shot CLIPScore does, on unseen
prompts and on a defect it never saw?

    python bench/preference.py                    # writes bench/RESULTS.md
    python bench/preference.py --seeds=0 --base_steps=30 --steps=10 \
        --no_write                                # a quick look

Per seed: a base model, configs/demo.py at its `runlocal` sizes (32 px, a
mu/8 ViT) trained `--base_steps` steps on the demo shapes, then
configs/preference.py from it for `--steps` steps of `--batch` records
(4 candidates each) on `big_vl_demo_prefs` (4,000 training prompts), for
both kinds: `images` (HPS v2: which of 4 images fits a prompt) and
`captions` (a caption reward model: which of 4 captions fits an image).
Base and tuned models are scored by the `preference` evaluator on the
test split (500 unseen scenes): pairwise accuracy against the noisy
rater, choice accuracy, Kendall's tau, and pairwise accuracy on pairs
with the held-out defect ("extra": an unrequested object, or a caption
naming an absent one). The rater's own agreement with the noise-free
quality (its ceiling) is printed next to them.

Results (mean ± std over the seeds; the paired tuned - base difference
with its 95% t-interval) go to the "## Preference scorers in miniature"
section of RESULTS.md; only a run at the default flags writes it. Runs are
resumable (bench/runs.py).
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
from big_vl.data import sources  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data.builders import demo_prefs  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data.builders import demo_shapes  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.evaluators import preference as preference_eval  # pylint: disable=g-import-not-at-top,wrong-import-position
import host  # pylint: disable=g-import-not-at-top,wrong-import-position
import results_md  # pylint: disable=g-import-not-at-top,wrong-import-position
import runs  # pylint: disable=g-import-not-at-top,wrong-import-position

HEADING = "## Preference scorers in miniature (bench/preference.py)"
KINDS = ("images", "captions")
METRICS = ("pairwise_acc", "choice_acc", "kendall",
           f"pairwise_acc/{demo_prefs.HELD_OUT}")


def base_config(seed, steps):
  """configs/demo.py:runlocal trained `steps` (the model to tune)."""
  config = config_lib.load_config(
      os.path.join(ROOT, "configs", "demo.py") + f":runlocal,steps={steps}")
  config.seed = seed
  config.evals = {}
  return config


def tuned_config(base, kind, seed, steps, batch):
  config = config_lib.load_config(
      os.path.join(ROOT, "configs", "preference.py")
      + f":init={base},kind={kind},res=32,steps={steps},batch={batch}")
  config.seed = seed
  return config


def evaluate(config, params):
  """The preference evaluator's metrics of `params` under `config`."""
  mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
  model = train.make_model(config)
  got = {}
  for _, _, ev in evaluators.make_evaluators(config, model, mesh):
    got.update(ev.run(params))
  prefix = f"preference/demo_prefs_{config.input.data.split('/')[-1]}/"
  return {k: float(got[prefix + k]) for k in METRICS}


def rater_ceiling(kind):
  """The rater's agreement with the noise-free quality on the test split:
  what a perfect scorer of quality would reach against the rater."""
  src = sources.get(f"tfds:{demo_prefs.NAME}/{kind}:test")
  quality = np.stack([src[i]["hidden"]["quality"] for i in range(len(src))])
  ratings = np.stack([src[i]["ratings"] for i in range(len(src))])
  return preference_eval.rank_metrics(quality, ratings)


def make_parser():
  """The command-line flags (`--root` aside, any non-default one makes a
  partial run)."""
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--base_steps", type=int, default=600)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--root", default=os.path.join(ROOT, "workdirs",
                                                     "bench_preference"))
  parser.add_argument("--no_write", action="store_true")
  return parser


def main(argv):
  parser = make_parser()
  args = parser.parse_args(argv)
  partial = results_md.non_default(parser, args, ignore=("root",))
  machine = host.describe(host.facts())
  demo_shapes.prepare()
  table = collections.defaultdict(list)
  seeds = [int(s) for s in args.seeds.split(",")]
  for seed in seeds:
    base = os.path.join(args.root, f"base_seed{seed}_{args.base_steps}")
    runs.train_or_reuse(base_config(seed, args.base_steps), base)
    for kind in KINDS:
      config = tuned_config(base, kind, seed, args.steps, args.batch)
      workdir = os.path.join(args.root, f"{kind}_seed{seed}_{args.steps}")
      evals, config.evals = config.evals, {}  # Evaluated below, once.
      runs.train_or_reuse(config, workdir)
      config.evals = evals
      tuned = ckpt_lib.restore_params(os.path.join(workdir, "checkpoints"),
                                      config.total_steps)
      start = ckpt_lib.restore_params(os.path.join(base, "checkpoints"),
                                      args.base_steps)
      for arm, params in (("zero-shot CLIPScore", start),
                          ("preference-tuned", tuned)):
        row = evaluate(config, params)
        for k, v in row.items():
          table[kind, arm, k].append(v)
        print(json.dumps({"kind": kind, "arm": arm, "seed": seed, **row}),
              flush=True)
  fmt = lambda v: f"{np.mean(v):.3f} ± {np.std(v):.3f}"
  lines = ["| candidates | scorer | " + " | ".join(METRICS) + " |",
           "|---|---|" + "---:|" * len(METRICS)]
  verdicts = []
  for kind in KINDS:
    for arm in ("zero-shot CLIPScore", "preference-tuned"):
      lines.append(f"| {kind} | {arm} | " + " | ".join(
          fmt(table[kind, arm, k]) for k in METRICS) + " |")
    diffs = {k: np.asarray(table[kind, "preference-tuned", k])
             - np.asarray(table[kind, "zero-shot CLIPScore", k])
             for k in METRICS}
    intervals = {k: results_md.paired_interval(d) for k, d in diffs.items()}
    lines.append(f"| {kind} | tuned - zero-shot (paired; 95% CI) | "
                 + " | ".join(f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"
                              for d, (lo, hi) in zip(diffs.values(),
                                                     intervals.values()))
                 + " |")
    ceiling = rater_ceiling(kind)
    lines.append(f"| {kind} | the rater's noise-free quality (ceiling) | "
                 + " | ".join(f"{ceiling[k]:.3f}" if k in ceiling else ""
                              for k in METRICS) + " |")
    verdicts.append(f"{kind}: " + ", ".join(
        f"{k} " + ("inside the seed noise" if lo <= 0 <= hi else
                   ("tuned better" if lo > 0 else "zero-shot better"))
        for k, (lo, hi) in intervals.items()))
  section = "\n".join([
      HEADING, "",
      f"Measured {datetime.date.today()} on {machine}. Per seed "
      f"({args.seeds}): configs/demo.py:runlocal trained {args.base_steps} "
      f"steps (the zero-shot scorer), then configs/preference.py from it, "
      f"{args.steps} steps of {args.batch} records x 4 candidates, 32 px; "
      "scored on the 500 unseen test scenes of big_vl_demo_prefs. Mean ± "
      "std over the seeds; the paired difference with its 95% t-interval. "
      f"{'; '.join(verdicts)} (a difference is called only where the "
      "interval excludes 0).",
      "", "```", results_md.command(__file__, argv), "```", "", *lines, ""])
  results_md.publish(HEADING, section, write=not args.no_write,
                     partial=partial)


if __name__ == "__main__":
  main(sys.argv[1:])
