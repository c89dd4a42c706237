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

URLs are read and written with `etils.epath`, which uses fsspec: `gs://`
needs `gcsfs` (in requirements.txt), `s3://` needs `s3fs`. Credentials are
the usual ones (Application Default Credentials on a TPU VM).
"""

import hashlib
import os
import shutil
import tempfile

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


class StagedDir:
  """A local folder whose files are mirrored into `target` on `sync()`.

  Args:
    target: a local folder (used as is) or a URL.
    active: False on processes that write nothing here (no download, no
      upload); `local` is then an empty folder of this process's own.
    exclude: folder or file names (at any depth under `target`) that are
      neither downloaded nor uploaded (e.g. "checkpoints", which Orbax
      writes directly).
    staging_root: where staging folders go (default: the temp directory).

  Attributes:
    target: the absolute local path or the URL.
    local: the local folder to write into.
  """

  def __init__(self, target, *, active=True, exclude=("checkpoints",),
               staging_root=None):
    self.target = absolute(target)
    self.active = active
    self._exclude = set(exclude)
    self._synced = {}
    if not is_url(self.target):
      self.local = self.target
      os.makedirs(self.local, exist_ok=True)
      return
    staging_root = os.path.join(staging_root or tempfile.gettempdir(),
                                "big_vl_staging")
    os.makedirs(staging_root, exist_ok=True)
    if not active:
      # An empty folder of its own: other processes of the job may share
      # this machine and the active one's staging folder.
      self.local = tempfile.mkdtemp(prefix="inactive_", dir=staging_root)
      return
    digest = hashlib.sha1(self.target.encode()).hexdigest()[:12]
    self.local = os.path.join(staging_root, digest)
    # The URL is the truth: a stale staging copy from an earlier run on this
    # machine is replaced by what the URL holds now.
    shutil.rmtree(self.local, ignore_errors=True)
    os.makedirs(self.local)
    self._download()

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
