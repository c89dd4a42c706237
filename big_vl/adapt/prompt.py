"""Prompt learning with frozen towers: CoOp and CoCoOp.

CoOp (Zhou et al., 2022a) replaces a hand-written prompt such as "a photo of
a {class}." by M learned context vectors in the text tower's input
embedding space: the tower reads [SOT, ctx_1 .. ctx_M, class tokens, ".",
EOT]. The class tokens can also sit in the middle of the context or in
front of it; the context is shared by all classes or class-specific (CSC).
CoCoOp (Zhou et al., 2022b) adds a meta-network (Linear-ReLU-Linear, D ->
D/16 -> width) that maps each image feature to a shift pi added to every
context vector, so each image gets its own prompts.

The layout of a prompt comes from the tokenizer itself: the prompt is
written with a placeholder word ("X X X X {class}.", as CoOp does), and the
positions holding the placeholder's token become context slots. Any
tokenizer big_vl has (CLIP BPE, WordPiece, SentencePiece) works.
Initialising the context from words (`ctx_init="a photo of a"`) puts those
words' token embeddings in the slots, so before any training CoOp's
prediction is the hand-written prompt's zero-shot prediction (tested).

    layout = PromptLayout.build(backbone.tokenize, classnames, n_ctx=4)
    ctx = layout.init_context(backbone, "a photo of a")       # [M, width]
    z = class_features(backbone, backbone.device_params, layout, ctx)

Methods (`coop(task, ...)`, `cocoop(task, ...)`) follow `adapters`: the
number of steps is chosen on the validation split; results carry
"classify(x, classnames)" for base-to-new evaluation with new classes.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from big_vl.adapt import fit
from big_vl.adapt import protocol

PLACEHOLDER = "X"
POSITIONS = ("end", "middle", "front")


def _placeholder_id(tokenize):
  """The token id of the placeholder word under `tokenize`."""
  # The template's ids (start / end / padding): those two one-word texts
  # share (an empty text is not tokenized: `tokenize` skips it as a bad
  # caption).
  a, b = np.asarray(tokenize(["a", "b"]))
  template = set(a.tolist()) & set(b.tolist())
  word = set(np.asarray(tokenize([PLACEHOLDER]))[0].tolist())
  ids = word - template
  if len(ids) != 1:
    raise ValueError(f"The tokenizer splits {PLACEHOLDER!r} into "
                     f"{len(ids)} new tokens; prompt learning needs one.")
  return ids.pop()


def _prompt_text(name, n_ctx, position):
  ctx = [PLACEHOLDER] * n_ctx
  if position == "end":
    return " ".join(ctx + [f"{name}."])
  if position == "front":
    return " ".join([name] + ctx) + "."
  half = n_ctx // 2
  return " ".join(ctx[:half] + [name] + ctx[half:]) + "."


@dataclasses.dataclass
class PromptLayout:
  """Token ids of every class prompt and where the context slots are.

  Attributes:
    tokens: int32[C, L] the prompts with placeholder tokens in the slots.
    slots: int32[C, L]: j at the position of context vector j, -1 elsewhere.
    n_ctx: the number of context vectors M.
    position: "end", "middle" or "front" (where the class tokens are).
    classnames: the C class names.
  """
  tokens: np.ndarray
  slots: np.ndarray
  n_ctx: int
  position: str
  classnames: list

  @classmethod
  def build(cls, tokenize, classnames, n_ctx=4, position="end"):
    """Tokenizes "X X .. X {class}." (or middle/front) for every class.

    Raises:
      ValueError: if a prompt is cut by the tokenizer's length or a class
        name contains the placeholder word where it would be ambiguous.
    """
    if position not in POSITIONS:
      raise ValueError(f"position={position!r}; use one of {POSITIONS}.")
    x_id = _placeholder_id(tokenize)
    texts = [_prompt_text(n, n_ctx, position) for n in classnames]
    tokens = np.asarray(tokenize(texts), np.int32)
    slots = np.full(tokens.shape, -1, np.int32)
    for c, row in enumerate(tokens):
      where = np.flatnonzero(row == x_id)
      if len(where) < n_ctx or (position == "middle" and
                                len(where) != n_ctx):
        raise ValueError(
            f"Prompt {texts[c]!r} tokenizes to {len(where)} placeholder "
            f"tokens, not {n_ctx} (cut by the text length, or the class "
            "name contains the placeholder word).")
      # The class name may itself contain the placeholder word: the
      # context is the first M (end), or the last M (front) of them.
      where = where[:n_ctx] if position != "front" else where[-n_ctx:]
      slots[c, where] = np.arange(n_ctx)
    return cls(tokens, slots, n_ctx, position, list(classnames))

  def init_context(self, backbone, ctx_init=None, *, class_specific=False,
                   seed=0):
    """Initial context vectors [M, width] ([C, M, width] if class-specific).

    Args:
      backbone: the `Backbone` (for the token embedding table and
        tokenizer).
      ctx_init: words whose token embeddings start the context (as many
        tokens as M; only with position "end"), or None for N(0, 0.02^2).
      class_specific: one context per class (CoOp's CSC).
      seed: seed of the random initialisation.

    Raises:
      ValueError: if `ctx_init` does not tokenize to the M slots.
    """
    table = np.asarray(backbone.token_embedding_table())
    width = table.shape[1]
    if ctx_init is None:
      shape = ((len(self.classnames),) if class_specific else ()) + (
          self.n_ctx, width)
      return jnp.asarray(np.random.default_rng(seed).normal(
          0, 0.02, shape).astype(np.float32))
    if self.position != "end":
      raise ValueError("ctx_init needs position='end' (the words then "
                       "stand where a hand-written prompt has them).")
    init = np.asarray(backbone.tokenize(
        [f"{ctx_init} {n}." for n in self.classnames]), np.int32)
    outside = self.slots < 0
    slot_ids = [init[c][self.slots[c] >= 0] for c in range(len(init))]
    if (init.shape != self.tokens.shape
        or np.any(init[outside] != self.tokens[outside])
        or any(not np.array_equal(s, slot_ids[0]) for s in slot_ids)):
      raise ValueError(f"ctx_init={ctx_init!r} does not tokenize to "
                       f"{self.n_ctx} tokens in front of the class name; "
                       "set n_ctx to its number of tokens.")
    ctx = table[slot_ids[0]]
    if class_specific:
      ctx = np.broadcast_to(ctx, (len(self.classnames),) + ctx.shape)
    return jnp.asarray(ctx, jnp.float32)

  def embeddings(self, table, ctx):
    """Token embeddings [C, L, width] with the context in its slots.

    Args:
      table: the token embedding table [vocab, width].
      ctx: [M, width] shared by all classes, or [C, M, width] one per
        class.
    """
    base = table[jnp.asarray(self.tokens)]                  # [C, L, W]
    slots = jnp.asarray(self.slots)
    index = jnp.maximum(slots, 0)
    if ctx.ndim == 2:
      filled = ctx[index]
    elif ctx.ndim == 3 and ctx.shape[0] == len(self.classnames):
      filled = jnp.take_along_axis(ctx, index[..., None], axis=1)
    else:
      raise ValueError(f"Context of shape {ctx.shape} for "
                       f"{len(self.classnames)} classes.")
    return jnp.where((slots >= 0)[..., None], filled.astype(base.dtype),
                     base)


def class_features(backbone, params, layout, ctx):
  """Unit-norm class text features [C, D] for a context (traceable)."""
  table = jnp.asarray(params["txt"]["Embed_0"]["embedding"])
  return backbone.text_features(params, jnp.asarray(layout.tokens),
                                layout.embeddings(table, ctx))


def per_image_class_features(backbone, params, layout, ctx, shift):
  """CoCoOp: features [B, C, D] for shared ctx [M, W] + shift [B, W]."""
  table = jnp.asarray(params["txt"]["Embed_0"]["embedding"])
  per_image = ctx[None] + shift[:, None, :]                 # [B, M, W]
  emb = jax.vmap(lambda c: layout.embeddings(table, c))(per_image)
  b, c, l, w = emb.shape
  tokens = jnp.broadcast_to(jnp.asarray(layout.tokens), (b, c, l))
  z = backbone.text_features(params, tokens.reshape(b * c, l),
                             emb.reshape(b * c, l, w))
  return z.reshape(b, c, -1)


def _ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         labels).mean()


def coop(task, n_ctx=4, ctx_init="a photo of a", position="end",
         class_specific=False, steps=200, lr=2e-3, wd=0.0, eval_every=50):
  """CoOp: learned context vectors; the number of steps chosen on val."""
  bb = task.backbone
  layout = PromptLayout.build(bb.tokenize, task.classnames, n_ctx, position)
  ctx0 = layout.init_context(bb, ctx_init, class_specific=class_specific,
                             seed=task.seed)
  frozen = bb.device_params
  x, y = jnp.asarray(task.train_x), jnp.asarray(task.train_y)
  features = jax.jit(lambda ctx, lay=layout: class_features(bb, frozen, lay,
                                                            ctx))

  def loss_fn(ctx, index):
    z = class_features(bb, frozen, layout, ctx)
    return _ce(task.scale * x[index] @ z.T, y[index])

  def val_fn(ctx):
    return protocol.accuracy(task.scale * task.val_x @ np.asarray(
        features(ctx)).T, task.val_y)

  ctx, info = fit.train(ctx0, loss_fn, val_fn, num_examples=len(y),
                        steps=steps, lr=lr, wd=wd, eval_every=eval_every,
                        seed=task.seed)
  ctx = jnp.asarray(ctx)

  def classify(feats, classnames):
    if class_specific and list(classnames) != task.classnames:
      raise ValueError("Class-specific contexts do not transfer to other "
                       "classes.")
    lay = PromptLayout.build(bb.tokenize, classnames, n_ctx, position)
    z = np.asarray(jax.jit(lambda c: class_features(bb, frozen, lay, c))(
        ctx))
    return task.scale * np.asarray(feats, np.float32) @ z.T

  return {"logits": classify(task.test_x, task.classnames),
          "val_acc": info["val_acc"], "classify": classify,
          "hparams": {"n_ctx": n_ctx, "ctx_init": ctx_init or "random",
                      "position": position, "csc": class_specific,
                      "steps": info["steps"]}}


def _meta_init(dim, width, seed):
  rng = np.random.default_rng(seed)
  hidden = max(dim // 16, 1)
  return {"w1": jnp.asarray(rng.normal(0, dim ** -0.5, (dim, hidden)),
                            jnp.float32),
          "b1": jnp.zeros((hidden,)),
          "w2": jnp.asarray(rng.normal(0, hidden ** -0.5, (hidden, width)),
                            jnp.float32) * 0.1,
          "b2": jnp.zeros((width,))}


def _meta_shift(meta, feats):
  return jax.nn.relu(feats @ meta["w1"] + meta["b1"]) @ meta["w2"] + meta[
      "b2"]


def cocoop(task, n_ctx=4, ctx_init="a photo of a", steps=200, lr=2e-3,
           wd=0.0, batch_size=4, eval_every=50, chunk=32):
  """CoCoOp: context + per-image shift from a meta-network.

  Each step runs the text tower on batch_size x C prompts; prediction runs
  it on C prompts per test image (in chunks of `chunk` images), which is
  CoCoOp's known cost.
  """
  bb = task.backbone
  layout = PromptLayout.build(bb.tokenize, task.classnames, n_ctx, "end")
  width = bb.token_embedding_table().shape[1]
  params0 = {"ctx": layout.init_context(bb, ctx_init, seed=task.seed),
             "meta": _meta_init(task.train_x.shape[1], width, task.seed)}
  frozen = bb.device_params
  x, y = jnp.asarray(task.train_x), jnp.asarray(task.train_y)

  def logits_of(params, feats, lay):
    z = per_image_class_features(bb, frozen, lay, params["ctx"],
                                 _meta_shift(params["meta"], feats))
    return task.scale * jnp.einsum("bd,bcd->bc", feats, z)

  def loss_fn(params, index):
    return _ce(logits_of(params, x[index], layout), y[index])

  def predict(params, feats, lay):
    fn = jax.jit(lambda p, f: logits_of(p, f, lay))
    feats = np.asarray(feats, np.float32)
    out = []
    for start in range(0, len(feats), chunk):
      part = feats[start:start + chunk]
      padded = np.pad(part, ((0, chunk - len(part)), (0, 0)))
      out.append(np.asarray(fn(params, jnp.asarray(padded)))[:len(part)])
    return np.concatenate(out) if out else np.zeros((0, len(lay.classnames)))

  def val_fn(params):
    return protocol.accuracy(predict(params, task.val_x, layout), task.val_y)

  params, info = fit.train(params0, loss_fn, val_fn, num_examples=len(y),
                           steps=steps, lr=lr, wd=wd, batch_size=batch_size,
                           eval_every=eval_every, seed=task.seed)
  params = jax.tree.map(jnp.asarray, params)

  def classify(feats, classnames):
    lay = PromptLayout.build(bb.tokenize, classnames, n_ctx, "end")
    return predict(params, feats, lay)

  return {"logits": classify(task.test_x, task.classnames),
          "val_acc": info["val_acc"], "classify": classify,
          "hparams": {"n_ctx": n_ctx, "ctx_init": ctx_init or "random",
                      "steps": info["steps"], "batch_size": batch_size}}
