"""The trainer, as a library: `train(config, workdir)` and its parts.

One trainer serves every method; methods differ by config only. The room
(`big_vl/train/`):
  schema.py     what a config may hold (`check_config`) and the resumed
                run's comparison with its checkpoint (`check_resume_config`)
  state.py      model, objective, optimiser and sharded state (`build`,
                `Run`), pretrained loading, EMA, growth of the state
  step.py       the jitted update (`make_train_step`)
  gradcache.py  GradCache: full-batch gradients from micro-batches
  loop.py       `train()`: data, restore, the loop, checkpoints, evals
  outputs.py    where a run writes: config.json, results, uploads
  console.py    messages printed on process 0
  __main__.py   `python -m big_vl.train` (flags and `main`, nothing else)

Importing `big_vl.train` defines no flags. The package imports the library
(models, losses, objectives, data, evaluators, checkpoint, ...); nothing in
`big_vl/` below the entry points imports it.
"""

from big_vl.train.loop import NonFiniteLossError
from big_vl.train.loop import train
from big_vl.train.schema import check_config
from big_vl.train.schema import check_evals
from big_vl.train.schema import check_model
from big_vl.train.schema import check_resume_config
from big_vl.train.schema import grad_accum_steps
from big_vl.train.schema import KNOWN_KEYS
from big_vl.train.schema import param_compute_dtype
from big_vl.train.state import build
from big_vl.train.state import check_objective_fields
from big_vl.train.state import init_from_pretrained
from big_vl.train.state import make_model
from big_vl.train.state import make_objective
from big_vl.train.state import model_outputs_fn
from big_vl.train.state import params_initializer
from big_vl.train.state import Run
from big_vl.train.step import make_train_step

__all__ = [
    "build",
    "check_config",
    "check_evals",
    "check_model",
    "check_objective_fields",
    "check_resume_config",
    "grad_accum_steps",
    "init_from_pretrained",
    "KNOWN_KEYS",
    "make_model",
    "make_objective",
    "make_train_step",
    "model_outputs_fn",
    "NonFiniteLossError",
    "param_compute_dtype",
    "params_initializer",
    "Run",
    "train",
]
