r"""Data curation in miniature: on a crawl whose captions are half wrong,
does training on the filtered half match training on everything, and how
well does each filter find the clean pairs and the planted leaks?

    python bench/curation.py                      # writes bench/RESULTS.md
    python bench/curation.py --seeds=0 --scorer_steps=20 --steps=10 \
        --config=small --no_write                 # a quick look

Per seed:

1. A scorer, the "pretrained CLIP" that filters: configs/demo.py at its
   `runlocal` sizes (32 px, mu/8 ViT) trained `--scorer_steps` on the clean
   demo shapes; and a caption reward model tuned from it on
   `big_vl_demo_prefs/captions` (configs/preference.py, `--reward_steps`).
2. `big_vl.embed` of the noisy crawl (`big_vl_demo_noisy`, half of the
   captions swapped or corrupted, 5% duplicates, 2% leaked test images)
   with each, and of the demo test split (decontamination).
3. `big_vl.curate` arms, each decontaminated first (threshold
   `--decontaminate`): all rows; CLIP-score top 50%; reward top 50%;
   near-duplicates removed (`--dedup`); and the clean oracle (the rows
   whose hidden `is_clean` is true; no tool reads it).
4. A student per arm, configs/demo.py:runlocal,caption=caption trained
   `--steps` steps of `--batch` on its rows (equal steps, so the smaller
   sets are seen more often), scored on the demo test split: zero-shot
   top-1 over the 35 classes and image -> text R@1 (first 512 images).

Reported: per arm, rows kept, the kept rows' precision (clean fraction)
and recall (of the clean rows), and the students' scores (mean ± std over
the seeds; tuned - all as paired differences with their 95% t-interval);
decontamination recall of the planted leaks by kind of copy, and the
false-positive rate on rows that are no leak. The field's result to check:
filtered data matches or beats the whole set.
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
from big_vl import curate  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl import embed  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl import evaluators  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl import predict  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.curation import write as write_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data import sources  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data.builders import demo_noisy  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data.builders import demo_shapes  # pylint: disable=g-import-not-at-top,wrong-import-position
import host  # pylint: disable=g-import-not-at-top,wrong-import-position
import results_md  # pylint: disable=g-import-not-at-top,wrong-import-position
import runs  # pylint: disable=g-import-not-at-top,wrong-import-position

HEADING = "## Data curation in miniature (bench/curation.py)"
ARMS = ("all", "clip_score", "reward", "dedup", "clean oracle")
PP_IMG = "decode|resize(32)|value_range(-1,1)"
PP_TXT = "tokenize(max_len=24)"


def demo(seed, steps, extra=""):
  config = config_lib.load_config(
      os.path.join(ROOT, "configs", "demo.py")
      + f":runlocal,steps={steps}{extra}")
  config.seed = seed
  return config


def embed_with(checkpoint, data, split, out):
  """`big_vl.embed` of `data` with `checkpoint` (reused when done)."""
  if not os.path.exists(os.path.join(out, "manifest.json")):
    predictor = predict.Predictor.load(checkpoint, pp_img=PP_IMG,
                                       pp_txt=PP_TXT, batch_size=256)
    embed.run(predictor, data, out, split=split, checkpoint=checkpoint,
              shard_size=8192, progress=False)
  return out


def arm_subset(arm, root, noisy_emb, reward_emb, test_emb, args, hidden):
  """The curated `subset:` folder of one arm, and its report."""
  out = os.path.join(root, "arm_" + arm.replace(" ", "_"))
  options = curate.Options(decontaminate=(test_emb,),
                           decontaminate_threshold=args.decontaminate)
  if arm == "clip_score":
    options.top_fraction = 0.5
  elif arm == "reward":
    options.reward, options.reward_top_fraction = reward_emb, 0.5
  elif arm == "dedup":
    options.dedup = args.dedup
  report = curate.run(noisy_emb, out, options, write="subset", plots_=False)
  if arm == "clean oracle":  # The truth picks; the tools never see it.
    meta, indices = write_lib.read_subset(out)
    clean = indices[[bool(hidden[i]["is_clean"]) for i in indices]]
    write_lib.write_subset(out, meta["data"], meta["split"], clean)
    report["kept"] = len(clean)
  return out, report


def scores(workdir, config):
  """Zero-shot top-1 and image -> text R@1 of a trained student."""
  mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
  params = ckpt_lib.restore_params(os.path.join(workdir, "checkpoints"),
                                   config.total_steps)
  got = {}
  for _, _, ev in evaluators.make_evaluators(config, train.make_model(config),
                                             mesh):
    got.update(ev.run(params))
  return {"zeroshot": float(got["zeroshot/demo_shapes/top1"]),
          "i2t_r1": float(got["retrieval/demo_shapes/img2txt_r@1"])}


def make_parser():
  """The command-line flags (`--root` aside, any non-default one makes a
  partial run)."""
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--config", default="full", choices=("full", "small"))
  parser.add_argument("--scorer_steps", type=int, default=600)
  parser.add_argument("--reward_steps", type=int, default=200)
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--dedup", type=float, default=0.999)
  parser.add_argument("--decontaminate", type=float, default=0.99)
  parser.add_argument("--eval_images", type=int, default=512)
  parser.add_argument("--root", default=os.path.join(ROOT, "workdirs",
                                                     "bench_curation"))
  parser.add_argument("--no_write", action="store_true")
  return parser


def main(argv):
  parser = make_parser()
  args = parser.parse_args(argv)
  partial = results_md.non_default(parser, args, ignore=("root",))
  machine = host.describe(host.facts())
  demo_shapes.prepare()
  noisy = f"tfds:{demo_noisy.NAME}/{args.config}"
  src = sources.get(noisy, split="train")
  hidden = [src[i]["hidden"] for i in range(len(src))]
  clean = np.array([bool(h["is_clean"]) for h in hidden])
  leak = np.array([h["leak_of"] >= 0 for h in hidden])
  variant = np.array([demo_noisy.VARIANTS[h["variant"]] for h in hidden])
  table = collections.defaultdict(list)
  for seed in [int(s) for s in args.seeds.split(",")]:
    root = os.path.join(args.root, f"{args.config}_seed{seed}")
    scorer = os.path.join(root, "scorer")
    runs.train_or_reuse(demo(seed, args.scorer_steps), scorer)
    reward = os.path.join(root, "reward")
    reward_config = config_lib.load_config(
        os.path.join(ROOT, "configs", "preference.py")
        + f":init={scorer},kind=captions,res=32,steps={args.reward_steps},"
        "batch=16")
    reward_config.seed, reward_config.evals = seed, {}
    runs.train_or_reuse(reward_config, reward)
    noisy_emb = embed_with(scorer, noisy, "train",
                           os.path.join(root, "noisy_emb"))
    reward_emb = embed_with(reward, noisy, "train",
                            os.path.join(root, "reward_emb"))
    test_emb = embed_with(scorer, "tfds:big_vl_demo_shapes", "test",
                          os.path.join(root, "test_emb"))
    for arm in ARMS:
      folder, _ = arm_subset(arm, root, noisy_emb, reward_emb, test_emb,
                             args, hidden)
      kept = np.zeros(len(src), bool)
      kept[write_lib.read_subset(folder)[1]] = True
      if arm == "all":  # Decontamination recall, on the planted leaks.
        for v in demo_noisy.VARIANTS[1:]:
          on = leak & (variant == v)
          table["leak_recall", v].append(float(np.mean(~kept[on])))
        table["leak_false_positive", ""].append(float(np.mean(
            ~kept[~leak])))
      config = demo(seed, args.steps, f",caption=caption,batch={args.batch}")
      config.input.data = f"subset:{folder}"
      for block in config.evals.values():
        block.split = f"test[:{args.eval_images}]"
      workdir = os.path.join(root, "student_" + arm.replace(" ", "_"))
      evals, config.evals = config.evals, {}
      runs.train_or_reuse(config, workdir)
      config.evals = evals
      row = {"kept": int(kept.sum()),
             "precision": float(clean[kept].mean()) if kept.any() else 0.0,
             "recall": float(kept[clean].mean()),
             **scores(workdir, config)}
      for k, v in row.items():
        table[arm, k].append(v)
      print(json.dumps({"seed": seed, "arm": arm, **row}), flush=True)
  fmt = lambda v, pct=True: (f"{100 * np.mean(v):.1f}% ± "
                             f"{100 * np.std(v):.1f}%" if pct else
                             f"{np.mean(v):,.0f}")
  lines = ["| arm | rows kept | precision (clean) | recall (of clean) | "
           "zero-shot top-1 | image->text R@1 |",
           "|---|---:|---:|---:|---:|---:|"]
  for arm in ARMS:
    lines.append(f"| {arm} | {fmt(table[arm, 'kept'], False)} | "
                 + " | ".join(fmt(table[arm, k]) for k in (
                     "precision", "recall", "zeroshot", "i2t_r1")) + " |")
  verdicts = []
  for arm in ARMS[1:]:
    cells = []
    for k in ("zeroshot", "i2t_r1"):
      d = 100 * (np.asarray(table[arm, k]) - np.asarray(table["all", k]))
      lo, hi = results_md.paired_interval(d)
      cells.append(f"{d.mean():+.1f} [{lo:+.1f}, {hi:+.1f}]")
      verdicts.append(f"{arm} {k}: " + (
          "inside the seed noise" if lo <= 0 <= hi else
          ("better than all" if lo > 0 else "worse than all")))
    lines.append(f"| {arm} - all (paired points; 95% CI) | | | | "
                 + " | ".join(cells) + " |")
  leaks = ", ".join(f"{v} {fmt(table['leak_recall', v])}"
                    for v in demo_noisy.VARIANTS[1:])
  section = "\n".join([
      HEADING, "",
      f"Measured {datetime.date.today()} on {machine}. "
      f"big_vl_demo_noisy/{args.config}; per seed ({args.seeds}) a scorer "
      f"(configs/demo.py:runlocal, {args.scorer_steps} steps on the clean "
      f"demo shapes), a caption reward model tuned from it "
      f"({args.reward_steps} steps on big_vl_demo_prefs/captions), every "
      f"arm decontaminated at {args.decontaminate} and its student trained "
      f"{args.steps} steps of {args.batch}; scores on the first "
      f"{args.eval_images} demo test images. Mean ± std over the seeds. "
      f"{'; '.join(verdicts)}. Decontamination recall of the planted "
      f"leaks by copy kind: {leaks}; rows that are no leak dropped by it: "
      f"{fmt(table['leak_false_positive', ''])} (look-alikes: CLIP "
      "embeddings are semantic).",
      "", "```", results_md.command(__file__, argv), "```", "", *lines, ""])
  results_md.publish(HEADING, section, write=not args.no_write,
                     partial=partial)


if __name__ == "__main__":
  main(sys.argv[1:])
