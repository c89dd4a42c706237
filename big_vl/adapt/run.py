r"""Few-shot adaptation runs: every method x shots x seed, scored on test.

    python -m big_vl.adapt --config=configs/adapt/fashion_mnist.py \
        --workdir=workdirs/adapt_fashion_mnist

For each number of shots and seed (`protocol.make_task`), each method in
`config.methods` is fitted with its hyper-parameters chosen on validation
and scored on the test split. Written to the workdir:

  results/<dataset>_<method>_<k>shot_seed<s>.json   one per run, in
      CLIP_benchmark's layout ("dataset", "model", "pretrained", "task",
      "metrics": {"acc1", "acc5", "mean_per_class_recall"}) plus "method",
      "shots", "seed", "hparams" (chosen) and "val_acc"
  base_to_new/<dataset>_<method>_<k>shot_seed<s>.json   base / new / HM
  adapt.md, adapt.csv   mean +- std over seeds per method and shots (and
                        the base-to-new table)
  adapt.png             accuracy against shots, one line per method

A run whose JSON exists is skipped, so an interrupted command resumes (use
one workdir per model and dataset).
Image features of the training pool and the test split are computed once
(cached in `features.npz`).

Config keys: checkpoint, data, train_split (the pool shots and validation
come from), test_split, data_dir, pp_img, pp_txt, label_key, class_names,
templates, batch_size, methods, shots, seeds, val_shots ("auto" = min(k, 4)
per class), hparams ({method: kwargs}), base_to_new (dict(shots=16,
methods=(...)), or None), model_label, pretrained, name (the dataset's
name in file names and records).
"""

import json
import os
import time

import numpy as np

from big_vl import cli
from big_vl import config as config_lib
from big_vl import plots
from big_vl import storage
from big_vl.adapt import adapters
from big_vl.adapt import backbone as backbone_lib
from big_vl.adapt import prompt
from big_vl.adapt import protocol
from big_vl.data import sources
from big_vl.evaluators import common
from big_vl.evaluators import prompts

METHODS = {
    "zeroshot": adapters.zeroshot,
    "linear_probe": adapters.linear_probe_method,
    "clip_adapter": adapters.clip_adapter,
    "tip_adapter": adapters.tip_adapter,
    "tip_adapter_f": adapters.tip_adapter_f,
    "coop": prompt.coop,
    "cocoop": prompt.cocoop,
}
# Methods that can name classes they were not trained on (base-to-new).
OPEN_VOCABULARY = ("zeroshot", "coop", "cocoop")
KNOWN_KEYS = {"checkpoint", "data", "train_split", "test_split", "data_dir",
              "pp_img", "pp_txt", "label_key", "class_names", "templates",
              "batch_size", "methods", "shots", "seeds", "val_shots",
              "hparams", "base_to_new", "model_label", "pretrained", "name"}
TASK = "fewshot_adaptation"


def _features(bb, config, split, cache, log):
  """(x, y) of a split, cached in `cache` (a local .npz path) under a key
  naming the checkpoint, data, split and image pp."""
  import hashlib  # pylint: disable=g-import-not-at-top
  key = hashlib.sha1("|".join(map(str, (
      storage.absolute(config.checkpoint), config.data, split,
      config.pp_img))).encode()).hexdigest()[:16]
  data = dict(np.load(cache)) if os.path.exists(cache) else {}
  if f"{key}/x" not in data:
    t0 = time.time()
    source = sources.get(config.data, split=split,
                         data_dir=config.get("data_dir", None))
    x, y = bb.image_features(source, config.get("label_key", "label"))
    data[f"{key}/x"], data[f"{key}/y"] = x, y
    np.savez(cache, **data)
    log(f"[adapt] features of {split}: {x.shape} in {time.time() - t0:.0f} s")
  return data[f"{key}/x"], data[f"{key}/y"]


def _classnames(config):
  names = config.get("class_names", None)
  if isinstance(names, str):
    return prompts.classnames(names)
  if names:
    return list(names)
  source = sources.get(config.data, split=config.test_split,
                       data_dir=config.get("data_dir", None))
  names = sources.class_names(source, config.get("label_key", "label"))
  if not names:
    raise ValueError("No class names: give config.class_names.")
  return list(names)


