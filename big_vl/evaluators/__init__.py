"""Evaluators: zero-shot classification, retrieval, ... (see common.py).

`make_evaluators(config, model, mesh)` builds a config's `evals` blocks
(the trainer's periodic evaluations, `big_vl.evaluate`).
"""

import inspect

from big_vl import models
from big_vl import registry


def make_evaluators(config, model, mesh):
  """[(name, every_steps or None, evaluator)] from config.evals.

  Each evaluator gets the model's predict function and the mesh; one whose
  constructor takes `model` (captioning) gets the model too."""
  evaluators = []
  predict_fn = models.make_predict_fn(
      model, config.get("model_name", "two_towers"))
  for name, block in (config.get("evals", None) or {}).items():
    block = dict(block)
    kind = block.pop("type", name)
    every = block.pop("every", None)
    cls = registry.get("evaluator", kind)
    if "model" in inspect.signature(cls).parameters:
      block["model"] = model
    ev = cls(predict_fn, mesh=mesh, **block)
    evaluators.append((name, every, ev))
  return evaluators
