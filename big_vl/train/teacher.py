"""A teacher for distillation (`config.teacher`): frozen, or the EMA of
the student.

    config.teacher = dict(path="workdirs/big_clip")  # a run or converted folder
    config.teacher = dict(ema=0.999)                 # or: the student's EMA
    config.objectives = dict(
        contrastive=dict(loss="softmax", weight=1.0),
        distill=dict(loss="distill", weight=1.0, impl="ring"))

With `ema` the teacher is the student's own model with the train state's
exponential moving average of its params (`state["ema"]`, updated after
every step as `ema = m * ema + (1 - m) * params` and starting at the
initial (or `model_init`) params, checkpointed): SigLIP 2's and SILC's
self-distillation teacher. `config.growth_ema`, which keeps the same
average, must then be unset or equal.

The teacher (any model kind `big_vl.pretrained.load` reads: a training
workdir, its `checkpoints/`, or a converted folder; `step` picks one
checkpoint, default the latest) is loaded once at start. Each step runs it
in evaluation mode on the step's batch (after device pp: the teacher reads
the student's images and tokens) and puts its outputs, held constant, next
to the student's as "teacher/KEY" ("teacher/zimg", "teacher/ztxt",
"teacher/t", ...), where objectives such as `distill`
(`big_vl/losses/distill.py`) read them. Its params sit in the train state
under "teacher": never updated, saved with every checkpoint (a resumed run
restores what it was trained against; the folder is still read at start-up
for the teacher's model config), sharded by
`config.teacher.sharding_rules` (default: replicated on every device; e.g.
`((".*", "fsdp"),)` for a large teacher on an FSDP mesh).

Imports: jax, pretrained, models and sharding; never the loop.
"""

from typing import Any, NamedTuple

import jax
import numpy as np

from big_vl import models
from big_vl import pretrained
from big_vl.models import two_towers

KEYS = ("path", "step", "sharding_rules", "ema")
PREFIX = "teacher/"


class Teacher(NamedTuple):
  """A loaded teacher.

  Attributes:
    model: its linen model.
    outputs_fn: its model kind's outputs function.
    params: its params (host arrays; None for an EMA teacher).
    rules: its sharding rules.
    state_key: where the train state holds its params: "teacher" (frozen)
      or "ema" (the student's moving average).
    ema: the EMA momentum, or None.
  """
  model: Any
  outputs_fn: Any
  params: Any
  rules: Any
  state_key: str = "teacher"
  ema: Any = None


def check_config(block, growth_ema=None):
  """Raises ValueError for unknown keys, or neither / both of a path and
  an EMA momentum (in [0, 1), and equal to `growth_ema` if that is set)."""
  block = dict(block or {})
  unknown = sorted(set(block) - set(KEYS))
  if unknown:
    raise ValueError(f"Unknown keys {unknown} in config.teacher; known: "
                     f"{list(KEYS)}.")
  ema = block.get("ema", None)
  if bool(block.get("path")) == (ema is not None):
    raise ValueError(
        "config.teacher needs either a path (a training workdir or a "
        "converted checkpoint folder: a frozen teacher) or ema=M (the "
        "student's moving average), not both.")
  if ema is not None:
    if not 0.0 <= ema < 1.0:
      raise ValueError(f"config.teacher.ema={ema}: a momentum in [0, 1).")
    if growth_ema is not None and growth_ema != ema:
      raise ValueError(
          f"config.teacher.ema={ema} and config.growth_ema={growth_ema} "
          "would keep two averages in one state entry; set one, or both "
          "equal.")
    extra = sorted({"step", "sharding_rules"} & set(block))
    if extra:
      raise ValueError(f"config.teacher {extra} apply to a teacher loaded "
                       "from a path, not to an EMA teacher.")


def load(config, model=None, outputs_fn=None):
  """The run's teacher, or None without `config.teacher`.

  Args:
    config: the run's ConfigDict.
    model, outputs_fn: the student's (an EMA teacher is the student's
      model).
  """
  block = config.get("teacher", None)
  if not block:
    return None
  check_config(block, config.get("growth_ema", None))
  if block.get("ema", None) is not None:
    return Teacher(model=model, outputs_fn=outputs_fn, params=None, rules=(),
                   state_key="ema", ema=float(block["ema"]))
  model_config, params = pretrained.load(block["path"],
                                         block.get("step", None))
  name = model_config.get("name", "two_towers")
  return Teacher(model=models.get(model_config),
                 outputs_fn=models.outputs_fn(name), params=params,
                 rules=tuple(block.get("sharding_rules", None) or ()))


def outputs(teacher, params, batch, views=False):
  """{"teacher/KEY": value} of the teacher on `batch`, held constant.

  Args:
    teacher: a `Teacher` (its model and outputs function are used).
    params: its params (the train state's "teacher").
    batch: the step's batch.
    views: also its outputs on the global extra views ("teacher/view/...",
      `two_towers.outputs`; unmasked, as it runs in evaluation mode), for
      the self-supervised objectives.
  """
  # A decoder's targets are the student's alone (the teacher's logits over
  # them would be computed and never read), as are the local views (the
  # teacher sees the global ones).
  drop = (two_towers.CAPTION_KEY, two_towers.VIEW_KEYS["local"])
  batch = {k: v for k, v in batch.items() if k not in drop}
  out = teacher.outputs_fn(teacher.model, {"params": params}, batch,
                           train=False, **({"views": True} if views else {}))
  return {PREFIX + k: jax.lax.stop_gradient(v) for k, v in out.items()}


def abstract_params(teacher):
  """ShapeDtypeStructs of the teacher's params."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
      teacher.params)
