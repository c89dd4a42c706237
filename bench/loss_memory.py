"""Per-device memory and step time of dense vs ring contrastive losses.

For each loss ("sigmoid", "softmax"), implementation ("dense", "ring") and
global batch, compiles `jax.value_and_grad` of the loss w.r.t. the image and
text embeddings on a mesh of 8 simulated CPU devices (the batch split over
"data"), reads the per-device sizes from `compiled.memory_analysis()`
(temporaries, arguments, outputs) and times the step (median of a few runs
after a warm-up). The ring losses use `--block_size` (default: the losses'
default, `losses.DEFAULT_BLOCK_SIZE`). A configuration is only compiled, not
run, when all simulated devices together would need more host RAM than
`--max_ram_gb` or when its timing (warm-up + repeats, extrapolated from the
previous batch as B^2) would take longer than `--max_seconds`; the table
says which.

Prints one JSON line per configuration and, unless `--no_write`, rewrites the
section "## Loss memory (bench/loss_memory.py)" of bench/RESULTS.md (other
sections are kept) when every flag is at its default; a run with other flags
prints its table only. The machine line (CPU, cores, RAM, matmul peak) is
read from the machine (bench/host.py).

    .venv/bin/python bench/loss_memory.py
    .venv/bin/python bench/loss_memory.py --batches=1024,4096 --no_write
    .venv/bin/python bench/loss_memory.py --block_size=none --no_write
"""

import jax

# Before JAX initialises its backends: 8 simulated CPU devices.
jax.config.update("jax_num_cpu_devices", 8)

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import datetime
import json
import shlex
import statistics
import sys
import time

import jax.numpy as jnp
import numpy as np

from big_vl import losses
from big_vl import sharding
import host
import results_md

HEADING = "## Loss memory (bench/loss_memory.py)"
N_DEVICES = 8


def parse_args(argv=None):
  """Command-line flags.

  Args:
    argv: arguments (default: sys.argv[1:]).

  Returns:
    argparse.Namespace; `_partial` lists the flags that are not at their
    defaults (`results_md.non_default`).
  """
  parser = make_parser()
  args = parser.parse_args(argv)
  # pylint: disable-next=protected-access
  args._partial = results_md.non_default(parser, args)
  args.block_size = (None if args.block_size.lower() == "none" else
                     int(args.block_size))
  return args


