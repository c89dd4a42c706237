"""bench/: partial runs never overwrite RESULTS.md; machine facts are read.

No benchmark is run here: the shared helpers (bench/results_md.py,
bench/host.py) are tested directly, and every bench script's source is
checked to go through them.
"""

import argparse
import os
import pathlib
import re
import sys

import jax
import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

# pylint: disable=g-import-not-at-top,wrong-import-position
import data_throughput  # No JAX work at import (unlike the 8-device ones).
import host
import results_md
import train_throughput
# pylint: enable=g-import-not-at-top,wrong-import-position

HELPERS = ("host.py", "peer.py", "results_md.py", "runs.py")
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name not in HELPERS)

OLD = """# Benchmark results

Intro.

## A (bench/a.py)

full table of A: | ViT-S-32 | ViT-B-32 |

## B (bench/b.py)

B's table.
"""


def test_scripts_found():
  assert {p.name for p in SCRIPTS} >= {
      "big_batch_step.py", "compile_time.py", "data_throughput.py",
      "loss_memory.py", "methods.py", "token_loss_memory.py",
      "train_throughput.py"}


def test_publish_refuses_a_partial_table(tmp_path, capsys):
  path = tmp_path / "RESULTS.md"
  path.write_text(OLD)
  section = "## A (bench/a.py)\n\npartial table: | ViT-S-32 |\n"
  wrote = results_md.publish("## A (bench/a.py)", section,
                             partial=["--only=big_vl"], path=path)
  assert not wrote
  assert path.read_text() == OLD  # The full table stays.
  out, err = capsys.readouterr()
  assert "partial table: | ViT-S-32 |" in out  # Still printed.
  assert "NOT written" in err and "--only=big_vl" in err
  assert "## A (bench/a.py)" in err


def test_publish_writes_a_full_table_and_keeps_other_sections(tmp_path,
                                                              capsys):
  path = tmp_path / "RESULTS.md"
  path.write_text(OLD)
  section = "## A (bench/a.py)\n\nnew full table\n"
  assert results_md.publish("## A (bench/a.py)", section, path=path)
  text = path.read_text()
  assert "new full table" in text and "full table of A" not in text
  assert "## B (bench/b.py)\n\nB's table.\n" in text
  assert text.startswith("# Benchmark results\n\nIntro.\n")
  assert "Wrote" in capsys.readouterr().err
  # --no_write: printed only, even for a full table.
  assert not results_md.publish("## B (bench/b.py)", "## B (bench/b.py)\n\n"
                                "x\n", write=False, path=path)
  assert path.read_text() == text


def test_non_default_names_each_changed_option():
  parser = argparse.ArgumentParser()
  parser.add_argument("--models", default="ViT-S-32,ViT-B-32")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--only", choices=("big_vl",))
  parser.add_argument("--peer_python", default="/p")
  parser.add_argument("--no_write", action="store_true")
  nd = lambda argv: results_md.non_default(
      parser, parser.parse_args(argv), ignore=("peer_python",))
  assert nd([]) == []
  assert nd(["--no_write", "--peer_python=/q"]) == []
  assert nd(["--models=ViT-S-32"]) == ["--models=ViT-S-32"]
  assert nd(["--only=big_vl", "--reps=1"]) == ["--reps=1", "--only=big_vl"]


@pytest.mark.parametrize("argv, partial", [
    ([], False),
    (["--profile"], False),
    (["--peer_python=/elsewhere/python"], False),
    (["--only=big_vl"], True),
    (["--only=big_vl", "--profile"], True),
    (["--models=ViT-S-32"], True),
    (["--reps=1"], True),
    (["--batch=64"], True),
])
def test_train_throughput_partial_runs(argv, partial):
  parser = train_throughput.make_parser()
  flags = results_md.non_default(parser, parser.parse_args(argv),
                                 ignore=train_throughput.PARTIAL_IGNORE)
  assert bool(flags) == partial, flags


