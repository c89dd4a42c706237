r"""One run per workdir: an exclusive, self-describing lock held for a run's life.

Two runs writing one workdir destroy each other (checkpoints, config.json
and results replaced, metrics.jsonl interleaved). `big_vl.train`,
`big_vl.sweep` (its root) and `big_vl.evaluate --output` therefore hold the
folder they write for as long as they run:

    with workdir_lock.hold(workdir, "big_vl.train"):
      ...   # a second run on `workdir` fails at once, naming this one

The lock is the file `WORKDIR/.big_vl.lock` (an object of that name on
`gs://`), a JSON record of its holder: the command, host, pid, start time
and a heartbeat time that a background thread refreshes every
`HEARTBEAT_S` seconds.

- Local folders: the holder also keeps an `fcntl.flock` on the file, which
  the OS releases when the process dies, kill -9 included. A lock whose
  flock is free was left by a dead run: it is taken over with a warning
  naming the old holder.
- Other hosts and object storage (where no OS lock reaches): a lock whose
  heartbeat is older than `stale_after_s` (default `STALE_AFTER_S`) was left
  by a host that stopped (preempted, killed): taken over with a warning. A
  fresh one is refused. On `gs://` the new holder writes its record, waits
  a moment and reads it back: of two runs that start together, the one whose
  record was overwritten refuses.

In a multi-process job only process 0 takes the lock, for the whole job.
"""

import contextlib
import datetime
import json
import os
import socket
import threading
import time
import uuid

from absl import logging

from big_vl import storage