def make_parser():
  """The argparse parser of `parse_args`."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="1024,4096,16384,65536",
                      help="comma list of global batch sizes")
  parser.add_argument("--dim", type=int, default=64,
                      help="embedding dimension")
  parser.add_argument("--losses", default="sigmoid,softmax",
                      help="comma list of registered loss names")
  parser.add_argument("--impls", default="dense,ring",
                      help="comma list of implementations")
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed runs after one warm-up (median reported)")
  parser.add_argument("--max_seconds", type=float, default=60.0,
                      help="skip timing a configuration that would take longer")
  parser.add_argument("--max_ram_gb", type=float, default=16.0,
                      help="skip running a configuration that needs more RAM "
                      "(all simulated devices together)")
  parser.add_argument("--block_size", default=str(losses.DEFAULT_BLOCK_SIZE),
                      help="tile side of the ring losses, or 'none' for "
                      "whole [B_local, B_local] blocks")
  parser.add_argument("--no_write", action="store_true",
                      help="only print, do not update bench/RESULTS.md")
  return parser


def _compile(name, impl, batch, dim, mesh, block_size):
  """Compiled value-and-grad of the loss w.r.t. both embeddings."""
  options = {"block_size": block_size} if impl == "ring" else {}
  loss_fn = losses.get(name, impl=impl, **options)
  batch_sharding = sharding.batch_sharding(mesh)

  def loss_of(zimg, ztxt, t, b):
    return loss_fn(zimg, ztxt, {"t": t, "b": b}, mesh=mesh)[0]

  step = jax.jit(jax.value_and_grad(loss_of, argnums=(0, 1)),
                 in_shardings=(batch_sharding, batch_sharding,
                               sharding.replicated(mesh),
                               sharding.replicated(mesh)))
  spec = jax.ShapeDtypeStruct((batch, dim), jnp.float32,
                              sharding=batch_sharding)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  start = time.perf_counter()
  compiled = step.lower(spec, spec, scalar, scalar).compile()
  return compiled, time.perf_counter() - start


def _inputs(batch, dim, mesh, seed=0):
  """Random normalised embeddings placed on the mesh, plus t and b."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(2):
    z = rng.normal(size=(batch, dim)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    out.append(jax.device_put(z, sharding.batch_sharding(mesh)))
  return (*out, jnp.float32(10.0), jnp.float32(-10.0))


def _time(compiled, args, repeats):
  """Median seconds of `repeats` runs after one warm-up."""
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(name, impl, batch, args, mesh, previous):
  """Memory (and, where affordable, step time) of one configuration.

  Args:
    name: loss name.
    impl: "dense" or "ring".
    batch: global batch size.
    args: parsed flags.
    mesh: the Mesh.
    previous: (batch, step_seconds) of the last timed batch of this loss and
      impl, or None; used to extrapolate the step time as batch^2.

  Returns:
    A dict with the measured numbers (one JSON line).
  """
  compiled, compile_s = _compile(name, impl, batch, args.dim, mesh,
                                 args.block_size)
  mem = compiled.memory_analysis()
  n_dev = sharding.batch_size_divisor(mesh)
  per_device = (mem.temp_size_in_bytes + mem.argument_size_in_bytes +
                mem.output_size_in_bytes)
  b_local = batch // n_dev
  row = {
      "loss": name, "impl": impl, "batch": batch, "b_local": b_local,
      "devices": n_dev, "dim": args.dim,
      # Side of the tiles of logits the ring computes at once.
      "tile": (b_local if args.block_size is None else
               min(args.block_size, b_local)) if impl == "ring" else None,
      "temp_bytes": int(mem.temp_size_in_bytes),
      "argument_bytes": int(mem.argument_size_in_bytes),
      "output_bytes": int(mem.output_size_in_bytes),
      "host_bytes_all_devices": int(per_device * n_dev),
      "compile_s": round(compile_s, 3), "step_s": None, "skipped": None,
  }
  estimate = None
  if previous is not None:
    # B^2 work; x2 as smaller batches fit caches better (measured: the
    # plain extrapolation from 16k to 65k was 1.7x too low).
    estimate = 2 * previous[1] * (batch / previous[0]) ** 2
    row["step_s_estimate"] = round(estimate, 3)
  if per_device * n_dev > args.max_ram_gb * 2**30:
    row["skipped"] = (f"not run: needs {per_device * n_dev / 2**30:.1f} GB "
                      f"RAM > {args.max_ram_gb:g} GB")
  else:
    # Fewer timed runs where the step is slow; none if even one won't fit.
    repeats = args.repeats
    if estimate is not None:
      repeats = min(repeats, int(args.max_seconds // max(estimate, 1e-9)) - 1)
    if repeats < 1:
      row["skipped"] = (f"not timed: ~{estimate:.0f} s/step, warm-up + 1 run "
                        f"> {args.max_seconds:g} s")
    else:
      inputs = _inputs(batch, args.dim, mesh)
      row["step_s"] = round(_time(compiled, inputs, repeats), 4)
      row["repeats"] = repeats
      del inputs
  return row


def _mib(n):
  return f"{n / 2**20:,.2f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def _step(row):
  if row is None:
    return "-"
  if row["step_s"] is not None:
    return f"{row['step_s'] * 1e3:,.0f} ms"
  return "not run" if row["skipped"].startswith("not run") else "not timed"


def _repeats_note(row, repeats):
  if row and row["step_s"] is not None and row["repeats"] != repeats:
    return f"{row['impl']}: median of {row['repeats']} run(s)"
  return None


def _growth(rows, impl):
  """{(loss, batch): (batch factor, temp factor)} vs the previous batch."""
  out, last = {}, {}
  for r in rows:
    if r["impl"] != impl:
      continue
    prev = last.get(r["loss"])
    if prev is not None and prev["temp_bytes"]:
      out[(r["loss"], r["batch"])] = (r["batch"] / prev["batch"],
                                      r["temp_bytes"] / prev["temp_bytes"])
    last[r["loss"]] = r
  return out


def _growth_summary(rows, block_size):
  """Prose: temp growth per batch step of dense and ring, for each loss."""
  dense, ring = _growth(rows, "dense"), _growth(rows, "ring")
  parts = []
  for name in dict.fromkeys(r["loss"] for r in rows):
    def fmt(growth):
      return ", ".join(f"{t:.1f}x" for (n, _), (_, t) in growth.items()
                       if n == name) or "-"
    parts.append(f"{name}: dense {fmt(dense)}; ring {fmt(ring)}")
  factors = {round(f, 3) for f, _ in (*dense.values(), *ring.values())}
  step = (f"per {factors.pop():g}x batch" if len(factors) == 1 else
          "from one batch to the next")
  tiles = ("whole [B_local, B_local] blocks (`block_size=None`)"
           if block_size is None else
           f"tiles of at most {block_size:,} x {block_size:,} "
           f"(`block_size={block_size}`)")
  return (f"Temp growth {step} (table order): " + " | ".join(parts) +
          f". The ring computes {tiles}.")


def markdown(rows, args, command, machine=None):
  """The markdown section (heading included) for `rows`."""
  n_dev = rows[0]["devices"] if rows else N_DEVICES
  cores = host.usable_cores()
  machine = machine or host.describe(host.facts(peak=False))
  bs = args.block_size
  lines = [
      HEADING, "",
      "Per-device memory of `jax.value_and_grad` of the loss w.r.t. both "
      "embeddings (global batch B split over the `data` axis), from "
      "`compiled.memory_analysis()`, and its step time (median of up to "
      f"{args.repeats} runs after a warm-up). `temp` is XLA's temporary "
      "buffer size per device. Arguments are the per-device embeddings; "
      "outputs their gradients (dense's text gradient comes out replicated, "
      "[B, D] per device, as XLA picks no sharding for it here). Dense holds "
      "[B, B_local] slices of the logits per device (about 2 for sigmoid, "
      "3 for softmax): its temp grows as B^2 (16x per 4x batch) at a fixed "
      "device count. The ring computes each ring step's [B_local, B_local] "
      "block of logits in tiles of at most block_size x block_size "
      "(`ring tile` is the tile side used). While B_local <= block_size "
      "that is one tile, about 2 [B_local, B_local] blocks of temp, which "
      "also grows 16x per 4x batch (dense/ring then approaches the device "
      "count, 8, for sigmoid and 12 for softmax); above it the ring holds a "
      "few [tile, tile] tiles"
      f"{'' if bs is None else f' (f32: {bs * bs * 4 / 2**20:g} MiB each)'}"
      " plus a few [B_local, D] buffers, so its temp grows at most "
      "linearly in B (by less while the fixed tiles dominate) and "
      "dense/ring grows with B. "
      f"Step times are on {cores} shared CPU cores for all {n_dev} "
      "simulated devices: compare them with each other, not with "
      "accelerators.", "",
      _growth_summary(rows, bs), "",
      f"- command: `{command}`",
      f"- date: {datetime.date.today().isoformat()}",
      f"- machine: {machine}; {n_dev} "
      f"simulated CPU devices (`jax_num_cpu_devices`), jax {jax.__version__}; "
      f"embedding dim {args.dim}, float32; ring block_size "
      f"{'None' if bs is None else f'{bs:,}'}", "",
      "| loss | B | B_local | ring tile | dense temp | ring temp | "
      "dense/ring temp | temp x vs previous B, dense / ring | "
      "args + outputs, dense / ring | dense step | ring step | notes |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
  ]
  growth = {impl: _growth(rows, impl) for impl in ("dense", "ring")}
  by_key = {(r["loss"], r["batch"], r["impl"]): r for r in rows}
  for name in dict.fromkeys(r["loss"] for r in rows):
    for batch in dict.fromkeys(r["batch"] for r in rows):
      dense = by_key.get((name, batch, "dense"))
      ring = by_key.get((name, batch, "ring"))
      any_row = dense or ring
      if any_row is None:
        continue
      ratio = (f"{dense['temp_bytes'] / ring['temp_bytes']:.1f}x"
               if dense and ring and ring["temp_bytes"] else "-")
      grew = " / ".join(
          f"{growth[impl][(name, batch)][1]:.1f}x"
          if (name, batch) in growth[impl] else "-"
          for impl in ("dense", "ring"))
      io = " / ".join(_mib(r["argument_bytes"] + r["output_bytes"])
                      if r else "-" for r in (dense, ring))
      notes = [f"{r['impl']}: {r['skipped']}"
               for r in (dense, ring) if r and r["skipped"]]
      notes += [n for n in (_repeats_note(r, args.repeats)
                            for r in (dense, ring)) if n]
      notes = "; ".join(notes)
      lines.append(
          f"| {name} | {batch:,} | {any_row['b_local']:,} | "
          f"{format(ring['tile'], ',') if ring else '-'} | "
          f"{_mib(dense['temp_bytes']) if dense else '-'} | "
          f"{_mib(ring['temp_bytes']) if ring else '-'} | {ratio} | "
          f"{grew} | {io} | {_step(dense)} | {_step(ring)} | "
          f"{notes or '-'} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  args = parse_args(argv)
  batches = [int(b) for b in args.batches.split(",") if b]
  names = [n for n in args.losses.split(",") if n]
  impls = [i for i in args.impls.split(",") if i]
  mesh = sharding.make_mesh([("data", N_DEVICES)],
                            jax.devices()[:N_DEVICES])
  machine = host.describe(host.facts())
  rows = []
  for name in names:
    for impl in impls:
      previous = None
      for batch in batches:
        row = measure(name, impl, batch, args, mesh, previous)
        if row["step_s"] is not None:
          previous = (batch, row["step_s"])
        print(json.dumps(row), flush=True)
        rows.append(row)
  command = " ".join(
      [".venv/bin/python", "bench/loss_memory.py"] +
      [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)])
  partial = args._partial  # pylint: disable=protected-access
  results_md.publish(HEADING, markdown(rows, args, command, machine),
                     write=not args.no_write, partial=partial)


if __name__ == "__main__":
  main()
