"""Multi-process (multi-host) start-up: when and how to join `jax.distributed`.

JAX's multi-controller runtime runs one Python process per host (per GPU
under SLURM, if you like); every process runs the same program on its own
devices and the processes meet in collectives. `initialize` decides from the
flags, the environment and the machine whether this process is part of such
a job, and joins it before anything else touches JAX:

    --distributed=auto   (default) join when a coordinator is given (flag or
                         BIG_VL_COORDINATOR), under a SLURM job step with
                         more than one task, or on a Cloud TPU VM; a plain
                         single process never joins.
    --distributed=yes    always join; addresses not given come from JAX's
                         cluster detection (TPU VM metadata, SLURM, Open MPI).
    --distributed=no     never join.

Explicit processes (e.g. two on one machine):

    python -m big_vl.train --config=... --workdir=... \
        --coordinator=127.0.0.1:12345 --num_processes=2 --process_id=0

Failure: a process that is in a collective with one that dies fails at once
(gloo reports a transport error); otherwise the coordination service's
heartbeats notice within `heartbeat_timeout_s` ("another task died"). Either
way every other process stops with a non-zero status instead of waiting
forever. Restarting the job resumes from the last checkpoint.
"""

import os
import sys
import threading
from typing import NamedTuple

ENV_COORDINATOR = "BIG_VL_COORDINATOR"
ENV_NUM_PROCESSES = "BIG_VL_NUM_PROCESSES"
ENV_PROCESS_ID = "BIG_VL_PROCESS_ID"
MODES = ("auto", "yes", "no")


class Request(NamedTuple):
  """How (and whether) to call `jax.distributed.initialize`.

  Attributes:
    join: whether to initialise at all.
    reason: why (or why not), for the log.
    coordinator: "HOST:PORT" or None (cluster detection).
    num_processes: process count or None (cluster detection).
    process_id: this process's index or None (cluster detection).
  """
  join: bool
  reason: str
  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _int_or_none(value, name):
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError as e:
    raise ValueError(f"{name}={value!r} is not an integer.") from e


def _slurm_tasks(env):
  """Tasks in the SLURM job step this process belongs to (0 if none)."""
  if "SLURM_JOB_ID" not in env or "SLURM_PROCID" not in env:
    return 0
  return _int_or_none(env.get("SLURM_STEP_NUM_TASKS",
                              env.get("SLURM_NTASKS")), "SLURM_NTASKS") or 0


def _on_cloud_tpu_vm():
  """Whether this machine has TPU chips (a Cloud TPU VM)."""
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    return chips > 0
  except Exception:  # pylint: disable=broad-except
    return False


def plan(mode="auto", coordinator=None, num_processes=None, process_id=None,
         env=None, on_tpu_vm=None):
  """Decides whether and how this process joins a multi-process job.

  Args:
    mode: "auto", "yes" or "no" (see the module docstring).
    coordinator: "HOST:PORT" of process 0's coordination service, or None
      (then `$BIG_VL_COORDINATOR`).
    num_processes: the job's process count, or None (then
      `$BIG_VL_NUM_PROCESSES`).
    process_id: this process's index, or None (then `$BIG_VL_PROCESS_ID`).
    env: the environment (default `os.environ`).
    on_tpu_vm: whether this is a Cloud TPU VM (default: detected).

  Returns:
    A `Request`.

  Raises:
    ValueError: for an unknown mode, or explicit addresses given only in
      part (a coordinator needs the process count and id, and vice versa).
  """
  if mode not in MODES:
    raise ValueError(f"--distributed={mode!r}; use one of {MODES}.")
  env = os.environ if env is None else env
  coordinator = coordinator or env.get(ENV_COORDINATOR) or None
  num_processes = (num_processes if num_processes is not None else
                   _int_or_none(env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES))
  process_id = (process_id if process_id is not None else
                _int_or_none(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID))
  explicit = (coordinator, num_processes, process_id)
  if any(x is not None for x in explicit) and None in explicit:
    raise ValueError(
        "Give all three of --coordinator=HOST:PORT, --num_processes=N and "
        "--process_id=I (or $BIG_VL_COORDINATOR, $BIG_VL_NUM_PROCESSES, "
        f"$BIG_VL_PROCESS_ID), or none of them; got coordinator="
        f"{coordinator}, num_processes={num_processes}, process_id="
        f"{process_id}.")
  if process_id is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} is not in [0, "
                     f"{num_processes}).")
  if mode == "no":
    return Request(False, "--distributed=no")
  if coordinator is not None:
    return Request(True, f"coordinator {coordinator}", coordinator,
                   num_processes, process_id)
  if mode == "yes":
    return Request(True, "--distributed=yes (cluster detection)")
  tasks = _slurm_tasks(env)
  if tasks > 1:
    return Request(True, f"SLURM job step with {tasks} tasks")
  if on_tpu_vm is None:
    on_tpu_vm = _on_cloud_tpu_vm()
  if on_tpu_vm:
    return Request(True, "Cloud TPU VM")
  return Request(False, "single process")


