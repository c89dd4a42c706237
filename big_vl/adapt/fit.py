"""Training loop shared by the trained adaptation methods, with selection of
the training length on the validation split.

    best, info = fit.train(params, loss_fn, val_fn, num_examples=160,
                           steps=200, lr=1e-3, eval_every=50)

`loss_fn(params, batch_index)` is the loss on the training examples at
`batch_index` (int[b]); `val_fn(params)` is the validation accuracy. The
params after every `eval_every` steps are scored on validation and the best
(the earliest on ties) is returned: the number of steps is a hyper-parameter
chosen on validation, never on test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def train(params, loss_fn, val_fn, *, num_examples, steps, lr, wd=0.0,
          batch_size=None, eval_every=None, seed=0):
  """AdamW with a cosine schedule; returns the best params on validation.

  Args:
    params: initial trainable params (pytree).
    loss_fn: `(params, batch_index int[b]) -> scalar` (traceable).
    val_fn: `params -> validation accuracy` (host function).
    num_examples: number of training examples (batches index into them).
    steps: training steps.
    lr: peak learning rate (cosine decay to 0, no warm-up).
    wd: decoupled weight decay (optax.adamw's).
    batch_size: examples per step (None: all of them, full batch).
    eval_every: validation interval in steps (None: only at the end).
    seed: seed of the minibatch order.

  Returns:
    (params, info): the selected params (numpy) and {"steps": the chosen
    step count, "val_acc": its validation accuracy, "curve": {step:
    val_acc}}.
  """
  tx = optax.adamw(optax.cosine_decay_schedule(lr, max(steps, 1)),
                   weight_decay=wd)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, index):
    loss, grads = jax.value_and_grad(loss_fn)(params, index)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  order = np.array([], np.int64)
  checkpoints = set(range(eval_every, steps + 1, eval_every)
                    if eval_every else ()) | {steps}
  best, best_acc, best_step, curve = None, -1.0, 0, {}
  for s in range(1, steps + 1):
    if batch_size is None or batch_size >= num_examples:
      index = np.arange(num_examples)
    else:
      if len(order) < batch_size:
        order = np.concatenate([order, rng.permutation(num_examples)])
      index, order = order[:batch_size], order[batch_size:]
    params, opt_state, _ = step(params, opt_state, jnp.asarray(index))
    if s in checkpoints:
      acc = float(val_fn(params))
      curve[s] = acc
      if acc > best_acc:
        best, best_acc, best_step = jax.tree.map(np.asarray, params), acc, s
  return best, {"steps": best_step, "val_acc": best_acc, "curve": curve}


def select(candidates, val_fn):
  """The candidate with the best validation accuracy (first on ties).

  Args:
    candidates: list of hyper-parameter dicts.
    val_fn: `candidate -> validation accuracy`.

  Returns:
    (best candidate, its accuracy, {index: accuracy}).
  """
  scores = {i: float(val_fn(c)) for i, c in enumerate(candidates)}
  best = max(scores, key=lambda i: (scores[i], -i))
  return candidates[best], scores[best], scores
