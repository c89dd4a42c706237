r"""`python -m big_vl.train`: the trainer's command line (flags and `main`).

    python -m big_vl.train --config=configs/demo.py:runlocal \
        --workdir=/tmp/demo [--config.lr=1e-3 ...]

The flags live here only: importing the library (`big_vl.train`) defines
none, so other entry points and notebooks import it freely. See
`big_vl/train/loop.py` for what a run does and writes.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from big_vl import cli
from big_vl import config as config_lib
from big_vl import distributed
from big_vl import train as train_lib
from big_vl.train import console

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/demo.py:runlocal.",
    lock_config=True)


_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")


_STOP_AFTER = flags.DEFINE_integer(
    "stop_after_steps", None, "Stop (checkpointing) after this many steps.")


_JOIN = distributed.JoinFlags.define()


_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume even if the config differs from "
    "the checkpoint's in keys other than durations, log/ckpt/eval cadence "
    "and outputs (the differences are logged).")


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required.")
  request = _JOIN.join()
  config_lib.setup_cli_runtime(logging.WARNING)
  if request.join:
    console.log(f"jax.distributed ({request.reason}): process "
         f"{jax.process_index()} of {jax.process_count()}, "
         f"{jax.local_device_count()} of {jax.device_count()} devices here. "
         "If a process dies, the others stop (a failed collective, or no "
         f"heartbeat for {_JOIN.heartbeat_timeout_s} s); relaunch the same "
         "command on every host to resume from the last checkpoint.")
  train_lib.train(_CONFIG.value, _WORKDIR.value, stop_after_steps=_STOP_AFTER.value,
        allow_config_change=_ALLOW_CONFIG_CHANGE.value,
        config_spec=config_flags.get_config_filename(flags.FLAGS["config"]))


if __name__ == "__main__":
  app.run(main)
