"""Metric writers: JSONL, TensorBoard event files and the console.

    writer = MetricWriter(workdir)
    writer.write(100, {"train/loss": 1.23, "train/lr": 1e-3})
    # -> appends {"step": 100, "train/loss": 1.23, ...} to workdir/metrics.jsonl,
    #    scalars to workdir/tb/, and a line to the console.

Only process 0 writes (pass `is_main` to override); other processes get a
writer that does nothing, so callers never branch on the process index.

A resumed run passes `resume_step`: rows of later steps (logged by the
interrupted run after its last checkpoint, and about to be logged again)
are removed from metrics.jsonl, and TensorBoard hides the event files'
scalars from that step on (`purge_step`), so every step appears once in
metrics.jsonl, TensorBoard and the plots drawn from them.
"""

import json
import math
import os
import re
import sys

import jax
import numpy as np
import tqdm

from big_vl import storage


def _to_python(value):
  value = np.asarray(value)
  if value.size != 1:
    raise ValueError(f"metrics must be scalars, got shape {value.shape}")
  value = value.item()
  return value


def _format(value):
  if isinstance(value, float):
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
      return f"{value:.3e}"
    return f"{value:.4f}"
  return str(value)


class MetricWriter:
  """Writes scalar metrics to metrics.jsonl, TensorBoard and the console.

  Args:
    workdir: run directory; files go to workdir/metrics.jsonl and workdir/tb/.
    is_main: write at all (default: `jax.process_index() == 0`).
    tensorboard: also write TensorBoard event files.
    console: a function taking one line of text (default: tqdm.write).
    resume_step: the step the run continues from (0: a fresh start, which
      also discards the rows of an earlier attempt that saved no
      checkpoint); rows of later steps are dropped from metrics.jsonl and
      hidden in TensorBoard. None: keep everything (not a training run).
    redo_prefixes: rows at `resume_step` itself whose metrics all start with
      one of these are dropped too (what the run redoes at that step, e.g.
      a growth event's "growth/" row).
  """

  def __init__(self, workdir, *, is_main=None, tensorboard=True, console=None,
               resume_step=None, redo_prefixes=()):
    self.is_main = jax.process_index() == 0 if is_main is None else is_main
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._console = console or (lambda s: tqdm.tqdm.write(s, file=sys.stdout))
    self._tb = None
    self.dropped = 0
    if self.is_main:
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None:
        self.dropped = _drop_rows_after(self.path, resume_step,
                                        tuple(redo_prefixes))
      if tensorboard:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(
            os.path.join(workdir, "tb"),
            purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step, metrics, console=True):
    """Writes one row of scalar metrics for `step`."""
    if not self.is_main or not metrics:
      return
    row = {"step": int(step)}
    row.update({k: _to_python(v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row, allow_nan=True) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(re.sub(r"[^\w./-]", "_", k), v, int(step))
      self._tb.flush()
    if console:
      items = " ".join(f"{k}={_format(v)}" for k, v in row.items()
                       if k != "step")
      self._console(f"[step {int(step)}] {items}")

  def close(self):
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _drop_rows_after(path, step, redo_prefixes=()):
  """Rewrites metrics.jsonl without the rows of steps after `step` (and the
  rows at `step` whose metrics all start with one of `redo_prefixes`).

  Returns:
    How many rows were dropped (the file is replaced atomically; a line
    that does not parse is kept as it is).
  """
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.read().splitlines(keepends=True)
  keep = []
  for line in lines:
    try:
      row = json.loads(line) if line.strip() else {}
    except ValueError:
      row = {}
    row_step = row.get("step") if isinstance(row, dict) else None
    redo = (row_step == step and redo_prefixes and len(row) > 1 and all(
        k.startswith(redo_prefixes) for k in row if k != "step"))
    if row_step is None or (row_step <= step and not redo):
      keep.append(line if line.endswith("\n") else line + "\n")
  dropped = len(lines) - len(keep)
  if dropped:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, path)
  return dropped


def read_jsonl(path):
  """Reads metrics.jsonl (a local path or URL) into a list of dicts, one per
  written row ([] if the file does not exist)."""
  rows = []
  path = storage.path(path)
  if not path.exists():
    return rows
  for line in path.read_text().splitlines():
    line = line.strip()
    if line:
      rows.append(json.loads(line))
  return rows


def progress_bar(total, initial=0, is_main=None, desc="train"):
  """A tqdm progress bar over steps, silent on processes other than 0."""
  is_main = jax.process_index() == 0 if is_main is None else is_main
  return tqdm.tqdm(total=total, initial=initial, desc=desc, unit="step",
                   disable=not is_main, dynamic_ncols=True, file=sys.stdout,
                   mininterval=2.0 if sys.stdout.isatty() else 30.0)
