"""The optimiser: an optax chain built from config, with regex policies.

Config keys read (all under `config`):
    lr                base learning rate (peak, after warm-up)
    schedule          dict(name="cosine"|"linear"|"rsqrt"|"constant",
                           end_frac=0.0, timescale=10_000)
    warmup_steps      (or warmup_epochs / warmup_examples) linear warm-up
    optim             dict(name="adamw", b1=0.9, b2=0.999, eps=1e-8);
                      name="lamb": the same Adam moments and weight decay,
                      then each parameter's update scaled by its trust
                      ratio ||p|| / ||update|| (LAMB, ALIGN's optimiser);
                      name="adafactor": big_vision's Adafactor (factored
                      second moments, beta2_cap=0.999, momentum=0.9 in
                      bfloat16; CapPa's and LocCa's optimiser)
    wd                weight decay
    wd_mode           "coupled": update -= lr_t * wd * p (PyTorch/optax AdamW,
                      CLIP's 0.2); "decoupled": update -= (lr_t/lr) * wd * p
                      (big_vision / SigLIP's 1e-4)
    wd_rules          [(regex, mult)]: decay multiplier; first match wins;
                      unmatched -> 0.
                      Default decays only Dense kernels and embeddings, never
                      biases, norms, temperature or bias scalars.
    lr_rules          [(regex, mult)]; unmatched -> 1.
    layer_decay       {tower: rate}, e.g. {"img": 0.65, "txt": 0.75}:
                      layer-wise learning-rate decay (BEiT, fine-tuning
                      recipes): in a tower of D blocks, block i (0-based)
                      gets rate^(D - i), the parameters before the blocks
                      (embeddings, stems) rate^(D + 1), the final norm and
                      heads 1. Scanned blocks get one multiplier per layer.
                      Multiplies with lr_rules.
    frozen            [regex, ...] parameters that never change (LiT: "img/.*")
    grad_clip_norm    clip the global gradient norm of trainable params

Rules are matched as in every rule list (`big_vl/paths.py`): the regex
matches the whole parameter path, e.g. `img/.*`, `.*/kernel` or
`txt/head/kernel`; a `layer_decay` key K covers what `K/.*` covers. A rule
that matches no parameter (or, in lr_rules / wd_rules, never applies) is an
error when the optimiser is made.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from big_vl import config as config_lib
from big_vl import paths

# The rule lists `make` reads (checked against the params there).
RULE_KEYS = ("frozen", "lr_rules", "wd_rules", "layer_decay")

DEFAULT_WD_RULES = ((".*/(kernel|embedding)", 1.0), (".*pos_embedding", 1.0))


def _cosine(lr, decay_steps, end_frac=0.0):
  return optax.cosine_decay_schedule(lr, decay_steps, alpha=end_frac if lr
                                     else 0.0)


def _linear(lr, decay_steps, end_frac=0.0):
  return optax.linear_schedule(lr, lr * end_frac, decay_steps)


def _no_end(name, end_frac):
  if end_frac:
    raise ValueError(f"config.schedule.end_frac={end_frac} has no effect for "
                     f"schedule {name!r}; use cosine or linear, or drop it.")


def _constant(lr, decay_steps, end_frac=0.0):
  del decay_steps
  _no_end("constant", end_frac)
  return optax.constant_schedule(lr)


def _rsqrt(lr, decay_steps, end_frac=0.0, timescale=10_000):
  del decay_steps
  _no_end("rsqrt", end_frac)
  return lambda s: lr * jax.lax.rsqrt(1.0 + s / timescale)


# config.schedule.name -> `fn(lr, decay_steps, **options)`; the options are
# the rest of config.schedule (checked against the signature).
SCHEDULES = {"cosine": _cosine, "linear": _linear, "constant": _constant,
             "rsqrt": _rsqrt}


def _adam(b1=0.9, b2=0.999, eps=1e-8):
  return optax.scale_by_adam(b1=b1, b2=b2, eps=eps)


def adafactor_decay_rate(step, exponent, beta2_cap):
  """Adafactor's second-moment decay at `step` (0-based): 1 - (step + 1)^-e,
  capped at `beta2_cap` (big_vision's variant)."""
  t = jnp.asarray(step, jnp.float32) + 1.0
  return jnp.minimum(beta2_cap, 1.0 - t ** (-exponent))


def _adafactor(decay_rate=0.8, beta2_cap=0.999, momentum=0.9,
               momentum_dtype="bfloat16", min_dim_size_to_factor=32,
               clipping_threshold=None, eps=1e-30):
  """big_vision's Adafactor (CapPa, LocCa, SigLIP's large runs): factored
  second moments whose decay 1 - t^-decay_rate is capped at `beta2_cap`,
  optional block-RMS clipping, then momentum (an EMA without debiasing,
  kept in `momentum_dtype`). No parameter-scale multiplication: the
  learning rate is absolute, as Adam's."""
  parts = [optax.scale_by_factored_rms(
      factored=True, decay_rate=decay_rate,
      min_dim_size_to_factor=min_dim_size_to_factor, epsilon=eps,
      decay_rate_fn=lambda step, e: adafactor_decay_rate(step, e,
                                                         beta2_cap))]
  if clipping_threshold:
    parts.append(optax.clip_by_block_rms(clipping_threshold))
  if momentum:
    parts.append(optax.ema(momentum, debias=False,
                           accumulator_dtype=jnp.dtype(momentum_dtype)))
  return optax.chain(*parts)


# config.optim.name -> the moment transform, options from config.optim.
# adamw / adam: Adam (+ weight decay by config.wd); lamb: Adam moments and
# weight decay, then the trust ratio; adafactor: big_vision's Adafactor
# (+ weight decay by config.wd).
OPTIMIZERS = {"adamw": _adam, "adam": _adam, "lamb": _adam,
              "adafactor": _adafactor}


def _factory(config, key, table, default):
  """(name, factory, options) of `config.<key>`, checked against the
  factory's signature (the one check `train.check_config` runs too)."""
  block = dict(config.get(key, None) or {"name": default})
  name = block.pop("name", default)
  if name not in table:
    kind = "schedule" if key == "schedule" else "optimiser"
    raise ValueError(f"config.{key}.name: unknown {kind} {name!r}; use "
                     f"{' or '.join(sorted(table))}.")
  config_lib.check_signature(block, table[name], f"config.{key}",
                             skip=("lr", "decay_steps"), extra=("name",))
  return name, table[name], block


def check_config(config):
  """Checks `config.schedule` and `config.optim` (names and options)."""
  _, factory, options = _factory(config, "schedule", SCHEDULES, "cosine")
  factory(config.get("lr", 1.0), 1, **options)  # Values (e.g. end_frac).
  _factory(config, "optim", OPTIMIZERS, "adamw")
  mode = config.get("wd_mode", "coupled")
  if mode not in ("coupled", "decoupled"):
    raise ValueError(f"config.wd_mode must be 'coupled' or 'decoupled', "
                     f"got {mode!r}.")


def make_schedule(config, total_steps, warmup_steps):
  """The learning-rate schedule `step -> lr` from `config.schedule`."""
  _, factory, options = _factory(config, "schedule", SCHEDULES, "cosine")
  lr = config.lr
  main = factory(lr, max(total_steps - warmup_steps, 1), **options)
  if warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def _rule_tree(params, rules, default):
  def one(path):
    value = paths.first_match(rules, path)
    return default if value is None else value
  return jax.tree.map(one, paths.tree_paths(params))


def frozen_mask(config, params):
  """Pytree of bools: True where a parameter is frozen by `config.frozen`."""
  rules = [(pattern, True) for pattern in (config.get("frozen", None) or ())]
  return _rule_tree(params, rules, False)


def _scale_by_rules(rules):
  """Multiplies each update by its `rules` multiplier (default 1).

  Multipliers are looked up from the updates' own paths at trace time, so the
  transform also works inside `optax.multi_transform` (masked subtrees).
  """
  def update_fn(updates, state, params=None):
    del params
    mults = _rule_tree(updates, rules, 1.0)
    return jax.tree.map(lambda u, m: u * m if m != 1.0 else u, updates,
                        mults), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def _add_decayed_weights_by_rules(rate, rules):
  """Adds `rate * mult * param` to each update (`rules` mult, default 0)."""
  def update_fn(updates, state, params):
    mults = _rule_tree(updates, rules, 0.0)
    return jax.tree.map(lambda u, p, m: u + rate * m * p if m else u,
                        updates, params, mults), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


_BLOCK = re.compile(r"(?:^|/)encoderblock(?:_(\d+))?/")
_TOP = re.compile(r"(?:^|/)(encoder_norm|head|MAPHead_0|[a-z]+_token_head)"
                  r"(?:/|$)")


def tower_depth(params, tower):
  """Number of transformer blocks under `params[tower]` (scanned or not)."""
  depth = 0
  for path, leaf in zip(paths.leaf_paths(params), jax.tree.leaves(params)):
    path = paths.subtree_rest(tower, path)
    if path is None:
      continue
    m = _BLOCK.search(path)
    if m and m.group(1) is not None:
      depth = max(depth, int(m.group(1)) + 1)
    elif m:
      depth = max(depth, int(leaf.shape[0]))
  return depth


def layer_decay_multiplier(path, shape, rate, depth):
  """The learning-rate multiplier of one parameter of a decayed tower.

  Args:
    path: the "/"-joined name inside the tower (e.g.
      "Transformer/encoderblock_3/MlpBlock_0/Dense_0/kernel").
    shape: the parameter's shape (scanned blocks: leading [depth] axis).
    rate: the decay rate.
    depth: the tower's number of blocks.

  Returns:
    A float, or for scanned blocks an array broadcasting against `shape`.
  """
  m = _BLOCK.search(path)
  if m and m.group(1) is not None:
    return float(rate ** (depth - int(m.group(1))))
  if m:  # Scanned: one multiplier per stacked layer.
    mults = rate ** (depth - np.arange(depth, dtype=np.float64))
    return mults.astype(np.float32).reshape((depth,) + (1,) * (len(shape) - 1))
  if _TOP.search(path):
    return 1.0
  return float(rate ** (depth + 1))


def _scale_by_layer_decay(layer_decay, depths):
  """Multiplies updates of each tower by its layer-wise decay multipliers."""
  def update_fn(updates, state, params=None):
    del params
    def one(path, u):
      for tower, rate in layer_decay.items():
        rest = paths.subtree_rest(tower, path)
        if rest is not None:
          m = layer_decay_multiplier(rest, u.shape, rate, depths[tower])
          return u * jnp.asarray(m, u.dtype)
      return u
    return jax.tree.map(one, paths.tree_paths(updates), updates), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def make(config, params, total_steps, warmup_steps):
  """Builds the optax transformation and its learning-rate schedule.

  Args:
    config: the run's ConfigDict (keys in the module docstring).
    params: the parameter pytree (arrays or ShapeDtypeStructs); only its
      structure and names are used.
    total_steps: training length in steps.
    warmup_steps: warm-up length in steps.

  Returns:
    (tx, schedule): an optax GradientTransformation and `step -> lr`.
  """
  paths.check_config_rules(config, params, RULE_KEYS)
  check_config(config)
  schedule = make_schedule(config, total_steps, warmup_steps)
  name, moments, options = _factory(config, "optim", OPTIMIZERS, "adamw")
  parts = []
  clip = config.get("grad_clip_norm", None)
  if clip:
    parts.append(optax.clip_by_global_norm(clip))
  parts.append(moments(**options))
  wd = config.get("wd", 0.0) or 0.0
  if wd:
    mode = config.get("wd_mode", "coupled")
    rate = wd if mode == "coupled" else wd / config.lr
    wd_rules = config.get("wd_rules", None)
    wd_rules = DEFAULT_WD_RULES if wd_rules is None else wd_rules
    parts.append(_add_decayed_weights_by_rules(rate, wd_rules))
  if name == "lamb":
    # LAMB: each parameter's update rescaled to ||param|| / ||update||.
    parts.append(optax.scale_by_trust_ratio())
  lr_rules = config.get("lr_rules", None) or ()
  if lr_rules:
    parts.append(_scale_by_rules(lr_rules))
  layer_decay = dict(config.get("layer_decay", None) or {})
  if layer_decay:
    depths = {}
    for tower in layer_decay:
      depths[tower] = tower_depth(params, tower)
      if not depths[tower]:
        raise ValueError(f"config.layer_decay: no transformer blocks under "
                         f"{tower!r} (towers: {sorted(params)}).")
    parts.append(_scale_by_layer_decay(layer_decay, depths))
  parts.append(optax.scale_by_learning_rate(schedule))
  tx = optax.chain(*parts)
  frozen = frozen_mask(config, params)
  if any(jax.tree.leaves(frozen)):
    labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               labels)
  return tx, schedule


def trainable_global_norm(grads, frozen):
  """Global L2 norm of the gradients of non-frozen parameters."""
  leaves = [g for g, f in zip(jax.tree.leaves(grads), jax.tree.leaves(frozen))
            if not f]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return optax.tree.norm(leaves)
