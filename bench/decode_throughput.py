r"""Caption decoding speed: greedy and beam search with the KV caches vs
without, for a captioner and a CoCa, and against open_clip's CoCa.

    python bench/decode_throughput.py --peer_python=.venv-peer/bin/python
    python bench/decode_throughput.py --batch=8 --no_write

Two random-init models (speed does not depend on the weights) decode a
batch of images for `--steps` tokens:

- a CapPa-style captioner (`big_vl.models.captioner`): ViT and decoder of
  `--width` / `--depth`, memory = the 16 patch tokens;
- a CoCa (`big_vl.models.coca`, built from an open_clip CoCa config of the
  same sizes by `big_vl.convert.open_clip_coca`): memory = 255 pooled
  queries, as open_clip's `coca_*` models.

Decoders:

- `greedy (cache)`: `big_vl.decode.greedy`: the self-attention keys and
  values cached (one position per step) and the memory's keys and values
  of every cross-attention computed once (`decoder.CrossAttention`);
- `greedy (self-attention cache only)`: the same loop, but every step
  recomputes the memory's keys and values (what a decoder with flax's
  plain attention does);
- `greedy (no cache)`: the same jitted loop, but each step reruns the
  decoder on the whole (padded) prefix, as a decoder without a cache does;
  the outputs are checked equal to the cached ones;
- `beam 4 (cache)`: `big_vl.decode.beam_search(beam=4)`;
- `per-token calls (cache)` / `(self-attention cache only)`: greedy with
  one jitted call per token (a streaming decoder's loop), with and without
  the memory's keys and values in the cache. Inside one jitted loop XLA
  can hoist the loop-invariant memory projection out of the steps itself;
  across calls it cannot, which these rows measure;
- `open_clip greedy (torch)` (with `--peer_python`, a venv with torch and
  open_clip_torch): open_clip's CoCa of the same config, its `generate`
  loop with top-k 1 (this script's `--side=open_clip`: the forward on the
  whole prefix each step; open_clip has no KV cache), in a subprocess run
  after big_vl's timings, on the same cores.

Each is compiled first, then timed `--reps` times (median); tokens/s count
batch x steps (x beam for beam search, the hypotheses computed). KV cache
memory per sequence is the size of the "cache" collection divided by the
rows. Results go to the "## Decoding throughput" section of RESULTS.md with
the machine's facts (bench/host.py); only a run with default flags (and
`--peer_python`) writes it.
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time

import numpy as np

import host  # bench/host.py
import peer as peer_lib  # bench/peer.py
import results_md  # bench/results_md.py

HEADING = "## Decoding throughput (bench/decode_throughput.py)"
START, END = 49406, 49407

# --------------------------------------------------------------------------
# big_vl side (driver process): JAX and big_vl are imported here only, so
# that the open_clip side below never loads them.


# Bound by `_load_driver_modules` in the driver process only.
jax = jnp = decode = models = open_clip_coca = greedy_search = None
captioner_lib = None


def _load_driver_modules():
  """Binds the driver's modules (jax, jnp, decode, greedy_search, models,
  open_clip_coca, captioner_lib) as this module's globals, for the
  functions of this section."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from big_vl import decode  # pylint: disable=g-import-not-at-top
  from big_vl import models  # pylint: disable=g-import-not-at-top
  from big_vl.convert import open_clip_coca  # pylint: disable=g-import-not-at-top
  from big_vl.decode import greedy_search  # pylint: disable=g-import-not-at-top
  from big_vl.models import captioner as captioner_lib  # pylint: disable=g-import-not-at-top
  globals().update(jax=jax, jnp=jnp, decode=decode, models=models,
                   open_clip_coca=open_clip_coca, greedy_search=greedy_search,
                   captioner_lib=captioner_lib)


def captioner(args):
  return captioner_lib.Captioner(
      image={"width": args.width, "depth": args.depth,
             "mlp_dim": 4 * args.width, "num_heads": args.heads,
             "patch_size": 16},
      decoder={"width": args.width, "depth": args.depth,
               "mlp_dim": 4 * args.width, "num_heads": args.heads},
      max_len=args.steps + 1)


