"""Name -> factory tables for models (and their `outputs` functions), losses,
evaluators, data sources and pp ops.

Components register where they are defined::

    @registry.register("loss", "sigmoid")
    def sigmoid_loss(...): ...

and are looked up by the name a config gives::

    loss_fn = registry.get("loss", "sigmoid")

`get` imports the built-in component modules itself before looking a name up,
so a name never fails because an import was forgotten.
"""

import importlib

KINDS = ("model", "outputs", "loss", "evaluator", "source", "pp",
         "tokenizer")

# Modules that define the built-in components. They are imported on lookup.
BUILTIN_MODULES = (
    "big_vl.models.two_towers",
    "big_vl.models.captioner",
    "big_vl.models.coca",
    "big_vl.losses",
    "big_vl.evaluators.zeroshot",
    "big_vl.evaluators.retrieval",
    "big_vl.evaluators.linear_probe",
    "big_vl.evaluators.fewshot",
    "big_vl.evaluators.captioning",
    "big_vl.evaluators.caption_scoring",
    "big_vl.evaluators.locca",
    "big_vl.evaluators.preference",
    "big_vl.data.sources",
    "big_vl.data.pp",
    "big_vl.data.locca",
    "big_vl.data.tokenizers",
)

_TABLES = {kind: {} for kind in KINDS}


def _check_kind(kind):
  if kind not in _TABLES:
    raise ValueError(f"Unknown registry kind {kind!r}; known: {KINDS}")


def register(kind, name):
  """Decorator registering `fn` under `kind`/`name`.

  Args:
    kind: one of `KINDS`.
    name: the name configs use to select the component.

  Returns:
    A decorator that registers its argument and returns it unchanged.
  """
  _check_kind(kind)

  def decorator(fn):
    table = _TABLES[kind]
    if name in table and table[name] is not fn:
      old = table[name]
      # Re-importing a module (e.g. under reload) re-registers the same
      # qualified name; anything else is a genuine clash.
      if (getattr(old, "__module__", None), getattr(old, "__qualname__", None)) != (
          getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)):
        raise ValueError(f"{kind} {name!r} is registered twice: {old} and {fn}")
    table[name] = fn
    return fn

  return decorator


def _import_builtins():
  """Imports every built-in module; a failure is raised, naming the module."""
  for module in BUILTIN_MODULES:
    try:
      importlib.import_module(module)
    except Exception as e:
      e.add_note(f"registry: built-in module {module} failed to import "
                 "(every registry lookup imports all of BUILTIN_MODULES).")
      raise


def get(kind, name):
  """Returns the component registered as `kind`/`name`.

  Raises:
    KeyError: naming the unknown component and listing the known ones.
  """
  _check_kind(kind)
  _import_builtins()
  table = _TABLES[kind]
  if name not in table:
    raise KeyError(
        f"Unknown {kind} {name!r}. Known {kind}s: {', '.join(sorted(table))}")
  return table[name]


def names(kind):
  """Sorted names registered for `kind`."""
  _check_kind(kind)
  _import_builtins()
  return sorted(_TABLES[kind])