@pytest.mark.parametrize("argv, partial", [
    ([], False),
    (["--data_dir=/tmp/x", "--peer_python=/p"], False),
    (["--only=big_vl"], True),
    (["--workers=0"], True),
    (["--reps=1"], True),
])
def test_data_throughput_partial_runs(argv, partial):
  parser = data_throughput.make_parser()
  flags = results_md.non_default(parser, parser.parse_args(argv),
                                 ignore=data_throughput.PARTIAL_IGNORE)
  assert bool(flags) == partial, flags


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_bench_publishes_through_the_shared_helpers(script):
  src = script.read_text()
  assert "results_md.publish(" in src, "writes RESULTS.md another way"
  assert "write_section(" not in src, "bypasses the partial-run check"
  assert "results_md.non_default(" in src and "partial=" in src
  assert "def make_parser(" in src
  assert "host.describe(" in src, "machine facts not from bench/host.py"


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")),
                         ids=lambda p: p.name)
def test_no_hard_coded_machine(script):
  src = script.read_text()
  for pattern in (r"2 CPU cores, 24 GiB", r"24 GiB RAM",
                  r"machine: \d+ CPU cores", r"CPU \(\d+ cores\)",
                  r"on the \d+ cores"):
    assert not re.search(pattern, src), (script.name, pattern)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_fixed_prose_with_numbers_is_dated(script):
  src = script.read_text()
  m = re.search(r'^NOTES = """(.*?)"""', src, re.S | re.M)
  if m is None:
    return
  head = m.group(1).strip()[:200]
  assert re.search(r"\b20\d\d-\d\d-\d\d\b", head), head
  assert "quoted from" in head, head


def test_results_md_has_no_undated_notes():
  text = (BENCH / "RESULTS.md").read_text()
  assert text.startswith(results_md.PREAMBLE)
  assert "What was tried (big_vl alone" not in text
  assert "Past experiments (2026-11-29, on a 2-core" in text


def test_cpu_facts_come_from_the_machine():
  f = host.facts(peak=False)
  assert f["cpu_cores"] == os.cpu_count()
  assert 1 <= f["usable_cores"] <= os.cpu_count()
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as fh:
      names = [l.split(":", 1)[1].strip() for l in fh
               if l.startswith("model name")]
    if names:
      assert f["cpu_model"] == names[0]
  if os.path.exists("/proc/meminfo"):
    with open("/proc/meminfo") as fh:
      kib = next(int(l.split()[1]) for l in fh if l.startswith("MemTotal:"))
    assert f["ram_bytes"] == kib * 1024
  assert f["backend"] == jax.default_backend()
  assert f["devices"] == jax.device_count()
  line = host.describe(f)
  assert f"{os.cpu_count()} CPU cores" in line
  assert f"{f['ram_bytes'] / 2**30:.1f} GiB RAM" in line
  assert f"{jax.device_count()} device" in line


def test_cpu_model_and_ram_parsers(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nvendor_id\t: X\n"
                     "model name\t: Test CPU 9000 @ 3.0GHz\n\nprocessor\t: 1\n"
                     "model name\t: Test CPU 9000 @ 3.0GHz\n")
  assert host.cpu_model(str(cpuinfo)) == "Test CPU 9000 @ 3.0GHz"
  arm = tmp_path / "cpuinfo_arm"
  arm.write_text("processor\t: 0\nBogoMIPS\t: 50\nHardware\t: Board Y\n")
  assert host.cpu_model(str(arm)) == "Board Y"
  meminfo = tmp_path / "meminfo"
  meminfo.write_text("MemTotal:       1048576 kB\nMemFree: 1 kB\n")
  assert host.ram_bytes(str(meminfo)) == 2**30


def test_matmul_peak_is_measured():
  f = host.facts(peak=True, peak_n=128)
  assert 0 < f["matmul_peak_gflops"] < 1e7
  assert "float32 matmul peak" in host.describe(f)
  assert "jitted 128x128" in host.describe(f)
