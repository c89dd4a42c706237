"""Workdirs on local disk or in object storage (`gs://bucket/run`, `s3://...`).

Checkpoints go straight to the workdir, wherever it is: Orbax writes URLs
through TensorStore. The small files a run writes as it goes (metrics.jsonl
rows are appended, TensorBoard event files grow, plots and result files are
rewritten) cannot be appended to an object store, so for a URL workdir they
are written into a local *staging* folder that mirrors the URL:

    staged = StagedDir("gs://my-bucket/runs/clip", active=is_main)
    open(os.path.join(staged.local, "metrics.jsonl"), "a").write(...)
    staged.sync()        # uploads what changed since the last sync

`StagedDir` first downloads what the URL already holds (the metrics of the
run being resumed), so a resumed run keeps appending to the same files. For a
local workdir `staged.local` is the workdir itself and `sync` does nothing.

Staging folders are private: each `StagedDir` makes a new folder (mode
0700, `tempfile.mkdtemp`) under a per-user base `<tmp>/big_vl_staging-<uid>`
(mode 0700, refused if another user owns it or it is a symlink), so runs of
other users, or other runs of the same user on this machine, never see,
replace or delete each other's files. The folder is removed when the
process exits if everything in it was uploaded; otherwise it is kept and a
warning names it.

URLs are read and written with `etils.epath`, which uses fsspec: `gs://`
needs `gcsfs` (in requirements.txt), `s3://` needs `s3fs`. Credentials are
the usual ones (Application Default Credentials on a TPU VM).
"""

import atexit
import hashlib
import os
import shutil
import stat
import tempfile

from absl import logging
from etils import epath


def is_url(path):
  """Whether `path` names object storage (`scheme://...`), not a local path."""
  return "://" in str(path)


def absolute(path):
  """`path` as an absolute local path, or the URL unchanged."""
  path = os.fspath(path)
  return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def path(p):
  """An `epath.Path` for a local path or a URL (reads and writes both)."""
  return epath.Path(absolute(p))


def write(p, data):
  """Writes `data` (str or bytes) to the file `p` (a local path or a URL),
  creating its folder."""
  target = path(p)
  target.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(data, str):
    target.write_text(data)
  else:
    target.write_bytes(data)


def list_files(root, exclude=()):
  """Relative paths of the files under `root` (a local folder or a URL).

  Args:
    root: the folder.
    exclude: names of files or folders (at any depth) left out; excluded
      folders are not listed at all.

  Returns:
    A sorted list of "/"-separated relative paths ([] if `root` is absent).
  """
  found = []
  pending = [path(root)]
  while pending:
    folder = pending.pop()
    if not folder.is_dir():
      continue
    for item in folder.iterdir():
      if item.name in exclude:
        continue
      if item.is_dir():
        pending.append(item)
      else:
        found.append(str(item)[len(str(path(root))):].lstrip("/"))
  return sorted(found)


def _user_id():
  getuid = getattr(os, "getuid", None)
  if getuid is not None:
    return str(getuid())
  import getpass  # pylint: disable=g-import-not-at-top
  return getpass.getuser()


def private_base(staging_root=None):
  """This user's folder for staging copies: `<root>/big_vl_staging-<uid>`.

  Created with mode 0700 if absent. An existing one must be a real folder
  (not a symlink) owned by this user; a too-open mode is tightened to 0700.

  Args:
    staging_root: the parent folder (default: `tempfile.gettempdir()`,
      i.e. $TMPDIR or /tmp).

  Returns:
    The folder's path.

  Raises:
    PermissionError: the folder exists but belongs to another user or is
      not a plain folder.
  """
  root = staging_root or tempfile.gettempdir()
  os.makedirs(root, exist_ok=True)
  base = os.path.join(root, f"big_vl_staging-{_user_id()}")
  try:
    os.mkdir(base, 0o700)
  except FileExistsError:
    pass
  info = os.lstat(base)
  owner = getattr(os, "getuid", lambda: info.st_uid)()
  problem = None
  if stat.S_ISLNK(info.st_mode):
    problem = "a symlink"
  elif not stat.S_ISDIR(info.st_mode):
    problem = "not a folder"
  elif info.st_uid != owner:
    problem = f"owned by uid {info.st_uid}, not this user (uid {owner})"
  if problem:
    raise PermissionError(
        f"Staging base {base} is {problem}: big_vl stages gs:// workdir "
        "files there and will not use a path another user may control. "
        "Remove it, or set TMPDIR (or StagedDir's staging_root) to a folder "
        "of your own.")
  if stat.S_IMODE(info.st_mode) & 0o077:
    os.chmod(base, 0o700)
  return base


