r"""Golden runs: capture a fixed set of runlocal trainings, compare two captures.

A before/after tool for refactors of the trainer (issue #30), not a test:
the last bits of a loss differ between CPU models, so the numbers are not
committed. Capture the base commit and the working tree on the same
machine, then compare:

    git worktree add /tmp/base HEAD         # or the commit before the change
    (cd /tmp/base && python tests/golden.py capture /tmp/golden_before)
    python tests/golden.py capture /tmp/golden_after
    python tests/golden.py compare /tmp/golden_before /tmp/golden_after

`capture DIR [--runs demo,clip,...]` trains each run below through
`big_vl.train.train` on 8 simulated CPU devices with evaluations off and a
log row every step, and writes DIR/RUN.json with:
- "losses": the loss of every step;
- "metrics": every logged `train/*` and `growth/*` metric of every step
  (wall-clock ones, `train/examples_per_sec`, left out);
- "params": per-parameter float64 sums, |sums| and sha256 of the final
  params (and of the EMA copy, if any), keyed by "/"-joined path.

`compare A B` prints, per run, how many numbers are bit-identical and the
largest absolute and relative difference of the rest, and exits non-zero
if any differs by more than `--rtol` (default 0: bit-identical). A metric
that the v2 step names `train/<objective>/<metric>` is matched with the
old `train/<metric>` (`train/contrastive/loss` with `train/loss`), so
captures from before and after the rename compare.

The runs (each `configs/NAME.py:runlocal` plus overrides): demo, demo with
the sigmoid loss, demo with `grad_accum_steps=4`, clip (ring loss + device
pp), siglip, align (bf16 compute, LAMB, FSDP), filip with
`grad_accum_steps=2`, dreamlip, growclip (growth numbers in "metrics"),
vitamin, cappa (a captioner, added 2026-12-07) and coca (added
2026-12-07; a capture made before either lacks it, which `compare` reports
as a difference; capture both sides with the same code's RUNS).
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (config file, config arg, {dotted key: value} overrides).
RUNS = {
    "demo": ("demo", "runlocal", {}),
    "demo_sigmoid": ("demo", "runlocal,loss=sigmoid", {}),
    "demo_accum4": ("demo", "runlocal", {"grad_accum_steps": 4}),
    "clip": ("clip", "runlocal", {}),
    "siglip": ("siglip", "runlocal", {}),
    "align": ("align", "runlocal", {}),
    "filip_accum2": ("filip", "runlocal", {"grad_accum_steps": 2}),
    "dreamlip": ("dreamlip", "runlocal", {}),
    "growclip": ("growclip", "runlocal", {}),
    "vitamin": ("vitamin", "runlocal", {}),
    "cappa": ("cappa", "runlocal", {}),
    "coca": ("coca", "runlocal", {}),
}
WALL_CLOCK = ("train/examples_per_sec",)


def _setup_jax():
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", 8)
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()


def param_checksums(tree, prefix):
  """{prefix/path: {"sum", "abs_sum", "sha256"}} of every array in `tree`."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "/".join([prefix] + [str(getattr(k, "key", k)) for k in path])
    value = np.asarray(jax.device_get(value))
    out[name] = {
        "sum": float(np.sum(value, dtype=np.float64)),
        "abs_sum": float(np.sum(np.abs(value), dtype=np.float64)),
        "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes())
                  .hexdigest()}
  return out


def config_of(name):
  """The ConfigDict a golden run trains (evals off, a log row every step)."""
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  file, arg, overrides = RUNS[name]
  module = config_lib.load_config_module(
      os.path.join(ROOT, "configs", f"{file}.py"))
  config = module.get_config(arg)
  for key, value in overrides.items():
    *parents, last = key.split(".")
    block = config
    for p in parents:
      block = block[p]
    block[last] = value
  config.evals = {}
  config.log_steps = 1
  config.results_dir = ""
  return config


def capture_one(name, workdir):
  """Trains run `name` in `workdir`; returns its record."""
  # pylint: disable=g-import-not-at-top
  from big_vl import checkpoint as ckpt_lib
  from big_vl import train as train_lib
  # pylint: enable=g-import-not-at-top
  config = config_of(name)
  result = train_lib.train(config, workdir)
  metrics = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      step = str(row.pop("step"))
      keep = {k: v for k, v in row.items()
              if (k.startswith("train/") or k.startswith("growth/"))
              and k not in WALL_CLOCK and isinstance(v, (int, float))}
      if keep:
        metrics.setdefault(step, {}).update(keep)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  params = param_checksums(ckpt_lib.restore_params(
      ckpt_dir, ckpt_lib.latest_step(ckpt_dir)[0]), "params")
  return {"run": name, "config": RUNS[name][:2],
          "overrides": RUNS[name][2], "step": int(result["step"]),
          "losses": {str(k): float(v) for k, v in
                     sorted(result["losses"].items())},
          "metrics": metrics, "params": params}