def coca_config(args):
  """The open_clip CoCa config both sides build (open_clip's 256 pooler
  queries, towers of the captioner's sizes)."""
  return {
      "embed_dim": args.width,
      "vision_cfg": {"image_size": args.res, "layers": args.depth,
                     "width": args.width, "patch_size": 16,
                     "head_width": args.width // args.heads,
                     "attentional_pool": True,
                     "attn_pooler_heads": args.heads,
                     "attn_pooler_queries": 256, "output_tokens": True},
      "text_cfg": {"context_length": args.steps + 1, "vocab_size": 49408,
                   "width": args.width, "heads": args.heads,
                   "layers": args.depth, "embed_cls": True,
                   "output_tokens": True},
      "multimodal_cfg": {"context_length": args.steps + 1,
                         "vocab_size": 49408, "width": args.width,
                         "heads": args.heads, "layers": args.depth},
      "custom_text": True,
  }


def init(model, image, steps, head):
  """Random params; the caption head gets values (it starts at zero)."""
  params = model.init(jax.random.PRNGKey(0), image[:1],
                      jnp.zeros((1, steps + 1), jnp.int32))["params"]
  params[head]["head"]["kernel"] = jax.random.normal(
      jax.random.PRNGKey(1), params[head]["head"]["kernel"].shape) * 0.02
  return params


def uncached_greedy(model):
  """Jitted greedy that reruns the padded prefix at every step."""

  def run(params, image):
    length = model.max_len - 1
    batch = image.shape[0]
    variables = {"params": params}
    memory = model.apply(variables, image, method="encode")

    def step(t, carry):
      inputs, out = carry
      logits = model.apply(variables, inputs, memory, method="decode_tokens")
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


def _without_cross(tree):
  """The cache without the cross-attention keys / values."""
  return {k: _without_cross(v) if isinstance(v, dict) else v
          for k, v in tree.items() if not k.startswith("cross_")}


def self_cache_only_greedy(model):
  """Jitted cached greedy whose steps recompute the memory's keys and
  values (each step gets the cache without them, so the cross-attention
  layers project the memory again)."""

  def run(params, image):
    dec = model.clone(decode=True)
    length = model.max_len - 1
    memory = dec.apply({"params": params}, image, method="encode")
    cache = greedy_search.empty_cache(dec, params, memory, length)

    def step(t, carry):
      cache, token, out = carry
      logits, cache = dec.apply(
          {"params": params, **_without_cross(cache)}, token[:, None],
          memory, method="decode_tokens", mutable=["cache"])
      token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
      return cache, token, out.at[:, t].set(token)

    start = jnp.full((image.shape[0],), START, jnp.int32)
    out = jnp.zeros((image.shape[0], length), jnp.int32)
    _, _, out = jax.lax.fori_loop(0, length, step, (cache, start, out))
    return greedy_search.finish(out, END, 0)

  return jax.jit(run)


def per_token_calls(model, params, image, strip_cross):
  """Greedy with one jitted call per token (a streaming or interactive
  decoder's loop, which XLA cannot optimise across steps); `strip_cross`
  drops the memory's keys / values from the cache before every call."""
  dec = model.clone(decode=True)
  memory = dec.apply({"params": params}, image, method="encode")
  first = greedy_search.empty_cache(dec, params, memory, model.max_len - 1)

  @jax.jit
  def step(params, cache, token, memory):
    logits, cache = dec.apply({"params": params, **cache}, token[:, None],
                              memory, method="decode_tokens",
                              mutable=["cache"])
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache

  def run():
    cache, token = first, jnp.full((image.shape[0],), START, jnp.int32)
    tokens = []
    for _ in range(model.max_len - 1):
      token, cache = step(params, _without_cross(cache) if strip_cross
                          else cache, token, memory)
      tokens.append(token)
    return jnp.stack(tokens, axis=1)

  return run


def timed(fn, reps):
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times), min(times), max(times)


