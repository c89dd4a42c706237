"""What the `python -m big_vl.X` entry points share: an error big_vl raises on
purpose ends the program with its sentence, not a traceback.

A user's mistake (a bad config value, a missing file, a busy workdir, a
checkpoint that does not fit the eval config, a full disk) is raised by
big_vl's own code with a message that says what happened and what to do;
Python's traceback above it only buries that sentence. `user_errors(main)`
prints `ERROR: <message>` on stderr and exits with status 1 for such an
error; any other exception (one raised inside a library, or a bug) keeps its
traceback. `BIG_VL_TRACEBACK=1` shows the traceback always.

    @cli.user_errors
    def main(argv):
      ...

"On purpose" means: the exception was raised by a frame of the big_vl
package (the last frame of its traceback, import machinery aside) and is a
ValueError, an OSError, an ImportError or an exception class big_vl defines.
"""

import functools
import os
import sys
import traceback

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_KINDS = (ValueError, OSError, ImportError)


def raised_on_purpose(error):
  """Whether big_vl's own code raised `error` with a message for the user."""
  if not (isinstance(error, _KINDS)
          or type(error).__module__.split(".")[0] == "big_vl"):
    return False
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if not f.filename.startswith("<frozen")]
  return bool(frames) and os.path.abspath(frames[-1].filename).startswith(
      _PACKAGE_DIR + os.sep)


def flags_parser(flag_values):
  """An `app.run(main, flags_parser=...)` for an entry point whose flags
  live in their own `flag_values` (a module that is also a library, imported
  next to other entry points that define flags of the same names): parses
  them first, then absl's own (--verbosity, ...)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  def parse(argv):
    try:
      rest = flag_values(argv, known_only=True)
      return flags.FLAGS(rest)
    except flags.Error as e:
      sys.stderr.write(f"FATAL Flags parsing error: {e}\n"
                       f"{flag_values.main_module_help()}\n")
      sys.exit(1)

  return parse


def user_errors(main):
  """Wraps an entry point's `main`: see the module docstring."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      if not raised_on_purpose(e) or os.environ.get("BIG_VL_TRACEBACK"):
        raise
      sys.stderr.write(f"ERROR: {e}\n")
      sys.stderr.flush()
      sys.exit(1)

  return wrapped
