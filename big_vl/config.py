"""Config helpers: `arg` parsing, durations in steps/epochs/examples, checks.

Every file in `configs/` exports `get_config(arg=None)`; `arg` is the text after
the colon in `--config=configs/demo.py:variant=S/32,batch=64,runlocal` and is
parsed by `parse_arg` against typed defaults:

    >>> arg = parse_arg("variant=S/32,runlocal", variant="B/16", batch=32768,
    ...                 runlocal=False)
    >>> arg.variant, arg.batch, arg.runlocal
    ('S/32', 32768, True)
"""

import ast

import ml_collections
from ml_collections import config_dict


def _convert(name, text, default):
  """Converts `text` to the type of `default`, with an error naming `name`."""
  if isinstance(default, bool):
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on", ""):
      return True
    if lowered in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"Config arg {name!r} expects a bool, got {text!r}.")
  if default is None or isinstance(default, str):
    return text
  try:
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float):
      return float(text)
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    raise ValueError(
        f"Config arg {name!r} expects a {type(default).__name__}, got "
        f"{text!r}.") from e
  if not isinstance(value, type(default)):
    raise ValueError(
        f"Config arg {name!r} expects a {type(default).__name__}, got {text!r}.")
  return value


def parse_arg(arg, lazy=False, **spec):
  """Parses `"k1=v1,k2=v2,flag"` into a ConfigDict typed like `spec`.

  Args:
    arg: the string after the colon of `--config=FILE:arg`, or None/"".
    lazy: if True, keys missing from `spec` are kept as strings instead of
      raising an error.
    **spec: known keys and their defaults; the default's type decides how a
      value is converted. A bare `flag` (no `=`) sets a bool key to True.

  Returns:
    A ConfigDict with every key of `spec`, overridden from `arg`.

  Raises:
    ValueError: for an unknown key (listing the known ones) or a bad value.
  """
  result = ml_collections.ConfigDict(dict(spec))
  if not arg:
    return result
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, has_value, text = item.partition("=")
    key = key.strip()
    if key not in spec:
      if lazy:
        result[key] = text
        continue
      raise ValueError(
          f"Unknown config arg {key!r} in {arg!r}. Known args: "
          f"{', '.join(sorted(spec))}.")
    if not has_value and not isinstance(spec[key], bool):
      raise ValueError(f"Config arg {key!r} needs a value: {key}=...")
    result[key] = _convert(key, text.strip(), spec[key])
  return result


def get_steps(name, config, *, num_examples=None, batch_size=None,
              default=None):
  """Reads a duration given as `{name}_steps`, `_epochs` or `_examples`.

  For example `get_steps("total", config, num_examples=30000, batch_size=256)`
  reads whichever of `config.total_steps`, `config.total_epochs`,
  `config.total_examples` is set (exactly one may be).

  Args:
    name: the duration's prefix, e.g. "total", "warmup", "log", "ckpt".
    config: a ConfigDict holding the keys.
    num_examples: examples in one epoch of the training data (for `_epochs`).
    batch_size: global batch size (for `_epochs` and `_examples`).
    default: returned when none of the keys is set.

  Returns:
    An int number of steps (0 stays 0; a positive duration is at least 1).
  """
  given = {}
  for unit in ("steps", "epochs", "examples"):
    key = f"{name}_{unit}"
    if key in config and config[key] is not None:
      given[unit] = config[key]
  if len(given) > 1:
    raise ValueError(
        f"Give only one of {name}_steps/{name}_epochs/{name}_examples; got "
        f"{sorted(given)}.")
  if not given:
    if default is None:
      raise ValueError(
          f"Config needs one of {name}_steps, {name}_epochs or "
          f"{name}_examples.")
    return default
  unit, value = next(iter(given.items()))
  if unit == "steps":
    return int(value)
  if batch_size is None:
    raise ValueError(f"{name}_{unit} needs the batch size to become steps.")
  if unit == "examples":
    examples = value
  else:
    if num_examples is None:
      raise ValueError(f"{name}_epochs needs the dataset size.")
    examples = value * num_examples
  steps = int(round(examples / batch_size))
  return max(steps, 1) if value > 0 else 0


def check_keys(config, known, where="config"):
  """Raises a clear error if `config` has a key outside `known`.

  Args:
    config: a ConfigDict or dict.
    known: the keys the reader understands.
    where: the config's path in messages, e.g. "config.input".

  Raises:
    ValueError: naming the unknown key, with the closest known keys.
  """
  import difflib  # pylint: disable=g-import-not-at-top
  for key in config.keys():
    if key not in known:
      close = difflib.get_close_matches(key, sorted(known), n=3)
      hint = f" Did you mean {' or '.join(close)}?" if close else ""
      raise ValueError(
          f"Unknown config key {where}.{key}.{hint} Known keys of {where}: "
          f"{', '.join(sorted(known))}.")


