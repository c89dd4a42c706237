"""bench/RESULTS.md: one section per benchmark script, each rewritten alone."""

import pathlib

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"
PREAMBLE = ("# Benchmark results\n\nOne section per script in `bench/`; each "
            "script rewrites only its own section.\n")


def write_section(heading, section, path=RESULTS):
  """Replaces (or appends) the section that starts with the line `heading`.

  Args:
    heading: the section's "## ..." line, exactly.
    section: the new text of the section, starting with `heading`.
    path: the results file.
  """
  text = path.read_text() if path.exists() else PREAMBLE
  lines = text.splitlines(keepends=True)
  start = next((i for i, l in enumerate(lines) if l.strip() == heading), None)
  if start is None:
    text = text.rstrip("\n") + "\n\n" + section
  else:
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    text = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
  path.write_text(text)


def command(script_path, argv):
  """The command line that ran a bench script, for its results section."""
  name = pathlib.Path(script_path).name
  return f".venv/bin/python bench/{name}" + "".join(f" {a}" for a in argv)


def publish(heading, section, write=True):
  """Prints a results section and (unless `write` is False) stores it."""
  print(section)
  if write:
    write_section(heading, section)
