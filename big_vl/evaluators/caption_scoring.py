"""Zero-shot classification by a captioner's likelihood (CapPa's protocol).

Each class is scored by how likely the captioner finds its prompts given
the image: the summed log-probability of a prompt's tokens (teacher forced,
padding not counted), averaged over the templates; the image gets the class
with the highest score. The metrics have the contrastive zero-shot
evaluator's names, so the two compare directly:

    config.evals.caption_zeroshot = dict(
        type="caption_scoring", data="tfds:big_vl_demo_shapes",
        split="test", pp_img="decode|resize(32)|value_range(-1,1)|"
        "keep('image','label')", pp_txt="tokenize(max_len=24)",
        templates="demo_shapes", batch_size=64, name="demo_shapes_scored")

Metrics: zeroshot/<name>/top1, top5, mean_per_class_recall, skipped. Give
`name` when the config also has a contrastive `zeroshot` evaluator on the
same data (CoCa), so that the keys differ.

Cost: every prompt is decoded against every image: the decoder runs
(classes x templates) times per image batch, one prompt at a time (a
`lax.map`), holding f32[batch, L - 1, vocab] logits.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from big_vl import registry
from big_vl.data import sources
from big_vl.evaluators import common
from big_vl.evaluators import prompts
from big_vl.evaluators import zeroshot
from big_vl.models import captioner as captioner_lib
from big_vl.models import naflex


def prompt_log_likelihoods(model, params, image, tokens, pad_id=0):
  """f32[B, K]: log p(prompt k | image b) of every image and prompt.

  Args:
    model: a captioner (`encode`, `decode_tokens`).
    params: its params.
    image: f32[B, H, W, 3].
    tokens: int32[K, L] tokenized prompts (start token, words, end token,
      padding `pad_id`); L <= the model's max_len.
    pad_id: the padding id (its targets do not count).

  Returns:
    The summed log-probabilities of each prompt's tokens after the first.
  """
  variables = {"params": params}
  memory = model.apply(variables, image, method="encode")
  batch = naflex.batch_size(image)

  def one(prompt):  # [L] -> [B]
    inputs = jnp.broadcast_to(prompt[None, :-1], (batch, prompt.shape[0] - 1))
    logits = model.apply(variables, inputs, memory, method="decode_tokens")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target = prompt[1:]
    picked = jnp.take_along_axis(
        logp, jnp.broadcast_to(target[None, :, None], (batch,
                                                        target.shape[0], 1)),
        axis=-1)[..., 0]
    return jnp.sum(picked * (target != pad_id)[None], axis=1)

  return jax.lax.map(one, tokens).T


@registry.register("evaluator", "caption_scoring")
class Evaluator:
  """Zero-shot classification by prompt likelihood.

  Args:
    predict_fn: unused (the evaluator scores with `model`).
    mesh: the Mesh the params live on.
    data, split, pp_img, pp_txt, templates, class_names, batch_size,
      label_key, data_dir, name: as the `zeroshot` evaluator's.
    model: the captioner (the trainer and `big_vl.evaluate` pass it).
    pad_id: the tokenizer's padding id.
  """

  def __init__(self, predict_fn, *, mesh, data, split, pp_img, pp_txt,
               model=None, templates="clip_simple", class_names=None,
               batch_size=64, label_key="label", data_dir=None, name=None,
               pad_id=0):
    del predict_fn
    if model is None or not captioner_lib.decodes(model):
      raise ValueError("caption_scoring: the model is not a captioner "
                       f"({type(model).__name__}).")
    self.mesh = mesh
    self.source = sources.get(data, split=split, data_dir=data_dir)
    self.class_names = zeroshot.resolve_class_names(
        self.source, class_names, label_key, data, "caption_scoring")
    self.templates = prompts.get(templates)
    self.pp_img, self.pp_txt = pp_img, pp_txt
    self.batch_size, self.label_key = batch_size, label_key
    self.name = name or common.dataset_label(data)
    texts = [t.format(c) for c in self.class_names for t in self.templates]
    self.tokens = np.asarray(common.pp_tokenizer(pp_txt)(texts), np.int32)
    scores = functools.partial(prompt_log_likelihoods, model, pad_id=pad_id)
    self._fn = jax.jit(lambda p, b, tokens: {
        "scores": scores(p, naflex.image_input(b), tokens), "label": b[label_key]})

  def run(self, params):
    """Yields (metric_name, value) pairs."""
    prefix = f"zeroshot/{self.name}"
    skipped = common.Skipped()
    tokens = jnp.asarray(self.tokens)
    out = common.run_over(self.source, pp=self.pp_img,
                          batch_size=self.batch_size, mesh=self.mesh,
                          fn=lambda p, b: self._fn(p, b, tokens),
                          params=params, desc=prefix, skipped=skipped)
    n_class, n_template = len(self.class_names), len(self.templates)
    scores = out["scores"].reshape(-1, n_class, n_template).mean(axis=2)
    for k, v in zeroshot.classification_metrics(
        scores, out["label"], n_class).items():
      yield f"{prefix}/{k}", v
    yield from skipped.metrics(prefix)
