"""Orbax checkpoints of a training run: state, data iterator and metadata.

Layout: `workdir/checkpoints/STEP/{state, data, meta}`:
  state  the train state {"params", "opt", "step", "rng"} (global jax.Arrays)
  data   the grain iterator position, one JSON file per process
         (`process_{i}-of-{n}.json`)
  meta   JSON: the config, counters (e.g. skipped records), anything small

Saving is asynchronous (the train loop goes on while arrays are written) and
keeps the last `max_to_keep` checkpoints. A checkpoint restores onto any mesh:
`restore` takes the abstract state with the *new* shardings.

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=2)
    ckpt.save(step, state, data_iter=it, meta={"config": config.to_dict()})
    state, meta = ckpt.restore(ckpt.latest_step(), abstract_state,
                               data_iter=it)

A checkpoint that does not load (a truncated array file, a missing
metadata file, an empty step folder left by a kill during a save) raises
`CheckpointError` saying which step and what is wrong. `restore_latest`
(the trainer's resume) falls back to the newest step that loads, with a
warning naming each bad step, and moves the bad ones aside
(`corrupt_step_STEP`, kept for inspection) so that the run can save those
steps again; if none loads, its error lists every step and its failure.

A checkpoint that cannot be written raises `CheckpointWriteError`: one
paragraph naming the step, its folder, the cause, the free space there and
the last good checkpoint, which is kept. `save` first compares the bytes
this process will write with the free space (local folders) and refuses
before writing anything; a storage error during the asynchronous write (a
disk filled meanwhile, a quota, a file size limit), raised by the next
`save` or `wait`, gives the same error and removes the half-written step's
temporary folder. Orbax's logged tracebacks of that failure, and
TensorStore's "Event loop is closed" reports of the writes Orbax abandoned,
are dropped: the error is said once.

Length: saving and restoring with their failure handling on both sides (a step
that does not load falls back, a step that cannot be written is reported),
which share the step-folder layout."""

import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import sys
import traceback

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from big_vl import sharding
from big_vl import storage

# grain's file name for one process's data position.
_DATA_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")
# Where `restore_latest` moves a step that does not load.
CORRUPT_PREFIX = "corrupt_step_"


class CheckpointError(RuntimeError):
  """A checkpoint (or every checkpoint of a folder) does not load."""


class CheckpointWriteError(CheckpointError):
  """A checkpoint could not be written (see the module docstring)."""


# TensorStore reports an OS error as "... [os_error_code='28']".
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_STORAGE_WORDS = re.compile(r"No space left on device|Disk quota exceeded|"
                            r"File too large|Read-only file system")


def storage_errno(exc):
  """The errno of a storage error in `exc` or its causes (0: a storage error
  without one), or None if it is none."""
  seen = 0
  while exc is not None and seen < 20:
    if isinstance(exc, OSError) and exc.errno:
      return exc.errno
    m = _OS_ERROR_CODE.search(str(exc))
    if m:
      return int(m.group(1))
    if isinstance(exc, OSError) or _STORAGE_WORDS.search(str(exc)):
      return 0
    exc = exc.__cause__ or exc.__context__
    seen += 1
  return None


def _human_bytes(n):
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024


def free_bytes(directory):
  """Free bytes where `directory` (or its nearest existing parent) is; None
  for a URL or an unreadable path."""
  if storage.is_url(directory):
    return None
  path = os.path.abspath(directory)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def _free_text(free):
  return (f"{_human_bytes(free)} free" if free is not None
          else "free space unknown")


def bytes_to_write(state):
  """Bytes this process writes for `state`: its addressable shards of
  replica 0 (replicated copies are written once)."""
  total = 0
  for leaf in jax.tree.leaves(state):
    shards = getattr(leaf, "addressable_shards", None)
    if shards is None:
      total += int(np.asarray(leaf).nbytes)
    else:
      total += sum(int(s.data.nbytes) for s in shards if s.replica_id == 0)
  return total


class _QuietWriteFailures(logging.Filter):
  """Drops Orbax's logged tracebacks of a storage error: the trainer reports
  it once, as a `CheckpointWriteError`."""

  def filter(self, record):
    if "orbax" not in (record.pathname or ""):
      return True
    if record.exc_info and storage_errno(record.exc_info[1]) is not None:
      return False
    try:
      text = record.getMessage()
    except Exception:  # pylint: disable=broad-except
      return True
    return not (_OS_ERROR_CODE.search(text) or _STORAGE_WORDS.search(text))


