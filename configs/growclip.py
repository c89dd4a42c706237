r"""GrowCLIP-style growth (Deng et al. 2023): start small, grow while training.

The demo's CLIP model starts with 2 blocks per tower and grows at configured
steps (`config.growth`, `big_vl/growth.py`): to 3 blocks with wider MLPs,
then to 4 blocks (the demo's size). New blocks start as identities (zero
residual outputs) and new MLP units with zero outgoing weights, so the loss
right after a growth step equals the loss right before it (logged as
`growth/loss_before` / `growth/loss_after`); the grown model inherits from
an exponential moving average of the weights (GrowCLIP's parameter
inheritance with momentum, `config.growth_ema`). Adam moments carry over;
sharding and the jitted step are rebuilt; checkpoints on either side of a
growth step resume.

Run (2 CPU cores, about 6 minutes; less compute than the demo, whose model
has 4 blocks throughout):

    python -m big_vl.train --config=configs/growclip.py --workdir=workdirs/growclip

Local run (about a minute; grows after steps 6 and 13 of 20):

    python -m big_vl.train --config=configs/growclip.py:runlocal --workdir=/tmp/g

Expected locally (measured 2026-11-29): growth/loss_after equals
growth/loss_before at both growth steps (3.62185 and 3.52511, all digits
shown), 3.32M -> 3.49M -> 3.59M params, and the loss falls from 3.96 at step
5 to 3.42 at step 20. bench/methods.py compares a grown
run with the fixed-size one at equal steps.
"""

import os

from big_vl import config as config_lib


def get_config(arg=None):
  """GrowCLIP config. Args: `steps`, `batch`, `ema`, `runlocal`."""
  arg = config_lib.parse_arg(arg, steps=800, batch=128, ema=0.999,
                             runlocal=False)
  demo = config_lib.load_config_module(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
  config = demo.get_config(f"steps={arg.steps},batch={arg.batch},"
                           f"runlocal={arg.runlocal}")
  tower = dict(width=64 if arg.runlocal else 128, depth=2,
               mlp_dim=128 if arg.runlocal else 256,
               num_heads=2 if arg.runlocal else 4,
               remat_policy="none", scan=False)
  config.model.image = dict(tower, patch_size=8, pool_type="gap")
  config.model.text = dict(tower, vocab_size=49408,
                           max_len=config.model.text.max_len, causal=True,
                           pool_type="eot")
  total = config.total_steps          # 20 with runlocal
  first, second = total // 3, 2 * total // 3
  config.growth = (
      (first, {"image.depth": 3, "text.depth": 3,
               "image.mlp_dim": 2 * tower["mlp_dim"],
               "text.mlp_dim": 2 * tower["mlp_dim"]}),
      (second, {"image.depth": 4, "text.depth": 4}),
  )
  config.growth_ema = arg.ema if not arg.runlocal else 0.9
  return config