def fit_and_score(method, task, test_labels, hparams=None):
  """Fits one method on a task, then (only then) scores it on test.

  Args:
    method: a name in METHODS.
    task: the `protocol.Task` (it holds no test labels).
    test_labels: `protocol.HiddenLabels` of the test split.
    hparams: the method's keyword arguments (candidate grids, steps, ...).

  Returns:
    (metrics, result): test metrics and the method's result dict.
  """
  result = METHODS[method](task, **(hparams or {}))
  return protocol.score(result["logits"], test_labels,
                        task.num_classes), result


def _record(config, dataset, method, shots, seed, metrics, result, t):
  return {"dataset": dataset,
          "model": config.get("model_label", None) or "two_towers",
          "pretrained": config.get("pretrained", None) or os.path.basename(
              storage.absolute(config.checkpoint)),
          "task": TASK, "language": "en", "metrics": metrics,
          "method": method, "shots": shots, "seed": seed,
          "hparams": _jsonable(result.get("hparams", {})),
          "val_acc": result.get("val_acc"), "fit_seconds": t}


def _jsonable(tree):
  return json.loads(json.dumps(tree, default=float))


BASE_TO_NEW_KEYS = {"shots", "methods"}


def check_config(config):
  """Checks an adaptation config at every depth before any work.

  The top level against `KNOWN_KEYS`, `config.methods` against `METHODS`,
  each `config.hparams.METHOD` block against that method's signature (minus
  `task`) and `config.base_to_new` against its keys.

  Raises:
    ValueError: naming the dotted key, e.g. `config.hparams.coop.stpes`.
  """
  config_lib.check_keys(config, KNOWN_KEYS)
  unknown = set(config.get("methods", None) or ()) - set(METHODS)
  if unknown:
    raise ValueError(f"config.methods: unknown methods {sorted(unknown)}; "
                     f"known: {sorted(METHODS)}.")
  hparams = config.get("hparams", None) or {}
  config_lib.check_keys(hparams, set(METHODS), "config.hparams")
  for method, block in hparams.items():
    config_lib.check_signature(block, METHODS[method],
                               f"config.hparams.{method}", skip=("task",))
  config_lib.check_keys(config.get("base_to_new", None) or {},
                        BASE_TO_NEW_KEYS, "config.base_to_new")


def run(config, workdir, *, log=print):
  """Runs (or resumes) every method x shots x seed; writes the outputs.

  Returns:
    {"runs": [records], "base_to_new": [records]}.
  """
  check_config(config)
  workdir = storage.absolute(workdir)
  staged = storage.StagedDir(workdir, exclude=("features.npz",))
  local = staged.local
  bb = backbone_lib.Backbone.load(
      config.checkpoint, pp_img=config.pp_img, pp_txt=config.pp_txt,
      batch_size=config.get("batch_size", 256))
  cache = os.path.join(local, "features.npz")
  pool_x, pool_y = _features(bb, config, config.train_split, cache, log)
  test_x, test_y = _features(bb, config, config.test_split, cache, log)
  classnames = _classnames(config)
  templates = prompts.get(config.templates)
  zs_weights = bb.zeroshot_weights(classnames, templates)
  dataset = config.get("name", None) or common.dataset_label(config.data)
  hparams = dict(config.get("hparams", None) or {})
  val_setting = config.get("val_shots", "auto")

  def task_for(shots, seed, classes=None):
    x, y, tx = pool_x, pool_y, test_x
    names, weights = classnames, zs_weights
    if classes is not None:
      x, y = protocol.restrict(pool_x, pool_y, classes)
      names = [classnames[c] for c in classes]
      weights = zs_weights[:, classes]
      tx = test_x[np.isin(test_y, classes)]  # Which images: by class only.
    return protocol.make_task(
        x, y, tx, k=shots, seed=seed, classnames=names, zs_weights=weights,
        templates=templates, scale=bb.scale, backbone=bb,
        val_setting=val_setting)

  records = []
  for shots in config.shots:
    for seed in range(config.seeds):
      task = None
      for method in config.methods:
        def compute(method=method, shots=shots, seed=seed):
          nonlocal task
          task = task or task_for(shots, seed)
          t0 = time.time()
          metrics, result = fit_and_score(
              method, task, protocol.HiddenLabels(test_y),
              hparams.get(method))
          record = _record(config, dataset, method, shots, seed, metrics,
                           result, time.time() - t0)
          log(f"[adapt] {method} {shots}-shot seed {seed}: acc1 "
              f"{metrics['acc1']:.4f} (val {result['val_acc']:.4f}, "
              f"{record['hparams']}, {record['fit_seconds']:.0f} s)")
          return record

        records.append(_cached(os.path.join(
            local, "results",
            f"{dataset}_{method}_{shots}shot_seed{seed}.json"), compute))
      staged.sync()

  b2n = _base_to_new(config, classnames, test_x, test_y, task_for, dataset,
                     hparams, local, log)
  write_tables(records, b2n, local)
  plot(records, os.path.join(local, "adapt.png"), dataset)
  staged.sync()
  return {"runs": records, "base_to_new": b2n}


