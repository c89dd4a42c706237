"""Config helpers: `arg` parsing, durations in steps/epochs/examples, checks.

Every file in `configs/` exports `get_config(arg=None)`; `arg` is the text after
the colon in `--config=configs/demo.py:variant=S/32,batch=64,runlocal` and is
parsed by `parse_arg` against typed defaults:

    >>> arg = parse_arg("variant=S/32,runlocal", variant="B/16", batch=32768,
    ...                 runlocal=False)
    >>> arg.variant, arg.batch, arg.runlocal
    ('S/32', 32768, True)

Length: what config files and the trainer's checks share (arg parsing,
durations, key / signature / domain checks, config diffs, the demo and
full-size eval blocks); a config file imports only this module."""

import ast
import json
import math
import numbers
import re

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
      raise ValueError(
          f"config.{name}_epochs needs the dataset size, and a streaming "
          f"source (wds:) has none: give config.{name}_steps or "
          f"config.{name}_examples instead.")
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
          f"{where}.{key}: unknown config key.{hint} Known keys of {where}: "
          f"{', '.join(sorted(known)) or '(none)'}.")


def signature_keys(fn, skip=()):
  """The keyword arguments a function or class takes, for config checks.

  Args:
    fn: a function, or a class (its `__init__`; for a flax linen module,
      its dataclass fields, with `parent` and `name` in `skip`).
    skip: argument names a config must not give (filled in by the caller,
      e.g. `predict_fn`, `mesh`).

  Returns:
    (known, required): sets of argument names, `required` those without a
    default.

  Raises:
    TypeError: if `fn` takes `**kwargs` (its keys cannot be read from the
      signature: check the callee it passes them to, or list them).
  """
  import inspect  # pylint: disable=g-import-not-at-top
  known, required = set(), set()
  for p in inspect.signature(fn).parameters.values():
    if p.name in skip or p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL):
      continue
    if p.kind == p.VAR_KEYWORD:
      raise TypeError(f"{fn} takes **{p.name}: its config keys cannot be "
                      "checked from its signature.")
    known.add(p.name)
    if p.default is p.empty:
      required.add(p.name)
  return known, required


def check_signature(block, fn, where, *, skip=(), extra=()):
  """Checks a config block against the signature of the callable it feeds.

  For example the objective block `config.objectives.contrastive =
  dict(loss="softmax", weight=1.0, temprature=2)` against
  `losses.softmax_loss` fails with "config.objectives.contrastive.temprature:
  unknown config key. ... Known keys of config.objectives.contrastive:
  block_size, impl, label_smoothing, loss, weight."

  Args:
    block: the block (ConfigDict or dict); None or empty checks nothing
      but the required arguments.
    fn: the function or class that receives the block as keyword arguments.
    where: the block's dotted path in messages, e.g. "config.optim".
    skip: `fn`'s arguments that the caller fills in (not config keys).
    extra: keys the caller reads itself (e.g. "name", "type", "every").

  Raises:
    ValueError: naming `where.KEY` for an unknown key (with the closest
      known ones) or a missing required argument.
  """
  known, required = signature_keys(fn, skip)
  keys = set(block.keys()) if block else set()
  check_keys(block or {}, known | set(extra), where)
  missing = sorted(required - keys)
  if missing:
    raise ValueError(
        f"{where}: missing required key(s) {', '.join(missing)} (for "
        f"{getattr(fn, '__qualname__', fn)}); known keys of {where}: "
        f"{', '.join(sorted(known | set(extra)))}.")


# -- Numeric values with a domain --