_QUIET = _QuietWriteFailures()


def _quiet_unraisablehook(hook):
  """`sys.unraisablehook` without the "Event loop is closed" tracebacks
  TensorStore reports for the callbacks of writes Orbax abandoned after a
  failed write (its asyncio loop is gone); anything else goes to `hook`."""

  def unraisablehook(unraisable):
    tb = traceback.extract_tb(unraisable.exc_traceback)
    if (unraisable.exc_type is RuntimeError
        and str(unraisable.exc_value) == "Event loop is closed"
        and tb and tb[0].name == "call_soon_threadsafe"):
      return
    hook(unraisable)

  unraisablehook.big_vl_quiet = True
  return unraisablehook


def describe_failure(exc, step_dir=None):
  """One line on why a checkpoint does not load.

  Orbax and TensorStore wrap the cause (e.g. `OUT_OF_RANGE: Error reading
  "params.w/0.0" ...: Requested byte range [0, 242315) is not valid for
  value of size 121284`) in exceptions that print whole TensorStore specs;
  this gives the innermost cause's first line.

  Args:
    exc: the exception restoring raised.
    step_dir: the step's folder (an empty one is named as such), or None.

  Returns:
    "TypeName: message" (at most ~300 characters).
  """
  try:
    if (step_dir is not None and step_dir.is_dir()
        and not any(step_dir.iterdir())):
      return "the step folder is empty (a save was interrupted)"
  except OSError:
    pass
  causes = [exc]
  while causes[-1].__cause__ or causes[-1].__context__:
    causes.append(causes[-1].__cause__ or causes[-1].__context__)
    if len(causes) > 20:
      break
  for cause in reversed(causes):
    text = str(cause).strip()
    if text:
      break
  else:
    cause, text = exc, ""
  text = text.splitlines()[0] if text else ""
  for cut in (" [tensorstore_spec=", "See full TensorStore details"):
    text = text.split(cut)[0].rstrip()
  text = text.rstrip(".")
  if len(text) > 300:
    text = text[:297] + "..."
  return f"{type(cause).__name__}: {text}"


def _all_processes_agree(step, ok):
  """Whether every process loaded `step` (all must resume the same step).

  Each process tries the same steps in the same order (from the same
  files), so they stay in step; one gather per try makes the choice the
  same everywhere even if only one process's shard of a step is bad.
  """
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  got = np.asarray(multihost_utils.process_allgather(
      np.asarray([step, int(ok)], np.int64)))
  if len(set(got[:, 0].tolist())) != 1:
    raise CheckpointError(
        f"The processes see different checkpoint steps ({got[:, 0].tolist()}"
        "): every process must see the same checkpoints folder.")
  return bool(got[:, 1].all())

class _IteratorStateSnapshot:
  """The iterator position at save time (saving itself may run later)."""

  def __init__(self, iterator):
    self._state = json.dumps(iterator.get_state(), indent=1).encode()

  def get_state(self):
    return self._state


