"""Where a training run writes, and what it writes besides checkpoints.

Checkpoints go to the workdir itself (Orbax, `big_vl/checkpoint.py`);
process 0's other files (config.json, metrics, plots, results) go to
`Outputs.files`: the workdir, or a local mirror of a URL workdir uploaded by
`Outputs.sync`.
"""

import json
import os
import time

from big_vl import checkpoint as ckpt_lib
from big_vl import config as config_lib
from big_vl import objectives as objectives_lib
from big_vl import results as results_lib
from big_vl import storage
from big_vl.train import schema


class Outputs:
  """Where a run writes: checkpoints go to the workdir itself; process 0's
  other files to `files` (the workdir, or a local mirror of a URL workdir,
  uploaded by `sync`)."""

  def __init__(self, workdir, is_main, staged, checkpointer, sync_every_s):
    self.workdir, self.is_main = workdir, is_main
    self.staged, self.files = staged, staged.local
    self.checkpointer = checkpointer
    self._sync_every_s, self._t_sync = sync_every_s, time.time()

  @classmethod
  def open(cls, config, workdir, is_main, allow_config_change):
    """Opens the checkpoints; a resumed run's config must match its
    checkpoint's (checked first); writes config.json."""
    staged = storage.StagedDir(workdir, active=is_main)
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.get("keep_ckpts", 2))
    saved_steps = checkpointer.all_steps()
    schema.check_saved_config(config, checkpointer, allow_config_change)
    if is_main:
      write_config(staged.local, config,
                   max(saved_steps) if saved_steps else None)
      staged.sync()
    return cls(workdir, is_main, staged, checkpointer,
               config.get("sync_every_s", 60))

  def sync(self, force=False):
    """Uploads process 0's new files of a URL workdir (at most every
    `config.sync_every_s` seconds unless forced)."""
    if self.staged.staged and (
        force or time.time() - self._t_sync >= self._sync_every_s):
      self.staged.sync()
      self._t_sync = time.time()

  def write_results(self, config, step, final):
    """Writes the final metrics as CLIP_benchmark files (big_vl/results.py).

    Args:
      config: the run's ConfigDict; `config.results_dir` is the folder
        (absent or None: workdir/results; "": write nothing; a URL is
        written through a staging folder).
      step: the step evaluated (names the results' "pretrained", with the
        workdir).
      final: the final evaluation's metrics.

    Returns:
      The relative names written.
    """
    directory = config.get("results_dir", None)
    if directory == "":
      return []
    staged = storage.StagedDir(directory or os.path.join(self.files,
                                                         "results"))
    written = results_lib.write(
        final, staged.local, model=config.get("model_name", "two_towers"),
        pretrained=f"{os.path.basename(self.workdir)}-step{step}")
    staged.sync()
    return [os.path.relpath(p, staged.local) for p in written]


def write_config(files, config, newest_step):
  """Writes files/config.json; when resuming with a changed config, the old
  file is kept as config.until_step_N.json (N: the newest checkpoint)."""
  path = os.path.join(files, "config.json")
  text = config.to_json_best_effort(indent=2)
  if newest_step is not None and os.path.exists(path):
    with open(path) as f:
      try:
        old = json.load(f)
      except ValueError:
        old = None
    if old is None or config_lib.config_diff(
        objectives_lib.normalize_config(old), json.loads(text)):
      keep, n = os.path.join(files, f"config.until_step_{newest_step}.json"), 1
      while os.path.exists(keep):
        keep = os.path.join(files,
                            f"config.until_step_{newest_step}.{n}.json")
        n += 1
      os.replace(path, keep)
  with open(path, "w") as f:
    f.write(text)