# (description, test) of each kind of numeric domain.
_DOMAINS = {
    "positive_int": ("a positive integer",
                     lambda v: _is_int(v) and v > 0),
    "non_negative_int": ("an integer >= 0",
                         lambda v: _is_int(v) and v >= 0),
    "positive": ("a number > 0", lambda v: _is_num(v) and v > 0),
    "non_negative": ("a number >= 0", lambda v: _is_num(v) and v >= 0),
    "unit_open": ("a number in [0, 1)", lambda v: _is_num(v) and 0 <= v < 1),
    "unit_closed": ("a number in [0, 1]",
                    lambda v: _is_num(v) and 0 <= v <= 1),
    "unit_positive": ("a number in (0, 1]",
                      lambda v: _is_num(v) and 0 < v <= 1),
    "whole_positive": ("a positive whole number",
                       lambda v: _is_num(v) and v > 0 and float(v) == int(v)),
    "int": ("an integer", lambda v: _is_int(v)),
}
_DIM = r"width|depth|mlp_dim|num_heads|patch_size|out_dim|max_len|vocab_size"
# 0 means "none" for these (a tower without a head, no token types).
_COUNT = r"num_classes|type_vocab_size"
# Dotted keys (regexes, `re.fullmatch`) of a training config and the domain
# of their values. None is always allowed (an unset value); a list or tuple
# is checked element by element. `train.check_config` applies it first.
NUMERIC_DOMAINS = (
    (r"seed", "int"),
    (r"(input|evals\.[^.]+)\.batch_size", "positive_int"),
    (r"input\.workers", "non_negative_int"),
    (r"input\.read_threads", "positive_int"),
    (r"(total|log|ckpt)_steps", "positive_int"),
    (r"(total|log|ckpt)_(epochs)", "positive"),
    (r"(total|log|ckpt)_examples", "whole_positive"),
    (r"warmup_steps", "non_negative_int"),
    (r"warmup_(epochs|examples)", "non_negative"),
    (r"evals\.[^.]+\.every", "non_negative_int"),  # 0 / None: at the end
    (r"keep_ckpts|grad_accum_steps", "positive_int"),
    (r"lr|wd", "non_negative"),
    (r"grad_clip_norm", "positive"),
    (r"sync_every_s", "non_negative"),
    (r"growth_ema", "unit_open"),
    (r"layer_decay\..+", "positive"),
    (r"model(\.(image|text))?\.(" + _DIM + r")", "positive_int"),
    (r"model(\.(image|text))?\.(" + _COUNT + r")", "non_negative_int"),
    (r"model(\.(image|text))?\.dropout", "unit_open"),
    (r"model\.temperature_init", "positive"),
    (r"model\.token_keep", "unit_positive"),
    (r"optim\.(b1|b2)", "unit_open"),
    (r"optim\.eps", "positive"),
    (r"schedule\.end_frac", "unit_closed"),
    (r"objectives\.[^.]+\.label_smoothing", "unit_open"),
)


