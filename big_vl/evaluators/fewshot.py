"""Few-shot classification on frozen image features.

For each k in `shots` and each of `seeds`, k training examples per class are
drawn from the train split (from the part not held out for validation), and
two classifiers are fitted on their features:

- a linear probe (multinomial logistic regression, L-BFGS; see
  `linear_probe`), its weight decay chosen on the validation part;
- closed-form ridge regression as in big_vision's few-shot evaluator:
  features whitened with the shots' mean / std, a constant feature (100) for
  an almost unregularised bias, targets one-hot rescaled to {-1, +1},
  W = (X^T X + l2 I)^-1 X^T Y through one eigendecomposition shared by all
  l2 values; l2 chosen from `l2_regs` (big_vision's 2^-10 .. 2^19) on the
  validation part (big_vision picks it on the evaluation split; here the
  test split only gives the final score).

Both are scored on the test split; the numbers are the mean (and standard
deviation) over seeds.

Config block:

    config.evals.fewshot = dict(
        type="fewshot", data="tfds:big_vl_demo_shapes",
        train_split="train", test_split="test",
        pp="decode|resize(32)|value_range(-1,1)|keep('image','label')",
        shots=(1, 2, 4, 8, 16), seeds=3, batch_size=256)

Metrics: fewshot/<dataset>/<k>shot (probe, mean over seeds),
<k>shot_std, <k>shot_ridge, <k>shot_ridge_std, and fewshot/<dataset>/skipped:
records of the train and test splits left out (undecodable, missing, ...),
with skipped/<reason> for each reason seen (see `common.Skipped`).
"""

import numpy as np

from big_vl import registry
from big_vl.evaluators import common
from big_vl.evaluators import linear_probe

BIAS_CONSTANT = 100.0
DEFAULT_L2_REGS = tuple(float(2.0 ** i) for i in range(-10, 20))


def sample_shots(labels, k, num_classes, seed):
  """Indices of k examples of each class, drawn without replacement.

  Args:
    labels: int[N] labels.
    k: examples per class.
    num_classes: number of classes.
    seed: sampling seed.

  Returns:
    int[k * C'] indices, C' = classes with at least k examples.

  Raises:
    ValueError: if some class has fewer than k examples.
  """
  rng = np.random.default_rng(seed)
  idx = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if len(members) == 0:
      continue
    if len(members) < k:
      raise ValueError(f"Class {c} has {len(members)} training examples, "
                       f"fewer than {k} shots.")
    idx.append(rng.choice(members, size=k, replace=False))
  return np.sort(np.concatenate(idx))


def ridge_fit(x, y, num_classes):
  """Eigen-decomposition cache for ridge regression at any l2.

  Args:
    x: f32[N, D] training features.
    y: int[N] labels.
    num_classes: number of classes.

  Returns:
    dict cache for `ridge_weights` (whitening stats, eigen-decomposition).
  """
  x = np.asarray(x, np.float64)
  mean = x.mean(axis=0, keepdims=True)
  std = x.std(axis=0, keepdims=True) + 1e-5
  x = np.pad((x - mean) / std, ((0, 0), (0, 1)),
             constant_values=BIAS_CONSTANT)
  t = 2.0 * np.eye(num_classes)[np.asarray(y)] - 1.0
  if len(x) >= x.shape[1]:
    eigs, q = np.linalg.eigh(x.T @ x)
    rhs, lhs = q.T @ (x.T @ t), q
  else:  # Fewer points than dimensions: the N x N kernel form.
    eigs, q = np.linalg.eigh(x @ x.T)
    rhs, lhs = q.T @ t, x.T @ q
  return {"eigs": eigs, "rhs": rhs, "lhs": lhs, "mean": mean, "std": std}


def ridge_weights(cache, l2):
  """W f32[D + 1, C] = (X^T X + l2 I)^-1 X^T Y from a `ridge_fit` cache."""
  return (cache["lhs"] / (cache["eigs"] + l2)[None, :]) @ cache["rhs"]


