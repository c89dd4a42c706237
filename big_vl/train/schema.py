"""What a training config may hold, checked before any work, and the
comparison of a resumed run's config with its checkpoint's.

`check_config` checks every block of a config against what consumes it;
`check_resume_config` / `check_saved_config` compare it with the config a
checkpoint was saved with; `grad_accum_steps` and `param_compute_dtype` read
the two values the step needs.

Imports: config, models, objectives, optim, pretrained, growth, registry,
checkpoint metadata and device pp (their checks); never the loop.
"""

import jax.numpy as jnp

from big_vl import checkpoint as ckpt_lib
from big_vl import config as config_lib
from big_vl import growth
from big_vl import models
from big_vl import objectives as objectives_lib
from big_vl import optim
from big_vl import pretrained
from big_vl import registry
from big_vl.data import device_pp as device_pp_lib
from big_vl.train import teacher as teacher_lib


# Keys the trainer reads; anything else in a config is a typo and an error.
KNOWN_KEYS = {
    "seed", "mesh", "sharding_rules", "input", "model_name", "model", "loss",
    "objectives",
    "lr", "wd", "wd_mode", "wd_rules", "lr_rules", "frozen", "grad_clip_norm",
    "schedule", "optim", "evals", "keep_ckpts", "retrieval_png",
    "grad_accum_steps", "param_compute_dtype", "results_dir", "model_init",
    "model_load", "growth", "growth_ema", "sync_every_s", "teacher",
    "layer_decay",
    *(f"{p}_{u}" for p in ("total", "warmup", "log", "ckpt")
      for u in ("steps", "epochs", "examples")),
}


KNOWN_INPUT_KEYS = {"data", "split", "data_dir", "batch_size", "pp",
                    "device_pp", "workers", "read_threads", "shuffle"}


EVAL_META_KEYS = {"type", "every"}


def check_config(config):
  """Checks every block of a training config before anything expensive.

  Each block is checked against the signature of what consumes it, before
  any data or device work: the top level and `config.input` against the
  keys the trainer reads, `config.model` (and its `image` / `text` blocks)
  against the model's fields (`models.check_config`), each of
  `config.objectives` (or the shorthand `config.loss`) against its loss's
  options and weight (`objectives.from_config`), `config.optim` /
  `config.schedule` against the optimiser's / schedule's
  (`optim.check_config`), each `config.evals`
  block against its evaluator's constructor (`check_evals`),
  `config.model_load` against `pretrained.merge`, `config.growth` and
  `config.teacher`.

  Raises:
    ValueError: naming the dotted key (e.g. `config.loss.temprature` or
      `config.objectives.NAME.temprature`), with the closest known keys.
  """
  config_lib.check_keys(config, KNOWN_KEYS)
  # Sizes, counts, durations, rates, probabilities, fractions, cadences.
  config_lib.check_domains(config)
  param_compute_dtype(config)
  config_lib.check_keys(config.input, KNOWN_INPUT_KEYS, "config.input")
  device_pp_lib.build(config.input.get("device_pp", None))  # Unknown ops.
  check_model(config)
  objectives_lib.from_config(config)
  optim.check_config(config)
  config_lib.check_signature(config.get("model_load", None), pretrained.merge,
                             "config.model_load", skip=("fresh", "loaded"))
  growth.events(config)
  if config.get("teacher", None):
    teacher_lib.check_config(config.teacher, config.get("growth_ema", None))
  check_evals(config)


def check_model(config):
  """Checks `config.model` (all depths) against `config.model_name`'s model.
  """
  if config.get("model", None) is None:
    raise ValueError("config.model is missing.")
  models.check_config(config.get("model_name", "two_towers"), config.model)


def check_evals(config, where="config.evals"):
  """Checks each `config.evals` block against its evaluator's constructor
  (minus `predict_fn` / `mesh` / `model`, plus the meta keys `type` and
  `every`)."""
  for name, block in (config.get("evals", None) or {}).items():
    kind = block.get("type", name)
    if kind not in registry.names("evaluator"):
      raise ValueError(f"{where}.{name}: unknown evaluator type "
                       f"{kind!r}; known: {registry.names('evaluator')}.")
    config_lib.check_signature(
        block, registry.get("evaluator", kind), f"{where}.{name}",
        skip=("predict_fn", "mesh", "model"), extra=EVAL_META_KEYS)


def param_compute_dtype(config):
  """The dtype `config.param_compute_dtype` names (None: the params' own).

  Args:
    config: the run's ConfigDict.

  Returns:
    A floating numpy dtype, or None.

  Raises:
    ValueError: for a name that is not a floating dtype.
  """
  name = config.get("param_compute_dtype", None)
  if name is None:
    return None
  try:
    dtype = jnp.dtype(name)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"config.param_compute_dtype={name!r} is not a floating "
                     "dtype; use e.g. 'bfloat16', or None to compute in the "
                     "params' own dtype.")
  return dtype


def grad_accum_steps(config):
  """`config.grad_accum_steps` (None or absent: 1, no accumulation)."""
  steps = config.get("grad_accum_steps", None)
  return 1 if steps is None else steps


def check_resume_config(config, step, meta, *, allow_config_change=False,
                        where="the checkpoint"):
  """Compares the run's config with the one checkpoint `step` was saved with.

  With growth the checkpoint holds the staged config of its step, so it is
  compared with `growth.stage_config(config, step)`.

  Args:
    config: the run's ConfigDict.
    step: the checkpoint's step.
    meta: the checkpoint's meta (its "config" is the saved config).
    allow_config_change: let any key change (`--allow_config_change`).
    where: the checkpoint's folder, for messages.

  Returns:
    The differences [(dotted key, old, new)] (`config_lib.config_diff`), or
    None if the checkpoint saved no config.

  Raises:
    ValueError: listing the differing keys (old -> new) if a key outside
      `config_lib.RESUME_CHANGEABLE_KEYS` changed and not
      `allow_config_change`.
  """
  saved = meta.get("config")
  if saved is None:
    return None
  # Both spellings of the objectives compare equal (`config.loss` is the
  # shorthand of `config.objectives.contrastive`).
  diff = config_lib.config_diff(
      objectives_lib.normalize_config(saved),
      objectives_lib.normalize_config(growth.stage_config(config, step)))
  _, bad = config_lib.split_diff(diff, config_lib.RESUME_CHANGEABLE_KEYS)
  if bad and not allow_config_change:
    raise ValueError(
        f"The config differs from the one checkpoint {step} in {where} was "
        "saved with, in keys a resumed run may not change:\n"
        f"{config_lib.format_diff(bad)}\n"
        "Resume with the saved values (the workdir's config.json holds "
        "them), train in a new --workdir, or pass --allow_config_change "
        "(train(..., allow_config_change=True)) to resume anyway (the params' "
        "shapes must still match). Keys that may change on resume, and are "
        "logged: durations (total_*, warmup_*), log/ckpt/eval cadence "
        "(log_*, ckpt_*, evals.NAME.every), sync_every_s, keep_ckpts, "
        "results_dir, retrieval_png, input.read_threads, input.workers.")
  return diff


def check_saved_config(config, checkpointer, allow_config_change):
  """Checks `config` against the newest checkpoint whose meta reads (before
  any data or device work); a bad meta is left to `restore_latest`."""
  for step in sorted(checkpointer.all_steps(), reverse=True):
    try:
      meta = ckpt_lib.read_meta(checkpointer.directory, step)
    except ckpt_lib.CheckpointError:
      continue
    if meta:
      check_resume_config(config, step, meta,
                          allow_config_change=allow_config_change,
                          where=checkpointer.directory)
      return
