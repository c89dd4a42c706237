"""The few-shot protocol: shots, a validation split from training data, and
test labels that selection cannot read.

For each number of shots k and each seed, `make_task` draws k training
examples per class from the training pool and, disjoint from them, a
validation set of `val_shots(k)` examples per class (also from the training
pool). A method sees a `Task`: training and validation features with
labels, test features *without* labels, the zero-shot classifier and the
frozen backbone. It chooses every hyper-parameter on the validation set and
returns test logits; only then does `score` open the test labels.

Test labels live in a `HiddenLabels` object that raises on any read until
`score` reveals it, so a method that tried to tune on the test split would
fail (tested): the protocol is honest by construction, not by convention.
(The public Tip-Adapter ImageNet script tunes alpha and beta on the test
set; here that cannot happen.)

Base-to-new (CoCoOp's generalisation test): `base_to_new_tasks` splits the
classes into a base half (trained on) and a new half (never seen); a method
is scored on base-class test images among base classes, on new-class test
images among new classes, and by the harmonic mean of the two.
"""

import dataclasses

import numpy as np

from big_vl.evaluators import fewshot
from big_vl.evaluators import zeroshot


class HiddenLabelsError(RuntimeError):
  """Raised when test labels are read before the method's predictions."""


class HiddenLabels:
  """Test labels that can be read only after `reveal()`.

  Args:
    labels: int[N] labels.
  """

  def __init__(self, labels):
    self._labels = np.asarray(labels)
    self._revealed = False

  def __len__(self):
    return len(self._labels)

  def reveal(self):
    """Returns the labels (the scorer calls this after predicting)."""
    self._revealed = True
    return self._labels

  def _refuse(self, *args, **kwargs):
    raise HiddenLabelsError(
        "Test labels were read before the method made its predictions: "
        "hyper-parameters must be chosen on the validation split.")

  __array__ = __getitem__ = __iter__ = __eq__ = __ne__ = __lt__ = _refuse
  __le__ = __gt__ = __ge__ = __bool__ = __int__ = __float__ = _refuse
  __hash__ = None

  def __getattr__(self, name):
    raise HiddenLabelsError(
        f"Test labels were read ({name!r}) before the method made its "
        "predictions: hyper-parameters must be chosen on the validation "
        "split.")


@dataclasses.dataclass
class Task:
  """What an adaptation method is given.

  Attributes:
    train_x, train_y: the k-shot training features f32[k*C, D] (unit rows)
      and labels int[k*C] in [0, C).
    val_x, val_y: validation features and labels, drawn from the training
      data, disjoint from the shots.
    test_x: test features f32[N, D]; their labels are not here.
    classnames: the C class names (label order).
    zs_weights: f32[D, C] zero-shot prompt-ensemble classifier.
    templates: the prompt templates behind `zs_weights`.
    scale: the backbone's logit scale (exp of its temperature param).
    backbone: the frozen `Backbone` (prompt methods run its text tower).
    seed: the seed of this (shots, seed) run, for initialisations.
  """
  train_x: np.ndarray
  train_y: np.ndarray
  val_x: np.ndarray
  val_y: np.ndarray
  test_x: np.ndarray
  classnames: list
  zs_weights: np.ndarray
  templates: list
  scale: float
  backbone: object = None
  seed: int = 0

  @property
  def num_classes(self):
    return len(self.classnames)


def val_shots(k, setting="auto"):
  """Validation examples per class for k shots ("auto": min(k, 4), as
  CoOp's few-shot splits; an int: that many)."""
  return min(k, 4) if setting == "auto" else int(setting)


def draw_split(labels, k, num_classes, seed, val_setting="auto"):
  """(shot indices, validation indices) into the training pool.

  Args:
    labels: int[P] labels of the training pool.
    k: shots per class.
    num_classes: number of classes.
    seed: seed (shots and validation differ per seed).
    val_setting: see `val_shots`.

  Returns:
    Two disjoint sorted index arrays: k per class, then `val_shots(k)` per
    class.
  """
  shots = fewshot.sample_shots(labels, k, num_classes, seed)
  rest = np.setdiff1d(np.arange(len(labels)), shots)
  val = fewshot.sample_shots(labels[rest], val_shots(k, val_setting),
                             num_classes, seed + 10_000)
  return shots, np.sort(rest[val])


def make_task(pool_x, pool_y, test_x, *, k, seed, classnames, zs_weights,
              templates, scale, backbone=None, val_setting="auto"):
  """The `Task` of k shots and one seed from a featurised training pool."""
  shots, val = draw_split(pool_y, k, len(classnames), seed, val_setting)
  return Task(train_x=pool_x[shots], train_y=pool_y[shots],
              val_x=pool_x[val], val_y=pool_y[val], test_x=test_x,
              classnames=list(classnames), zs_weights=zs_weights,
              templates=list(templates), scale=scale, backbone=backbone,
              seed=seed)


def score(logits, labels, num_classes=None):
  """Accuracy metrics of test logits; reveals `labels` if hidden.

  Returns:
    {"acc1", "acc5" (if >= 5 classes), "mean_per_class_recall"}.
  """
  if isinstance(labels, HiddenLabels):
    labels = labels.reveal()
  logits = np.asarray(logits)
  metrics = zeroshot.classification_metrics(
      logits, np.asarray(labels), num_classes or logits.shape[1])
  out = {"acc1": metrics["top1"],
         "mean_per_class_recall": metrics["mean_per_class_recall"]}
  if logits.shape[1] >= 5:
    out["acc5"] = metrics["top5"]
  return out


def accuracy(logits, labels):
  """Top-1 accuracy of logits [N, C] against int[N] labels."""
  return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def base_new_classes(num_classes):
  """(base, new) class ids: the first half (rounded up) and the rest."""
  half = (num_classes + 1) // 2
  return np.arange(half), np.arange(half, num_classes)


def restrict(x, y, classes):
  """Rows of (x, y) whose label is in `classes`, relabelled 0..len-1."""
  classes = np.asarray(classes)
  keep = np.isin(y, classes)
  remap = {int(c): i for i, c in enumerate(classes)}
  return x[keep], np.array([remap[int(v)] for v in y[keep]], np.int64)


def harmonic_mean(a, b):
  return 0.0 if a + b == 0 else 2 * a * b / (a + b)
