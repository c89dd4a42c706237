r"""The training loop: config -> data -> sharded state -> jitted step ->
checkpoints and evaluations.

One trainer serves every method; methods differ by config only.

    python -m big_vl.train --config=configs/demo.py:runlocal \
        --workdir=/tmp/demo [--config.lr=1e-3 ...]

A workdir that already holds a checkpoint is resumed from it, on any mesh
and any number of processes: from the newest checkpoint that loads (a
corrupt or truncated one is reported and moved aside), and only if the
config matches the one it was saved with, except for durations, log/ckpt/
eval cadence and outputs (those changes are logged; anything else is an
error naming the keys unless `--allow_config_change`). Multi-process
(multi-host) runs start one process per host with the same command; see
`big_vl/distributed.py`:

    python -m big_vl.train --config=... --workdir=... \
        --coordinator=10.0.0.2:12345 --num_processes=4 --process_id=$I

(on TPU VMs and under SLURM `jax.distributed` is joined automatically).
Only process 0 writes logs, metrics, plots and results; all processes write
the checkpoint together. Outputs:
  workdir/config.json      the resolved config (a resume with a changed
                           config keeps the old one as
                           config.until_step_N.json)
  workdir/metrics.jsonl    one JSON row per logged step / evaluation
  workdir/tb/              TensorBoard event files
  workdir/checkpoints/     Orbax checkpoints (state, data position, meta)
  workdir/curves.png       loss and eval metrics over steps
  workdir/retrieval.png    text queries and their top retrieved images
  workdir/captions.jsonl   a captioning evaluator's captions (and .png:
                           the first images with their captions)
  workdir/results/         final metrics, CLIP_benchmark JSON files per
                           dataset and task (config.results_dir; "": none)

The workdir may be a URL (`--workdir=gs://bucket/runs/clip`): Orbax writes
the checkpoints there directly, and process 0 writes its other files into a
local staging copy that is uploaded after each checkpoint, evaluation and at
most every `config.sync_every_s` seconds (default 60) while training
(`big_vl/storage.py`). `gs://` needs gcsfs, which requirements.txt installs.
"""

import json
import os
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from big_vl import checkpoint as ckpt_lib
from big_vl import config as config_lib
from big_vl import evaluators as evaluators_lib
from big_vl import growth
from big_vl import metrics as metrics_lib
from big_vl import objectives as objectives_lib
from big_vl import plots
from big_vl import registry
from big_vl import sharding
from big_vl import storage
from big_vl import workdir_lock
from big_vl.data import pipeline
from big_vl.data import pp as pp_lib
from big_vl.data import sources
from big_vl.train import console
from big_vl.train import gradcache
from big_vl.train import outputs as outputs_lib
from big_vl.train import schema
from big_vl.train import state as state_lib


class NonFiniteLossError(FloatingPointError):
  """Raised when a train step produces a NaN/inf loss, gradient or params."""


def train(config, workdir, *, devices=None, stop_after_steps=None,
          allow_config_change=False, config_spec=None):
  """Trains (or resumes) a run described by `config` in `workdir`.

  Args:
    config: the run's ConfigDict (see configs/*.py).
    workdir: output directory; a checkpoint in it is resumed.
    devices: devices for the mesh (default: all).
    stop_after_steps: stop (with a checkpoint) after this many steps in this
      call, as a preemption would; the next call resumes.
    allow_config_change: resume even if keys other than
      `config_lib.RESUME_CHANGEABLE_KEYS` differ from the checkpoint's config
      (they are logged); otherwise that is a ValueError.
    config_spec: the `--config` the run was started with (e.g.
      "configs/demo.py:runlocal"), kept in the checkpoints' meta with the
      training inputs' shapes, so that `big_vl.evaluate` can name the eval
      config arguments that match the run.

  Returns:
    dict with "step" (last step done), "losses" ({step: loss} of this call)
    and "final" (metrics of the final evaluation, if the run finished).
  """
  schema.check_config(config)
  # One spelling from here on: `config.loss` becomes config.objectives.
  config = objectives_lib.normalize_config(config)
  workdir = storage.absolute(workdir)
  is_main = jax.process_index() == 0
  # One run per workdir: process 0 holds it for the whole job; a second run
  # on it fails here, naming this one (big_vl/workdir_lock.py).
  with workdir_lock.hold(workdir, "big_vl.train", active=is_main, log=console.warn):
    return _train_holding(config, workdir, is_main, devices=devices,
                          stop_after_steps=stop_after_steps,
                          allow_config_change=allow_config_change,
                          config_spec=config_spec)


