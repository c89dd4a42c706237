r"""Config sweeps: every variant a config file defines, one workdir each.

A config file opts in with `get_sweep(arg=None)`, returning a list of
override dicts with dotted keys, applied to `get_config(arg)`:

    def get_sweep(arg=None):
      return [{"lr": lr, "objectives.contrastive.loss": loss,
               "model.bias_init": bias}
              for lr in (1e-3, 3e-3)
              for loss, bias in (("softmax", None), ("sigmoid", -10.0))]

Run it (sequentially, here; each variant is a normal training run):

    python -m big_vl.sweep --config=configs/demo.py:runlocal \
        --workdir=workdirs/sweep

Variant i trains in `ROOT/<name>`, its name built from its overrides (e.g.
`lr=0.001,loss.name=sigmoid,model.bias_init=-10.0`). A variant whose workdir
holds a finished sweep run (`sweep_final.json`) is skipped; an interrupted
one resumes from its last checkpoint, as `big_vl.train` does. Before any
variant runs, the config each existing variant workdir was trained with
(recorded in `sweep_final.json`, else its `config.json`) is compared with
the one the sweep would run now: if any key that can change results
differs (anything but log/ckpt cadence, `sync_every_s`, `keep_ckpts`,
output locations, `input.read_threads`, `input.workers`), the sweep refuses
to run, naming each such variant and key (old -> new), rather than report or extend
results of another config (e.g. a `:runlocal` root reused for the full
sweep): use another ROOT, or delete those variant folders to retrain them.
At the end the sweep writes, in ROOT:

  sweep.csv, sweep.md  one row per variant: name, status, final step, final
                       train loss and every final evaluation metric;
  sweep.png            train-loss curves of all variants, and the variants'
                       final `metric` (default: the first zero-shot top-1).
"""

import csv
import io
import json
import os
import re

from big_vl import checkpoint as ckpt_lib
from big_vl import cli
from big_vl import config as config_lib
from big_vl import growth
from big_vl import metrics as metrics_lib
from big_vl import objectives as objectives_lib
from big_vl import plots
from big_vl import storage
from big_vl import workdir_lock

FINAL_FILE = "sweep_final.json"


def variant_name(overrides):
  """A folder name for one variant: `k=v` pairs joined by commas.

  Keys of the `contrastive` objective are written in the `config.loss`
  shorthand (`objectives.shorthand_key`), so both spellings of a variant
  name the same folder (a finished variant is not rerun for the spelling).

  Example:
    >>> variant_name({"lr": 0.001, "loss.name": "sigmoid"})
    'lr=0.001,loss.name=sigmoid'
    >>> variant_name({"lr": 0.001, "objectives.contrastive.loss": "sigmoid"})
    'lr=0.001,loss.name=sigmoid'
  """
  if not overrides:
    return "base"
  parts = [f"{objectives_lib.shorthand_key(k)}={v}"
           for k, v in overrides.items()]
  return re.sub(r"[^\w.,=+\-]", "_", ",".join(parts))


def apply_overrides(config, overrides):
  """Sets dotted keys of a ConfigDict (a missing key is an error).

  Args:
    config: an `ml_collections.ConfigDict`.
    overrides: {"a.b": value}.

  Returns:
    `config` (changed in place).

  Raises:
    KeyError: naming an override key the config does not have.
  """
  for key, value in overrides.items():
    node = config
    # `loss.name` and `objectives.contrastive.loss` work in either spelling.
    *parents, leaf = objectives_lib.key_in(config, key).split(".")
    for part in parents:
      if part not in node:
        raise KeyError(f"Sweep override {key!r}: the config has no {part!r}.")
      node = node[part]
    if leaf not in node:
      raise KeyError(f"Sweep override {key!r}: the config has no {leaf!r}; "
                     f"keys there: {sorted(node.keys())}.")
    node[leaf] = value  # An existing key: allowed on a locked config too.
  return config


def variants(config_spec):
  """[(name, overrides, config)] of a config file's sweep.

  Args:
    config_spec: "path/to/config.py[:arg]".

  Returns:
    One entry per dict of `get_sweep(arg)`.

  Raises:
    ValueError: if the file has no `get_sweep`, it returns nothing, or two
      variants get the same name.
  """
  path, arg = config_lib.parse_config_arg(config_spec)
  module = config_lib.load_config_module(path)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} defines no get_sweep(arg); add one returning a "
                     "list of override dicts, e.g. [{'lr': 1e-3}, "
                     "{'lr': 3e-3}].")
  sweep = list(module.get_sweep(arg))
  if not sweep:
    raise ValueError(f"{path}: get_sweep({arg!r}) returned no variants.")
  out = []
  for overrides in sweep:
    overrides = dict(overrides)
    out.append((variant_name(overrides), overrides,
                apply_overrides(module.get_config(arg), overrides)))
  names = [n for n, _, _ in out]
  if len(set(names)) != len(names):
    raise ValueError(f"{path}: sweep variants with the same overrides: "
                     f"{names}.")
  return out