class Checkpointer:
  """Saves and restores train state + data position + metadata with Orbax.

  Args:
    directory: where step folders go (created if missing).
    max_to_keep: how many recent checkpoints to keep (None: all).
    async_save: write arrays in a background thread.
    reserve_bytes: room a save needs beyond its arrays (metadata, data
      position, meta, the filesystem's overhead): a save is refused before
      writing if the free space is below arrays + this.
  """

  def __init__(self, directory, *, max_to_keep=2, async_save=True,
               reserve_bytes=16 << 20):
    # Orbax (TensorStore OCDBT) needs absolute paths; URLs stay as they are.
    self.directory = storage.absolute(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._writing = None  # The step being written asynchronously, if any.
    self._reserve = int(reserve_bytes)
    if _QUIET not in logging.getLogger("absl").filters:
      logging.getLogger("absl").addFilter(_QUIET)
    if not getattr(sys.unraisablehook, "big_vl_quiet", False):
      sys.unraisablehook = _quiet_unraisablehook(sys.unraisablehook)

  def latest_step(self):
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step, state, *, data_iter=None, meta=None):
    """Starts saving (returns once the arrays are copied off the devices).

    Args:
      step: the step number naming the checkpoint.
      state: pytree of global jax.Arrays.
      data_iter: grain iterator whose current position is saved, or None.
      meta: JSON-serialisable dict, or None.
    """
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave(meta or {})}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(
          _IteratorStateSnapshot(data_iter))
    self.wait()  # The previous save's failure is reported as its own.
    needed, free = bytes_to_write(state), free_bytes(self.directory)
    if free is not None and needed + self._reserve > free:
      raise self._write_error(
          int(step), reason=f"it needs about {_human_bytes(needed)} and "
          f"there is not enough space", free=free)
    self._writing = int(step)
    with self._write_errors():
      self._manager.save(int(step), args=ocp.args.Composite(**items),
                         force=True)

  @contextlib.contextmanager
  def _write_errors(self):
    """A storage error writing `self._writing` becomes a
    `CheckpointWriteError`; other errors pass as they are."""
    try:
      yield
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      step, code = self._writing, storage_errno(e)
      if step is None or code is None:
        raise
      self._writing = None
      raise self._write_error(
          step, reason=os.strerror(code) if code else describe_failure(e),
          free=free_bytes(self.directory)) from e

  def _write_error(self, step, *, reason, free):
    """The `CheckpointWriteError` of step `step` (see the module docs)."""
    root = storage.path(self.directory)
    for tmp in root.glob(f"{step}.orbax-checkpoint-tmp*"):
      try:
        tmp.rmtree() if tmp.is_dir() else tmp.unlink()
      except OSError:
        pass  # Orbax removes it at the next start.
    self._manager.reload()
    good = sorted(s for s in self._manager.all_steps()
                  if s != step and (root / str(s)).is_dir())
    last = (f"The last good checkpoint is step {good[-1]} "
            f"({self.directory}/{good[-1]}), kept: free some space (or "
            "lower config.keep_ckpts) and rerun the same command to resume "
            "from it." if good else
            "There is no earlier checkpoint: free some space and rerun.")
    return CheckpointWriteError(
        f"Checkpoint {step} could not be written to "
        f"{self.directory}/{step}: {reason} ({_free_text(free)} there). "
        f"{last}")

  def data_states(self, step):
    """The saved data positions of checkpoint `step`, in process order.

    Returns:
      A list with one decoded JSON state per saving process ([] if the
      checkpoint holds no data position).
    """
    directory = storage.path(self.directory) / str(int(step)) / "data"
    names = ([p.name for p in directory.iterdir()] if directory.is_dir()
             else [])
    found = {}
    for name in names:
      m = _DATA_FILE.fullmatch(name)
      if m:
        found[int(m.group(1))] = (int(m.group(2)), name)
    counts = {count for count, _ in found.values()}
    if found and (len(counts) != 1
                  or sorted(found) != list(range(min(counts)))):
      raise ValueError(f"{directory} holds an inconsistent set of data "
                       f"positions: {sorted(names)}.")
    states = []
    for index in sorted(found):
      states.append(json.loads((directory / found[index][1]).read_text()))
    return states

  def restore(self, step, abstract_state, *, data_iter=None,
              remap_data=None):
    """Restores the state onto the shardings of `abstract_state`.

    Args:
      step: which checkpoint (e.g. `latest_step()`).
      abstract_state: pytree of jax.ShapeDtypeStruct with `.sharding` set for
        the mesh to restore onto (it may differ from the saving mesh).
      data_iter: grain iterator to move to the saved position, or None.
      remap_data: for a checkpoint saved by a different number of processes:
        `fn(saved_states, meta) -> state` giving this process's data position
        from all the saved ones (`data_states`) and the checkpoint's meta.

    Returns:
      (state, meta).

    Raises:
      ValueError: if the data position was saved by a different number of
        processes and `remap_data` is None.
    """
    items = {"state": ocp.args.StandardRestore(abstract_state),
             "meta": ocp.args.JsonRestore()}
    remap_states = None
    if data_iter is not None:
      own = (storage.path(self.directory) / str(int(step)) / "data" /
             f"process_{jax.process_index()}-of-{jax.process_count()}.json")
      saved = self.data_states(step) if not own.exists() else None
      if not saved:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
      elif remap_data is None:
        raise ValueError(
            f"Checkpoint {step} in {self.directory} was saved by "
            f"{len(saved)} processes and this run has "
            f"{jax.process_count()}; its data position cannot be restored "
            "as is (pass remap_data).")
      else:
        remap_states = saved
    try:
      restored = self._manager.restore(int(step),
                                       args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"Checkpoint {step} in {self.directory} does not load: "
          f"{describe_failure(e, self._step_dir(step))}") from e
    if remap_states is not None:
      data_iter.set_state(remap_data(remap_states, restored["meta"]))
    return restored["state"], restored["meta"]

  def _step_dir(self, step):
    return storage.path(self.directory) / str(int(step))

  def restore_latest(self, abstract_state, *, data_iter=None,
                     remap_data=None, check_meta=None, log=None):
    """Restores the newest checkpoint that loads.

    Steps are tried newest first. A step that does not load is reported
    (`log`, with the reason) and the next older one is tried; once one loads,
    the bad newer steps are moved aside to `corrupt_step_STEP` in the same
    folder (process 0 does it), so the run can save those steps again. The
    state, meta and data position all come from the step that loaded.

    Args:
      abstract_state: as for `restore`, or `fn(step) -> abstract state` (the
        model may depend on the step, e.g. with growth).
      data_iter, remap_data: as for `restore`.
      check_meta: `fn(step, meta)` called with each step's meta before its
        arrays are read; what it raises (e.g. a changed config) propagates:
        it is not a reason to fall back.
      log: `fn(message)` for the warnings (default: absl logging.warning).

    Returns:
      (step, state, meta) of the step that loaded, or None if the folder
      holds no checkpoint.

    Raises:
      CheckpointError: if no step loads, listing each step and its failure.
    """
    if log is None:
      from absl import logging  # pylint: disable=g-import-not-at-top
      log = logging.warning
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      return None
    failures = []
    for step in steps:
      loaded = None
      try:
        meta = read_meta(self.directory, step)
        if check_meta is not None:
          check_meta(step, meta)
        abstract = (abstract_state(step) if callable(abstract_state)
                    else abstract_state)
        loaded = self.restore(step, abstract, data_iter=data_iter,
                              remap_data=remap_data)
      except CheckpointError as e:
        failures.append((step, describe_failure(e.__cause__ or e,
                                                self._step_dir(step))))
      if _all_processes_agree(step, loaded is not None):
        break
      if loaded is not None:  # Another process could not load this step.
        failures.append((step, "another process could not load it"))
      log(f"Checkpoint {step} in {self.directory} does not load "
          f"({failures[-1][1]})"
          + ("; trying the previous one." if step != steps[-1] else "."))
    else:
      raise CheckpointError(
          f"No checkpoint in {self.directory} loads:\n" + "\n".join(
              f"  step {s}: {why}" for s, why in failures) +
          "\nMove the bad step folders away to resume from an older copy "
          "(if any), or delete this checkpoints folder to start afresh. (A "
          "config whose model no longer matches the saved shapes, e.g. after "
          "--allow_config_change, fails this way on every step.)")
    if failures:
      self._move_aside([s for s, _ in failures], log)
      log(f"Resuming from checkpoint {step}, the newest that loads; "
          f"{len(failures)} newer one(s) moved aside: " + "; ".join(
              f"step {s}: {why}" for s, why in failures) + ".")
    state, meta = loaded
    return step, state, meta

  def _move_aside(self, steps, log):
    """Renames bad step folders to `corrupt_step_STEP[_N]` (process 0)."""
    if jax.process_index() == 0:
      stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
          "%Y%m%dT%H%M%SZ")
      for step in steps:
        target = storage.path(self.directory) / (
            f"{CORRUPT_PREFIX}{step}_{stamp}")
        self._step_dir(step).rename(target)
        log(f"Moved the bad checkpoint {step} to {target}.")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("big_vl_checkpoint_move_aside")
    self._manager.reload()

  def wait(self):
    """Blocks until pending asynchronous saves are on disk.

    Raises:
      CheckpointWriteError: if the pending save failed for lack of space
        (or another storage error).
    """
    with self._write_errors():
      self._manager.wait_until_finished()
    self._writing = None

  def close(self):
    self.wait()
    self._manager.close()


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying the given shardings."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree, shardings)