def _train_holding(config, workdir, is_main, *, devices, stop_after_steps,
                   allow_config_change, config_spec):
  """`train` once the config is checked and the workdir is held: open the
  outputs, the data, restore or initialise, train, finish."""
  outputs = outputs_lib.Outputs.open(config, workdir, is_main, allow_config_change)
  mesh = sharding.make_mesh(config.mesh, devices)
  data = _open_data(config, mesh)
  start = _restore_or_init(config, mesh, data, outputs, allow_config_change)
  loop = _Loop(config, mesh, data, outputs, start,
               stop_after_steps=stop_after_steps, config_spec=config_spec)
  loop.run()
  return loop.finish()


class _Data(NamedTuple):
  """The run's training data and the durations it implies."""
  iterator: Any
  example: Any  # One preprocessed example (shapes for the model).
  global_batch: int
  local_batch: int
  num_examples: Any  # None for streaming sources.
  total: int
  warmup: int
  log_every: int
  ckpt_every: int


def _open_data(config, mesh):
  """The training iterator, an example and the run's durations in steps."""
  inp = config.input
  train_source = sources.get(inp.data, split=inp.get("split", "train"),
                             data_dir=inp.get("data_dir", None))
  global_batch = inp.batch_size
  local_batch = _per_process_batch(global_batch, mesh)
  gradcache.check_steps(global_batch, schema.grad_accum_steps(config), mesh)
  # None for streaming sources (wds:): durations then need _steps/_examples.
  num_examples = pipeline.num_examples(train_source)
  steps = lambda what, **kw: config_lib.get_steps(
      what, config, num_examples=num_examples, batch_size=global_batch, **kw)
  total = steps("total")
  iterator = pipeline.make_train_iterator(
      train_source, pp=inp.pp, batch_size=local_batch,
      seed=config.get("seed", 0), shuffle=inp.get("shuffle", True),
      workers=inp.get("workers", 0), read_threads=inp.get("read_threads", 4))
  return _Data(
      iterator=iterator,
      example=pipeline.first_example(train_source, pp_lib.build(inp.pp)),
      global_batch=global_batch, local_batch=local_batch,
      num_examples=num_examples, total=total,
      warmup=steps("warmup", default=0), log_every=steps("log", default=50),
      ckpt_every=steps("ckpt", default=total))


class _Start(NamedTuple):
  """Where training starts: a restored checkpoint, or step 0."""
  step: int
  stage: Any  # The (growth-staged) config of the model at `step`.
  run: Any  # Its `state.Run`.
  state: Any
  skipped: int  # Records skipped so far, ...
  skipped_by: dict  # ... by reason.


