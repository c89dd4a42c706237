"""Feature-level adaptation of a frozen model: zero-shot and linear-probe
baselines, CLIP-Adapter, Tip-Adapter and Tip-Adapter-F.

Every method is `fn(task, **hparams) -> result` with `task` a
`protocol.Task` (cached, unit-norm image features; the zero-shot classifier
`task.zs_weights` [D, C]; the logit scale) and result a dict:
"logits" (test logits f32[N, C]), "val_acc" (accuracy of the chosen setting
on the validation split) and "hparams" (the chosen hyper-parameters). Every
choice is made on `task.val_x`/`task.val_y`; test labels are never given.

- zero-shot: logits = scale * f W.
- linear probe: multinomial logistic regression on the shots' features
  (`evaluators.linear_probe`), weight decay chosen on validation.
- CLIP-Adapter (Gao et al., 2021): a bottleneck MLP A (D -> D/4 -> D, ReLU,
  no biases) blended with the residual ratio r: f' = r A(f) + (1 - r) f on
  the image feature (`on="image"`), and/or on the class weights
  (`on="text"`/`"both"`); logits = scale * norm(f') norm(W')^T. r, the
  learning rate and the number of steps are chosen on validation.
- Tip-Adapter (Zhang et al., 2022): a training-free cache with keys K = the
  shots' features and values V = their one-hot labels:
  logits = scale * f W + alpha * exp(-beta (1 - f K^T)) V. alpha and beta are
  searched on validation (Tip-Adapter's own ImageNet script searches them
  on the test set). alpha = 0 is exactly zero-shot.
- Tip-Adapter-F: the same with K trained by cross-entropy on the shots
  (starting from the training-free alpha/beta), then alpha and beta
  searched again on validation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from big_vl.adapt import fit
from big_vl.adapt import protocol
from big_vl.evaluators import linear_probe
from big_vl.models.two_towers import l2_normalize


def zeroshot_logits(task, x):
  """scale * x W: the zero-shot logits of features x (as `tip_logits` at
  alpha = 0 computes them, bit for bit)."""
  return np.asarray(task.scale * (jnp.asarray(x, jnp.float32) @ jnp.asarray(
      task.zs_weights, jnp.float32)))


def zeroshot(task):
  """The frozen model's zero-shot classifier (the baseline)."""
  def classify(x, classnames):
    if list(classnames) == list(task.classnames):
      return zeroshot_logits(task, x)
    weights = task.backbone.zeroshot_weights(classnames, task.templates)
    return task.scale * np.asarray(x, np.float32) @ weights

  return {"logits": zeroshot_logits(task, task.test_x),
          "val_acc": protocol.accuracy(zeroshot_logits(task, task.val_x),
                                       task.val_y),
          "classify": classify,
          "hparams": {"templates": len(task.templates)}}


def linear_probe_method(task, wds=linear_probe.DEFAULT_WDS, steps=200):
  """Logistic regression on the shots; weight decay chosen on validation."""
  wd, scores = linear_probe.select_wd(
      task.train_x, task.train_y, task.val_x, task.val_y,
      num_classes=task.num_classes, wds=wds, steps=steps)
  params = linear_probe.fit_logistic(task.train_x, task.train_y, wd,
                                     num_classes=task.num_classes,
                                     steps=steps)
  return {"logits": task.test_x @ params["w"] + params["b"],
          "val_acc": scores[wd], "hparams": {"wd": wd}}


# -- CLIP-Adapter --


def _bottleneck(params, x):
  return jax.nn.relu(jax.nn.relu(x @ params["down"]) @ params["up"])


def clip_adapter_logits(params, x, weights, scale, ratio, on):
  """CLIP-Adapter logits of features x [N, D] (traceable).

  Args:
    params: {"image": {"down", "up"}, "text": {...}} (the sides in `on`).
    x: unit-norm image features [N, D].
    weights: zero-shot class weights [D, C].
    scale: logit scale.
    ratio: residual ratio r (0: the zero-shot model).
    on: "image", "text" or "both".
  """
  if on in ("image", "both"):
    x = ratio * _bottleneck(params["image"], x) + (1 - ratio) * x
  w = weights.T
  if on in ("text", "both"):
    w = ratio * _bottleneck(params["text"], w) + (1 - ratio) * w
  return scale * l2_normalize(x) @ l2_normalize(w).T