def ridge_predict(cache, w, x):
  """Predicted classes of features x."""
  x = (np.asarray(x, np.float64) - cache["mean"]) / cache["std"]
  x = np.pad(x, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
  return np.argmax(x @ w, axis=1)


def ridge_fewshot(x, y, x_val, y_val, x_test, y_test, *, num_classes,
                  l2_regs=DEFAULT_L2_REGS):
  """Ridge few-shot accuracy with l2 chosen on (x_val, y_val).

  Returns:
    (test accuracy, chosen l2).
  """
  cache = ridge_fit(x, y, num_classes)
  scores = {l2: float(np.mean(ridge_predict(
      cache, ridge_weights(cache, l2), x_val) == y_val)) for l2 in l2_regs}
  best = max(scores, key=lambda l2: (scores[l2], l2))
  acc = float(np.mean(ridge_predict(cache, ridge_weights(cache, best),
                                    x_test) == y_test))
  return acc, best


def fewshot_results(x_train, y_train, x_test, y_test, *, num_classes,
                    shots=(1, 2, 4, 8, 16), seeds=3, val_fraction=0.2,
                    seed=0, wds=linear_probe.DEFAULT_WDS, steps=200,
                    l2_regs=DEFAULT_L2_REGS, ridge=True, probe=True):
  """Few-shot accuracies, mean and std over seeds.

  Args:
    x_train, y_train: train-split features and labels.
    x_test, y_test: test-split features and labels (only scored).
    num_classes: number of classes.
    shots: k values.
    seeds: number of draws of the shots per k.
    val_fraction: part of train held out to choose wd / l2 (never drawn as
      shots).
    seed: base seed (held-out split; draw s of k uses seed + s).
    wds: probe weight decays; steps: L-BFGS iterations.
    l2_regs: ridge regularisation values.
    ridge, probe: which classifiers to run.

  Returns:
    dict "<k>shot", "<k>shot_std", "<k>shot_ridge", "<k>shot_ridge_std" ->
    float.
  """
  pool, val = linear_probe.split_val(len(x_train), val_fraction, seed)
  x_pool, y_pool = x_train[pool], y_train[pool]
  x_val, y_val = x_train[val], y_train[val]
  out = {}
  for k in shots:
    probe_acc, ridge_acc = [], []
    for s in range(seeds):
      idx = sample_shots(y_pool, k, num_classes, seed + s)
      xs, ys = x_pool[idx], y_pool[idx]
      if probe:
        wd, _ = linear_probe.select_wd(xs, ys, x_val, y_val,
                                       num_classes=num_classes, wds=wds,
                                       steps=steps)
        params = linear_probe.fit_logistic(xs, ys, wd,
                                           num_classes=num_classes,
                                           steps=steps)
        probe_acc.append(linear_probe.accuracy(params, x_test, y_test))
      if ridge:
        ridge_acc.append(ridge_fewshot(xs, ys, x_val, y_val, x_test, y_test,
                                       num_classes=num_classes,
                                       l2_regs=l2_regs)[0])
    if probe:
      out[f"{k}shot"] = float(np.mean(probe_acc))
      out[f"{k}shot_std"] = float(np.std(probe_acc))
    if ridge:
      out[f"{k}shot_ridge"] = float(np.mean(ridge_acc))
      out[f"{k}shot_ridge_std"] = float(np.std(ridge_acc))
  return out


@registry.register("evaluator", "fewshot")
class Evaluator:
  """Few-shot evaluator (see the module docstring).

  Args:
    predict_fn: `(params, image=None, text=None) -> (zimg, ztxt, aux)`.
    mesh: the Mesh.
    data: source spec.
    train_split, test_split: where shots are drawn from / what is scored.
    pp: pp string giving "image" and the label key.
    shots: k values.
    seeds: draws per k.
    batch_size: global eval batch size.
    label_key: name of the label field.
    val_fraction, seed, wds, steps, l2_regs, ridge, probe: see
      `fewshot_results`.
    normalize: L2-normalise features first.
    data_dir: data directory.
    name: dataset name in metric keys (default from `data`).
  """

  def __init__(self, predict_fn, *, mesh, data, pp, train_split="train",
               test_split="test", shots=(1, 2, 4, 8, 16), seeds=3,
               batch_size=256, label_key="label", val_fraction=0.2, seed=0,
               wds=linear_probe.DEFAULT_WDS, steps=200,
               l2_regs=DEFAULT_L2_REGS, ridge=True, probe=True,
               normalize=True, data_dir=None, name=None):
    self.features = linear_probe.FeatureExtractor(
        predict_fn, mesh=mesh, data=data, pp=pp, batch_size=batch_size,
        label_key=label_key, data_dir=data_dir)
    self.train_split, self.test_split = train_split, test_split
    self.label_key, self.normalize = label_key, normalize
    self.options = dict(shots=tuple(shots), seeds=seeds,
                        val_fraction=val_fraction, seed=seed,
                        wds=tuple(wds), steps=steps,
                        l2_regs=tuple(l2_regs), ridge=ridge, probe=probe)
    self.name = name or common.dataset_label(data)

  def run(self, params):
    """Yields (metric_name, value) pairs."""
    prefix = f"fewshot/{self.name}"
    skipped = common.Skipped()
    x_train, y_train = self.features(params, self.train_split, desc=prefix,
                                     skipped=skipped)
    x_test, y_test = self.features(params, self.test_split, desc=prefix,
                                   skipped=skipped)
    if self.normalize:
      x_train = common.l2_normalize(x_train)
      x_test = common.l2_normalize(x_test)
    num_classes = linear_probe.num_classes_of(
        self.features.source(self.train_split), self.label_key, y_train)
    results = fewshot_results(x_train, y_train, x_test, y_test,
                              num_classes=num_classes, **self.options)
    for k, v in results.items():
      yield f"{prefix}/{k}", v
    yield from skipped.metrics(prefix)
