"""bench/RESULTS.md: one section per benchmark script, each rewritten alone.

A section is written only by a full run: the script's default table
(every option that shapes or changes the measurement at its default, and
every side measured). A partial run (`--only=big_vl`, one model, fewer
batch sizes, fewer repetitions, a missing peer, ...) prints its section and
leaves RESULTS.md alone, so it never replaces a full table with a smaller
one. Each script says which of its options do not change the table
(`non_default(..., ignore=...)`, e.g. `--peer_python`) and passes what
differs as `publish(..., partial=...)`.
"""

import pathlib
import sys

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"
PREAMBLE = (
    "# Benchmark results\n\nOne section per script in `bench/`; each script "
    "rewrites only its own section,\nand only from a full run (its default "
    "table, every side measured; a partial\nrun such as `--only=big_vl` or "
    "one model prints its table and leaves this\nfile alone). Each section's "
    "machine line is read from the machine that ran it\n(bench/host.py); "
    "prose marked with a date quotes past experiments.\n")


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


# Options no script's table depends on.
ALWAYS_IGNORED = ("no_write", "side", "help")


def non_default(parser, args, ignore=()):
  """What makes a run partial: each option whose value is not its default.

  Args:
    parser: the script's argparse parser.
    args: its parsed arguments (before the script rewrites any of them).
    ignore: option names (argparse dests) that do not change the table,
      e.g. "peer_python" or "data_dir".

  Returns:
    ["--name=value", ...] for the options of `args` that differ from
    `parser`'s defaults, except `ignore` and ALWAYS_IGNORED.
  """
  skip = set(ignore) | set(ALWAYS_IGNORED)
  out = []
  for name, value in vars(args).items():
    if name in skip or name.startswith("_"):
      continue
    if value != parser.get_default(name):
      out.append(f"--{name}={value}")
  return out


def publish(heading, section, write=True, partial=(), path=RESULTS):
  """Prints a results section and stores it if it is a full run's.

  Args:
    heading: the section's "## ..." line.
    section: its text, starting with `heading`.
    write: False (`--no_write`) only prints.
    partial: why this run's table is not the full one (e.g. the options
      `non_default` returns, or "open_clip side not measured"); non-empty
      means: print only, and say on stderr why RESULTS.md was left alone.
    path: the results file.

  Returns:
    True if `path` was written.
  """
  print(section)
  if not write:
    return False
  if partial:
    print(f"NOT written to {path}: a partial run ({'; '.join(partial)}). "
          f"Only a full run (those options at their defaults, every side "
          f"measured) replaces the section {heading!r}; pass --no_write to "
          "silence this.", file=sys.stderr)
    return False
  write_section(heading, section, path=path)
  print(f"Wrote {heading!r} in {path}", file=sys.stderr)
  return True


def paired_interval(diffs, level=0.95):
  """The t-interval of the mean of paired differences (one per seed):
  (low, high); (-inf, inf) with fewer than 2 seeds."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import scipy.stats  # pylint: disable=g-import-not-at-top
  diffs = np.asarray(diffs, np.float64)
  if len(diffs) < 2:
    return -np.inf, np.inf
  half = scipy.stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * diffs.std(
      ddof=1) / np.sqrt(len(diffs))
  return diffs.mean() - half, diffs.mean() + half