def _final_row(workdir):
  row = json.loads((storage.path(workdir) / FINAL_FILE).read_text())
  row.pop("config", None)  # The config it ran (for `saved_config_diff`).
  return row


def saved_config_diff(workdir, config):
  """How `config` differs from the one `workdir` was trained with.

  The saved config is the one the sweep recorded in `sweep_final.json`, else
  the workdir's `config.json` (written by the trainer), else the newest
  checkpoint's (staged, with growth) config.

  Args:
    workdir: a variant's workdir.
    config: the config the sweep would run there now.

  Returns:
    None if the workdir holds no run (no `sweep_final.json`, no
    checkpoints); else [(dotted key, old, new)] of the keys that can change
    results (`config_lib.NO_EFFECT_KEYS` left out), or the string
    "no saved config" if the run saved none.
  """
  path = storage.path(workdir)
  ckpts = path / "checkpoints"
  steps = ([int(p.name) for p in ckpts.iterdir() if p.name.isdigit()]
           if ckpts.is_dir() else [])
  final = path / FINAL_FILE
  if not final.exists() and not steps:
    return None
  recorded = json.loads(final.read_text()).get("config") if (
      final.exists()) else None
  if recorded is not None:
    saved, now = recorded, config
  elif (path / "config.json").exists():
    saved, now = json.loads((path / "config.json").read_text()), config
  else:
    try:
      meta = ckpt_lib.read_meta(os.fspath(ckpts), max(steps)) if steps else {}
    except ckpt_lib.CheckpointError:
      meta = {}
    if "config" not in meta:
      return "no saved config"
    saved, now = meta["config"], growth.stage_config(config, max(steps))
  # The `config.loss` shorthand and `config.objectives` compare equal.
  _, changed = config_lib.split_diff(
      config_lib.config_diff(objectives_lib.normalize_config(saved),
                             objectives_lib.normalize_config(now)),
      config_lib.NO_EFFECT_KEYS)
  return changed


def check_existing(root, todo):
  """Refuses to run if an existing variant ran with another config.

  Args:
    root: the sweep's root folder.
    todo: `variants(...)`.

  Raises:
    ValueError: naming each variant whose workdir's saved config differs
      from the one the sweep would run (or holds none), with the keys.
  """
  stale = []
  for name, _, config in todo:
    workdir = os.path.join(root, name)
    diff = saved_config_diff(workdir, config)
    if diff:
      state = ("finished" if (storage.path(workdir) / FINAL_FILE).exists()
               else "interrupted")
      detail = (f"    {diff}" if isinstance(diff, str)
                else config_lib.format_diff(diff, indent="    "))
      stale.append(f"  {name} ({state}, {workdir}):\n{detail}")
  if stale:
    raise ValueError(
        f"Refusing to run the sweep in {root}: {len(stale)} variant "
        "workdir(s) there were trained with another config than the one the "
        "sweep would run now (e.g. a :runlocal root reused for the full "
        "sweep), so their results would not be this sweep's:\n"
        + "\n".join(stale) + "\nUse another --workdir root, or delete those "
        "variant folders to retrain them.")


def run(config_spec, root, *, train_fn=None, log=print):
  """Runs (or resumes, or skips) every variant, then writes the tables.

  Args:
    config_spec: "path/to/config.py[:arg]".
    root: folder (or URL) of the variants' workdirs and the sweep tables.
    train_fn: `(config, workdir) -> train result` (default:
      `big_vl.train.train`).
    log: progress printer.

  Returns:
    A list of rows (dicts): "name", "status" ("trained" or "skipped"),
    "step", "train/loss", and the final evaluation metrics.

  Raises:
    ValueError: before anything runs, if a variant's existing workdir was
      trained with another config (`check_existing`).
  """
  if train_fn is None:
    from big_vl import train as train_lib  # pylint: disable=g-import-not-at-top
    train_fn = train_lib.train
  root = storage.absolute(root)
  todo = variants(config_spec)
  # One sweep per root (each variant's run holds its own workdir too).
  with workdir_lock.hold(root, "big_vl.sweep", log=log):
    return _run_holding(root, todo, train_fn, log)


