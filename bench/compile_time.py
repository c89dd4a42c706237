r"""Compile time of a train step vs tower depth, with and without scan.

    python bench/compile_time.py            # depths 6, 12, 24; writes RESULTS.md
    python bench/compile_time.py --depths=6,12 --no_write

For two-tower models with tiny widths (64, 2 heads) and depth 6/12/24 in both
towers, measures the wall time of `jax.jit(train_step).lower(...).compile()`
(softmax loss, value_and_grad, AdamW update) with `scan=False` (one copy of
each block in the program) and `scan=True` (`nn.scan` over the blocks). The
persistent compilation cache is off so every compile is real. Results go to
the "## Compile time" section of bench/RESULTS.md with the command and the
machine's facts (bench/host.py); only a run of the default depths writes it.
"""

import argparse
import datetime
import json
import sys
import time

import jax

jax.config.update("jax_enable_compilation_cache", False)

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position

from big_vl import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.models import two_towers  # pylint: disable=g-import-not-at-top,wrong-import-position
import host  # pylint: disable=g-import-not-at-top,wrong-import-position
import results_md  # pylint: disable=g-import-not-at-top,wrong-import-position

HEADING = "## Compile time (bench/compile_time.py)"


def make_model(depth, scan):
  tower = dict(width=64, depth=depth, mlp_dim=256, num_heads=2, scan=scan)
  return two_towers.Model(
      image=dict(tower, patch_size=8, pool_type="gap"),
      text=dict(tower, vocab_size=1000, max_len=16, causal=True,
                pool_type="eot"),
      out_dim=64)


def compile_seconds(depth, scan, batch=32):
  """Seconds to lower + compile one jitted train step."""
  model = make_model(depth, scan)
  image = jnp.zeros((batch, 32, 32, 3), jnp.float32)
  text = jnp.ones((batch, 16), jnp.int32)
  params = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), image[:1], text[:1]))[
          "params"]
  tx = optax.adamw(1e-3, weight_decay=0.1)
  opt = jax.eval_shape(tx.init, params)
  loss_fn = losses.get("softmax")

  def step(params, opt, image, text):
    def loss_of(p):
      zimg, ztxt, aux = model.apply({"params": p}, image, text, train=True)
      return loss_fn(zimg, ztxt, aux)[0]
    loss, grads = jax.value_and_grad(loss_of)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  t0 = time.perf_counter()
  jax.jit(step).lower(params, opt, image, text).compile()
  return time.perf_counter() - t0


def markdown(rows, command, machine):
  by = {(r["depth"], r["scan"]): r["compile_s"] for r in rows}
  depths = sorted({r["depth"] for r in rows})
  lines = [HEADING, "",
           f"Command: `{command}`  ",
           f"Date: {datetime.date.today()}; machine: {machine}; jax "
           f"{jax.__version__}, persistent compilation cache off. Tiny towers "
           "(width 64, 2 heads, mlp 256) of the given depth in both the "
           "image and the text tower; one jitted train step (softmax loss, "
           "grads, AdamW).", "",
           "| depth | compile s (no scan) | compile s (scan) | scan / no scan |"
           " scan vs 12-layer scan |",
           "|---:|---:|---:|---:|---:|"]
  for d in depths:
    plain, scanned = by.get((d, False)), by.get((d, True))
    base = by.get((12, True))
    lines.append(
        f"| {d} | {plain:.2f} | {scanned:.2f} | {scanned / plain:.2f}x | "
        + (f"{scanned / base:.2f}x |" if base else "- |"))
  return "\n".join(lines) + "\n"


def make_parser():
  """The command-line flags (any non-default one makes a partial run)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--depths", default="6,12,24")
  parser.add_argument("--no_write", action="store_true")
  return parser


def main(argv=None):
  parser = make_parser()
  args = parser.parse_args(argv)
  partial = results_md.non_default(parser, args)
  machine = host.describe(host.facts())
  rows = []
  for depth in [int(d) for d in args.depths.split(",")]:
    for scan in (False, True):
      row = {"depth": depth, "scan": scan,
             "compile_s": round(compile_seconds(depth, scan), 3)}
      print(json.dumps(row), flush=True)
      rows.append(row)
  command = "python bench/compile_time.py" + (
      f" --depths={args.depths}" if args.depths != "6,12,24" else "")
  results_md.publish(HEADING, markdown(rows, command, machine),
                     write=not args.no_write, partial=partial)


if __name__ == "__main__":
  main(sys.argv[1:])
