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
  constructor takes `model` / `model_name` (captioning) gets the model and
  its kind too."""
  evaluators = []
  predict_fn = models.make_predict_fn(
      model, config.get("model_name", "two_towers"))
  for name, block in (config.get("evals", None) or {}).items():
    block = dict(block)
    kind = block.pop("type", name)
    every = block.pop("every", None)
    cls = registry.get("evaluator", kind)
    takes = inspect.signature(cls).parameters
    if "model" in takes:
      block["model"] = model
    if "model_name" in takes:
      block.setdefault("model_name", config.get("model_name", "two_towers"))
    ev = cls(predict_fn, mesh=mesh, **block)
    evaluators.append((name, every, ev))
  return evaluators


def write_files(evaluators, folder):
  """The files of the evaluators' last runs (captioning: captions.jsonl and
  captions.png), written into `folder`.

  An evaluator with a `write_files(folder, stem)` method writes its files
  named `stem`.*: its type's default stem when it is the only evaluator of
  its type in the config, else `<default>_<evaluator name>`.

  Args:
    evaluators: `make_evaluators`' list.
    folder: the run's files folder (local or URL).

  Returns:
    The paths written.
  """
  writers = [(name, ev) for name, _, ev in evaluators
             if hasattr(ev, "write_files")]
  kinds = [type(ev) for _, ev in writers]
  paths = []
  for name, ev in writers:
    stem = ev.FILE_STEM
    if kinds.count(type(ev)) > 1:
      stem = f"{stem}_{name}"
    paths += ev.write_files(folder, stem)
  return paths
