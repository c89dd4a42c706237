"""Training runs that benchmark scripts evaluate (bench/methods.py,
bench/guidance.py): trained once, reused after.

    seconds = train_or_reuse(config, workdir)   # trains unless finished

A finished run's workdir holds `bench_seconds.json` (its training time);
the script evaluates it again instead of retraining, so an interrupted
script resumes where it stopped.
"""

import json
import os
import time


def train_or_reuse(config, workdir):
  """Trains `config` into `workdir` unless a finished run is there.

  Args:
    config: a training ConfigDict.
    workdir: the run's folder.

  Returns:
    The run's training seconds (measured when it was trained).
  """
  from big_vl import train  # pylint: disable=g-import-not-at-top
  timing = os.path.join(workdir, "bench_seconds.json")
  if not os.path.exists(timing):
    t0 = time.time()
    train.train(config, workdir)
    with open(timing, "w") as f:
      json.dump({"seconds": time.time() - t0}, f)
  with open(timing) as f:
    return json.load(f)["seconds"]
