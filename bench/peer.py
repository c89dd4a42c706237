"""A benchmark's PyTorch side as a long-lived subprocess of the JAX driver.

The driver (project venv, JAX) starts the same script with another Python (a
venv with torch / open_clip) and a `--side` flag; that process answers JSON
requests read from stdin with one `RESULT_PREFIX` + JSON line each on stdout
(anything else it prints is passed through to stderr). The two sides never
share a process, so neither imports the other's framework, and one side idles
while the other is timed.

    peer = Peer(python, "bench/x.py", ["--side=open_clip", "--batch=32"])
    peer.versions                  # the first reply (e.g. package versions)
    peer.ask(op="measure", n=3)    # -> the reply dict
    peer.close()

The peer side calls `serve(handlers, hello)`.
"""

import json
import subprocess
import sys

RESULT_PREFIX = "@@RESULT "


def add_side_flag(parser, peer="open_clip"):
  """The `--side` flag of a script that is both driver and peer."""
  parser.add_argument("--side", default="driver", choices=("driver", peer),
                      help=f"internal: {peer} runs the peer server")


def reply(obj):
  """Sends one reply line to the driver."""
  sys.stdout.write(RESULT_PREFIX + json.dumps(obj) + "\n")
  sys.stdout.flush()


def serve(handlers, hello):
  """Peer main loop: replies `hello`, then answers `{"op": name, ...}` lines.

  Args:
    handlers: {op name: fn(**request without "op") -> JSON-able reply}.
    hello: the first reply (e.g. versions), sent before reading requests.
  """
  reply(hello)
  for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd.pop("op")
    if op == "quit":
      break
    reply(handlers[op](**cmd))


class Peer:
  """The driver's handle on a peer subprocess."""

  def __init__(self, python, script, args, name="open_clip"):
    self.name = name
    self.proc = subprocess.Popen([python, script, *args],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
    self.versions = self._read()

  def _read(self):
    for line in self.proc.stdout:
      if line.startswith(RESULT_PREFIX):
        return json.loads(line[len(RESULT_PREFIX):])
      sys.stderr.write(f"[{self.name}] " + line)
    raise RuntimeError(f"{self.name} peer exited ({self.proc.wait()}).")

  def ask(self, **cmd):
    """Sends one request and waits for its reply."""
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self):
    try:
      self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
      self.proc.stdin.close()
    except (BrokenPipeError, OSError):
      pass
    self.proc.wait(timeout=60)
