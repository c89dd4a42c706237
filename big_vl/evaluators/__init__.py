"""Evaluators: zero-shot classification, retrieval, ... (see common.py).

`make_evaluators(config, model, mesh)` builds a config's `evals` blocks
(the trainer's periodic evaluations, `big_vl.evaluate`).
"""

from big_vl import models
from big_vl import registry


def make_evaluators(config, model, mesh):
  """[(name, every_steps or None, evaluator)] from config.evals."""
  evaluators = []
  predict_fn = models.make_predict_fn(
      model, config.get("model_name", "two_towers"))
  for name, block in (config.get("evals", None) or {}).items():
    block = dict(block)
    kind = block.pop("type", name)
    every = block.pop("every", None)
    ev = registry.get("evaluator", kind)(predict_fn, mesh=mesh, **block)
    evaluators.append((name, every, ev))
  return evaluators