def _restore_or_init(config, mesh, data, outputs, allow_config_change):
  """The newest checkpoint that loads (a bad one is reported and moved
  aside: state, data position and counters all come from it), or a fresh
  state. With growth, the model is the one the run has after the
  checkpoint's steps (`growth.stage_config`)."""
  checkpointer = outputs.checkpointer
  runs = {}

  def run_at(step):
    """(staged config, Run) of the model after `step` steps."""
    stage = growth.stage_config(config, step)
    key = stage.to_json_best_effort()
    if key not in runs:
      runs[key] = (stage, state_lib.build(stage, mesh, data.example,
                                          data.total, data.warmup))
    return runs[key]

  def remap_data(states, meta):
    console.log(f"The checkpoint was saved by {len(states)} processes and "
                f"this run has {jax.process_count()}: the data stream "
                "continues at the next global batch.")
    return pipeline.remap_position(
        states, int(meta.get("data_block",
                             data.global_batch // len(states))),
        data.local_batch)

  def check_meta(step, meta):
    schema.check_resume_config(config, step, meta,
                               allow_config_change=allow_config_change,
                               where=checkpointer.directory)

  restored = checkpointer.restore_latest(
      lambda step: ckpt_lib.abstract_with_shardings(
          run_at(step)[1].abstract_state, run_at(step)[1].state_shardings),
      data_iter=data.iterator, remap_data=remap_data, check_meta=check_meta,
      log=console.warn)
  skipped_by = {r: 0 for r in pipeline.SKIP_REASONS}
  if restored is None:
    stage, run = run_at(0)
    return _Start(0, stage, run, run.init_state(), 0, skipped_by)
  step, state, meta = restored
  stage, run = run_at(step)
  console.log(f"Resuming from step {step} in {outputs.workdir}")
  _log_config_changes(schema.check_resume_config(
      config, step, meta, allow_config_change=allow_config_change,
      where=checkpointer.directory), step)
  if step > data.total:
    raise ValueError(
        f"Checkpoint {step} in {checkpointer.directory} is past the run's "
        f"duration ({data.total} steps): nothing to train. Give a duration "
        f"of at least {step} steps (config.total_*) or another --workdir.")
  skipped_by.update({r: int(n) for r, n in meta.get(
      "skipped_by_reason", {}).items()})
  return _Start(step, stage, run, state, int(meta.get("skipped", 0)),
                skipped_by)


def _log_config_changes(changes, step):
  if changes is None:
    console.warn(f"Checkpoint {step} holds no config: the config could not "
                 "be compared with the one it was trained with.")
  elif changes:
    console.log("The config differs from the checkpoint's"
                + (" (--allow_config_change)" if config_lib.split_diff(
                    changes, config_lib.RESUME_CHANGEABLE_KEYS)[1] else "")
                + ":\n" + config_lib.format_diff(changes))


def _count_params(abstract_state):
  return sum(int(np.prod(x.shape))
             for x in jax.tree.leaves(abstract_state["params"]))


class _Loop:
  """The training loop and what it carries between steps.

  Each step's metrics are read after the next step is dispatched, so the
  host never waits for the device between steps: reading the next batch and
  dispatching its step overlap the running step. Before a checkpoint, an
  evaluation, a growth event or a stop, the pending metrics are read first
  (a non-finite step is never saved or evaluated).
  """

  def __init__(self, config, mesh, data, outputs, start, *,
               stop_after_steps, config_spec):
    self.config, self.mesh, self.data, self.outputs = (config, mesh, data,
                                                        outputs)
    self.stop_after_steps, self.config_spec = stop_after_steps, config_spec
    self.step, self.stage, self.run_, self.state = (
        start.step, start.stage, start.run, start.state)
    self.skipped, self.skipped_by = start.skipped, start.skipped_by
    self.growth_at = dict(growth.events(config))
    self.n_params = _count_params(self.run_.abstract_state)
    self.retrieval_png = config.get("retrieval_png", "retrieval")
    self.input_shapes = {k: list(np.shape(v))
                         for k, v in data.example.items()
                         if not k.startswith("_")}
    console.log(
        f"Model {config.get('model_name', 'two_towers')}: "
        f"{self.n_params / 1e6:.2f}M params; mesh {dict(mesh.shape)}; "
        f"{data.total} steps of {data.global_batch} examples ("
        + (f"{data.total * data.global_batch / data.num_examples:.2f} "
           f"epochs of {data.num_examples}" if data.num_examples
           else "streaming data") + f"); workdir {outputs.workdir}")
    self.evaluators = self._evaluators()
    # Rows an interrupted run logged after its last checkpoint are dropped
    # (they are logged again as the steps are redone).
    self.writer = metrics_lib.MetricWriter(
        outputs.files, is_main=outputs.is_main, resume_step=start.step,
        redo_prefixes=("growth/",) if start.step in self.growth_at else ())
    if self.writer.dropped:
      console.log(f"metrics.jsonl: dropped {self.writer.dropped} rows logged "
                  f"after step {start.step} by the interrupted run; those "
                  "steps are logged again.")
    self.losses = {}
    self.bar = metrics_lib.progress_bar(data.total, initial=start.step,
                                        is_main=outputs.is_main)
    self._t_log, self._examples_since_log = time.time(), 0

  def _evaluators(self):
    evs = evaluators_lib.make_evaluators(self.config, self.run_.model,
                                         self.mesh)
    for ev_name, _, ev in evs:
      if ev_name == self.retrieval_png and hasattr(ev, "keep_images"):
        ev.keep_images = True
    return evs

  def run(self):
    """Trains until the run's last step, or `stop_after_steps` steps."""
    data, done_this_call, pending = self.data, 0, None
    evals_every = [every for _, every, _ in self.evaluators if every]
    try:
      while self.step < data.total:
        batch = self._next_batch()
        if self.step in self.growth_at:
          if pending is not None:
            self._read(pending)
            pending = None
          self._grow(batch)
        self.state, step_metrics = self.run_.step_at(self.step)(self.state,
                                                                batch)
        self.step += 1
        done_this_call += 1
        self._examples_since_log += data.global_batch
        if pending is not None:
          self._read(pending)
        pending = (self.step, step_metrics, self.skipped,
                   dict(self.skipped_by))
        final = self.step == data.total
        stopping = (self.stop_after_steps is not None
                    and done_this_call >= self.stop_after_steps)
        if (final or stopping or self.step % data.ckpt_every == 0
            or any(self.step % every == 0 for every in evals_every)):
          self._read(pending)
          pending = None
        if self.step % data.ckpt_every == 0 or final:
          self._save()
        if not final:
          _run_evals(self.evaluators, self.state["params"], self.step,
                     self.writer)
        self.outputs.sync()
        if stopping and not final:
          if self.outputs.checkpointer.latest_step() != self.step:
            self._save()
          console.log(f"Stopping at step {self.step} (stop_after_steps); "
                      "rerun to resume.")
          break
    finally:
      self.bar.close()
      self.outputs.checkpointer.wait()
      self.outputs.sync(force=True)

  def _next_batch(self):
    """The next global batch; its skip counts are added to the run's."""
    batch = next(self.data.iterator)
    self.skipped += int(np.sum(batch.pop(pipeline.SKIPPED_KEY)))
    for r, n in pipeline.skipped_by_reason(
        batch.pop(pipeline.SKIPPED_BY_REASON_KEY)).items():
      self.skipped_by[r] += n
    return sharding.to_global(batch, self.mesh)

  def _grow(self, batch):
    """The growth event at this step: the bigger model, its state, step and
    evaluators."""
    old_params, step = self.n_params, self.step
    self.stage, self.run_, self.state, grown = state_lib.grow(
        self.config, self.stage, self.run_, self.state, step, self.mesh,
        self.data.example, self.data.total, self.data.warmup, batch)
    self.evaluators = self._evaluators()
    self.n_params = _count_params(self.run_.abstract_state)
    self.writer.write(step, {**grown, "growth/params": self.n_params})
    console.log(
        f"Grew the model at step {step}: {self.growth_at[step]}; "
        f"{old_params / 1e6:.2f}M -> {self.n_params / 1e6:.2f}M params; "
        f"loss on the next batch {grown['growth/loss_before']:.5f} before, "
        f"{grown['growth/loss_after']:.5f} after.")

  def _read(self, pending):
    """Reads one dispatched step's metrics: loss, NaN check, progress, log."""
    done, step_metrics, skipped_then, skipped_by_then = pending
    step_metrics = jax.device_get(step_metrics)
    loss = float(step_metrics["train/loss"])
    self.losses[done] = loss
    if not bool(step_metrics.pop("finite")):
      checkpointer = self.outputs.checkpointer
      raise NonFiniteLossError(
          f"Non-finite training at step {done}: loss={loss}, grad_norm="
          f"{float(step_metrics['train/grad_norm'])}, param_norm="
          f"{float(step_metrics['train/param_norm'])}. The run stopped "
          "without saving; the last good checkpoint is step "
          f"{checkpointer.latest_step()} in {checkpointer.directory}. Lower "
          "config.lr, add warm-up or gradient clipping "
          "(config.grad_clip_norm), or check the data.")
    self.bar.update(1)
    self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
    data = self.data
    if done % data.log_every == 0 or done == data.total:
      dt = time.time() - self._t_log
      step_metrics["train/examples_per_sec"] = (
          self._examples_since_log / max(dt, 1e-9))
      step_metrics["data/skipped"] = skipped_then
      for r, n in skipped_by_then.items():
        step_metrics[f"data/skipped/{r}"] = n
      if data.num_examples:
        step_metrics["train/epoch"] = done * data.global_batch / (
            data.num_examples)
      self.writer.write(done, step_metrics, console=False)
      self._t_log, self._examples_since_log = time.time(), 0

  def _save(self):
    self.outputs.checkpointer.save(
        self.step, self.state, data_iter=self.data.iterator,
        meta={"skipped": self.skipped,
              "skipped_by_reason": dict(self.skipped_by),
              "process_count": jax.process_count(),
              "data_block": self.data.local_batch,
              # What the model was trained on, for evaluate.
              "input_shapes": self.input_shapes,
              "config_spec": self.config_spec,
              # The model as it is at this step (growth).
              "config": json.loads(self.stage.to_json_best_effort())})

  def finish(self):
    """The final evaluation, results, plots and summary (if the run reached
    its last step); closes the writer and the checkpoints.

    Returns:
      dict with "step", "losses" ({step: loss} of this call) and "final".
    """
    outputs, step = self.outputs, self.step
    result = {"step": step, "losses": self.losses, "final": None}
    if step == self.data.total:
      result["final"] = _run_evals(self.evaluators, self.state["params"],
                                   step, self.writer, final=True)
      if outputs.is_main:
        outputs.write_results(self.config, step, result["final"])
        plots.plot_curves(metrics_lib.read_jsonl(self.writer.path),
                          os.path.join(outputs.files, "curves.png"))
        for ev_name, _, ev in self.evaluators:
          if (ev_name == self.retrieval_png
              and getattr(ev, "last", None) is not None):
            ev.plot_examples(os.path.join(outputs.files, "retrieval.png"),
                             registry.get("tokenizer", "clip_bpe")())
        evaluators_lib.write_files(self.evaluators, outputs.files)
      _log_summary(result["final"], self.skipped)
    self.writer.close()
    outputs.checkpointer.close()
    outputs.sync(force=True)
    return result


def _per_process_batch(global_batch, mesh):
  div = sharding.batch_size_divisor(mesh)
  if global_batch % div:
    raise ValueError(
        f"config.input.batch_size={global_batch} is not divisible by the "
        f"{div} data shards of the mesh {dict(mesh.shape)}; change the batch "
        "size or config.mesh.")
  if global_batch % jax.process_count():
    raise ValueError(f"config.input.batch_size={global_batch} is not "
                     f"divisible by {jax.process_count()} processes.")
  return global_batch // jax.process_count()


def _run_evals(evaluators, params, step, writer, final=False):
  results = {}
  for name, every, ev in evaluators:
    if final or (every and step % every == 0):
      t0 = time.time()
      for key, value in ev.run(params):
        results[key] = value
      results[f"eval_time/{name}"] = time.time() - t0
  if results:
    writer.write(step, results)
  return results


def _log_summary(final, skipped):
  lines = [f"  {k} = {v:.4f}" for k, v in sorted(final.items())
           if not k.startswith("eval_time/")]
  if not lines:  # A run without evaluators: only the data it skipped.
    console.log(f"Done; data/skipped = {skipped} (no evaluators).")
    return
  console.log("Final evaluation:\n" + "\n".join(lines) +
              f"\n  data/skipped = {skipped}")