# -- Reading checkpoints (evaluation, pretrained weights) --


def checkpoint_dir(path):
  """The Orbax checkpoints folder of `path` (a workdir or the folder itself).

  Args:
    path: a training workdir (holding `checkpoints/`) or its checkpoints dir.

  Returns:
    The absolute path (or URL) of the checkpoints folder.

  Raises:
    FileNotFoundError: if `path` holds no checkpoint folder.
  """
  path = storage.absolute(path)
  sub = storage.path(path) / "checkpoints"
  if sub.is_dir():
    return os.fspath(sub)
  if storage.path(path).is_dir() and any(
      p.name.isdigit() for p in storage.path(path).iterdir()):
    return path
  raise FileNotFoundError(
      f"No checkpoints in {path}: give a training workdir (with a "
      "checkpoints/ folder) or the checkpoints folder itself.")


def latest_step(ckpt_dir):
  """(newest complete step or None, all steps) of the checkpoints folder."""
  checkpointer = Checkpointer(ckpt_dir, async_save=False)
  try:
    return checkpointer.latest_step(), checkpointer.all_steps()
  finally:
    checkpointer.close()


def read_meta(ckpt_dir, step):
  """The JSON `meta` item of checkpoint `step` ({} if it has none).

  Raises:
    CheckpointError: if the meta item is there but does not load.
  """
  path = storage.path(ckpt_dir) / str(step) / "meta"
  if not path.is_dir():
    return {}
  try:
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path) or {}
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f"The meta of checkpoint {step} in {ckpt_dir} does not load: "
        f"{describe_failure(e)}") from e