def capture(directory, names):
  os.makedirs(directory, exist_ok=True)
  for name in names:
    print(f"golden: capturing {name}", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
      record = capture_one(name, workdir)
    with open(os.path.join(directory, f"{name}.json"), "w") as f:
      json.dump(record, f, indent=1, sort_keys=True)


def _new_name(old, new_keys):
  """The key in `new_keys` that old metric `old` is called now."""
  if old in new_keys:
    return old
  rest = old[len("train/"):] if old.startswith("train/") else None
  if rest is not None:
    candidates = [k for k in new_keys if k.startswith("train/")
                  and k.split("/", 2)[-1] == rest and k.count("/") == 2]
    if len(candidates) == 1:
      return candidates[0]
  return None


def compare_records(a, b, rtol=0.0):
  """(lines, ok): a summary of how record `b` differs from record `a`."""
  pairs, missing = [], []
  for step, loss in a["losses"].items():
    if step not in b["losses"]:
      missing.append(f"loss@{step}")
    else:
      pairs.append((f"loss@{step}", loss, b["losses"][step]))
  for step, row in a["metrics"].items():
    new_row = b["metrics"].get(step, {})
    for key, value in row.items():
      new = _new_name(key, new_row)
      if new is None:
        missing.append(f"{key}@{step}")
      else:
        pairs.append((f"{key}@{step}", value, new_row[new]))
  for key, value in a["params"].items():
    if key not in b["params"]:
      missing.append(key)
      continue
    for field in ("sum", "abs_sum"):
      pairs.append((f"{key}:{field}", value[field], b["params"][key][field]))
  extra = sorted(set(b["params"]) - set(a["params"]))
  same_bytes = sum(1 for k, v in a["params"].items()
                   if k in b["params"] and b["params"][k]["sha256"]
                   == v["sha256"])
  equal = sum(1 for _, x, y in pairs if x == y)
  worst_abs = worst_rel = 0.0
  worst = None
  for what, x, y in pairs:
    d = abs(x - y)
    r = d / max(abs(x), 1e-30)
    if d > worst_abs:
      worst_abs = d
    if r > worst_rel:
      worst_rel, worst = r, (what, x, y)
  ok = not missing and not extra and worst_rel <= rtol
  lines = [f"{a['run']}: {equal}/{len(pairs)} numbers identical, "
           f"{same_bytes}/{len(a['params'])} param arrays bit-identical; "
           f"max |diff| {worst_abs:.3g}, max rel {worst_rel:.3g}"
           + (f" ({worst[0]}: {worst[1]!r} -> {worst[2]!r})" if worst
              else "")]
  if missing:
    lines.append(f"  missing in B: {missing[:10]}"
                 + (f" (+{len(missing) - 10})" if len(missing) > 10 else ""))
  if extra:
    lines.append(f"  only in B: {extra[:10]}")
  new_keys = sorted({k for row in b["metrics"].values() for k in row}
                    - {_new_name(k, {k2 for r in b["metrics"].values()
                                     for k2 in r})
                       for row in a["metrics"].values() for k in row})
  if new_keys:
    lines.append(f"  new metrics in B: {new_keys}")
  return lines, ok


def compare(dir_a, dir_b, rtol=0.0):
  ok_all, compared = True, 0
  for name in RUNS:
    path_a, path_b = (os.path.join(d, f"{name}.json") for d in (dir_a, dir_b))
    if not (os.path.exists(path_a) and os.path.exists(path_b)):
      if os.path.exists(path_a) or os.path.exists(path_b):
        print(f"{name}: captured on one side only")
        ok_all = False
      continue
    with open(path_a) as f:
      a = json.load(f)
    with open(path_b) as f:
      b = json.load(f)
    lines, ok = compare_records(a, b, rtol)
    ok_all &= ok
    compared += 1
    print("\n".join(lines))
  if not compared:  # Missing folders or no run in common: nothing equal.
    print(f"golden: NOTHING COMPARED (no run captured in both {dir_a} and "
          f"{dir_b})")
    return 1
  print("golden: " + ("EQUAL" if ok_all else f"DIFFERENT (rtol {rtol})"))
  return 0 if ok_all else 1


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="mode", required=True)
  cap = sub.add_parser("capture")
  cap.add_argument("directory")
  cap.add_argument("--runs", default=",".join(RUNS))
  cmp = sub.add_parser("compare")
  cmp.add_argument("a")
  cmp.add_argument("b")
  cmp.add_argument("--rtol", type=float, default=0.0)
  args = parser.parse_args(argv)
  if args.mode == "capture":
    names = args.runs.split(",")
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
      parser.error(f"unknown runs {unknown}; known: {sorted(RUNS)}")
    _setup_jax()
    capture(args.directory, names)
    return 0
  return compare(args.a, args.b, args.rtol)


if __name__ == "__main__":
  sys.exit(main())
