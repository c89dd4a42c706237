r"""SigLIP 2's recipe against SigLIP's at equal steps, in miniature: the
image-text numbers and a dense per-patch probe.

    python bench/siglip2.py                       # writes bench/RESULTS.md
    python bench/siglip2.py --seeds=0 --steps=40 --no_write

Two arms of configs/siglip2.py at its `runlocal` sizes (32 px, a mu/8 ViT
and mu text tower, batch `--batch`), trained for `--steps` steps per seed:

- `siglip`: the sigmoid loss alone (no decoder, no teacher, no views);
- `siglip2`: the config as it is: sigmoid + LocCa decoder throughout, and
  for the last 20% of the steps SILC's self-distillation on multi-crop
  views and masked prediction against the EMA teacher.

Each trained image tower is scored on the demo test split: zero-shot top-1
over the 35 classes and image -> text retrieval R@1 (the config's
evaluators, first `--eval_images` images), and a dense probe: the final
patch tokens of each image (a 4x4 grid of 8 px patches) are classified
per patch by a linear probe (`big_vl.evaluators.linear_probe.train_probe`,
weight decay chosen on a held-out part of the probe's training patches)
into the colour (7) and the shape (5) of the object whose box holds the
patch's centre (`patch_labels`), fitted on the object patches (about a
third; background patches left out) of `--probe_train` training images
and scored on those of `--eval_images` test images. The self-supervised objectives are the ones
expected to help the dense probe most (the paper's dense-feature gains).
Measured 2026-12-07 (bench/RESULTS.md, "SigLIP 2 recipe in miniature";
2 CPU cores, 3 seeds, 300 steps): every difference is inside the seed
noise. Zero-shot 25.5% ± 1.8% (SigLIP) vs 25.1% ± 2.6% (SigLIP 2),
image -> text R@1 3.9% vs 4.1%, per-patch colour 92.1% vs 92.5% and shape
27.5% vs 27.7% (an untrained tower's patches: 86.6% and 25.4%); paired
differences -0.4, +0.2, +0.5 and +0.1 points, each 95% interval holding 0.
At this scale the self-supervised terms run for 60 steps only, and the
demo's patches are small and simple: nothing here shows the paper's dense
gains, nor rules them out.

Results (mean ± std over the seeds, and the paired difference with its
95% t-interval) go to the
"## SigLIP 2 recipe in miniature" section of RESULTS.md; only a run at
the default flags writes it. Runs are resumable (bench/runs.py).
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
from big_vl.data import pp as pp_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data import sources  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data.builders import demo_shapes  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.evaluators import linear_probe  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.models import two_towers  # pylint: disable=g-import-not-at-top,wrong-import-position
import host  # pylint: disable=g-import-not-at-top,wrong-import-position
import results_md  # pylint: disable=g-import-not-at-top,wrong-import-position
import runs  # pylint: disable=g-import-not-at-top,wrong-import-position

HEADING = "## SigLIP 2 recipe in miniature (bench/siglip2.py)"
ARMS = ("siglip", "siglip2")
GRID = 4  # 32 px images, 8 px patches.
METRICS = ("zeroshot_top1", "retrieval_i2t_r1", "patch_colour_acc",
           "patch_shape_acc")
IMAGE_PP = f"decode|resize(32)|{config_lib.DEMO_DEVICE_PP}"


def make_config(arm, seed, steps, batch, eval_images):
  """configs/siglip2.py:runlocal for one arm (module docstring)."""
  config = config_lib.load_config(
      os.path.join(ROOT, "configs", "siglip2.py")
      + f":runlocal,steps={steps}")
  config.seed = seed
  config.input.batch_size = batch
  config.log_steps = max(steps // 20, 1)
  config.evals = {k: v for k, v in config.evals.items()
                  if v.get("type", k) in ("zeroshot", "retrieval")}
  for block in config.evals.values():
    block.split = f"test[:{eval_images}]"
  if arm == "siglip":
    for key in ("caption", "self_distillation", "masked"):
      del config.objectives[key]
    del config.teacher
    for key in ("decoder", "ssl_head"):
      config.model[key] = None
    config.model.token_features = False
    config.model.image.mask_ratio = 0.0
    config.input.pp = plain_pp(config.input.pp)
    config.input.device_pp = config_lib.DEMO_DEVICE_PP
  return config


def plain_pp(spec):
  """The siglip arm's pp: the same image and text, no views or decoder
  rows (they would be made and never read)."""
  ops = [op for op in spec.split("|")
         if not op.startswith(("multi_crop(", "locca_tasks(", "keep("))]
  return "|".join(ops + ["keep('image','text')"])


def patch_labels(objects, grid=GRID):
  """Per-patch colour and shape classes of one demo image.

  Args:
    objects: the record's "objects" ({"label": [...], "bbox": [[ymin, xmin,
      ymax, xmax], ...]} in relative coordinates).
    grid: patches per side.

  Returns:
    (colour int[grid * grid], shape int[grid * grid]), row-major; the
    object whose box holds the patch centre gives its classes (the
    largest, listed first, where boxes overlap), background is
    len(COLOURS) / len(SHAPES).
  """
  n_col, n_shape = len(demo_shapes.COLOURS), len(demo_shapes.SHAPES)
  colour = np.full((grid, grid), n_col, np.int64)
  shape = np.full((grid, grid), n_shape, np.int64)
  centres = (np.arange(grid) + 0.5) / grid
  for label, box in reversed(list(zip(objects["label"], objects["bbox"]))):
    ymin, xmin, ymax, xmax = np.asarray(box, np.float64)
    inside = ((centres[:, None] >= ymin) & (centres[:, None] <= ymax)
              & (centres[None, :] >= xmin) & (centres[None, :] <= xmax))
    colour[inside] = int(label) // n_shape
    shape[inside] = int(label) % n_shape
  return colour.reshape(-1), shape.reshape(-1)


def patch_features(model, params, data, split, batch=100):
  """(f32[N * 16, D] final patch tokens, colour, shape) of a split."""
  src = sources.get(data, split=split)
  pp = pp_lib.build(IMAGE_PP)
  fn = jax.jit(lambda p, image: two_towers.outputs(
      model, {"params": p}, {"image": image})["img/tokens"])
  feats = []
  for start in range(0, len(src), batch):
    records = src.__getitems__(list(range(start, min(start + batch,
                                                      len(src)))))
    images = np.stack([pp(dict(r), None)["image"] for r in records])
    tokens = np.asarray(fn(params, images), np.float32)
    feats.append(tokens.reshape(-1, tokens.shape[-1]))
  return (np.concatenate(feats), *patch_labels_of(data, split))


def dense_probe(model, params, data, train_images, eval_images):
  """Per-patch colour and shape accuracy of a linear probe (docstring)."""
  x, col, shp = patch_features(model, params, data,
                               f"train[:{train_images}]")
  tx, tcol, tshp = patch_features(model, params, data,
                                  f"test[:{eval_images}]")
  mean, std = x.mean(0), x.std(0) + 1e-6
  x, tx = (x - mean) / std, (tx - mean) / std
  out = {}
  for name, y, ty, background in (
      ("patch_colour_acc", col, tcol, len(demo_shapes.COLOURS)),
      ("patch_shape_acc", shp, tshp, len(demo_shapes.SHAPES))):
    fit, score = y != background, ty != background  # Object patches.
    probe, _, _ = linear_probe.train_probe(x[fit], y[fit],
                                           num_classes=background)
    out[name] = linear_probe.accuracy(probe, tx[score], ty[score])
  return out


def probe_baselines(data, train_images, eval_images, seeds):
  """The dense probe's baselines: the most frequent object class of the
  training patches per task, and the probe on each seed's untrained siglip
  tower."""
  col, shp = patch_labels_of(data, f"train[:{train_images}]")
  tcol, tshp = patch_labels_of(data, f"test[:{eval_images}]")
  majority = {}
  for name, y, ty, background in (
      ("patch_colour_acc", col, tcol, len(demo_shapes.COLOURS)),
      ("patch_shape_acc", shp, tshp, len(demo_shapes.SHAPES))):
    top = np.bincount(y[y != background]).argmax()
    majority[name] = [np.mean(ty[ty != background] == top)]
  untrained = collections.defaultdict(list)
  for seed in seeds:
    config = make_config("siglip", seed, 1, 1, eval_images)
    model = train.make_model(config)
    params = two_towers.init_params(model, jax.random.PRNGKey(seed),
                                    (1, 32, 32, 3),
                                    (1, config.model.text.max_len))
    for k, v in dense_probe(model, params, data, train_images,
                            eval_images).items():
      untrained[k].append(v)
  return {"most frequent class": majority, "untrained tower": untrained}


def patch_labels_of(data, split):
  """(colour, shape) per-patch labels of a split's images, concatenated."""
  src = sources.get(data, split=split)
  labels = [patch_labels(src[i]["objects"]) for i in range(len(src))]
  return (np.concatenate([c for c, _ in labels]),
          np.concatenate([s for _, s in labels]))