def _adapter_init(dim, reduction, key):
  down = jax.random.normal(key, (dim, dim // reduction)) * dim ** -0.5
  up = jnp.zeros((dim // reduction, dim))
  up = up + jax.random.normal(jax.random.fold_in(key, 1), up.shape) * (
      (dim // reduction) ** -0.5)
  return {"down": down, "up": up}


def clip_adapter(task, ratios=(0.2, 0.4, 0.6, 0.8), lrs=(1e-3, 1e-2),
                 on="image", reduction=4, steps=300, wd=1e-4, eval_every=50):
  """CLIP-Adapter; ratio, learning rate and steps chosen on validation."""
  if on not in ("image", "text", "both"):
    raise ValueError(f"clip_adapter: on={on!r}; use image, text or both.")
  dim = task.train_x.shape[1]
  weights = jnp.asarray(task.zs_weights)
  x, y = jnp.asarray(task.train_x), jnp.asarray(task.train_y)
  key = jax.random.key(task.seed)
  sides = ("image", "text") if on == "both" else (on,)
  best = None
  for ratio, lr in [(r, lr) for r in ratios for lr in lrs]:
    init = {s: _adapter_init(dim, reduction, jax.random.fold_in(key, i))
            for i, s in enumerate(sides)}

    def loss_fn(params, index, ratio=ratio):
      logits = clip_adapter_logits(params, x[index], weights, task.scale,
                                   ratio, on)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, y[index]).mean()

    def val_fn(params, ratio=ratio):
      return protocol.accuracy(np.asarray(clip_adapter_logits(
          params, jnp.asarray(task.val_x), weights, task.scale, ratio, on)),
                               task.val_y)

    params, info = fit.train(init, loss_fn, val_fn, num_examples=len(y),
                             steps=steps, lr=lr, wd=wd,
                             eval_every=eval_every, seed=task.seed)
    if best is None or info["val_acc"] > best[3]["val_acc"]:
      best = (ratio, lr, params, info)
  ratio, lr, params, info = best
  logits = clip_adapter_logits(params, jnp.asarray(task.test_x), weights,
                               task.scale, ratio, on)
  return {"logits": np.asarray(logits), "val_acc": info["val_acc"],
          "hparams": {"ratio": ratio, "lr": lr, "steps": info["steps"],
                      "on": on}}


# -- Tip-Adapter --


def tip_logits(x, keys, values, weights, scale, alpha, beta):
  """scale * x W + alpha * exp(-beta (1 - x K^T)) V (traceable).

  Args:
    x: unit-norm features [N, D].
    keys: cache keys [M, D] (unit-norm shot features, or trained ones).
    values: one-hot labels [M, C].
    weights: zero-shot class weights [D, C].
    scale: logit scale.
    alpha: cache weight (0: zero-shot exactly).
    beta: sharpness of the affinities.
  """
  zs = scale * (jnp.asarray(x, jnp.float32) @ jnp.asarray(weights,
                                                         jnp.float32))
  if isinstance(alpha, (int, float)) and alpha == 0:
    return zs
  affinity = jnp.exp(-beta * (1.0 - x @ keys.T))
  return zs + alpha * (affinity @ values)


def default_tip_grid(scale):
  """alpha x beta candidates. Tip-Adapter's alphas assume CLIP's logit
  scale 100; here they are rescaled to the model's own scale."""
  alphas = [a * scale / 100.0 for a in (0.1, 0.25, 0.5, 1, 2, 3, 5, 10)]
  betas = [0.5, 1, 2, 3, 4, 5.5, 7, 9, 12]
  return alphas, betas


def _search_tip(task, keys, values, weights, alphas, betas):
  """Best (alpha, beta) on validation; ties: the first in grid order."""
  grid = [{"alpha": float(a), "beta": float(b)} for a in alphas
          for b in betas]
  val_x = jnp.asarray(task.val_x)
  best, acc, _ = fit.select(grid, lambda c: protocol.accuracy(np.asarray(
      tip_logits(val_x, keys, values, weights, task.scale, c["alpha"],
                 c["beta"])), task.val_y))
  return best, acc


def tip_adapter(task, alphas=None, betas=None):
  """Training-free Tip-Adapter; alpha and beta searched on validation."""
  default_alphas, default_betas = default_tip_grid(task.scale)
  keys = jnp.asarray(task.train_x)
  values = jax.nn.one_hot(task.train_y, task.num_classes)
  weights = jnp.asarray(task.zs_weights)
  best, acc = _search_tip(task, keys, values, weights,
                          alphas or default_alphas, betas or default_betas)
  logits = tip_logits(jnp.asarray(task.test_x), keys, values, weights,
                      task.scale, best["alpha"], best["beta"])
  return {"logits": np.asarray(logits), "val_acc": acc, "hparams": best}


def tip_adapter_f(task, alphas=None, betas=None, steps=200, lr=1e-3,
                  wd=0.0, eval_every=50):
  """Tip-Adapter-F: cache keys fine-tuned, then alpha/beta searched again."""
  default_alphas, default_betas = default_tip_grid(task.scale)
  alphas, betas = alphas or default_alphas, betas or default_betas
  values = jax.nn.one_hot(task.train_y, task.num_classes)
  weights = jnp.asarray(task.zs_weights)
  x, y = jnp.asarray(task.train_x), jnp.asarray(task.train_y)
  start, _ = _search_tip(task, x, values, weights, alphas, betas)
  a0, b0 = start["alpha"], start["beta"]

  def loss_fn(keys, index):
    logits = tip_logits(x[index], keys, values, weights, task.scale, a0, b0)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, y[index]).mean()

  def val_fn(keys):
    return protocol.accuracy(np.asarray(tip_logits(
        jnp.asarray(task.val_x), keys, values, weights, task.scale, a0, b0)),
                             task.val_y)

  keys, info = fit.train(x, loss_fn, val_fn, num_examples=len(y),
                         steps=steps, lr=lr, wd=wd, eval_every=eval_every,
                         seed=task.seed)
  keys = jnp.asarray(keys)
  best, acc = _search_tip(task, keys, values, weights, alphas, betas)
  logits = tip_logits(jnp.asarray(task.test_x), keys, values, weights,
                      task.scale, best["alpha"], best["beta"])
  return {"logits": np.asarray(logits), "val_acc": acc,
          "hparams": {**best, "steps": info["steps"], "train_alpha": a0,
                      "train_beta": b0}}