LOCK_NAME = ".big_vl.lock"
HEARTBEAT_S = 30.0
# A lock not refreshed for this long is stale (its holder stopped).
STALE_AFTER_S = 300.0
# gs://: how long a new holder waits before reading its record back.
SETTLE_S = 1.0


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir."""


def _now():
  return time.time()


def _describe(record):
  started = record.get("started")
  when = (datetime.datetime.fromtimestamp(started).isoformat(
      timespec="seconds") if isinstance(started, (int, float)) else "?")
  return (f"{record.get('command', '?')} (pid {record.get('pid', '?')} on "
          f"host {record.get('host', '?')}, started {when})")


class WorkdirLock:
  """Exclusive hold of one workdir (see the module docstring).

  Args:
    workdir: a local folder or a URL; created if absent.
    command: what holds it, e.g. "big_vl.train" (written in the lock).
    stale_after_s: a lock whose heartbeat is older is stale.
    heartbeat_s: how often the holder refreshes its heartbeat.
    log: warning printer (a stale lock taken over).
  """

  def __init__(self, workdir, command, *, stale_after_s=STALE_AFTER_S,
               heartbeat_s=HEARTBEAT_S, log=None):
    self.workdir = storage.absolute(workdir)
    self.url = storage.is_url(self.workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self.command = command
    self.stale_after_s = stale_after_s
    self.heartbeat_s = heartbeat_s
    self._log = log or (lambda m: logging.warning(m))
    self._fd = None
    self._stop = threading.Event()
    self._thread = None
    self.record = {"command": command, "host": socket.gethostname(),
                   "pid": os.getpid(), "started": _now(),
                   "heartbeat": _now(), "token": uuid.uuid4().hex}

  # -- local folders --

  def _acquire_local(self):
    import fcntl  # pylint: disable=g-import-not-at-top
    try:
      os.makedirs(self.workdir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
      raise NotADirectoryError(
          f"The workdir {self.workdir} is a file, not a folder; give "
          "another --workdir.") from None
    except PermissionError:
      raise PermissionError(
          f"Cannot create the workdir {self.workdir} (permission denied); "
          "give a --workdir you can write.") from None
    while True:
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except PermissionError:
        raise PermissionError(
            f"The workdir {self.workdir} is not writable (cannot create "
            f"{self.path}); give a --workdir you can write.") from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        old = self._read_local(fd)
        os.close(fd)
        raise WorkdirBusyError(self._busy_message(old)) from None
      # The file may have been removed by its releasing holder between our
      # open and flock: then the lock is on a dead inode; try again.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    old = self._read_local(fd)
    if old and old.get("host") != self.record["host"] and not self._stale(
        old):
      # Another host's live holder: its flock may not reach this host.
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
      raise WorkdirBusyError(self._busy_message(old))
    if old:
      self._log(f"Taking over the lock of {self.workdir} left by "
                f"{_describe(old)}, which is no longer running.")
    self._fd = fd
    self._write_local()

  @staticmethod
  def _read_local(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
      data += chunk
    try:
      record = json.loads(data) if data.strip() else None
    except ValueError:
      record = {"command": "an unreadable lock"}
    return record if isinstance(record, dict) or record is None else None

  def _write_local(self):
    data = json.dumps(self.record).encode()
    os.lseek(self._fd, 0, os.SEEK_SET)
    os.ftruncate(self._fd, 0)
    os.write(self._fd, data)
    os.fsync(self._fd)

  # -- object storage --

  def _read_url(self):
    path = storage.path(self.path)
    try:
      return json.loads(path.read_text()) if path.exists() else None
    except (ValueError, OSError):
      return {"command": "an unreadable lock"}

  def _acquire_url(self):
    old = self._read_url()
    if old and old.get("token") != self.record["token"]:
      if not self._stale(old):
        raise WorkdirBusyError(self._busy_message(old))
      self._log(f"Taking over the lock of {self.workdir} left by "
                f"{_describe(old)}: no heartbeat for "
                f"{_now() - old.get('heartbeat', 0):.0f} s.")
    storage.write(self.path, json.dumps(self.record))
    time.sleep(SETTLE_S)
    now = self._read_url()
    if not now or now.get("token") != self.record["token"]:
      raise WorkdirBusyError(self._busy_message(now or {}))

  # -- common --

  def _stale(self, record):
    beat = record.get("heartbeat")
    return not isinstance(beat, (int, float)) or (
        _now() - beat > self.stale_after_s)

  def _busy_message(self, old):
    return (f"The workdir {self.workdir} is in use by {_describe(old or {})}"
            f" (lock file {self.path}). Two runs on one workdir overwrite "
            "each other's checkpoints and results: wait for it to finish, "
            "stop it, or give another --workdir. A lock left by a run that "
            "died is taken over by itself (at once on this host, after "
            f"{self.stale_after_s:.0f} s without a heartbeat elsewhere).")

  def _beat(self):
    while not self._stop.wait(self.heartbeat_s):
      self.record["heartbeat"] = _now()
      try:
        if self.url:
          storage.write(self.path, json.dumps(self.record))
        else:
          self._write_local()
      except OSError as e:  # A full disk must not kill the run here.
        logging.warning("Could not refresh the workdir lock %s: %s",
                        self.path, e)

  def acquire(self):
    """Takes the lock, or raises `WorkdirBusyError` naming the holder."""
    if self.url:
      self._acquire_url()
    else:
      self._acquire_local()
    self._thread = threading.Thread(target=self._beat, daemon=True,
                                    name="big_vl-workdir-lock")
    self._thread.start()
    return self

  def release(self):
    """Stops the heartbeat and removes the lock (if still ours)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
      self._thread = None
    if self.url:
      current = self._read_url()
      if current and current.get("token") == self.record["token"]:
        storage.path(self.path).unlink(missing_ok=True)
      return
    if self._fd is not None:
      import fcntl  # pylint: disable=g-import-not-at-top
      try:
        os.unlink(self.path)
      except FileNotFoundError:
        pass
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


@contextlib.contextmanager
def hold(workdir, command, *, active=True, **kwargs):
  """`WorkdirLock(workdir, command, **kwargs)` for the `with` block.

  Args:
    workdir: the folder (or URL) to hold.
    command: the holder's name in the lock.
    active: False holds nothing (processes other than 0 of a job).
    **kwargs: `WorkdirLock` options.

  Yields:
    The lock (None when not active).
  """
  if not active:
    yield None
    return
  lock = WorkdirLock(workdir, command, **kwargs).acquire()
  try:
    yield lock
  finally:
    lock.release()
