"""Zero-shot classification with a prompt ensemble.

Each class gets the mean of its normalised prompt embeddings ("a photo of a
{}." for every template), renormalised; an image is assigned the class whose
embedding has the highest cosine similarity with its own.

Config block (all keys are constructor arguments):

    config.evals.zeroshot = dict(
        type="zeroshot", every=500,
        data="tfds:big_vl_demo_shapes", split="test",
        pp_img="decode|resize(32)|value_range(-1,1)|keep('image','label')",
        pp_txt="tokenize(max_len=32)",
        templates="demo_shapes", batch_size=256)

`templates` and `class_names` also take shipped set names ("imagenet",
"cifar10", ...; see `prompts`); class names default to the dataset's
ClassLabel names.

Metrics: zeroshot/<dataset>/top1, top5, mean_per_class_recall (over the
records that could be used), and zeroshot/<dataset>/skipped (records left
out: undecodable, missing, ...) with skipped/<reason> for each reason seen
(see `common.Skipped`).
"""

import jax
import numpy as np

from big_vl import registry
from big_vl.data import sources
from big_vl.evaluators import common, prompts
from big_vl.models import naflex


def classifier(text_encode_fn, tokenizer, classnames, templates):
  """Zero-shot classifier weights from a prompt ensemble.

  Each class's weight is the mean of its L2-normalised prompt embeddings
  (`template.format(class_name)` for every template), renormalised.

  Args:
    text_encode_fn: maps int32 tokens [N, L] to embeddings [N, D].
    tokenizer: maps a list of N strings to int32 tokens [N, L].
    classnames: list of C class names.
    templates: list of T templates, each with one "{}".

  Returns:
    f32[D, C] with unit-norm columns: `logits = zimg @ classifier(...)`.
  """
  classnames, templates = list(classnames), list(templates)
  texts = [t.format(c) for c in classnames for t in templates]
  tokens = np.asarray(tokenizer(texts), np.int32)
  z = np.asarray(text_encode_fn(tokens), np.float32)
  if z.shape[0] != len(texts):
    raise ValueError(f"text_encode_fn gave {z.shape[0]} embeddings for "
                     f"{len(texts)} prompts.")
  z = common.l2_normalize(z.reshape(len(classnames), len(templates), -1))
  return common.l2_normalize(z.mean(axis=1)).T


def resolve_class_names(source, class_names, label_key, data, evaluator):
  """The class names of a zero-shot evaluator's config.

  Args:
    source: the evaluated source.
    class_names: a list, a shipped set's name (`prompts.classnames`), or
      None for the dataset's ClassLabel names.
    label_key: the label field.
    data: the source spec, for the message.
    evaluator: the evaluator type, for the message.

  Returns:
    A list of class names.

  Raises:
    ValueError: none are given and the dataset has none.
  """
  if isinstance(class_names, str):
    class_names = prompts.classnames(class_names)
  names = list(class_names or sources.class_names(source, label_key) or [])
  if not names:
    raise ValueError(f"{evaluator}: no class names for {data!r}; give "
                     "class_names in the config.")
  return names


def classification_metrics(logits, labels, num_classes):
  """top1, top5 and mean per-class recall from logits [N, C] and labels [N]."""
  order = np.argsort(-logits, axis=1)
  top1 = order[:, 0] == labels
  top5 = (order[:, :5] == labels[:, None]).any(axis=1)
  recalls = [top1[labels == c].mean() for c in range(num_classes)
             if (labels == c).any()]
  return {"top1": float(top1.mean()), "top5": float(top5.mean()),
          "mean_per_class_recall": float(np.mean(recalls))}


@registry.register("evaluator", "zeroshot")
class Evaluator:
  """Zero-shot classification evaluator.

  Args:
    predict_fn: `(params, image=None, text=None) -> (zimg, ztxt, aux)`.
    mesh: the Mesh the params live on.
    data: source spec, e.g. "tfds:big_vl_demo_shapes".
    split: split to evaluate.
    pp_img: pp string giving "image" and the label key.
    pp_txt: pp string tokenizing "text".
    templates: template set name or list (see `prompts.get`).
    class_names: list, a shipped set name (see `prompts.classnames`), or None
      to read them from the dataset's ClassLabel.
    batch_size: global eval batch size.
    label_key: name of the label field.
    data_dir: data directory.
    name: dataset name in metric keys (default from `data`).
  """

  def __init__(self, predict_fn, *, mesh, data, split, pp_img, pp_txt,
               templates="clip_simple", class_names=None, batch_size=256,
               label_key="label", data_dir=None, name=None):
    self.predict_fn = predict_fn
    self.mesh = mesh
    self.source = sources.get(data, split=split, data_dir=data_dir)
    self.class_names = resolve_class_names(self.source, class_names,
                                           label_key, data, "zeroshot")
    self.templates = prompts.get(templates)
    self.pp_img, self.pp_txt = pp_img, pp_txt
    self.batch_size = batch_size
    self.label_key = label_key
    self.name = name or common.dataset_label(data)
    self._text_fn = common.text_fn(predict_fn)
    self._image_fn = jax.jit(lambda p, b: {
        "z": predict_fn(p, image=naflex.image_input(b))[0],
        "label": b[label_key]})

  def run(self, params):
    """Yields (metric_name, value) pairs."""
    encode = lambda tokens: common.embed_tokens(
        tokens, batch_size=self.batch_size, mesh=self.mesh,
        predict_fn=self.predict_fn, params=params, fn=self._text_fn)
    weights = classifier(encode, common.pp_tokenizer(self.pp_txt),
                         self.class_names, self.templates)
    prefix = f"zeroshot/{self.name}"
    skipped = common.Skipped()
    out = common.run_over(self.source, pp=self.pp_img,
                          batch_size=self.batch_size, mesh=self.mesh,
                          fn=self._image_fn, params=params, desc=prefix,
                          skipped=skipped)
    logits = out["z"] @ weights
    metrics = classification_metrics(logits, out["label"],
                                     len(self.class_names))
    for k, v in metrics.items():
      yield f"{prefix}/{k}", v
    yield from skipped.metrics(prefix)