def cache_bytes_per_row(model, params, image):
  """{"self": bytes, "cross": bytes} of the decoding caches per sequence."""
  dec = model.clone(decode=True)
  memory = dec.apply({"params": params}, image, method="encode")
  cache = greedy_search.empty_cache(dec, params, memory, model.max_len - 1)
  sizes = {"self": 0, "cross": 0}
  for path, x in jax.tree_util.tree_flatten_with_path(cache)[0]:
    if x.ndim:
      name = str(getattr(path[-1], "key", path[-1]))
      sizes["cross" if name.startswith("cross_") else "self"] += x.nbytes
  return {k: v / image.shape[0] for k, v in sizes.items()}


def peer_greedy(args, config):
  """open_clip's timings, from this script's open_clip side."""
  peer = peer_lib.Peer(args.peer_python, os.path.abspath(__file__), [
      "--side=open_clip", f"--batch={args.batch}", f"--res={args.res}",
      f"--steps={args.steps}", f"--reps={args.reps}"])
  try:
    return {**peer.versions, **peer.ask(op="greedy", config=config)}
  finally:
    peer.close()


# --------------------------------------------------------------------------
# open_clip side (peer venv; never imports big_vl / jax).


def open_clip_greedy(model, torch, image, steps):
  """open_clip 3.3's `CoCa.generate(generation_type="top_k", top_k=1)` loop
  without transformers' logits processors (its `generate` imports
  transformers' `BeamSearchScorer`, which transformers 5 removed): each
  step runs the forward on the whole prefix (open_clip has no KV cache)
  with the image embeddings computed once, and takes the argmax."""
  latent, embs = model._encode_image(image)  # pylint: disable=protected-access
  out = torch.full((image.shape[0], 1), START, dtype=torch.long)
  for _ in range(steps):
    logits = model(image, out, image_latent=latent, image_embs=embs,
                   output_labels=False)["logits"][:, -1]
    token = logits.argmax(-1)
    done = (out[:, -1] == END) | (out[:, -1] == 0)
    out = torch.cat([out, torch.where(done, torch.zeros_like(token),
                                      token)[:, None]], 1)
  return out[:, 1:]


def open_clip_side(args):
  """Serves op "greedy": open_clip's CoCa of a config, timed."""
  import open_clip  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  def greedy(config):
    torch.manual_seed(0)
    config = {k: v for k, v in config.items() if k != "custom_text"}
    model = open_clip.CoCa(**config).eval()
    with torch.no_grad():  # open_clip leaves some tensors uninitialised.
      for name, p in model.named_parameters():
        if name.endswith("text_projection"):
          p.normal_(0, 0.02)
    image = torch.from_numpy(np.random.default_rng(0).normal(
        size=(args.batch, 3, args.res, args.res)).astype(np.float32))
    times = []
    with torch.no_grad():
      open_clip_greedy(model, torch, image, args.steps)  # warm-up
      for _ in range(args.reps):
        t0 = time.perf_counter()
        open_clip_greedy(model, torch, image, args.steps)
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "lo": min(times),
            "hi": max(times)}

  peer_lib.serve({"greedy": greedy}, {
      "torch": torch.__version__, "open_clip": open_clip.__version__,
      "threads": torch.get_num_threads()})


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
  parser.add_argument("--peer_python", default=None,
                      help="python of a venv with torch + open_clip_torch")
  parser.add_argument("--no_write", action="store_true")
  peer_lib.add_side_flag(parser)
  return parser