paired_interval = results_md.paired_interval


def make_parser():
  """The command-line flags (`--root` aside, any non-default one makes a
  partial run)."""
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--eval_images", type=int, default=500)
  parser.add_argument("--probe_train", type=int, default=1000)
  parser.add_argument("--root", default=os.path.join(ROOT, "workdirs",
                                                     "bench_siglip2"))
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
  seeds = [int(s) for s in args.seeds.split(",")]
  for seed in seeds:
    for arm in ARMS:
      config = make_config(arm, seed, args.steps, args.batch,
                           args.eval_images)
      workdir = os.path.join(args.root, f"{arm}_seed{seed}_{args.steps}")
      evals, config.evals = config.evals, {}  # Evaluated below, once.
      runs.train_or_reuse(config, workdir)
      config.evals = evals
      params = ckpt_lib.restore_params(os.path.join(workdir, "checkpoints"),
                                       config.total_steps)
      model = train.make_model(config)
      got = {}
      for _, _, ev in evaluators.make_evaluators(config, model, mesh):
        got.update(ev.run(params))
      row = {"zeroshot_top1": float(got["zeroshot/demo_shapes/top1"]),
             "retrieval_i2t_r1": float(
                 got["retrieval/demo_shapes/img2txt_r@1"]),
             **dense_probe(model, params, config.input.data,
                           args.probe_train, args.eval_images)}
      for k, v in row.items():
        table[arm, k].append(v)
      print(json.dumps({"arm": arm, "seed": seed, **row}), flush=True)
  base = probe_baselines(config.input.data, args.probe_train,
                         args.eval_images, seeds)
  pct = lambda v: f"{100 * np.mean(v):.1f}% ± {100 * np.std(v):.1f}%"
  lines = ["| arm | " + " | ".join(METRICS) + " |",
           "|---|" + "---:|" * len(METRICS)]
  for arm in ARMS:
    lines.append(f"| {arm} | " + " | ".join(pct(table[arm, k])
                                            for k in METRICS) + " |")
  for name, values in base.items():
    lines.append(f"| baseline: {name} | | | " + " | ".join(
        pct(values[k]) for k in METRICS[2:]) + " |")
  diffs = {k: 100 * (np.asarray(table["siglip2", k])
                     - np.asarray(table["siglip", k])) for k in METRICS}
  intervals = {k: paired_interval(d) for k, d in diffs.items()}
  lines.append("| siglip2 - siglip (paired, points; 95% CI) | " + " | ".join(
      f"{d.mean():+.1f} [{lo:+.1f}, {hi:+.1f}]"
      for d, (lo, hi) in zip(diffs.values(), intervals.values())) + " |")
  verdict = ", ".join(
      f"{k}: " + ("inside the seed noise" if lo <= 0 <= hi else
                  ("SigLIP 2 better" if lo > 0 else "SigLIP better"))
      for k, (lo, hi) in intervals.items())
  section = "\n".join([
      HEADING, "",
      f"Measured {datetime.date.today()} on {machine}. configs/siglip2.py "
      f"at its `runlocal` sizes (32 px, mu/8 ViT), {args.steps} steps of "
      f"{args.batch} per arm and seed, seeds {args.seeds}; the first "
      f"{args.eval_images} test images; dense probe fitted on the patches "
      f"of {args.probe_train} training images. Mean ± std over the seeds; "
      "probe accuracy on object patches; baselines: the "
      "most frequent object class of the training patches, and the probe "
      "on an untrained tower (each seed's init); the last row is the "
      f"paired difference with its 95% t-interval over the seeds. Per "
      f"metric: {verdict} (a difference is called only where the interval "
      "excludes 0).",
      "", "```", results_md.command(__file__, argv), "```", "", *lines, ""])
  results_md.publish(HEADING, section, write=not args.no_write,
                     partial=partial)


if __name__ == "__main__":
  main(sys.argv[1:])
