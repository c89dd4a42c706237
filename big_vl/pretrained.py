"""Pretrained (converted) weights: write, read and load them into a run.

A converted checkpoint is a folder laid out like a training workdir, so every
tool that reads a run reads it too:

    DIR/checkpoints/0/state   {"params": ...}                   (Orbax)
    DIR/checkpoints/0/meta    {"config": {...}, "converted": {...}}
    DIR/config.json           the same config: model_name, model and the
                              model's preprocessing ("preprocessing": pp
                              strings and tokenizer)

    python -m big_vl.evaluate --config=... --checkpoint=DIR    # evaluate it
    config.model_init = "DIR"                                  # train from it

`load(path)` returns `(model_config, params)` from a converted checkpoint or
from any training workdir (its latest step). `merge` puts loaded params into
a freshly initialised tree, following the run's `config.model_load` rules:

    config.model_init = "workdirs/minilm"        # converted or trained dir
    config.model_load = dict(
        dont_load=("img/.*", "t", "b"),  # rules (big_vl/paths.py: a regex
                                         # matching the whole "a/b/c"
                                         # path): keep their fresh init
    )
    config.frozen = ("txt/.*",)          # LiT: lock the loaded text tower

Every fresh parameter must be either loaded or matched by `dont_load`, and
every `dont_load` rule must match a parameter;
loaded parameters the model does not have are reported and ignored (e.g.
the image tower of a CLIP checkpoint whose text tower alone is used). A ViT
position embedding of another grid is resampled; a text position table
longer than the model's `max_len` is cut to its first rows; scanned and
unscanned encoder layouts are converted to the model's.
"""

import json
import os

from flax import traverse_util
import jax
import numpy as np

from big_vl import checkpoint as ckpt_lib
from big_vl import paths
from big_vl import storage
from big_vl.models import common
from big_vl.models import vit

CONVERTED_STEP = 0


def run_config(model_config, preprocessing=None, source=None):
  """The run-style config dict of a model config (what `save` stores).

  Args:
    model_config: {"name": registered model name (default "two_towers"),
      **constructor kwargs}, as converters return it.
    preprocessing: optional dict of pp strings / tokenizer for the model.
    source: optional description of where the weights came from.

  Returns:
    {"model_name": ..., "model": {...}, "preprocessing": ..., "converted":
    ...} (JSON-serialisable).
  """
  model = dict(model_config)
  name = model.pop("name", "two_towers")
  config = {"model_name": name, "model": model}
  if preprocessing:
    config["preprocessing"] = dict(preprocessing)
  if source:
    config["converted"] = dict(source)
  return config


