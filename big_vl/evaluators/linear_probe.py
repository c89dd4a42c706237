"""Linear probe: logistic regression on frozen image features.

Image embeddings of the train and test splits are computed once (exactly,
over the mesh, with `common.run_over`). A multinomial logistic regression
(softmax cross-entropy + wd/2 * ||W||^2, bias not regularised) is fitted by
full-batch L-BFGS (optax) in JAX. The weight decay is chosen on a validation
part held out from the train split (`val_fraction`, seeded); the classifier
is then refitted on all of train with the chosen value and scored on the
test split. The test split is used only for that final score.

Config block:

    config.evals.linear_probe = dict(
        type="linear_probe", data="tfds:big_vl_demo_shapes",
        train_split="train", test_split="test",
        pp="decode|resize(32)|value_range(-1,1)|keep('image','label')",
        batch_size=256)

Metrics: linear_probe/<dataset>/top1 and linear_probe/<dataset>/wd (the
chosen weight decay), and linear_probe/<dataset>/skipped: records of the
train and test splits left out (undecodable, missing, ...), with
skipped/<reason> for each reason seen (see `common.Skipped`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from big_vl import registry
from big_vl.data import sources
from big_vl.evaluators import common
from big_vl.models import naflex

DEFAULT_WDS = tuple(float(10.0 ** e) for e in range(-6, 1))


def _loss(params, x, y, wd):
  logits = x @ params["w"] + params["b"]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return ce + 0.5 * wd * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit(x, y, wd, *, num_classes, steps):
  """L-BFGS on the regularised cross-entropy; returns params."""
  params = {"w": jnp.zeros((x.shape[1], num_classes), jnp.float32),
            "b": jnp.zeros((num_classes,), jnp.float32)}
  loss = functools.partial(_loss, x=x, y=y, wd=wd)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry, _):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                value_fn=loss)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None,
                                length=steps)
  return params


def fit_logistic(x, y, wd, *, num_classes, steps=200):
  """Fits multinomial logistic regression with L2 weight decay `wd`.

  Args:
    x: f32[N, D] features.
    y: int[N] labels in [0, num_classes).
    wd: L2 coefficient on the weights (bias unregularised).
    num_classes: number of classes.
    steps: L-BFGS iterations.

  Returns:
    {"w": f32[D, C], "b": f32[C]} as numpy arrays.
  """
  params = _fit(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32),
                jnp.float32(wd), num_classes=num_classes, steps=steps)
  return jax.tree.map(np.asarray, params)


def predict(params, x):
  """Predicted classes int[N] of features x under fitted `params`."""
  return np.argmax(np.asarray(x, np.float32) @ params["w"] + params["b"],
                   axis=1)


def accuracy(params, x, y):
  """Top-1 accuracy of `params` on (x, y)."""
  return float(np.mean(predict(params, x) == np.asarray(y)))


def split_val(n, val_fraction, seed):
  """Seeded (fit_indices, val_indices) partition of range(n)."""
  perm = np.random.default_rng(seed).permutation(n)
  n_val = max(int(round(n * val_fraction)), 1)
  if n_val >= n:
    raise ValueError(f"Cannot hold out {val_fraction:.0%} of {n} examples "
                     "for validation and still train.")
  return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def select_wd(x_fit, y_fit, x_val, y_val, *, num_classes, wds=DEFAULT_WDS,
              steps=200):
  """Chooses the weight decay with the best validation accuracy.

  Ties go to the largest weight decay (the simplest model).

  Args:
    x_fit, y_fit: training part.
    x_val, y_val: validation part (held out from train, never test).
    num_classes: number of classes.
    wds: candidate weight decays.
    steps: L-BFGS iterations per fit.

  Returns:
    (best_wd, {wd: validation accuracy}).
  """
  scores = {}
  for wd in wds:
    params = fit_logistic(x_fit, y_fit, wd, num_classes=num_classes,
                          steps=steps)
    scores[float(wd)] = accuracy(params, x_val, y_val)
  best = max(scores, key=lambda w: (scores[w], w))
  return best, scores


def train_probe(x, y, *, num_classes, wds=DEFAULT_WDS, val_fraction=0.2,
                seed=0, steps=200):
  """Selects wd on a held-out part of (x, y), then refits on all of it.

  Args:
    x, y: training features f32[N, D] and labels int[N].
    num_classes: number of classes.
    wds: candidate weight decays.
    val_fraction: fraction of (x, y) held out to choose wd.
    seed: seed of the held-out split.
    steps: L-BFGS iterations per fit.

  Returns:
    (params, chosen wd, {wd: validation accuracy}).
  """
  fit_idx, val_idx = split_val(len(x), val_fraction, seed)
  wd, scores = select_wd(x[fit_idx], y[fit_idx], x[val_idx], y[val_idx],
                         num_classes=num_classes, wds=wds, steps=steps)
  params = fit_logistic(x, y, wd, num_classes=num_classes, steps=steps)
  return params, wd, scores


class FeatureExtractor:
  """Image features of a split, exactly once per example over the mesh.

  Args:
    predict_fn: `(params, image=None, text=None) -> (zimg, ztxt, aux)`.
    mesh: the Mesh.
    data, data_dir: the source spec.
    pp: pp string giving "image" and the label key.
    batch_size: global eval batch size.
    label_key: name of the label field.
  """

  def __init__(self, predict_fn, *, mesh, data, pp, batch_size, label_key,
               data_dir=None):
    self.mesh, self.data, self.data_dir = mesh, data, data_dir
    self.pp, self.batch_size, self.label_key = pp, batch_size, label_key
    self._fn = jax.jit(lambda p, b: {
        "z": predict_fn(p, image=naflex.image_input(b))[0],
        "label": b[label_key]})

  def source(self, split):
    return sources.get(self.data, split=split, data_dir=self.data_dir)

  def __call__(self, params, split, *, desc=None, skipped=None):
    """(f32[N, D] features, int[N] labels) of `split`.

    Records that fail are left out, logged under `desc` and added to
    `skipped` (a `common.Skipped`), see `common.run_over`.
    """
    out = common.run_over(self.source(split), pp=self.pp,
                          batch_size=self.batch_size, mesh=self.mesh,
                          fn=self._fn, params=params,
                          desc=desc and f"{desc} ({split})", skipped=skipped)
    return out["z"].astype(np.float32), out["label"].astype(np.int64)


def num_classes_of(source, label_key, *labels):
  """Classes from the ClassLabel feature, else 1 + the largest label seen."""
  names = sources.class_names(source, label_key)
  if names:
    return len(names)
  return int(max(int(np.max(l)) for l in labels if len(l))) + 1


@registry.register("evaluator", "linear_probe")
class Evaluator:
  """Linear-probe evaluator (see the module docstring).

  Args:
    predict_fn: `(params, image=None, text=None) -> (zimg, ztxt, aux)`.
    mesh: the Mesh.
    data: source spec, e.g. "tfds:big_vl_demo_shapes".
    train_split, test_split: splits to fit on and to score.
    pp: pp string giving "image" and the label key.
    batch_size: global eval batch size.
    label_key: name of the label field.
    wds: candidate L2 weight decays.
    val_fraction: part of train held out to choose wd.
    seed: seed of the held-out split.
    steps: L-BFGS iterations per fit.
    normalize: L2-normalise features first.
    data_dir: data directory.
    name: dataset name in metric keys (default from `data`).
  """

  def __init__(self, predict_fn, *, mesh, data, pp, train_split="train",
               test_split="test", batch_size=256, label_key="label",
               wds=DEFAULT_WDS, val_fraction=0.2, seed=0, steps=200,
               normalize=True, data_dir=None, name=None):
    self.features = FeatureExtractor(predict_fn, mesh=mesh, data=data, pp=pp,
                                     batch_size=batch_size,
                                     label_key=label_key, data_dir=data_dir)
    self.train_split, self.test_split = train_split, test_split
    self.label_key = label_key
    self.wds, self.val_fraction = tuple(wds), val_fraction
    self.seed, self.steps, self.normalize = seed, steps, normalize
    self.name = name or common.dataset_label(data)

  def run(self, params):
    """Yields (metric_name, value) pairs."""
    prefix = f"linear_probe/{self.name}"
    skipped = common.Skipped()
    x_train, y_train = self.features(params, self.train_split, desc=prefix,
                                     skipped=skipped)
    if self.normalize:
      x_train = common.l2_normalize(x_train)
    num_classes = num_classes_of(self.features.source(self.train_split),
                                 self.label_key, y_train)
    probe, wd, _ = train_probe(
        x_train, y_train, num_classes=num_classes, wds=self.wds,
        val_fraction=self.val_fraction, seed=self.seed, steps=self.steps)
    # The test split is read only now, after the choice of wd.
    x_test, y_test = self.features(params, self.test_split, desc=prefix,
                                   skipped=skipped)
    if self.normalize:
      x_test = common.l2_normalize(x_test)
    yield f"{prefix}/top1", accuracy(probe, x_test, y_test)
    yield f"{prefix}/wd", float(wd)
    yield from skipped.metrics(prefix)
