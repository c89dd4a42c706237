"""Class names and prompt templates for zero-shot classification, by name.

`get(name)` gives a template list, `classnames(name)` a class-name list:

    prompts.get("imagenet")          # CLIP's 80 ImageNet templates
    prompts.classnames("imagenet")   # the 1,000 cleaned ImageNet names
    prompts.get("clip_simple")       # ["a photo of a {}."]
    prompts.get(["a {}.", "the {}."])  # a config may give a list

Shipped sets (package data `big_vl/evaluators/data/{classnames,templates}.json`):
imagenet, cifar10, cifar100, fashion_mnist, mnist, food101, oxford_pets,
flowers102, dtd, eurosat. Names and templates are those of CLIP's paper
(openai/CLIP `data/prompts.md` and the ImageNet prompt-engineering notebook,
as open_clip ships them); class order follows the datasets' label order in
TFDS (for oxford_pets and eurosat, CLIP's prompts.md lists the classes in a
different order; the lists here are reordered to TFDS's label ids, as
CLIP_benchmark does). Fashion-MNIST is not in CLIP's paper: its names are the
TFDS labels lower-cased, with a few generic photo templates. The demo set's
names and templates live beside its builder (`demo_shapes`), referenced, not
copied.
"""

import functools
import importlib
import importlib.resources
import json

# name -> (module, attribute) for lists that live beside their data.
_EXTERNAL_TEMPLATES = {
    "demo_shapes": ("big_vl.data.builders.demo_shapes", "ZEROSHOT_TEMPLATES"),
}
_EXTERNAL_CLASSNAMES = {
    "demo_shapes": ("big_vl.data.builders.demo_shapes", "CLASS_NAMES"),
}

TEMPLATES = {
    "clip_simple": ("a photo of a {}.",),
}


@functools.cache
def _load(filename):
  """Reads a package-data JSON file {name: [strings]}."""
  text = importlib.resources.files("big_vl.evaluators").joinpath(
      "data", filename).read_text(encoding="utf-8")
  return {k: tuple(v) for k, v in json.loads(text).items()}


def _external(table, name):
  module, attr = table[name]
  return list(getattr(importlib.import_module(module), attr))


def template_sets():
  """Names accepted by `get`."""
  return sorted(set(TEMPLATES) | set(_EXTERNAL_TEMPLATES)
                | set(_load("templates.json")))


def classname_sets():
  """Names accepted by `classnames`."""
  return sorted(set(_EXTERNAL_CLASSNAMES) | set(_load("classnames.json")))


def get(templates):
  """Returns a list of templates from a name or a list of strings.

  Args:
    templates: a set name (see `template_sets()`) or a list of strings, each
      with one "{}" for the class name.

  Returns:
    list of template strings.

  Raises:
    KeyError: unknown name (listing the known ones).
    ValueError: a template without "{}".
  """
  if isinstance(templates, str):
    if templates in TEMPLATES:
      return list(TEMPLATES[templates])
    if templates in _EXTERNAL_TEMPLATES:
      return _external(_EXTERNAL_TEMPLATES, templates)
    shipped = _load("templates.json")
    if templates in shipped:
      return list(shipped[templates])
    raise KeyError(f"Unknown prompt template set {templates!r}; known: "
                   f"{template_sets()}.")
  templates = list(templates)
  for t in templates:
    if "{}" not in t:
      raise ValueError(f"Prompt template {t!r} has no '{{}}' for the class.")
  return templates


def classnames(name):
  """Class names of a shipped set, in the dataset's label order.

  Args:
    name: a set name (see `classname_sets()`), e.g. "imagenet".

  Returns:
    list of class-name strings.

  Raises:
    KeyError: unknown name (listing the known ones).
  """
  if name in _EXTERNAL_CLASSNAMES:
    return _external(_EXTERNAL_CLASSNAMES, name)
  shipped = _load("classnames.json")
  if name not in shipped:
    raise KeyError(f"Unknown class-name set {name!r}; known: "
                   f"{classname_sets()}.")
  return list(shipped[name])