def _is_num(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and (
      math.isfinite(v))


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_domains(config, domains=NUMERIC_DOMAINS, where="config"):
  """Checks every numeric value with a domain, naming the key.

  Args:
    config: a ConfigDict (or dict).
    domains: (dotted-key regex, domain) pairs; the first match applies.
    where: the config's name in messages.

  Raises:
    ValueError: e.g. "config.input.batch_size=0 must be a positive
      integer." for the first value outside its domain.
  """
  flat = _flat(_plain(config) if not isinstance(config, dict) else config)
  for key, value in flat.items():
    for pattern, domain in domains:
      if re.fullmatch(pattern, key):
        description, ok = _DOMAINS[domain]
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
          if v is not None and not ok(v):
            raise ValueError(f"{where}.{key}={value!r} must be "
                             f"{description}.")
        break


# -- Comparing a run's config with the one it was saved with --

# Keys whose change cannot change what a run computes: log/checkpoint
# cadence, uploads, output locations, reader threads and worker processes
# (the batches do not depend on them, `pipeline.make_train_iterator`). (Dotted keys, matched
# in full by `re.fullmatch`.)
NO_EFFECT_KEYS = (
    r"(log|ckpt)_(steps|epochs|examples)", r"sync_every_s", r"keep_ckpts",
    r"results_dir", r"retrieval_png", r"input\.read_threads", r"input\.workers",
)
# Keys a resumed run may change (logged): the above, durations and
# evaluation cadence. Anything else (model, loss, data, pp, optimiser, mesh
# and sharding rules, ...) is an error unless `--allow_config_change`.
RESUME_CHANGEABLE_KEYS = NO_EFFECT_KEYS + (
    r"(total|warmup)_(steps|epochs|examples)", r"evals\.[^.]+\.every",
)

_ABSENT = "(absent)"


def _flat(tree, prefix=""):
  """{dotted key: leaf} of nested dicts (lists and tuples are leaves)."""
  out = {}
  for key, value in tree.items():
    dotted = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      out.update(_flat(value, dotted + "."))
    else:
      out[dotted] = value
  return out


def _plain(config):
  """A config as plain JSON values (how checkpoints and config.json keep
  it: tuples are lists, unserialisable leaves are their best-effort text)."""
  if isinstance(config, (ml_collections.ConfigDict,
                         config_dict.FrozenConfigDict)):
    return json.loads(config.to_json_best_effort())
  return config


def config_diff(old, new):
  """The dotted keys whose values differ between two configs.

  Args:
    old, new: ConfigDicts or the plain dicts of their JSON (e.g. a
      checkpoint's meta["config"] or workdir/config.json).

  Returns:
    A sorted list of (dotted key, old value, new value); a key missing on
    one side has the value "(absent)" there. None, [] and {} count as absent
    (the trainer reads every key with a default of nothing), so a config
    that spells out an empty default (`config.frozen = ()`) equals one
    without the key.
  """
  def flat(config):
    return {k: v for k, v in _flat(_plain(config) or {}).items()
            if v is not None and v != [] and v != {}}
  old, new = flat(old), flat(new)
  return [(key, old.get(key, _ABSENT), new.get(key, _ABSENT))
          for key in sorted(set(old) | set(new))
          if old.get(key, _ABSENT) != new.get(key, _ABSENT)]


def split_diff(diff, allowed):
  """(changes matching an `allowed` pattern, all other changes)."""
  ok = [d for d in diff if any(re.fullmatch(p, d[0]) for p in allowed)]
  return ok, [d for d in diff if d not in ok]


def format_diff(diff, indent="  "):
  """One `config.KEY: OLD -> NEW` line per change."""
  return "\n".join(f"{indent}config.{key}: {old!r} -> {new!r}"
                   for key, old, new in diff)


DEMO_DATA = "tfds:big_vl_demo_shapes"


def data_field(spec):
  """`config.input.data` that takes a spec string or a mixture.

  A plain str field of a ConfigDict refuses a tuple, so a mixture such as
  `--config.input.data="(('tfds:a', 0.7), ('wds:b', 0.3))"` could not be
  given on the command line; this field takes either.
  """
  return config_dict.FieldReference(spec, field_type=object)


DEMO_DEVICE_PP = "value_range(-1,1)"


def demo_pp(res, max_len, caption="captions"):
  """pp strings (train, zero-shot image, text, retrieval) for the demo data.

  `train_uint8` is `train` without the final value_range, for runs that set
  `config.input.device_pp = DEMO_DEVICE_PP` (the train step does it).
  `caption` names the training records' caption field: "captions" (the
  demo's 5 per image, one drawn per step) or a field of one caption, such
  as the noisy demo crawl's "caption" (`big_vl_demo_noisy`).
  """
  img = f"decode|resize({res})|{DEMO_DEVICE_PP}"
  tok = f"tokenize(max_len={max_len}"
  pick = (f"choice(key='captions', out='text')|{tok})" if caption ==
          "captions" else f"{tok}, key='{caption}', out='text')")
  train_tail = f"{pick}|keep('image','text')"
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


# Full-size data of the pre-training configs (clip, siglip, align, filip,
# vitamin): each can be prepared without TensorFlow (README, "Data").
# LAION-400M as img2dataset WebDataset shards (10,000 pairs per shard, the
# default; `KEY.jpg` + `KEY.txt` + `KEY.json`); the path is an example, set
# it with the configs' `data=` arg.
LAION400M_SHARDS = "/data/laion400m/{00000..41455}.tar"
# ImageNet-1k validation (50,000 images) as a `big_vl_image_folder` dataset
# built from ROOT/validation/<wnid>/*.JPEG with ROOT named "imagenet" (sorted
# wnids = ImageNet's label order); a TFDS `imagenet2012` prepared as
# array_record has the same features ("image", "label") and split name.
IMAGENET_DATA = "tfds:big_vl_image_folder/imagenet"
# COCO 2014 Karpathy test split (5,000 images, 25,010 captions) as a JSONL
# listing, one row per image: {"image": "val2014/COCO_val2014_...jpg",
# "caption": [5 captions]} (image paths relative to the listing).
COCO_DATA = "jsonl:/data/coco/karpathy_test.jsonl"

_KINDS = ("tfds:", "wds:", "jsonl:", "csv:")


def shards_spec(data):
  """A data spec from a config's `data=` arg: a bare shard pattern (local or
  gs://) is read as WebDataset shards ("wds:" added); a spec with a kind
  (tfds:, wds:, jsonl:, csv:) is kept."""
  return data if data.startswith(_KINDS) else f"wds:{data}"


def fullsize_evals(image_pp, tokenize, *, every, imagenet=IMAGENET_DATA,
                   coco=COCO_DATA, batch_size=1024):
  """ImageNet zero-shot and COCO retrieval blocks for `config.evals`.

  Zero-shot top-1/top-5 on ImageNet's 50,000 validation images with CLIP's
  1,000 class names and 80 templates (`prompts`: "imagenet"); image <-> text
  retrieval R@1/5/10 on the COCO Karpathy 5k test listing. Metric keys:
  `zeroshot/imagenet/...`, `retrieval/coco/...`.

  Args:
    image_pp: the training pp's image ops on uint8 images, e.g.
      "decode|resize(224, method='bicubic')" (`value_range(-1,1)` is added).
    tokenize: the training pp's tokenize op, e.g. "tokenize(max_len=77)".
    every: evaluate every this many steps.
    imagenet: spec of the ImageNet data (split "validation", features
      "image" and "label"); default `IMAGENET_DATA`.
    coco: spec of the COCO listing (jsonl/csv: image path + captions);
      default `COCO_DATA`.
    batch_size: global eval batch size.

  Returns:
    A ConfigDict for `config.evals`.
  """
  img = f"{image_pp}|value_range(-1,1)"
  return ml_collections.ConfigDict(dict(
      zeroshot=dict(type="zeroshot", every=every, data=imagenet,
                    split="validation",
                    pp_img=f"{img}|keep('image','label')", pp_txt=tokenize,
                    templates="imagenet", class_names="imagenet",
                    batch_size=batch_size, name="imagenet"),
      retrieval=dict(type="retrieval", every=every, data=coco,
                     pp_img=f"{img}|keep('image')", pp_txt=tokenize,
                     batch_size=batch_size, name="coco"),
  ))


def runlocal_on_demo(config, *, res=32, max_len=24, batch_size=32, steps=20,
                     caption="captions"):
  """Shrinks any two-tower config to a one-minute CPU run on the demo data.

  Keeps the config's method (objectives, pooling, causal text, bias,
  schedule shape, optimiser, normalisation in the train step if it has
  `config.input.device_pp`) and replaces the data, sizes, durations and
  the parallelism (data parallel over all devices, params replicated).

  Args:
    config: the full-size ConfigDict; modified in place.
    res, max_len, batch_size, steps: the local run's sizes.
    caption: the training records' caption field (`demo_pp`).

  Returns:
    `config`, for chaining.
  """
  pp = demo_pp(res, max_len, caption)
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
  # Data parallel with replicated params: FSDP / tensor parallelism are
  # scale knobs, not the method, and on simulated CPU devices their
  # collectives inside GradCache's scan can deadlock XLA:CPU (tests/
  # conftest.py).
  config.mesh = (("data", -1),)
  config.sharding_rules = ((".*", "replicate"),)
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