def _run_holding(root, todo, train_fn, log):
  """`run` once the root is held."""
  check_existing(root, todo)
  rows = []
  for i, (name, overrides, config) in enumerate(todo):
    workdir = os.path.join(root, name)
    if (storage.path(workdir) / FINAL_FILE).exists():
      log(f"[sweep {i + 1}/{len(todo)}] {name}: finished earlier, skipped.")
      row = _final_row(workdir)
      row["status"] = "skipped"
      rows.append(row)
      continue
    log(f"[sweep {i + 1}/{len(todo)}] {name}: training in {workdir}")
    result = train_fn(config, workdir)
    if result.get("final") is None:
      raise RuntimeError(f"Sweep variant {name} stopped before its last "
                         "step; rerun the sweep to resume it.")
    row = {"name": name, "overrides": overrides, "step": result["step"],
           "train/loss": last_train_loss(workdir, result["step"]),
           **{k: v for k, v in result["final"].items()
              if not k.startswith("eval_time/")}}
    storage.write(os.path.join(workdir, FINAL_FILE), json.dumps(
        {**row, "config": json.loads(config.to_json_best_effort())},
        indent=2, default=float))
    row["status"] = "trained"
    rows.append(row)
  write_tables(rows, root)
  plot(rows, root, os.path.join(root, "sweep.png"))
  log(f"[sweep] {len(rows)} variants; tables in {root}/sweep.md, "
      f"{root}/sweep.csv, plot in {root}/sweep.png")
  return rows


def last_train_loss(workdir, step):
  """The `train/loss` logged at `step` in the workdir's metrics.jsonl.

  From the workdir, not from the last `train` call: a variant resumed after
  its last step (interrupted during its final evaluation) trains no step in
  that call but logged its loss before. None if no row holds it.
  """
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  found = [r["train/loss"] for r in rows
           if r.get("step") == step and "train/loss" in r]
  return found[-1] if found else None


def _columns(rows):
  metrics = sorted({k for r in rows for k in r
                    if k not in ("name", "status", "step", "train/loss",
                                 "overrides")})
  return ["name", "status", "step", "train/loss"] + metrics


def table(rows, fmt="csv"):
  """The sweep rows as CSV or markdown text."""
  cols = _columns(rows)
  if fmt == "csv":
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
      w.writerow([r.get(c, "") for c in cols])
    return out.getvalue()
  cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(cols) + " |",
           "|" + "|".join("---" for _ in cols) + "|"]
  lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |"
            for r in rows]
  return "\n".join(lines) + "\n"


def write_tables(rows, root):
  """Writes ROOT/sweep.csv and ROOT/sweep.md."""
  for fmt, ext in (("csv", "csv"), ("markdown", "md")):
    storage.write(os.path.join(root, f"sweep.{ext}"), table(rows, fmt))


def default_metric(rows):
  """The metric the plot compares: a zero-shot top-1 if any, else loss."""
  keys = [k for k in _columns(rows)[4:] if k.endswith("top1")]
  return keys[0] if keys else "train/loss"


def plot(rows, root, path, metric=None):
  """Train-loss curves of every variant and a bar chart of `metric`."""
  metric = metric or default_metric(rows)
  fig, (ax_loss, ax_bar) = plots.new_figure(
      1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
  for r in rows:
    jsonl = os.path.join(root, r["name"], "metrics.jsonl")
    pts = [(m["step"], m["train/loss"])
           for m in metrics_lib.read_jsonl(jsonl) if "train/loss" in m]
    if pts:
      ax_loss.plot(*zip(*pts), label=r["name"])
  ax_loss.set_title("train/loss")
  ax_loss.set_xlabel("step")
  ax_loss.grid(alpha=0.3)
  ax_loss.legend(fontsize=7)
  values = [float(r.get(metric, float("nan"))) for r in rows]
  ax_bar.barh(range(len(rows)), values)
  ax_bar.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=7)
  ax_bar.invert_yaxis()
  ax_bar.set_title(f"final {metric}")
  for i, v in enumerate(values):
    ax_bar.text(v, i, f" {v:.3f}", va="center", fontsize=7)
  fig.tight_layout()
  plots.save(fig, path)


@cli.user_errors
def main(argv=None):
  """`python -m big_vl.sweep --config=PATH[:ARG] --workdir=ROOT`."""
  import argparse  # pylint: disable=g-import-not-at-top
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="python -m big_vl.sweep",
      description="Runs every variant of a config's get_sweep() and tables "
      "their final metrics.")
  parser.add_argument("--config", required=True,
                      help="config file with get_sweep, e.g. "
                      "configs/demo.py:runlocal")
  parser.add_argument("--workdir", required=True,
                      help="root folder: one workdir per variant + tables")
  parser.add_argument("--metric", default=None,
                      help="final metric the plot compares (default: the "
                      "first zero-shot top-1)")
  args = parser.parse_args(argv)
  flags.FLAGS.mark_as_parsed()  # grain workers and absl logging need it.
  config_lib.setup_cli_runtime(logging.WARNING)
  rows = run(args.config, args.workdir)
  if args.metric:
    plot(rows, args.workdir, os.path.join(args.workdir, "sweep.png"),
         metric=args.metric)
  print(table(rows, "markdown"))


if __name__ == "__main__":
  main()