class StagedDir:
  """A local folder whose files are mirrored into `target` on `sync()`.

  Args:
    target: a local folder (used as is) or a URL.
    active: False on processes that write nothing here (no download, no
      upload); `local` is then an empty folder of this process's own.
    exclude: folder or file names (at any depth under `target`) that are
      neither downloaded nor uploaded (e.g. "checkpoints", which Orbax
      writes directly).
    staging_root: where the per-user staging base goes (default: the temp
      directory); see `private_base`. Each StagedDir gets a new private
      folder in it, removed at exit once everything in it is uploaded.

  Attributes:
    target: the absolute local path or the URL.
    local: the local folder to write into.
  """

  def __init__(self, target, *, active=True,
               exclude=("checkpoints", ".big_vl.lock"),
               staging_root=None):
    self.target = absolute(target)
    self.active = active
    self._exclude = set(exclude)
    self._synced = {}
    if not is_url(self.target):
      self.local = self.target
      os.makedirs(self.local, exist_ok=True)
      return
    base = private_base(staging_root)
    # A new private folder (mode 0700) per StagedDir: other processes of the
    # job and other runs on this machine have their own. The URL is the
    # truth: the folder starts from what the URL holds now.
    digest = hashlib.sha1(self.target.encode()).hexdigest()[:12]
    self.local = tempfile.mkdtemp(
        prefix=f"{digest}_" if active else "inactive_", dir=base)
    atexit.register(self._cleanup, os.getpid())
    if active:
      self._download()

  def _pending(self):
    """Staged files new or changed since the last sync (active dirs)."""
    if not self.active:
      return []
    return [r for r in list_files(self.local, exclude=self._exclude)
            if self._synced.get(r) != self._signature(
                os.path.join(self.local, r))]

  def _cleanup(self, pid):
    """At exit: removes this process's own staging folder if nothing in it
    awaits upload; otherwise keeps it and says so."""
    if os.getpid() != pid or not os.path.isdir(self.local):
      return
    try:
      pending = self._pending()
    except OSError:
      return
    if pending:
      logging.warning(
          "Keeping staging folder %s: %d file(s) not uploaded to %s (%s).",
          self.local, len(pending), self.target, ", ".join(pending[:5]))
      return
    shutil.rmtree(self.local, ignore_errors=True)

  @property
  def staged(self):
    """Whether files are staged locally (the target is a URL)."""
    return self.local != self.target

  def _download(self):
    for relative in list_files(self.target, exclude=self._exclude):
      item = epath.Path(self.target) / relative
      local = os.path.join(self.local, relative)
      os.makedirs(os.path.dirname(local), exist_ok=True)
      with open(local, "wb") as f:
        f.write(item.read_bytes())
      self._synced[relative] = self._signature(local)

  @staticmethod
  def _signature(local):
    stat = os.stat(local)
    return stat.st_size, stat.st_mtime_ns

  def sync(self):
    """Uploads the staged files that are new or changed since the last sync.

    Returns:
      The relative paths uploaded ([] for a local target or inactive dir).
    """
    if not (self.staged and self.active):
      return []
    uploaded = []
    for relative in list_files(self.local, exclude=self._exclude):
      local = os.path.join(self.local, relative)
      signature = self._signature(local)
      if self._synced.get(relative) == signature:
        continue
      remote = epath.Path(self.target) / relative
      remote.parent.mkdir(parents=True, exist_ok=True)
      with open(local, "rb") as f:
        remote.write_bytes(f.read())
      self._synced[relative] = signature
      uploaded.append(relative)
    return uploaded