def initialize(request, *, heartbeat_timeout_s=10, shutdown_timeout_s=30,
               initialization_timeout_s=300):
  """Joins the job `request` describes (no-op if it says not to).

  Must run before anything else uses JAX devices.

  Args:
    request: a `Request` from `plan`.
    heartbeat_timeout_s: a process silent this long is declared dead and
      every other process stops (non-zero exit).
    shutdown_timeout_s: how long the processes wait for each other at exit.
    initialization_timeout_s: how long to wait for all processes to join.

  Returns:
    True if this process joined a multi-process job.
  """
  if not request.join:
    return False
  import jax  # pylint: disable=g-import-not-at-top
  who = (f"process {request.process_id} of {request.num_processes}"
         if request.num_processes is not None else "this process")
  where = request.coordinator or "the coordinator the cluster names"
  print(f"jax.distributed: {who} is waiting up to "
        f"{initialization_timeout_s} s for the others to join at {where} "
        f"({request.reason}).", flush=True)
  # JAX aborts the process (a C++ check failure and a stack dump) when the
  # others do not come in time; end first, with a sentence.
  timer = threading.Timer(max(initialization_timeout_s - 1, 0.5), _give_up,
                          (who, where, initialization_timeout_s, request))
  timer.daemon = True
  timer.start()
  try:
    jax.distributed.initialize(
        coordinator_address=request.coordinator,
        num_processes=request.num_processes,
        process_id=request.process_id,
        initialization_timeout=initialization_timeout_s,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
        shutdown_timeout_seconds=shutdown_timeout_s)
  finally:
    timer.cancel()
  return True


def _give_up(who, where, timeout_s, request):
  """Ends a process whose job did not assemble (see `initialize`)."""
  count = request.num_processes
  sys.stderr.write(
      f"ERROR: jax.distributed: {who} waited {timeout_s} s at {where}, but "
      "the job's other processes did not join. Start the same command on "
      "every host"
      + (f" with --process_id=0..{count - 1} and --num_processes={count}"
         if count is not None else "")
      + ", check that --coordinator names process 0's host and a free, "
      "reachable port, or raise the wait with --init_timeout.\n")
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


class JoinFlags:
  """The flags of an entry point that can join a multi-process job.

  `define_flags()` defines --distributed, --coordinator, --num_processes,
  --process_id, --init_timeout and --heartbeat_timeout (as
  `python -m big_vl.train` has them); `join()` plans and joins.

      JOIN = distributed.JoinFlags.define(flag_values)   # at import
      request = JOIN.join()                              # in main()
  """

  def __init__(self, holders):
    self._holders = holders

  @classmethod
  def define(cls, flag_values=None, heartbeat_timeout_s=10):
    """Defines the flags in `flag_values` (None: absl's global FLAGS)."""
    from absl import flags  # pylint: disable=g-import-not-at-top
    kw = {} if flag_values is None else {"flag_values": flag_values}
    return cls({
        "mode": flags.DEFINE_enum(
            "distributed", "auto", MODES,
            "Join a multi-process jax.distributed job: auto (when a "
            "coordinator is given, under multi-task SLURM, on a Cloud TPU "
            "VM), yes, no.", **kw),
        "coordinator": flags.DEFINE_string(
            "coordinator", None,
            "HOST:PORT of process 0 (explicit multi-process).", **kw),
        "num_processes": flags.DEFINE_integer(
            "num_processes", None,
            "Processes in the job (with --coordinator).", **kw),
        "process_id": flags.DEFINE_integer(
            "process_id", None, "This process's index (with --coordinator).",
            **kw),
        "init_timeout": flags.DEFINE_integer(
            "init_timeout", 300, "Seconds a process of a multi-process job "
            "waits for the others to join before it stops with an error.",
            **kw),
        "heartbeat_timeout": flags.DEFINE_integer(
            "heartbeat_timeout", heartbeat_timeout_s, "Seconds without a "
            "heartbeat after which a process counts as dead and the whole "
            "job stops (non-zero exit).", **kw),
    })

  @property
  def heartbeat_timeout_s(self):
    return self._holders["heartbeat_timeout"].value

  def join(self):
    """Plans from the flags and joins; returns the `Request`."""
    h = self._holders
    request = plan(h["mode"].value, h["coordinator"].value,
                   h["num_processes"].value, h["process_id"].value)
    initialize(request, heartbeat_timeout_s=h["heartbeat_timeout"].value,
               initialization_timeout_s=h["init_timeout"].value)
    return request