def main(argv=None):
  parser = make_parser()
  args = parser.parse_args(argv)
  if args.side == "open_clip":
    open_clip_side(args)
    return
  _load_driver_modules()
  partial = list(results_md.non_default(parser, args, ignore=("peer_python",)))
  if not args.peer_python:
    partial.append("no open_clip peer (--peer_python)")
  machine = host.describe(host.facts())
  image = jnp.asarray(np.random.default_rng(0).normal(
      size=(args.batch, args.res, args.res, 3)).astype(np.float32))
  oc_config = coca_config(args)
  coca = models.get(open_clip_coca.model_config_from_open_clip(oc_config))
  built = {"captioner": (captioner(args), "decoder"), "CoCa": (coca, "dec")}
  rows, notes = {}, []
  for label, (model, head) in built.items():
    params = init(model, image, args.steps, head)
    cached = decode.greedy(model, params, image, start_id=START, end_id=END)
    no_cache = uncached_greedy(model)
    self_only = self_cache_only_greedy(model)
    same = (np.array_equal(cached, no_cache(params, image))
            and np.array_equal(cached, self_only(params, image)))
    if not same:
      partial.append(f"{label}: cached and uncached captions differ")
    runs = {
        "greedy (cache)": (functools.partial(
            decode.greedy, model, params, image, start_id=START,
            end_id=END), 1),
        "greedy (self-attention cache only)": (functools.partial(
            self_only, params, image), 1),
        "greedy (no cache)": (functools.partial(no_cache, params, image), 1),
        "beam 4 (cache)": (functools.partial(
            decode.beam_search, model, params, image, beam=4, start_id=START,
            end_id=END), 4),
        "per-token calls (cache)": (per_token_calls(
            model, params, image, strip_cross=False), 1),
        "per-token calls (self-attention cache only)": (per_token_calls(
            model, params, image, strip_cross=True), 1),
    }
    for name, (fn, hyps) in runs.items():
      med, lo, hi = timed(fn, args.reps)
      tokens = args.batch * args.steps * hyps
      rows[(label, name)] = dict(seconds=med, lo=lo, hi=hi,
                                 tokens_per_s=tokens / med)
      print(json.dumps({"model": label, "run": name, **rows[(label, name)]}),
            flush=True)
    kv = cache_bytes_per_row(model, params, image)
    notes.append(
        f"{label}: the cached, self-attention-only and uncached greedy "
        f"captions are {'identical' if same else 'DIFFERENT'}; the caches "
        f"hold {kv['self'] / 1024:.1f} KiB (self-attention keys and values "
        f"of every decoder layer) + {kv['cross'] / 1024:.1f} KiB (the "
        "memory's keys and values) per sequence, float32.")
  peer = None
  if args.peer_python:
    peer = peer_greedy(args, oc_config)
    tokens = args.batch * args.steps
    rows[("CoCa", "open_clip greedy (torch)")] = dict(
        seconds=peer["seconds"], lo=peer["lo"], hi=peer["hi"],
        tokens_per_s=tokens / peer["seconds"])
    print(json.dumps({"model": "CoCa", "run": "open_clip", **peer}),
          flush=True)
  lines = [HEADING, "",
           "Command: `python bench/decode_throughput.py "
           "--peer_python=.venv-peer/bin/python`  ",
           f"Date: {time.strftime('%Y-%m-%d')}; machine: {machine}"
           + (f"; torch {peer['torch']} ({peer['threads']} threads), "
              f"open_clip {peer['open_clip']}" if peer else "") + ".", "",
           f"Models: towers of width {args.width}, depth {args.depth}, "
           f"{args.heads} heads, {args.res}x{args.res} images (patch 16), "
           "CLIP BPE vocabulary (49,408); the captioner's memory is the 16 "
           "patch tokens, CoCa's the 255 pooled queries (open_clip's "
           f"`coca_*` layout). Batch {args.batch}, {args.steps} tokens per "
           f"caption; median of {args.reps} timed runs after a compile "
           "(min-max).", "",
           "| model | decoder | s per batch | tokens/s | vs greedy without "
           "cache |", "|---|---|---:|---:|---:|"]
  for (label, name), r in rows.items():
    base = rows[(label, "greedy (no cache)")]["tokens_per_s"]
    lines.append(f"| {label} | {name} | {r['seconds']:.3f} ({r['lo']:.3f}-"
                 f"{r['hi']:.3f}) | {r['tokens_per_s']:,.0f} | "
                 f"{r['tokens_per_s'] / base:.2f}x |")
  lines += [""] + notes + ["Beam counts 4 hypotheses per image."]
  if peer:
    ratio = rows[("CoCa", "greedy (cache)")]["tokens_per_s"] / rows[
        ("CoCa", "open_clip greedy (torch)")]["tokens_per_s"]
    lines.append(f"big_vl's cached CoCa greedy decodes {ratio:.2f}x the "
                 "tokens/s of open_clip's loop on the same architecture and "
                 "batch (open_clip recomputes the prefix every step).")
  results_md.publish(HEADING, "\n".join(lines) + "\n",
                     write=not args.no_write, partial=partial)


if __name__ == "__main__":
  main(sys.argv[1:])
