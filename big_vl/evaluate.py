r"""Evaluators on a trained checkpoint, no training.

    python -m big_vl.evaluate --config=configs/eval/demo.py \
        --checkpoint=workdirs/demo --output=workdirs/demo/eval \
        [--step=N] [--config.mesh="(('data', -1),)" ...]

`--checkpoint` is a training workdir or its `checkpoints/` folder; the latest
step is evaluated unless `--step` is given. The model is rebuilt from the
config saved with the checkpoint (its `meta`, else `workdir/config.json`);
the eval config may override `model_name` / `model`. Only the params are read
(an Orbax partial restore: the optimiser state stays on disk), straight onto
the eval mesh `config.mesh` (default: all devices, data parallel) with the
shardings of `config.sharding_rules` (default: replicated), so a checkpoint
trained on any mesh is evaluated on any other.

The evaluators are `config.evals` (the same blocks, and registry types, as a
training config's `evals`; `every` is ignored), or the training config's own
`evals` when the eval config has none. Metrics are printed and written to
`--output`:
  metrics.json     {"step": N, "checkpoint": DIR, metric: value, ...}
  results/*.json   one CLIP_benchmark-format file per (dataset, task), see
                   big_vl/results.py (`python -m big_vl.results aggregate`)
  captions.jsonl   a captioning evaluator's captions, and captions.png (its
                   first images with generated and reference captions)

Eval config keys (all optional): mesh, sharding_rules, evals, model_name,
model, model_label (results' "model", default the run's model_name),
pretrained (results' "pretrained", default "<workdir name>-step<N>"),
language (default "en").
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import ml_collections
import tqdm

from big_vl import checkpoint as ckpt_lib
from big_vl import cli
from big_vl import config as config_lib
from big_vl import evaluators as evaluators_lib
from big_vl import results as results_lib
from big_vl import sharding
from big_vl import storage
from big_vl import train as train_lib
from big_vl import workdir_lock
from big_vl.evaluators import common

KNOWN_KEYS = {"mesh", "sharding_rules", "evals", "model_name", "model",
              "model_label", "pretrained", "language"}
DEFAULT_MESH = (("data", -1),)
DEFAULT_RULES = ((".*", "replicate"),)


def model_config(eval_config, train_config):
  """The train config with the eval config's model / evals overrides.

  Args:
    eval_config: the eval ConfigDict.
    train_config: the training run's ConfigDict.

  Returns:
    A ConfigDict with `model_name`, `model` and `evals` for
    `train.make_model` / `evaluators.make_evaluators`.
  """
  config = ml_collections.ConfigDict()
  for key, default in (("model_name", "two_towers"), ("model", None),
                       ("evals", None)):
    value = eval_config.get(key, None)
    if value is None:
      value = train_config.get(key, default)
    config[key] = value
  if config.model is None:
    raise ValueError("No model config: the run's config has no `model` and "
                     "the eval config gives none.")
  return config


def check_config(config):
  """Checks an eval config's keys at every depth, before any work: the top
  level, `config.model` (if given) and each `config.evals` block, with the
  trainer's checks (`train.check_model`, `train.check_evals`).

  Raises:
    ValueError: naming the dotted key, e.g. `config.evals.zeroshot.splt`.
  """
  config_lib.check_keys(config, KNOWN_KEYS)
  if config.get("model", None) is not None:
    train_lib.check_model(config)
  train_lib.check_evals(config)


def evaluate(config, checkpoint, *, output=None, step=None, devices=None,
             progress=True, config_spec=None):
  """Evaluates the params of a checkpoint with the evaluators of `config`.

  Args:
    config: the eval ConfigDict (see the module docstring for its keys).
    checkpoint: a training workdir or its checkpoints folder.
    output: folder for metrics.json and results/ (None: write nothing).
    step: the checkpoint step (None: the latest).
    devices: devices for the eval mesh (default: all).
    progress: show a progress bar over the evaluators.
    config_spec: the eval config's `--config` (e.g. "configs/eval/demo.py"),
      to name the argument that matches the run if the checkpoint does not
      fit the evaluators' inputs.

  Returns:
    dict with "step", "metrics" ({name: value}, with `eval_time/<name>`) and
    "files" (the result files written).

  Raises:
    MismatchError: the checkpoint's params do not fit the model for an
      evaluator's inputs (e.g. a run trained at 32x32 evaluated at 64x64, or
      an eval config `model` of another width), on that evaluator's first
      batch, before any result is written.
  """
  check_config(config)
  # The output folder is held for the evaluation (a file, an unwritable
  # folder or another run's live folder is refused before any work).
  with workdir_lock.hold(output, "big_vl.evaluate",
                         active=bool(output) and jax.process_index() == 0):
    return _evaluate_holding(config, checkpoint, output=output, step=step,
                             devices=devices, progress=progress,
                             config_spec=config_spec)


def _evaluate_holding(config, checkpoint, *, output, step, devices,
                      progress, config_spec):
  """`evaluate` once the config is checked and the output folder held."""
  ckpt_dir = ckpt_lib.checkpoint_dir(checkpoint)
  latest, steps = ckpt_lib.latest_step(ckpt_dir)
  if step is None:
    step = latest
  if step is None or int(step) not in steps:
    raise FileNotFoundError(f"No checkpoint of step {step} in {ckpt_dir}; "
                            f"steps there: {sorted(steps)}.")
  step = int(step)
  meta = ckpt_lib.read_meta(ckpt_dir, step)
  train_config = ckpt_lib.run_config(ckpt_dir, meta)
  mconfig = model_config(config, train_config)
  if not mconfig.get("evals"):
    raise ValueError("No evaluators: give config.evals in the eval config.")
  mesh = sharding.make_mesh(config.get("mesh", None) or DEFAULT_MESH,
                            devices)
  params = ckpt_lib.restore_params(
      ckpt_dir, step, mesh,
      config.get("sharding_rules", None) or DEFAULT_RULES)
  model = train_lib.make_model(mconfig)
  evaluators = evaluators_lib.make_evaluators(mconfig, model, mesh)
  is_main = jax.process_index() == 0
  metrics = {}
  bar = tqdm.tqdm(evaluators, desc="eval", unit="evaluator",
                  disable=not (progress and is_main), file=sys.stdout,
                  dynamic_ncols=True)
  try:
    for name, _, ev in bar:
      bar.set_postfix_str(name)
      t0 = time.time()
      try:
        for key, value in ev.run(params):
          metrics[key] = float(value)
      except common.InputMismatchError as e:
        raise MismatchError(mismatch_message(
            e, evaluator=name, step=step, ckpt_dir=ckpt_dir, meta=meta,
            train_config=train_config, eval_config=config,
            config_spec=config_spec)) from e
      metrics[f"eval_time/{name}"] = time.time() - t0
  finally:
    bar.close()

  files = []
  if output and is_main:
    staged = storage.StagedDir(output, exclude=(workdir_lock.LOCK_NAME,))
    with open(os.path.join(staged.local, "metrics.json"), "w") as f:
      json.dump({"step": step, "checkpoint": ckpt_dir, **metrics}, f,
                indent=1)
    files = results_lib.write(
        metrics, os.path.join(staged.local, "results"),
        model=config.get("model_label", None) or mconfig.model_name,
        pretrained=config.get("pretrained", None) or default_pretrained(
            ckpt_dir, step),
        language=config.get("language", None) or results_lib.LANGUAGE)
    files += evaluators_lib.write_files(evaluators, staged.local)
    if staged.staged:
      files = [f"{staged.target}/{os.path.relpath(f, staged.local)}"
               for f in files]
    staged.sync()
  return {"step": step, "metrics": metrics, "files": files}


class MismatchError(ValueError):
  """A checkpoint that does not fit the eval config (see `evaluate`)."""


def mismatch_message(error, *, evaluator, step, ckpt_dir, meta, train_config,
                     eval_config, config_spec=None):
  """What does not fit and the eval config that would (see `evaluate`).

  Args:
    error: the evaluator's `common.InputMismatchError`.
    evaluator: its name in `config.evals`.
    step, ckpt_dir: the checkpoint.
    meta: its meta (`input_shapes` and `config_spec` of the run, if
      recorded).
    train_config: the run's config.
    eval_config: the eval config.
    config_spec: the eval config's `--config`, or None.

  Returns:
    A paragraph naming the parameter, both shapes, the run's and the
    evaluator's input shapes, a differing eval `model`, and the eval config
    argument that matches the run where one can be named.
  """
  trained = (meta or {}).get("input_shapes")
  run_spec = (meta or {}).get("config_spec")
  lines = [f"Checkpoint {step} in {ckpt_dir} does not fit evaluator "
           f"'{evaluator}' of the eval config: {error.short}."]
  lines.append(
      "The run was trained on "
      + (common.format_shapes({k: tuple(v) for k, v in trained.items()})
         if trained else "inputs this checkpoint does not record")
      + (f" (--config={run_spec})" if run_spec else "")
      + "; the evaluator feeds " + common.format_shapes(error.input_shapes)
      + ".")
  own_model = eval_config.get("model", None)
  if own_model is not None:
    plain = lambda c: c.to_dict() if hasattr(c, "to_dict") else c
    diff = config_lib.config_diff(
        {"model": plain(train_config.get("model", None))},
        {"model": plain(own_model)})
    if diff:
      lines.append("The eval config's `model` differs from the run's:\n"
                   + config_lib.format_diff(diff) + "\nLeave config.model "
                   "unset to evaluate the run's own model.")
  hint = _matching_spec(config_spec, run_spec)
  if hint:
    lines.append(f"Evaluate with the run's config arguments: --config={hint}"
                 " (or give the eval config the run's image size / text "
                 "length).")
  else:
    lines.append("Give the eval config the run's image size and text length"
                 " (e.g. `:runlocal` or `:res=N` for configs/eval/demo.py).")
  return "\n".join(lines)


def _matching_spec(eval_spec, run_spec):
  """`EVAL_PATH:RUN_ARG` if the eval config loads with the run's config
  argument (e.g. configs/eval/demo.py + configs/demo.py:runlocal ->
  configs/eval/demo.py:runlocal), else None."""
  if not eval_spec or not run_spec:
    return None
  path, _ = config_lib.parse_config_arg(eval_spec)
  _, arg = config_lib.parse_config_arg(run_spec)
  candidate = f"{path}:{arg}" if arg else path
  if candidate == eval_spec:
    return None  # Already that.
  try:
    config_lib.load_config(candidate)
  except Exception:  # pylint: disable=broad-except
    return None  # The eval config does not take the run's argument.
  return candidate


def default_pretrained(ckpt_dir, step):
  """"<workdir name>-step<N>": the results' default "pretrained" name."""
  ckpt_dir = storage.absolute(ckpt_dir)
  workdir = os.path.dirname(ckpt_dir) if os.path.basename(
      ckpt_dir) == "checkpoints" else ckpt_dir
  return f"{os.path.basename(workdir)}-step{step}"


