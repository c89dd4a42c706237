"""Messages of a training run: printed on process 0, logged everywhere."""

from absl import logging
import jax


def log(message):
  """Prints a progress message on process 0 (absl logs carry the details)."""
  logging.info(message)
  if jax.process_index() == 0:
    print(message, flush=True)


def warn(message):
  """Logs a warning, printed on process 0 too."""
  logging.warning(message)
  if jax.process_index() == 0:
    print(f"WARNING: {message}", flush=True)