def _base_to_new(config, classnames, test_x, test_y, task_for, dataset,
                 hparams, local, log):
  """CoCoOp's base-to-new generalisation (see `protocol`)."""
  spec = dict(config.get("base_to_new", None) or {})
  if not spec:
    return []
  shots = spec.get("shots", 16)
  methods = spec.get("methods", OPEN_VOCABULARY)
  closed = set(methods) - set(OPEN_VOCABULARY)
  if closed:
    raise ValueError(f"base_to_new: {sorted(closed)} cannot name new "
                     f"classes; use some of {OPEN_VOCABULARY}.")
  base, new = protocol.base_new_classes(len(classnames))
  new_x, new_y = protocol.restrict(test_x, test_y, new)
  _, base_y = protocol.restrict(test_x, test_y, base)
  new_names = [classnames[c] for c in new]
  out = []
  for seed in range(config.seeds):
    task = None
    for method in methods:
      def compute(method=method, seed=seed):
        nonlocal task
        task = task or task_for(shots, seed, base)
        t0 = time.time()
        result = METHODS[method](task, **(hparams.get(method) or {}))
        new_logits = result["classify"](new_x, new_names)
        base_acc = protocol.score(result["logits"],
                                  protocol.HiddenLabels(base_y))["acc1"]
        new_acc = protocol.score(new_logits,
                                 protocol.HiddenLabels(new_y))["acc1"]
        record = _record(config, dataset, method, shots, seed, {
            "base_acc1": base_acc, "new_acc1": new_acc,
            "hm": protocol.harmonic_mean(base_acc, new_acc)}, result,
                         time.time() - t0)
        record.update(task="base_to_new", base_classes=list(task.classnames),
                      new_classes=new_names)
        log(f"[adapt] base-to-new {method} seed {seed}: base "
            f"{base_acc:.4f} new {new_acc:.4f} HM "
            f"{record['metrics']['hm']:.4f}")
        return record

      out.append(_cached(os.path.join(
          local, "base_to_new",
          f"{dataset}_{method}_{shots}shot_seed{seed}.json"), compute))
  return out


