r"""Caption decoding speed: greedy and beam search with the KV cache vs without.

    python bench/decode_throughput.py             # writes bench/RESULTS.md
    python bench/decode_throughput.py --batch=8 --no_write

A CapPa-style captioner (`big_vl.models.captioner`, random init: speed does
not depend on the weights) decodes a batch of images for `--steps` tokens:

- `greedy (cache)`: `big_vl.decode.greedy`, the decoder's self-attention
  keys and values cached, one position per step;
- `greedy (no cache)`: the same jitted loop, but each step reruns the
  decoder on the whole (padded) prefix, as a decoder without a cache does
  (open_clip's CoCa `generate` recomputes its prefix the same way); the
  outputs are checked equal to the cached ones;
- `beam 4 (cache)`: `big_vl.decode.beam_search(beam=4)`.

Each is compiled first, then timed `--reps` times (median); tokens/s count
batch x steps (x beam for beam search, the hypotheses computed). KV cache
memory per sequence is the size of the "cache" collection divided by the
rows. Results go to the "## Decoding throughput" section of RESULTS.md with
the machine's facts (bench/host.py); only a run with default flags writes
it. The peer comparison with open_clip's CoCa is not here yet (issue #19).
"""

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from big_vl import decode  # pylint: disable=g-import-not-at-top
from big_vl.decode import greedy_search  # pylint: disable=g-import-not-at-top
from big_vl.models import captioner as captioner_lib  # pylint: disable=g-import-not-at-top
import host  # pylint: disable=g-import-not-at-top
import results_md  # pylint: disable=g-import-not-at-top

HEADING = "## Decoding throughput (bench/decode_throughput.py)"
START, END = 49406, 49407


def make_model(args):
  return captioner_lib.Captioner(
      image={"width": args.width, "depth": args.depth,
             "mlp_dim": 4 * args.width, "num_heads": args.heads,
             "patch_size": 16},
      decoder={"width": args.width, "depth": args.depth,
               "mlp_dim": 4 * args.width, "num_heads": args.heads},
      max_len=args.steps + 1)


def uncached_greedy(model):
  """Jitted greedy that reruns the padded prefix at every step."""

  def run(params, image):
    length = model.max_len - 1
    batch = image.shape[0]
    variables = {"params": params}
    memory = model.apply(variables, image,
                         method=captioner_lib.Captioner.encode)

    def step(t, carry):
      inputs, out = carry
      logits = model.apply(variables, inputs, memory,
                           method=captioner_lib.Captioner.decode_tokens)
      scores = jax.nn.log_softmax(
          jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False))
      token = jnp.argmax(scores, axis=-1).astype(jnp.int32)
      out = out.at[:, t].set(token)
      inputs = jax.lax.dynamic_update_index_in_dim(
          inputs, token, jnp.minimum(t + 1, length - 1), axis=1)
      return inputs, out

    inputs = jnp.zeros((batch, length), jnp.int32).at[:, 0].set(START)
    out = jnp.zeros((batch, length), jnp.int32)
    _, out = jax.lax.fori_loop(0, length, step, (inputs, out))
    return greedy_search.finish(out, END, 0)

  return jax.jit(run)


def timed(fn, reps):
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times), min(times), max(times)


def cache_bytes_per_row(model, params, image):
  dec = model.clone(decode=True)
  memory = dec.apply({"params": params}, image,
                     method=captioner_lib.Captioner.encode)
  _, cache = dec.apply({"params": params},
                       jnp.zeros((image.shape[0], model.max_len - 1),
                                 jnp.int32), memory,
                       method=captioner_lib.Captioner.decode_tokens,
                       mutable=["cache"])
  total = sum(x.nbytes for x in jax.tree.leaves(cache) if x.ndim)
  return total / image.shape[0]


def make_parser():
  """The command-line flags (any non-default one makes a partial run)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=32,
                      help="tokens decoded per caption")
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--depth", type=int, default=4)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--res", type=int, default=64)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--no_write", action="store_true")
  return parser


def main(argv=None):
  parser = make_parser()
  args = parser.parse_args(argv)
  partial = results_md.non_default(parser, args)
  machine = host.describe(host.facts())
  model = make_model(args)
  image = jnp.asarray(np.random.default_rng(0).normal(
      size=(args.batch, args.res, args.res, 3)).astype(np.float32))
  params = model.init(jax.random.PRNGKey(0), image[:1],
                      jnp.zeros((1, args.steps + 1), jnp.int32))["params"]
  params["decoder"]["head"]["kernel"] = jax.random.normal(
      jax.random.PRNGKey(1), params["decoder"]["head"]["kernel"].shape) * 0.02
  no_cache = uncached_greedy(model)
  cached = decode.greedy(model, params, image, start_id=START, end_id=END)
  same = bool(np.array_equal(cached, no_cache(params, image)))
  runs = {
      "greedy (cache)": (functools.partial(
          decode.greedy, model, params, image, start_id=START, end_id=END),
                         1),
      "greedy (no cache)": (functools.partial(no_cache, params, image), 1),
      "beam 4 (cache)": (functools.partial(
          decode.beam_search, model, params, image, beam=4, start_id=START,
          end_id=END), 4),
  }
  rows = {}
  for name, (fn, hyps) in runs.items():
    med, lo, hi = timed(fn, args.reps)
    tokens = args.batch * args.steps * hyps
    rows[name] = dict(seconds=med, lo=lo, hi=hi, tokens_per_s=tokens / med)
    print(json.dumps({"run": name, **rows[name]}), flush=True)
  kv = cache_bytes_per_row(model, params, image)
  ratio = rows["greedy (cache)"]["tokens_per_s"] / rows[
      "greedy (no cache)"]["tokens_per_s"]
  lines = [HEADING, "",
           "Command: `python bench/decode_throughput.py`  ",
           f"Date: {time.strftime('%Y-%m-%d')}; machine: {machine}.", "",
           f"Model: captioner, ViT and decoder width {args.width}, depth "
           f"{args.depth}, {args.heads} heads, {args.res}x{args.res} images "
           f"(patch 16), CLIP BPE vocabulary (49,408); batch {args.batch}, "
           f"{args.steps} tokens per caption; median of {args.reps} timed "
           "runs after a compile (min-max).", "",
           "| decoder | s per batch | tokens/s | vs greedy without cache |",
           "|---|---:|---:|---:|"]
  base = rows["greedy (no cache)"]["tokens_per_s"]
  for name, r in rows.items():
    lines.append(f"| {name} | {r['seconds']:.3f} ({r['lo']:.3f}-"
                 f"{r['hi']:.3f}) | {r['tokens_per_s']:,.0f} | "
                 f"{r['tokens_per_s'] / base:.2f}x |")
  lines += ["", f"The cached and uncached greedy captions are "
            f"{'identical' if same else 'DIFFERENT'}; the cache holds "
            f"{kv / 1024:.1f} KiB per sequence (keys and values of every "
            f"decoder layer, float32); greedy with the cache is "
            f"{ratio:.2f}x the tokens/s of greedy without it. Beam counts "
            "4 hypotheses per image."]
  if not same:
    partial = list(partial) + ["cached and uncached captions differ"]
  results_md.publish(HEADING, "\n".join(lines) + "\n",
                     write=not args.no_write, partial=partial)


if __name__ == "__main__":
  main(sys.argv[1:])
