r"""Input-pipeline throughput: big_vl (wds source + grain) vs open_clip's loader.

    .venv/bin/python bench/data_throughput.py          # writes RESULTS.md
    .venv/bin/python bench/data_throughput.py --workers=0 --reps=1 --no_write
    .venv/bin/python bench/data_throughput.py --only=big_vl

Both sides read the same locally generated WebDataset shards (`--num_images`
deterministic JPEGs of 256-512 px per side with 8-16 word captions, written
once with PIL into `--data_dir`, default ~/.cache/big_vl_bench/) and apply the
same transforms to every sample:

  big_vl:    sources.get("wds:SHARDS") + pipeline.make_train_iterator with pp
             decode|random_resized_crop(224, scale=S)|flip_lr|value_range(0,1)|
             normalize|tokenize(max_len=77)|keep('image','text'),
             `workers` grain worker processes (0: in the main process).
  open_clip: open_clip_train.data.get_wds_dataset (its training loader:
             shard shuffle, tar reading, 5000-sample shuffle buffer, decode
             "pilrgb", map_dict, batched, wds.WebLoader(num_workers=W)) with
             open_clip.transform.image_transform(224, is_train=True,
             aug_cfg=AugmentationCfg(scale=S)) plus a RandomHorizontalFlip
             after the crop (open_clip's train transform has no flip; big_vl's
             pp has one), and open_clip.get_tokenizer("ViT-B-32") (77 tokens).

S defaults to (0.9, 1.0), open_clip's default `AugmentationCfg.scale` (big_vl's
op defaults to torchvision's (0.08, 1.0)); both crop bicubic with aspect ratio
in (3/4, 4/3) and normalise with the OpenAI CLIP mean/std.

One driver (this file, run with the project venv) times big_vl in-process and
open_clip in a long-lived subprocess started with `--peer_python` (a venv with
torch, torchvision, open_clip_torch, webdataset, pandas; it runs this file with
`--side=open_clip` and must not import big_vl / jax; the big_vl side never
imports torch). Every measurement builds a fresh loader, pulls `max(1, W)`
warm-up batches (worker start-up, shuffle-buffer fill), then times
`--batches` batches of `--batch` (each batch fully materialised: float images
and int tokens), and shuts the loader and its workers down, so no loader runs
in the background while the other is timed. Measurements alternate A/B
(order swapped every repetition) after one untimed warm-up round. Results:
median images/s over `--reps` and the ratio big_vl / open_clip per worker
count, plus a per-stage cost breakdown in one process (`--stage_images`
samples). They go to the "## Data throughput" section of bench/RESULTS.md.
"""

import argparse
import datetime
import io
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import tarfile
import time

import numpy as np
from PIL import Image

import peer as peer_lib  # bench/peer.py
import results_md  # bench/results_md.py

HEADING = "## Data throughput (bench/data_throughput.py)"
IMAGE_SIZE = 224
MAX_LEN = 77
SAMPLES_PER_SHARD = 250
DATA_VERSION = 1

_WORDS = (
    "a photo of the small large red blue green yellow old young dog cat bird "
    "car house tree river mountain city street beach boat man woman child "
    "sitting standing running on in near with under over next to black white "
    "wooden metal bright dark sunny rainy morning evening field garden table "
    "chair window door road bridge train plane flower grass sky cloud snow "
    "water lake forest building people group two three playing walking "
    "looking holding cup book phone bicycle horse cow sheep kitchen room "
    "painting drawing close up view of at night during day colorful vintage "
    "modern").split()


# --------------------------------------------------------------------------
# Data: deterministic JPEG shards.


def _image(rng):
  """A photo-like JPEG: smooth random colour field + mild noise, 256-512 px."""
  width, height = (int(v) for v in rng.integers(256, 513, size=2))
  base = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
  img = np.asarray(Image.fromarray(base).resize((width, height),
                                                Image.BICUBIC), np.int16)
  noise = rng.normal(0, 6, size=(height, width, 1)).astype(np.int16)
  img = np.clip(img + noise, 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def _caption(rng):
  n = int(rng.integers(8, 17))
  return " ".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), size=n))


