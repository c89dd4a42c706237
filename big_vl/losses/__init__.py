"""Contrastive losses over the global batch.

Every loss has the signature

    loss_fn(zimg, ztxt, aux, *, mesh=None, **options) -> (loss, metrics)

where `zimg` and `ztxt` are L2-normalised `[B, D]` embeddings of the global
batch (row i of each is a positive pair), `aux` is the model's aux dict with
the temperature `t` (and the bias `b` for sigmoid), and `metrics` is a dict of
scalars to log.

Select one by name as an objective of a config (big_vl/objectives.py):
`config.objectives = dict(contrastive=dict(loss="sigmoid", weight=1.0,
impl="ring"))`; every other key of the block is passed as an option (`get`).
The trainer calls them through `objectives`, with the model's outputs dict
as `aux`.

Two implementations of each loss, chosen with the `impl` option:

- `impl="dense"` (default): under `jax.jit` with sharded inputs the code sees
  the whole global batch and XLA inserts the collectives. It builds the full
  `[B, B]` logits, partitioned by XLA: O(B_global^2) logits in all, about
  O(B_global * B_local) per device, plus whatever XLA all-gathers.
- `impl="ring"`: a `jax.shard_map` over all batch axes of the mesh. Images
  stay where they are, text blocks travel around a ring of the
  n = B_global / B_local devices (`jax.lax.ppermute`), and at each ring step
  a device meets one `[B_local, B_local]` block of logits (SigLIP's
  "chunked" sigmoid, a blocked / online-logsumexp softmax). It computes that
  block in tiles of at most `block_size` x `block_size` (option
  `block_size`, default `DEFAULT_BLOCK_SIZE`; None: the whole block at
  once), so it holds O(block_size^2) logits and O(B_local * D) embeddings
  per device: linear in the global batch for a fixed block size and device
  count. The backward pass is a second ring pass (a `jax.custom_vjp`) that
  recomputes the tiles instead of storing them and sends each text block's
  gradient along with it, with the same memory; nothing of size
  B_global * B_local (or B_local^2 when B_local > block_size) is stored.

Both give the same loss, metrics and gradients w.r.t. `zimg`, `ztxt`, `t` and
`b` (tests/test_losses_distributed.py checks this on 1 to 8 devices).

The room (`big_vl/losses/`): `contrastive.py` (softmax, sigmoid), `caption.py`
(a captioner's token cross-entropy, over the outputs dict), `filip.py`
(FILIP's token-wise late interaction), `dreamlip.py` (DreamLIP's
sub-caption losses), `distill.py` (a teacher's similarity distributions),
the batch-wide ones each dense and ring, on `ring.py` (the one ring
engine); `masked_prediction.py` (a teacher's patch features at masked
patches, per patch) and `self_distillation.py` (DINO / SILC's
local-to-global loss over multi-crop views), both on the model's extra
views (their functions' `needs_views`); `preference.py` (a rater's choice
among K candidate images or captions: HPS v2, Compress & Align). Loss modules import jax, `big_vl.registry`, `big_vl.sharding`,
`ring` and (filip, dreamlip: for their global / grouping terms)
`contrastive`; nothing here imports the trainer, the models or the data.
"""

import functools

from big_vl import config as config_lib
from big_vl import registry
from big_vl.losses import caption
from big_vl.losses import contrastive
from big_vl.losses import distill
from big_vl.losses import dreamlip
from big_vl.losses import filip
from big_vl.losses import masked_prediction
from big_vl.losses import preference
from big_vl.losses import ring
from big_vl.losses import self_distillation

IMPLS = ring.IMPLS
DEFAULT_BLOCK_SIZE = ring.DEFAULT_BLOCK_SIZE
softmax_loss = contrastive.softmax_loss
sigmoid_loss = contrastive.sigmoid_loss
filip_loss = filip.filip_loss
dreamlip_loss = dreamlip.dreamlip_loss
caption_loss = caption.caption_loss
distill_loss = distill.distill_loss
masked_prediction_loss = masked_prediction.masked_prediction_loss
self_distillation_loss = self_distillation.self_distillation_loss
preference_loss = preference.preference_loss


def get(name, where="config.loss", meta_keys=("name",), **options):
  """The loss `name` with `options` bound: `loss_fn(zimg, ztxt, aux, *, mesh)`.

  Args:
    name: registered loss name, e.g. "softmax" or "sigmoid".
    where: the config block of the options, for messages (an objective's
      is "config.objectives.NAME").
    meta_keys: keys of that block that are not options (allowed, ignored).
    **options: keyword options of that loss, e.g. `impl="ring"`,
      `block_size=512`.

  Returns:
    A function `(zimg, ztxt, aux, *, mesh=None) -> (loss, metrics)`.

  Raises:
    KeyError: for an unknown loss name.
    ValueError: for an option the loss does not take (named as
      `WHERE.KEY`), if `impl` is given and is not one of `IMPLS`, or
      `block_size` is given and is neither a positive int nor None.
  """
  fn = registry.get("loss", name)
  config_lib.check_signature(
      options, fn, where, extra=meta_keys,
      skip=("zimg", "ztxt", "aux", "outputs", "batch", "mesh"))
  if "impl" in options:
    ring.check_impl(options["impl"], name)
  if "block_size" in options:
    ring.check_block_size(options["block_size"])
  return functools.partial(fn, **options) if options else fn
