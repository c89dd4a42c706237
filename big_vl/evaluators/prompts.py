"""Prompt templates for zero-shot classification, by name.

`get("demo_shapes")` gives the demo dataset's templates; `"clip_simple"` is
CLIP's single "a photo of a {}." prompt. A config may also give a list.
"""

import importlib

# name -> (module, attribute) for template lists that live beside their data.
_EXTERNAL = {
    "demo_shapes": ("big_vl.data.builders.demo_shapes", "ZEROSHOT_TEMPLATES"),
}

TEMPLATES = {
    "clip_simple": ("a photo of a {}.",),
}


def get(templates):
  """Returns a list of templates from a name or a list of strings."""
  if isinstance(templates, str):
    if templates in TEMPLATES:
      return list(TEMPLATES[templates])
    if templates in _EXTERNAL:
      module, attr = _EXTERNAL[templates]
      return list(getattr(importlib.import_module(module), attr))
    raise KeyError(f"Unknown prompt template set {templates!r}; known: "
                   f"{sorted(TEMPLATES) + sorted(_EXTERNAL)}.")
  templates = list(templates)
  for t in templates:
    if "{}" not in t:
      raise ValueError(f"Prompt template {t!r} has no '{{}}' for the class.")
  return templates