DEMO_DATA = "tfds:big_vl_demo_shapes"


DEMO_DEVICE_PP = "value_range(-1,1)"


def demo_pp(res, max_len):
  """pp strings (train, zero-shot image, text, retrieval) for the demo data.

  `train_uint8` is `train` without the final value_range, for runs that set
  `config.input.device_pp = DEMO_DEVICE_PP` (the train step does it).
  """
  img = f"decode|resize({res})|{DEMO_DEVICE_PP}"
  tok = f"tokenize(max_len={max_len}"
  train_tail = (f"choice(key='captions', out='text')|{tok})|"
                "keep('image','text')")
  return ml_collections.ConfigDict(dict(
      train=f"{img}|{train_tail}",
      train_uint8=f"decode|resize({res})|{train_tail}",
      zeroshot_img=f"{img}|keep('image','label')",
      text=f"{tok})",
      retrieval=(f"{img}|{tok}, key='captions', out='texts')|"
                 "keep('image','texts')"),
  ))


def demo_evals(res, max_len, every=None, batch_size=256, split="test"):
  """Zero-shot and retrieval evaluators on the demo data's test split.

  Args:
    res: image resolution the model takes.
    max_len: text length in tokens.
    every: evaluate every this many steps (None: only at the end; a typed
      placeholder, so `--config.evals.zeroshot.every=100` works).
    batch_size: global eval batch size.
    split: which split of the demo data.

  Returns:
    A ConfigDict for `config.evals`.
  """
  pp = demo_pp(res, max_len)
  # One placeholder each: a shared FieldReference would link the two.
  every_ = lambda: config_dict.placeholder(int) if every is None else every
  return ml_collections.ConfigDict(dict(
      zeroshot=dict(type="zeroshot", every=every_(), data=DEMO_DATA,
                    split=split,
                    pp_img=pp.zeroshot_img, pp_txt=pp.text,
                    templates="demo_shapes", batch_size=batch_size),
      retrieval=dict(type="retrieval", every=every_(), data=DEMO_DATA,
                     split=split, pp=pp.retrieval, batch_size=batch_size),
  ))


def runlocal_on_demo(config, *, res=32, max_len=24, batch_size=32, steps=20):
  """Shrinks any two-tower config to a one-minute CPU run on the demo data.

  Keeps the config's method (loss, pooling, causal text, bias, schedule
  shape, optimiser, normalisation in the train step if it has
  `config.input.device_pp`) and replaces the data, sizes and durations.

  Args:
    config: the full-size ConfigDict; modified in place.
    res, max_len, batch_size, steps: the local run's sizes.

  Returns:
    `config`, for chaining.
  """
  pp = demo_pp(res, max_len)
  config.input.data = DEMO_DATA
  config.input.split = "train"
  config.input.batch_size = batch_size
  if config.input.get("device_pp", None):
    config.input.pp = pp.train_uint8
    config.input.device_pp = DEMO_DEVICE_PP
  else:
    config.input.pp = pp.train
  for tower, variant in ((config.model.image, "mu/8"),
                         (config.model.text, "mu")):
    for size_key in ("width", "depth", "mlp_dim", "num_heads", "patch_size"):
      if size_key in tower:
        del tower[size_key]
    tower.variant = variant
  config.model.text.max_len = max_len
  config.model.out_dim = 64
  for key in ("total", "warmup", "log", "ckpt"):
    for unit in ("epochs", "examples"):
      if f"{key}_{unit}" in config:
        del config[f"{key}_{unit}"]
  config.total_steps = steps
  config.warmup_steps = max(steps // 10, 1)
  config.log_steps = 5
  config.ckpt_steps = steps
  config.mesh = (("data", -1),)
  config.evals = demo_evals(res, max_len, batch_size=64, split="test[:256]")
  return config


def parse_config_arg(spec):
  """"configs/x.py:arg" -> ("configs/x.py", "arg" or None)."""
  path, _, arg = spec.partition(":")
  return path, (arg or None)


def load_config(spec):
  """The ConfigDict of "configs/x.py[:arg]" (its `get_config(arg)`)."""
  path, arg = parse_config_arg(spec)
  return load_config_module(path).get_config(arg)


def load_config_module(path):
  """Imports a config file by path (as `--config=PATH` does)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  name = "big_vl_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def setup_cli_runtime(verbosity):
  """What every `python -m big_vl.X` entry point does before its work.

  Sets absl logging to `verbosity` (e.g. `absl.logging.WARNING`; Orbax is
  chatty at INFO) unless `--verbosity` was given, and points JAX's persistent
  compilation cache at `$JAX_COMPILATION_CACHE_DIR` when that is set.

  Args:
    verbosity: the absl logging level to use by default.
  """
  import os  # pylint: disable=g-import-not-at-top
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(verbosity)
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
