"""The optimiser: an optax chain built from config, with regex policies.

Config keys read (all under `config`):
    lr                base learning rate (peak, after warm-up)
    schedule          dict(name="cosine"|"linear"|"rsqrt"|"constant",
                           end_frac=0.0, timescale=10_000)
    warmup_steps      (or warmup_epochs / warmup_examples) linear warm-up
    optim             dict(name="adamw", b1=0.9, b2=0.999, eps=1e-8);
                      name="lamb": the same Adam moments and weight decay,
                      then each parameter's update scaled by its trust
                      ratio ||p|| / ||update|| (LAMB, ALIGN's optimiser)
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

Regexes are matched like sharding rules: against a trailing part of the
parameter path, e.g. `img/.*` or `.*/kernel`.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from big_vl import sharding

DEFAULT_WD_RULES = ((".*/(kernel|embedding)", 1.0), (".*pos_embedding", 1.0))


def make_schedule(config, total_steps, warmup_steps):
  """The learning-rate schedule `step -> lr` from `config.schedule`."""
  sched = dict(config.get("schedule", None) or {"name": "cosine"})
  name = sched.pop("name", "cosine")
  lr = config.lr
  decay_steps = max(total_steps - warmup_steps, 1)
  end = lr * sched.pop("end_frac", 0.0)
  if name == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr
                                       else 0.0)
  elif name == "linear":
    main = optax.linear_schedule(lr, end, decay_steps)
  elif name == "constant":
    main = optax.constant_schedule(lr)
  elif name == "rsqrt":
    timescale = sched.pop("timescale", 10_000)
    main = lambda s: lr * jax.lax.rsqrt(1.0 + s / timescale)
  else:
    raise ValueError(f"Unknown schedule {name!r} in config.schedule; use "
                     "cosine, linear, rsqrt or constant.")
  if sched:
    raise ValueError(f"Unknown keys {sorted(sched)} in config.schedule "
                     f"for {name!r}.")
  if warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def _rule_tree(params, rules, default):
  paths = sharding.tree_paths(params)
  def one(path):
    value = sharding.match_rules(rules, path)
    return default if value is None else value
  return jax.tree.map(one, paths)


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
  for path, leaf in zip(jax.tree.leaves(sharding.tree_paths(params)),
                        jax.tree.leaves(params)):
    if not (path == tower or path.startswith(tower + "/")):
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
        if path.startswith(tower + "/"):
          m = layer_decay_multiplier(path[len(tower) + 1:], u.shape, rate,
                                     depths[tower])
          return u * jnp.asarray(m, u.dtype)
      return u
    return jax.tree.map(one, sharding.tree_paths(updates), updates), state
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
  schedule = make_schedule(config, total_steps, warmup_steps)
  opt = dict(config.get("optim", None) or {"name": "adamw"})
  name = opt.pop("name", "adamw")
  if name not in ("adamw", "adam", "lamb"):
    raise ValueError(f"Unknown optimiser {name!r} in config.optim; use "
                     "adamw or lamb.")
  parts = []
  clip = config.get("grad_clip_norm", None)
  if clip:
    parts.append(optax.clip_by_global_norm(clip))
  parts.append(optax.scale_by_adam(b1=opt.pop("b1", 0.9),
                                   b2=opt.pop("b2", 0.999),
                                   eps=opt.pop("eps", 1e-8)))
  if opt:
    raise ValueError(f"Unknown keys {sorted(opt)} in config.optim.")
  wd = config.get("wd", 0.0) or 0.0
  if wd:
    mode = config.get("wd_mode", "coupled")
    if mode not in ("coupled", "decoupled"):
      raise ValueError(f"config.wd_mode must be 'coupled' or 'decoupled', "
                       f"got {mode!r}.")
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