def make_shards(data_dir, num_images, seed=0):
  """Writes (once) num_images samples as tar shards; returns the pattern."""
  num_shards = max(8, math.ceil(num_images / SAMPLES_PER_SHARD))
  root = pathlib.Path(data_dir) / f"wds_v{DATA_VERSION}_n{num_images}_s{seed}"
  pattern = str(root / f"{{00000..{num_shards - 1:05d}}}.tar")
  if (root / "DONE").exists():
    return pattern, num_shards
  root.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  per_shard = [num_images // num_shards + (i < num_images % num_shards)
               for i in range(num_shards)]
  key = 0
  for s, count in enumerate(per_shard):
    rng = np.random.default_rng([seed, s])
    path = root / f"{s:05d}.tar"
    with tarfile.open(path.with_suffix(".tmp"), "w") as tar:
      for _ in range(count):
        for ext, data in (("jpg", _image(rng)),
                          ("txt", _caption(rng).encode("utf-8"))):
          info = tarfile.TarInfo(f"{key:09d}.{ext}")
          info.size, info.mtime = len(data), 0
          tar.addfile(info, io.BytesIO(data))
        key += 1
    path.with_suffix(".tmp").rename(path)
  (root / "DONE").write_text(json.dumps({"num_images": num_images,
                                         "num_shards": num_shards}))
  print(f"wrote {num_images} samples in {num_shards} shards to {root} in "
        f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
  return pattern, num_shards


def _first_shard(pattern):
  return pattern.replace(pattern[pattern.index("{"):pattern.index("}") + 1],
                         "00000")


# --------------------------------------------------------------------------
# big_vl side (project venv; never imports torch).


def big_vl_pp(scale, uint8=False):
  """The pp string; uint8=True leaves out value_range|normalize (info row:
  normalisation moved into the jitted train step)."""
  norm = "" if uint8 else "value_range(0,1)|normalize|"
  return (f"decode|random_resized_crop({IMAGE_SIZE}, scale={tuple(scale)})|"
          f"flip_lr|{norm}tokenize(max_len={MAX_LEN})|keep('image','text')")


def measure_big_vl(pattern, workers, batch, batches, seed, scale,
                   uint8=False):
  """Images/s of one fresh big_vl training iterator (after warm-up)."""
  from big_vl.data import pipeline  # pylint: disable=g-import-not-at-top
  from big_vl.data import sources  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  src = sources.get(f"wds:{pattern}")
  it = pipeline.make_train_iterator(src, pp=big_vl_pp(scale, uint8),
                                    batch_size=batch, seed=seed,
                                    workers=workers, process_index=0,
                                    process_count=1)
  try:
    for _ in range(max(1, workers)):
      _check_big_vl(next(it), batch, uint8)
    t1 = time.perf_counter()
    for _ in range(batches):
      _check_big_vl(next(it), batch, uint8)
    t2 = time.perf_counter()
  finally:
    if hasattr(it, "close"):
      it.close()
    del it
  return {"images_per_s": batches * batch / (t2 - t1),
          "warmup_s": t1 - t0, "timed_s": t2 - t1}


def _check_big_vl(b, batch, uint8=False):
  image, text = np.asarray(b["image"]), np.asarray(b["text"])
  assert image.shape == (batch, IMAGE_SIZE, IMAGE_SIZE, 3), image.shape
  assert image.dtype == (np.uint8 if uint8 else np.float32), image.dtype
  assert text.shape == (batch, MAX_LEN), (
      image.dtype, text.shape)


def _timeit(fn, items):
  """(mean ms per item, outputs) of fn over items."""
  t0 = time.perf_counter()
  out = [fn(x) for x in items]
  return (time.perf_counter() - t0) * 1e3 / max(len(items), 1), out


def _min_rows(runs):
  """Per-stage minimum over several passes (each a list of (name, ms))."""
  return [(runs[0][i][0], min(r[i][1] for r in runs))
          for i in range(len(runs[0]))]


def stages_big_vl(pattern, n, scale, passes=2):
  """Mean ms per sample of each big_vl stage (min over passes)."""
  return _min_rows([_stages_big_vl(pattern, n, scale) for _ in range(passes)])


def _stages_big_vl(pattern, n, scale):
  """Mean ms per sample of each big_vl stage, one process, no workers."""
  from big_vl.data import pp  # pylint: disable=g-import-not-at-top
  from big_vl.data import wds  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  raw = []
  for _, s in wds.read_shard(_first_shard(pattern)):
    raw.append(s)
    if len(raw) == n:
      break
  read_ms = (time.perf_counter() - t0) * 1e3 / len(raw)
  rng = np.random.default_rng(0)
  ops = [("decode", pp.get_decode()),
         ("random_resized_crop", pp.get_random_resized_crop(
             IMAGE_SIZE, scale=tuple(scale))),
         ("flip_lr", pp.get_flip_lr()),
         ("value_range(0,1)", pp.get_value_range(0, 1)),
         ("normalize", pp.get_normalize()),
         ("tokenize", pp.get_tokenize(MAX_LEN))]
  ops[-1][1](dict(raw[0]), rng)  # Builds the tokenizer.
  rows = [("read tar (wds.read_shard)", read_ms)]
  examples = [dict(s) for s in raw]
  for name, op in ops:
    ms, examples = _timeit(lambda e, op=op: op(e, rng), examples)
    rows.append((name, ms))
  per_batch = max(1, len(examples))
  t0 = time.perf_counter()
  np.stack([e["image"] for e in examples])
  np.stack([e["text"] for e in examples])
  rows.append(("batch (np.stack)",
               (time.perf_counter() - t0) * 1e3 / per_batch))
  # grain's per-element work around the ops: random_map's rng, dict copies.
  fn = pp.build(big_vl_pp(scale))
  t0 = time.perf_counter()
  for i, s in enumerate(raw):
    fn(s, np.random.default_rng([0, i]))
  rows.append(("whole pp.build fn (per-example rng)",
               (time.perf_counter() - t0) * 1e3 / len(raw)))
  return rows


# --------------------------------------------------------------------------
# open_clip side (peer venv; never imports big_vl / jax).


def _open_clip_parts(scale):
  import open_clip  # pylint: disable=g-import-not-at-top
  from open_clip import transform as oct_  # pylint: disable=g-import-not-at-top
  import torchvision.transforms as T  # pylint: disable=g-import-not-at-top
  preprocess = oct_.image_transform(
      IMAGE_SIZE, is_train=True,
      aug_cfg=oct_.AugmentationCfg(scale=tuple(scale)))
  preprocess.transforms.insert(1, T.RandomHorizontalFlip())
  tokenizer = open_clip.get_tokenizer("ViT-B-32")
  return preprocess, tokenizer


def measure_open_clip(pattern, workers, batch, batches, seed, scale):
  """Images/s of one fresh open_clip webdataset train loader."""
  from open_clip_train import data as ocd  # pylint: disable=g-import-not-at-top
  preprocess, tokenizer = _open_clip_parts(scale)
  args = argparse.Namespace(
      train_data=pattern, val_data=None, dataset_resampled=False,
      train_num_samples=10**8, train_data_upsampling_factors=None, seed=seed,
      batch_size=batch, workers=workers, world_size=1)
  t0 = time.perf_counter()
  info = ocd.get_wds_dataset(args, preprocess, is_train=True, epoch=0,
                             tokenizer=tokenizer)
  it = iter(info.dataloader)
  try:
    for _ in range(max(1, workers)):
      _check_open_clip(next(it), batch)
    t1 = time.perf_counter()
    for _ in range(batches):
      _check_open_clip(next(it), batch)
    t2 = time.perf_counter()
  finally:
    if hasattr(it, "_shutdown_workers"):
      it._shutdown_workers()  # pylint: disable=protected-access
    del it, info
  return {"images_per_s": batches * batch / (t2 - t1),
          "warmup_s": t1 - t0, "timed_s": t2 - t1}


def _check_open_clip(b, batch):
  images, texts = b
  assert tuple(images.shape) == (batch, 3, IMAGE_SIZE, IMAGE_SIZE), (
      images.shape)
  assert str(images.dtype) == "torch.float32", images.dtype
  assert tuple(texts.shape) == (batch, MAX_LEN), texts.shape


def stages_open_clip(pattern, n, scale, passes=2):
  """Mean ms per sample of each open_clip stage (min over passes), with one
  torch thread (as in a DataLoader worker)."""
  import torch  # pylint: disable=g-import-not-at-top
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    return _min_rows([_stages_open_clip(pattern, n, scale)
                      for _ in range(passes)])
  finally:
    torch.set_num_threads(threads)


def _stages_open_clip(pattern, n, scale):
  """Mean ms per sample of each open_clip stage, one process, no workers."""
  import torch  # pylint: disable=g-import-not-at-top
  import webdataset as wds  # pylint: disable=g-import-not-at-top
  from open_clip_train import data as ocd  # pylint: disable=g-import-not-at-top
  preprocess, tokenizer = _open_clip_parts(scale)
  t0 = time.perf_counter()
  raw = []
  for s in ocd.tarfile_to_samples_nothrow(
      iter([{"url": _first_shard(pattern)}])):
    raw.append(s)
    if len(raw) == n:
      break
  rows = [("read tar (tarfile_to_samples_nothrow)",
           (time.perf_counter() - t0) * 1e3 / len(raw))]
  decoder = wds.decode("pilrgb")
  ms, samples = _timeit(lambda s: next(decoder(iter([s]))), raw)
  rows.append(("decode (wds 'pilrgb')", ms))
  images = [s["jpg"] for s in samples]
  for t in preprocess.transforms:
    ms, images = _timeit(t, images)
    rows.append((type(t).__name__, ms))
  ms, tokens = _timeit(lambda s: tokenizer(s["txt"])[0], samples)
  rows.append(("tokenizer (SimpleTokenizer)", ms))
  t0 = time.perf_counter()
  torch.stack(images)
  torch.stack(tokens)
  rows.append(("batch (torch.stack)",
               (time.perf_counter() - t0) * 1e3 / len(images)))
  return rows


def peer_server(args):
  """Runs open_clip measurements asked for on stdin (see bench/peer.py)."""
  import open_clip  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  import webdataset  # pylint: disable=g-import-not-at-top
  peer_lib.serve(
      {"measure": lambda workers, batches, seed: measure_open_clip(
          args.pattern, workers, args.batch, batches, seed, args.scale),
       "stages": lambda n: stages_open_clip(args.pattern, n, args.scale)},
      hello={"torch": torch.__version__,
             "torchvision": torchvision.__version__,
             "open_clip": open_clip.__version__,
             "webdataset": getattr(webdataset, "__version__", "?"),
             "torch_threads": torch.get_num_threads()})


# --------------------------------------------------------------------------
# Driver.


def _fmt(v):
  return f"{v:,.0f}"


def _load(results):
  loads = [r["load1"] for by_w in results.values() for rs in by_w.values()
           for r in rs]
  return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"


def _median(results, side, workers):
  return statistics.median(r["images_per_s"] for r in results[side][workers])


def markdown(args, command, results, versions, stages, peer_note, wall_s):
  sides = [s for s in ("big_vl", "open_clip") if results.get(s)]
  lines = [HEADING, "",
           f"Command: `{command}`  ",
           f"Date: {datetime.date.today()}; machine: {os.cpu_count()} CPU "
           f"cores ({platform.machine()}), Python {platform.python_version()}"
           f"; {versions}. Whole run: {wall_s / 60:.1f} min; 1-min load "
           f"average after each measurement {_load(results)} (2 cores: "
           "above ~2.5 means other processes competed for the CPUs).", "",
           f"Data: {args.num_images:,} deterministic JPEGs (256-512 px per "
           "side, quality 90, smooth colour fields + noise) with 8-16 word "
           f"captions in {args._num_shards} WebDataset shards, generated by "
           "the script into a cache dir (page cache warm for both sides).", "",
           "Transforms (both sides, per sample): JPEG decode to RGB -> "
           f"RandomResizedCrop({IMAGE_SIZE}, scale=({args.scale[0]}, "
           f"{args.scale[1]}) = open_clip's default, ratio (3/4, 4/3), "
           "bicubic, PIL) -> random horizontal flip -> float [0, 1] -> "
           "normalise (OpenAI CLIP mean/std) ; caption -> CLIP BPE, 77 "
           f"tokens; batch {args.batch}. big_vl: `wds:` source + "
           "`pipeline.make_train_iterator` (shuffle buffer 1,000), pp "
           f"`{big_vl_pp(args.scale)}`, grain worker processes = W. "
           "open_clip: `open_clip_train.data.get_wds_dataset` (shuffle "
           "buffer 5,000, initial 1,000) with `image_transform(224, "
           "is_train=True)` + `RandomHorizontalFlip` inserted after the "
           "crop (open_clip's own train transform has no flip), "
           "`get_tokenizer('ViT-B-32')`, `wds.WebLoader(num_workers=W)`.", "",
           f"Method: each measurement builds a fresh loader, discards "
           f"max(1, W) warm-up batches, times {args.batches} batches "
           f"({args.batches * args.batch:,} images, every batch materialised "
           "as float32 images + int tokens) and shuts the loader down; "
           "big_vl and open_clip alternate (order swapped each repetition) "
           f"after one untimed warm-up round; {args.reps} repetitions, "
           "median (min-max) images/s. Ratio = median big_vl / median "
           "open_clip; paired = median of the per-repetition ratios.", ""]
  if peer_note:
    lines += [peer_note, ""]
  head = "| workers | " + " | ".join(f"{s} images/s" for s in sides)
  sep = "|---:|" + "---:|" * len(sides)
  if len(sides) == 2:
    head += " | big_vl / open_clip | paired ratio"
    sep += "---:|---:|"
  lines += [head + " |", sep]
  for w in args.workers:
    cells = []
    meds = {}
    for s in sides:
      vals = [r["images_per_s"] for r in results[s][w]]
      meds[s] = statistics.median(vals)
      cells.append(f"{_fmt(meds[s])} ({_fmt(min(vals))}-{_fmt(max(vals))})")
    if len(sides) == 2:
      paired = [a["images_per_s"] / b["images_per_s"] for a, b in
                zip(results["big_vl"][w], results["open_clip"][w])]
      cells.append(f"{meds['big_vl'] / meds['open_clip']:.2f}x")
      cells.append(f"{statistics.median(paired):.2f}x")
    lines.append(f"| {w} | " + " | ".join(cells) + " |")
  if results.get("big_vl_uint8"):
    lines += ["", "Info only (not the same transforms): big_vl with pp "
              f"`{big_vl_pp(args.scale, uint8=True)}`, i.e. uint8 batches "
              "with `value_range|normalize` left to the jitted train step "
              "(timed in the same alternation).", "",
              "| workers | big_vl uint8 images/s | vs big_vl float32 |"
              + (" vs open_clip |" if "open_clip" in sides else ""),
              "|---:|---:|---:|" + ("---:|" if "open_clip" in sides else "")]
    for w in args.workers:
      vals = [r["images_per_s"] for r in results["big_vl_uint8"][w]]
      med = statistics.median(vals)
      row = (f"| {w} | {_fmt(med)} ({_fmt(min(vals))}-{_fmt(max(vals))}) | "
             f"{med / _median(results, 'big_vl', w):.2f}x |")
      if "open_clip" in sides:
        row += f" {med / _median(results, 'open_clip', w):.2f}x |"
      lines.append(row)
  if stages:
    lines += ["", f"Where the time goes: mean ms per sample of each stage, "
              f"one process, no workers, {args.stage_images} samples of the "
              "first shard, minimum of 2 passes (torch limited to 1 thread, "
              "as in a DataLoader worker). `whole pp.build fn` is big_vl's "
              "composed pp function with a fresh per-example rng, as grain's "
              "`random_map` calls it (not added to the sum).", ""]
    for side, rows in stages.items():
      total = sum(ms for name, ms in rows if not name.startswith("whole"))
      lines.append(f"- {side}: " + ", ".join(
          f"{name} {ms:.2f}" for name, ms in rows) +
                   f"; sum of stages {total:.2f} ms "
                   f"(= {1e3 / total:,.0f} images/s on one core).")
  return "\n".join(lines) + "\n"


def driver(args):
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  t_start = time.perf_counter()
  data_dir = args.data_dir or os.path.join(
      os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
      "big_vl_bench")
  pattern, num_shards = make_shards(data_dir, args.num_images)
  args._num_shards = num_shards  # pylint: disable=protected-access
  import grain  # pylint: disable=g-import-not-at-top
  versions = [f"grain {getattr(grain, '__version__', '?')}"]
  sides = ["big_vl", "open_clip"] if args.only is None else [args.only]
  peer, peer_note = None, None
  if "open_clip" in sides:
    if args.peer_python and os.path.exists(args.peer_python):
      peer = peer_lib.Peer(
          args.peer_python, os.path.abspath(__file__),
          ["--side=open_clip", f"--pattern={pattern}", f"--batch={args.batch}",
           f"--scale={args.scale[0]},{args.scale[1]}"])
      versions += [f"{k} {v}" for k, v in peer.versions.items()
                   if k != "torch_threads"]
      print(f"open_clip peer: {peer.versions}", file=sys.stderr, flush=True)
    else:
      sides.remove("open_clip")
      peer_note = (f"open_clip side NOT measured: peer python "
                   f"{args.peer_python!r} not found (create it with `python3 "
                   "-m venv /tmp/ocvenv && /tmp/ocvenv/bin/pip install "
                   "torch==2.14.1 torchvision==0.29.1 open_clip_torch==3.3.0 "
                   "webdataset==0.2.86 pandas`).")
      print(peer_note, file=sys.stderr, flush=True)
  if not sides:
    raise SystemExit("Nothing to measure.")

  def run(side, workers, batches, seed):
    if side in ("big_vl", "big_vl_uint8"):
      r = measure_big_vl(pattern, workers, args.batch, batches, seed,
                         args.scale, uint8=side == "big_vl_uint8")
    else:
      r = peer.ask(op="measure", workers=workers, batches=batches, seed=seed)
    r["load1"] = os.getloadavg()[0]
    print(json.dumps({"side": side, "workers": workers, "seed": seed,
                      **{k: round(v, 2) for k, v in r.items()}}),
          file=sys.stderr, flush=True)
    return r

  timed = sides + (["big_vl_uint8"] if args.uint8_row and
                   "big_vl" in sides else [])
  results = {s: {w: [] for w in args.workers} for s in timed}
  try:
    stages = {}
    if args.stage_images:
      if "big_vl" in sides:
        stages["big_vl"] = stages_big_vl(pattern, args.stage_images,
                                         args.scale)
      if peer is not None:
        stages["open_clip"] = [tuple(r) for r in peer.ask(
            op="stages", n=args.stage_images)]
    for side in sides:  # Untimed warm-up round.
      run(side, 0, 1, seed=1000)
    for rep in range(args.reps):
      for w in args.workers:
        order = timed if rep % 2 == 0 else timed[::-1]
        for side in order:
          results[side][w].append(run(side, w, args.batches, seed=rep))
  finally:
    if peer is not None:
      peer.close()
  command = results_md.command(__file__, sys.argv[1:])
  results_md.publish(HEADING, markdown(
      args, command, results, ", ".join(versions), stages, peer_note,
      time.perf_counter() - t_start), write=not args.no_write)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  peer_lib.add_side_flag(parser)
  parser.add_argument("--num_images", type=int, default=5000)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--batches", type=int, default=6,
                      help="timed batches per measurement")
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--uint8_row", type=int, default=1,
                      help="also time big_vl without value_range|normalize "
                      "(uint8 batches; info only, not the A/B comparison)")
  parser.add_argument("--only", choices=("big_vl", "open_clip"))
  parser.add_argument("--peer_python", default="/tmp/ocvenv/bin/python")
  parser.add_argument("--scale", default="0.9,1.0",
                      help="RandomResizedCrop area scale, both sides")
  parser.add_argument("--stage_images", type=int, default=200,
                      help="samples for the per-stage breakdown (0: skip)")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--pattern", default=None, help="internal (peer)")
  parser.add_argument("--no_write", action="store_true")
  args = parser.parse_args(argv)
  args.scale = tuple(float(v) for v in args.scale.split(","))
  args.workers = [int(w) for w in args.workers.split(",")]
  if args.side == "open_clip":
    peer_server(args)
  else:
    driver(args)


if __name__ == "__main__":
  main(sys.argv[1:])