def run_config(ckpt_dir, meta):
  """The training run's config: from the checkpoint meta or config.json.

  Args:
    ckpt_dir: the checkpoints folder.
    meta: the checkpoint's meta dict.

  Returns:
    An (unlocked) ConfigDict.

  Raises:
    FileNotFoundError: if neither holds a config.
  """
  config = meta.get("config")
  if config is None:
    path = storage.path(ckpt_dir).parent / "config.json"
    if not path.exists():
      raise FileNotFoundError(
          f"The checkpoint in {ckpt_dir} has no config in its meta and there "
          f"is no {path}; give the model in the eval config (config.model).")
    config = json.loads(path.read_text())
  return ml_collections.ConfigDict(config)


def restore_params(ckpt_dir, step, mesh=None, rules=((".*", "replicate"),),
                   item="params"):
  """Restores only the params of a train-state checkpoint.

  Shapes and dtypes come from the checkpoint's own metadata; shardings from
  `rules` (as `config.sharding_rules`) on `mesh`. The rest of the state
  (optimiser moments, step, rng) is not read.

  Args:
    ckpt_dir: the checkpoints folder (`Checkpointer`'s directory).
    step: the checkpoint step.
    mesh: the Mesh to place the params on, or None for host numpy arrays.
    rules: sharding rules, regex -> "replicate" / "fsdp" / axes.
    item: the part of the state to read: "params", or another params-like
      entry ("ema", a distillation run's frozen "teacher").

  Returns:
    The params pytree of global jax.Arrays (numpy arrays without a mesh).

  Raises:
    CheckpointError: if the checkpoint does not load (naming the step, the
      reason and the other steps of the folder).
  """
  try:
    return _restore_params(ckpt_dir, step, mesh, rules, item)
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    try:
      others = sorted(int(p.name) for p in storage.path(ckpt_dir).iterdir()
                      if p.name.isdigit() and p.name != str(step))
    except OSError:
      others = []
    raise CheckpointError(
        f"The params of checkpoint {step} in {ckpt_dir} do not load: "
        f"{describe_failure(e, storage.path(ckpt_dir) / str(step))}. "
        + (f"Other steps there: {others} (pick one with --step)."
           if others else "It is the only step there.")) from e


def _restore_params(ckpt_dir, step, mesh, rules, item):
  """`restore_params` without the error wrapping."""
  path = storage.path(ckpt_dir) / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  if item not in tree:
    raise ValueError(f"{path} holds no {item!r} (keys: {sorted(tree)}).")
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                          tree[item])
  if mesh is None:
    restore_args = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
  else:
    shardings = sharding.tree_shardings(abstract, mesh, rules)
    restore_args = jax.tree.map(
        lambda a, s: ocp.ArrayRestoreArgs(sharding=s, global_shape=a.shape,
                                          dtype=a.dtype), abstract, shardings)
  restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item={item: abstract}, restore_args={item: restore_args},
      partial_restore=True))
  return restored[item]
