"""Token cross-entropy of a captioner ("caption" loss).

Reads the model's `outputs["logits"]` (f32[B, L - 1, V], the prediction of
each next token) and the batch's caption ids `batch["text"]` (int[B, L];
or [B, T, L] with logits [B, T, L - 1, V]: T sequences per image, LocCa's
tasks, each row counted like a caption):
the targets are `text[:, 1:]`; padding (id `pad_id`, 0 for CLIP BPE) is not
counted. The loss is the mean over the batch's real target tokens (every
token weighs the same, as big_vision's and open_clip's captioning losses);
`label_smoothing` spreads that much target mass uniformly over the
vocabulary.

    config.objectives = dict(caption=dict(loss="caption", weight=1.0))

With `weights_key`, a batch field of per-token weights (float or bool,
shaped like `text`; entry t weighs the prediction of `text[:, t]`) also
scales each target: a prompt that conditions the caption but is not to be
predicted (LocCa's task prefixes) gets weight 0.

Metrics: "token_acc" (top-1 accuracy over the counted tokens), "perplexity"
(exp of the unsmoothed loss).
"""

import jax
import jax.numpy as jnp

from big_vl import registry


@registry.register("loss", "caption")
def caption_loss(outputs, batch, *, mesh=None, label_smoothing=0.0,
                 pad_id=0, weights_key=None, text_key="text"):
  """Mean token cross-entropy of `outputs["logits"]` vs `batch["text"][:, 1:]`.

  Args:
    outputs: the model's outputs dict with "logits" f32[B, L - 1, V].
    batch: the step's batch with "text" int[B, L].
    mesh: unused (XLA partitions the batch).
    label_smoothing: e in [0, 1): the target is (1 - e) on the token plus
      e / V everywhere.
    pad_id: the padding id; those targets do not count.
    weights_key: optional batch field [B, L] of per-token weights (see the
      module docstring).
    text_key: the batch field of the caption ids: "text" for a captioner,
      "caption" (`two_towers.CAPTION_KEY`) for a two-tower model with a
      decoder, whose "text" is the contrastive text.

  Returns:
    (loss, {"token_acc", "perplexity"}).
  """
  del mesh
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1) "
                     "(the `label_smoothing` option of its objective).")
  if text_key not in batch:
    raise ValueError(f"caption loss: text_key={text_key!r} is not a field "
                     f"of the batch (fields: {sorted(batch)}).")
  text = batch[text_key]
  length = text.shape[-1]
  # [B, T, L] (several sequences per image, LocCa) counts as B * T rows.
  logits = outputs["logits"].reshape(-1, length - 1,
                                     outputs["logits"].shape[-1])
  targets = text.reshape(-1, length)[:, 1:]
  real = (targets != pad_id).astype(jnp.float32)
  if weights_key is not None:
    if weights_key not in batch:
      raise ValueError(f"caption loss: weights_key={weights_key!r} is not a "
                       f"field of the batch (fields: {sorted(batch)}).")
    weights = batch[weights_key]
    if weights.shape != text.shape:
      raise ValueError(f"caption loss: {weights_key!r} is shaped "
                       f"{weights.shape}, the text {text.shape}; they must "
                       "match.")
    real = real * weights.reshape(-1, length)[:, 1:].astype(jnp.float32)
  count = jnp.maximum(jnp.sum(real), 1.0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  plain = jnp.sum(nll * real) / count
  loss = plain
  if label_smoothing:
    uniform = -jnp.mean(logp, axis=-1)
    loss = jnp.sum(((1 - label_smoothing) * nll + label_smoothing * uniform)
                   * real) / count
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return loss, {"token_acc": jnp.sum(correct * real) / count,
                "perplexity": jnp.exp(plain)}