def _cached(path, compute):
  """The record stored at `path`, else `compute()`'s, stored there."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  record = compute()
  storage.write(path, json.dumps(record, indent=1))
  return record


def _mean_std(values):
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=0))


def summary(records, metric="acc1"):
  """{method: {shots: (mean, std, n)}} over seeds."""
  grouped = {}
  for r in records:
    grouped.setdefault(r["method"], {}).setdefault(r["shots"], []).append(
        r["metrics"][metric])
  return {m: {k: (*_mean_std(v), len(v)) for k, v in sorted(by.items())}
          for m, by in grouped.items()}


def table(records, b2n=(), fmt="markdown"):
  """Accuracy (%) mean +- std over seeds: methods x shots (+ base-to-new)."""
  stats = summary(records)
  shots = sorted({k for by in stats.values() for k in by})
  methods = [m for m in METHODS if m in stats]
  if fmt == "csv":
    lines = ["method,shots,acc1_mean,acc1_std,seeds"]
    lines += [f"{m},{k},{stats[m][k][0]:.6f},{stats[m][k][1]:.6f},"
              f"{stats[m][k][2]}" for m in methods for k in shots
              if k in stats[m]]
    for m, row in _b2n_rows(b2n):
      lines.append(f"{m}:base_to_new,{row['shots']},{row['hm'][0]:.6f},"
                   f"{row['hm'][1]:.6f},{row['seeds']}")
    return "\n".join(lines) + "\n"
  cell = lambda s: f"{100 * s[0]:.1f} ± {100 * s[1]:.1f}"
  lines = ["| method | " + " | ".join(f"{k}-shot" for k in shots) + " |",
           "|---|" + "---:|" * len(shots)]
  for m in methods:
    lines.append(f"| {m} | " + " | ".join(
        cell(stats[m][k]) if k in stats[m] else "" for k in shots) + " |")
  rows = _b2n_rows(b2n)
  if rows:
    seeds = rows[0][1]["seeds"]
    lines += ["", f"Base-to-new ({rows[0][1]['shots']} shots, {seeds} "
              f"seed{'s' if seeds != 1 else ''}; accuracy %):", "",
              "| method | base | new | HM |", "|---|---:|---:|---:|"]
    lines += [f"| {m} | {cell(r['base'])} | {cell(r['new'])} | "
              f"{cell(r['hm'])} |" for m, r in rows]
  return "\n".join(lines) + "\n"


def _b2n_rows(b2n):
  by = {}
  for r in b2n:
    by.setdefault(r["method"], []).append(r)
  rows = []
  for m in METHODS:
    if m in by:
      rs = by[m]
      rows.append((m, {
          "shots": rs[0]["shots"], "seeds": len(rs),
          "base": _mean_std([r["metrics"]["base_acc1"] for r in rs]),
          "new": _mean_std([r["metrics"]["new_acc1"] for r in rs]),
          "hm": _mean_std([r["metrics"]["hm"] for r in rs])}))
  return rows


def write_tables(records, b2n, directory):
  for fmt, ext in (("markdown", "md"), ("csv", "csv")):
    storage.write(os.path.join(directory, f"adapt.{ext}"),
                  table(records, b2n, fmt))


def plot(records, path, dataset=""):
  """Test accuracy against shots (log2 axis), mean +- std over seeds."""
  stats = summary(records)
  fig, axes = plots.new_figure(1, 1, figsize=(6.4, 4.2), squeeze=False)
  ax = axes[0, 0]
  for m in METHODS:
    if m not in stats:
      continue
    ks = sorted(stats[m])
    means = [100 * stats[m][k][0] for k in ks]
    stds = [100 * stats[m][k][1] for k in ks]
    style = dict(linestyle="--", color="gray") if m == "zeroshot" else {}
    ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=m,
                **style)
  ax.set_xscale("log", base=2)
  shots = sorted({k for by in stats.values() for k in by})
  ax.set_xticks(shots, [str(k) for k in shots])
  ax.set_xlabel("shots per class")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"Few-shot adaptation{': ' + dataset if dataset else ''}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  plots.save(fig, path)


@cli.user_errors
def main(argv=None):
  """`python -m big_vl.adapt --config=PATH[:ARG] --workdir=DIR`."""
  import argparse  # pylint: disable=g-import-not-at-top
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="python -m big_vl.adapt",
      description="Few-shot adaptation of a frozen model: every method x "
      "shots x seed, hyper-parameters chosen on validation.")
  parser.add_argument("--config", required=True,
                      help="e.g. configs/adapt/fashion_mnist.py")
  parser.add_argument("--workdir", required=True, help="output folder")
  args = parser.parse_args(argv)
  flags.FLAGS.mark_as_parsed()
  config_lib.setup_cli_runtime(logging.ERROR)
  out = run(config_lib.load_config(args.config), args.workdir)
  print(table(out["runs"], out["base_to_new"]))
  print(f"Results in {storage.absolute(args.workdir)}: results/, adapt.md, "
        "adapt.csv, adapt.png")
