r"""One train step at a global batch of 65,536 pairs on 8 simulated devices.

    python bench/big_batch_step.py                      # B=65,536, k=16, ring
    python bench/big_batch_step.py --batch=16384 --accum=4 --no_write

Builds the real trainer step (`big_vl.train.build`) for tiny towers (`mu`,
16x16 images with patch 8, 8 text tokens), the softmax loss with the ring
implementation and GradCache accumulation over `--accum` micro-batches, on a
("data", 8) mesh of simulated CPU devices; runs it on a random batch and
reports compile time, step time, XLA's per-device temporary memory and the
process's peak RSS. The peer in the same run is the plain configuration
(dense loss, no accumulation) at the same batch: it is compiled and its
memory reported, and it is run only if it fits in `--max_ram_gb`. Results go
to the "## Big-batch train step" section of bench/RESULTS.md (only from
a run with the default flags; others print their table), with the machine's
CPU, cores, RAM and measured matmul peak (bench/host.py).
"""

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_enable_compilation_cache", False)

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import datetime
import json
import resource
import sys
import time

import numpy as np

from big_vl import config as config_lib
from big_vl import sharding
from big_vl import train as train_lib
import host
import results_md

HEADING = "## Big-batch train step (bench/big_batch_step.py)"


def make_config(batch, accum, impl):
  config = config_lib.load_config_module("configs/demo.py").get_config(
      "runlocal")
  config.input.batch_size = batch
  config.model.image.variant = "mu/8"
  config.model.text.vocab_size = 1000
  config.model.text.max_len = 8
  config.objectives.contrastive.impl = impl
  config.grad_accum_steps = accum
  config.mesh = (("data", 8),)
  return config


def measure(batch, accum, impl, run_it):
  """Compiles (and maybe runs) one step; returns a result row."""
  config = make_config(batch, accum, impl)
  mesh = sharding.make_mesh(config.mesh)
  example = {"image": np.zeros((16, 16, 3), np.float32),
             "text": np.zeros((8,), np.int32)}
  run = train_lib.build(config, mesh, example, total_steps=10,
                        warmup_steps=1)
  rng = np.random.default_rng(0)
  batch_np = {
      "image": rng.uniform(-1, 1, (batch, 16, 16, 3)).astype(np.float32),
      "text": rng.integers(1, 1000, (batch, 8)).astype(np.int32)}
  gbatch = sharding.to_global(batch_np, mesh)
  state = run.init_state()
  t0 = time.perf_counter()
  compiled = run.train_step.lower(state, gbatch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  row = {"batch": batch, "accum": accum, "impl": impl,
         "compile_s": round(compile_s, 2),
         "temp_mib_per_device": round(mem.temp_size_in_bytes / 2**20, 1),
         "step_s": None, "loss": None}
  if run_it:
    t0 = time.perf_counter()
    state, metrics = compiled(state, gbatch)
    loss = float(metrics["train/loss"])
    row["step_s"] = round(time.perf_counter() - t0, 2)
    row["loss"] = round(loss, 4)
  row["peak_rss_gib"] = round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
  return row


def markdown(rows, command, machine):
  lines = [
      HEADING, "",
      f"Command: `{command}`  ",
      f"Date: {datetime.date.today()}; machine: {machine}; 8 simulated CPU "
      f"devices, jax {jax.__version__}. Tiny towers (mu: width "
      "64, 2 layers; 16x16 images, patch 8; 8 text tokens), softmax loss, "
      "AdamW, random data. `temp` is XLA's per-device temporary memory of "
      "the compiled step; peak RSS is the whole process so far (it includes "
      "the 8 devices' copies of the batch).", "",
      "| batch | loss impl | micro-batches | compile s | temp MiB / device "
      "| step s | loss | peak RSS GiB |",
      "|---:|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    step = "not run (too big)" if r["step_s"] is None else r["step_s"]
    loss = "-" if r["loss"] is None else r["loss"]
    lines.append(
        f"| {r['batch']:,} | {r['impl']} | {r['accum']} | {r['compile_s']} | "
        f"{r['temp_mib_per_device']:,} | {step} | {loss} | "
        f"{r['peak_rss_gib']} |")
  if len(rows) == 2 and rows[0]["temp_mib_per_device"]:
    ratio = rows[1]["temp_mib_per_device"] / rows[0]["temp_mib_per_device"]
    lines += ["", f"Plain / (ring + GradCache) temporary memory: {ratio:.1f}x."]
  return "\n".join(lines) + "\n"


def make_parser():
  """The command-line flags (any non-default one makes a partial run)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=65536)
  parser.add_argument("--accum", type=int, default=16)
  parser.add_argument("--max_ram_gb", type=float, default=16.0)
  parser.add_argument("--no_write", action="store_true")
  return parser


def main(argv=None):
  parser = make_parser()
  args = parser.parse_args(argv)
  partial = results_md.non_default(parser, args)
  machine = host.describe(host.facts())
  rows = [measure(args.batch, args.accum, "ring", run_it=True)]
  print(json.dumps(rows[-1]), flush=True)
  plain = measure(args.batch, 1, "dense", run_it=False)
  if plain["temp_mib_per_device"] * 8 / 1024 < args.max_ram_gb:
    plain = measure(args.batch, 1, "dense", run_it=True)
  rows.append(plain)
  print(json.dumps(rows[-1]), flush=True)
  command = "python bench/big_batch_step.py" + "".join(
      f" --{k}={v}" for k, v in (("batch", args.batch), ("accum", args.accum))
      if v != parser.get_default(k))
  results_md.publish(HEADING, markdown(rows, command, machine),
                     write=not args.no_write, partial=partial)


if __name__ == "__main__":
  main(sys.argv[1:])
