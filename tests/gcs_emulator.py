"""A local Google Cloud Storage server for tests of `gs://` workdirs.

Runs gcp-storage-emulator (in memory) in a child process and points gcsfs
(`STORAGE_EMULATOR_HOST`) and TensorStore (`TENSORSTORE_GCS_HTTP_URL`,
`GOOGLE_AUTH_TOKEN_FOR_TESTING`) at it, so `gs://bucket/...` paths go through
the same code (etils.epath -> gcsfs, Orbax -> TensorStore's GCS driver) as on
Cloud Storage.

One gap of the emulator is filled here: its media downloads carry no
`x-goog-generation` header, which TensorStore reads to version every object
(GCS always sends it). The child process adds it before serving.

    with gcs_emulator.running(bucket="bkt") as url:   # "gs://bkt"
      ...

Run as a script, it is the server: `python gcs_emulator.py PORT BUCKET`.
"""

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request

_ENV = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING")


def _serve(port, bucket):
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  plain_download = objects.download

  def download(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"],
                                 request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", 1))
    except Exception:  # pylint: disable=broad-except
      pass  # Not found: the plain handler answers 404.
    return plain_download(request, response, storage, *args, **kwargs)

  # `objects.get` serves `?alt=media` through the module's `download`.
  objects.download = download
  server.HANDLERS = tuple(
      (regex, {method: download if handler is plain_download else handler
               for method, handler in handlers.items()})
      for regex, handlers in server.HANDLERS)
  srv = server.create_server("localhost", port, in_memory=True,
                             default_bucket=bucket)
  srv.run()


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def running(bucket="bkt", timeout=30):
  """Starts the server; yields "gs://BUCKET" with the environment set.

  Args:
    bucket: the bucket created at start.
    timeout: seconds to wait for the server to answer.

  Yields:
    The bucket's URL.
  """
  port = _free_port()
  host = f"http://localhost:{port}"
  proc = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), str(port), bucket],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  saved = {k: os.environ.get(k) for k in _ENV}
  # Without Application Default Credentials gcsfs warns on every call that
  # it cannot ask the bucket's type (a newer API the emulator lacks), and so
  # does google.auth, that no metadata server answers.
  loggers = [logging.getLogger(n) for n in ("gcsfs", "google.auth._default")]
  levels = [log.level for log in loggers]
  for log in loggers:
    log.setLevel(logging.ERROR)
  try:
    deadline = time.time() + timeout
    while True:
      try:
        urllib.request.urlopen(f"{host}/storage/v1/b/{bucket}", timeout=2)
        break
      except OSError:
        if proc.poll() is not None or time.time() > deadline:
          out = proc.stdout.read().decode() if proc.poll() is not None else ""
          raise RuntimeError(f"The GCS emulator did not start:\n{out}")
        time.sleep(0.2)
    os.environ.update({"STORAGE_EMULATOR_HOST": host,
                       "TENSORSTORE_GCS_HTTP_URL": host,
                       "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token"})
    yield f"gs://{bucket}"
  finally:
    proc.kill()
    proc.wait()
    for log, level in zip(loggers, levels):
      log.setLevel(level)
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


if __name__ == "__main__":
  _serve(int(sys.argv[1]), sys.argv[2])