def save(directory, model_config, params, *, preprocessing=None,
         source=None):
  """Writes a converted checkpoint (see the module docstring).

  Args:
    directory: output folder (created).
    model_config: {"name", **kwargs} of the model.
    params: nested dict of arrays.
    preprocessing: pp strings / tokenizer for the model (stored in the
      config for users and evaluation configs).
    source: JSON-serialisable description of the source weights.

  Returns:
    The absolute path (or URL) of `directory`.
  """
  staged = storage.StagedDir(directory)
  directory = staged.target
  config = run_config(model_config, preprocessing, source)
  json.dumps(config)  # Fail before writing anything if not serialisable.
  state = {"params": jax.tree.map(
      lambda x: np.asarray(x, np.float32) if np.asarray(x).dtype.kind == "f"
      else np.asarray(x), params)}
  ckpt = ckpt_lib.Checkpointer(os.path.join(directory, "checkpoints"),
                               async_save=False, max_to_keep=None)
  try:
    ckpt.save(CONVERTED_STEP, state, meta={"config": config})
  finally:
    ckpt.close()
  with open(os.path.join(staged.local, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
  staged.sync()
  return directory


def load(path, step=None):
  """Reads params and model config from a converted checkpoint or a run.

  Args:
    path: a converted checkpoint folder, a training workdir, or either's
      `checkpoints/` folder.
    step: the step to read (None: the latest).

  Returns:
    (model_config, params): model_config = {"name": model_name, **model
    kwargs} (for `big_vl.models.get`), params a nested dict of numpy
    arrays, e.g. params["img"]["embedding"]["kernel"].shape == (32, 32, 3,
    768) for a ViT-B/32.

  Raises:
    FileNotFoundError: no checkpoint (of that step) in `path`.
  """
  ckpt_dir, step, config = read_config(path, step)
  model_config = {"name": config.get("model_name", "two_towers"),
                  **config.model.to_dict()}
  params = ckpt_lib.restore_params(ckpt_dir, step)
  return model_config, params


def read_config(path, step=None):
  """The run config saved with a checkpoint, without reading its params.

  Args:
    path: a converted checkpoint folder, a training workdir, or either's
      `checkpoints/` folder.
    step: the step (None: the latest).

  Returns:
    (checkpoints folder, step, ConfigDict with "model_name", "model" and,
    for converted weights, "preprocessing").

  Raises:
    FileNotFoundError: no checkpoint (of that step) in `path`.
  """
  ckpt_dir = ckpt_lib.checkpoint_dir(path)
  latest, steps = ckpt_lib.latest_step(ckpt_dir)
  step = latest if step is None else int(step)
  if step is None or step not in steps:
    raise FileNotFoundError(f"No checkpoint of step {step} in {ckpt_dir}; "
                            f"steps there: {sorted(steps)}.")
  return ckpt_dir, step, ckpt_lib.run_config(
      ckpt_dir, ckpt_lib.read_meta(ckpt_dir, step))


def match_layout(fresh, loaded):
  """`loaded` with each encoder in `fresh`'s layout (scanned or not)."""
  if not isinstance(fresh, dict) or not isinstance(loaded, dict):
    return loaded
  if "encoderblock" in fresh and "encoderblock_0" in loaded:
    loaded = common.stack_block_params(loaded)
  elif "encoderblock_0" in fresh and "encoderblock" in loaded:
    loaded = common.unstack_block_params(loaded)
  return {k: match_layout(fresh[k], v) if k in fresh else v
          for k, v in loaded.items()}


def _fit_shape(name, value, shape):
  """Adapts a loaded position embedding to the model's shape, else None."""
  if not name.endswith("pos_embedding") or value.ndim != 3 or \
      value.shape[0] != 1 or value.shape[2] != shape[2]:
    return None, None
  old, new = value.shape[1], shape[1]
  old_side, new_side = int(round(old ** 0.5)), int(round(new ** 0.5))
  if name.startswith("img/") and old_side ** 2 == old and \
      new_side ** 2 == new:
    out = np.asarray(vit.resample_posemb(value, new_side))
    return out, f"resampled {old_side}x{old_side} -> {new_side}x{new_side}"
  if not name.startswith("img/") and new < old:
    return value[:, :new], f"cut {old} -> {new} positions"
  return None, None


def merge(fresh, loaded, dont_load=()):
  """Replaces fresh params by loaded ones, by name.

  Args:
    fresh: the model's freshly initialised params (nested dict of arrays or
      ShapeDtypeStructs).
    loaded: params read with `load` (nested dict of numpy arrays).
    dont_load: rules (`big_vl.paths`: regexes matching the whole
      "/"-joined path) of fresh params that keep their initial value.

  Returns:
    (params, report): params has `fresh`'s structure, with loaded leaves as
    numpy arrays of the fresh dtype and the `dont_load` leaves taken from
    `fresh`; report = {"loaded": [names], "kept": [names],
    "adapted": {name: what}, "unused": [loaded names not in the model]}.

  Raises:
    ValueError: for a `dont_load` rule that matches no fresh param (naming
      it and the closest paths), listing fresh params that are neither
      loaded nor matched by `dont_load`, and loaded params whose shape does
      not fit.
  """
  loaded = traverse_util.flatten_dict(match_layout(fresh, loaded), sep="/")
  flat = traverse_util.flatten_dict(fresh, sep="/")
  paths.check_rules("config.model_load.dont_load", dont_load, list(flat),
                    ordered=False)
  out, report = {}, {"loaded": [], "kept": [], "adapted": {}, "unused": []}
  missing, mismatched = [], []
  for name, leaf in flat.items():
    if any(paths.matches(rule, name) for rule in dont_load):
      out[name] = leaf
      report["kept"].append(name)
      continue
    if name not in loaded:
      missing.append(name)
      continue
    value = np.asarray(loaded[name])
    if value.shape != tuple(leaf.shape):
      adapted, how = _fit_shape(name, value, tuple(leaf.shape))
      if adapted is None:
        mismatched.append(f"{name}: checkpoint {value.shape}, model "
                          f"{tuple(leaf.shape)}")
        continue
      value = adapted
      report["adapted"][name] = how
    out[name] = value.astype(leaf.dtype)
    report["loaded"].append(name)
  if missing or mismatched:
    lines = []
    if missing:
      lines.append(f"{len(missing)} model params are not in the checkpoint "
                   f"(add regexes for them to model_load.dont_load to keep "
                   f"their init): {missing[:12]}"
                   + (" ..." if len(missing) > 12 else ""))
    if mismatched:
      lines.append("shapes differ: " + "; ".join(mismatched[:12]))
    raise ValueError("Cannot load the checkpoint into the model: "
                     + " | ".join(lines))
  report["unused"] = sorted(set(loaded) - set(flat))
  return traverse_util.unflatten_dict(out, sep="/"), report