# This module is also a library (interpolate, notebooks) imported next to
# other entry points that define absl flags of the same names (export's
# --checkpoint), so its flags live in their own FlagValues, parsed first.
_FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Eval config file, e.g. configs/eval/demo.py.",
    lock_config=True, flag_values=_FLAGS)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Training workdir or its checkpoints/ folder.",
    flag_values=_FLAGS)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Output folder for metrics.json and results/*.json.",
    flag_values=_FLAGS)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).",
                             flag_values=_FLAGS)


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or _CHECKPOINT.value is None:
    raise app.UsageError("--config and --checkpoint are required.")
  config_lib.setup_cli_runtime(logging.ERROR)
  result = evaluate(_CONFIG.value, _CHECKPOINT.value, output=_OUTPUT.value,
                    step=_STEP.value,
                    config_spec=config_flags.get_config_filename(
                        _FLAGS["config"]))
  if jax.process_index() == 0:
    lines = [f"  {k} = {v:.4f}" for k, v in sorted(result["metrics"].items())
             if not k.startswith("eval_time/")]
    print(f"Evaluation of step {result['step']} of {_CHECKPOINT.value}:\n"
          + "\n".join(lines), flush=True)
    for path in result["files"]:
      print(f"  wrote {path}", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(_FLAGS))
