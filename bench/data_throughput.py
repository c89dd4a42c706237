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
             `workers` grain worker processes (0: in the main process), each
             preprocessing on 4 threads (`read_threads`, the default).
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
samples). They go to the "## Data throughput" section of bench/RESULTS.md,
with the machine's facts (bench/host.py), from a full run only: every flag
but `--peer_python` / `--data_dir` at its default and the open_clip side
measured; any other run prints its section and leaves RESULTS.md alone.

With `--variants=1` (default) two more big_vl configurations join the
alternation: `big_vl_1thread` (read_threads=1) and `big_vl_device_pp` (the pp
without value_range|normalize, i.e. uint8 batches, which
`config.input.device_pp` normalises inside the jitted train step; the cost
of that on this machine's CPU is measured and reported separately).
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

import host  # bench/host.py
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


DEVICE_PP = "value_range(0,1)|normalize"
# big_vl configurations timed: (pp without normalisation: uint8 batches,
# preprocessing threads per process). "big_vl" is the A/B one.
VARIANTS = {"big_vl": (False, 4), "big_vl_1thread": (False, 1),
            "big_vl_device_pp": (True, 4)}


def big_vl_pp(scale, uint8=False):
  """The pp string; uint8=True leaves out value_range|normalize, which
  `config.input.device_pp = DEVICE_PP` then applies in the train step."""
  norm = "" if uint8 else f"{DEVICE_PP}|"
  return (f"decode|random_resized_crop({IMAGE_SIZE}, scale={tuple(scale)})|"
          f"flip_lr|{norm}tokenize(max_len={MAX_LEN})|keep('image','text')")


def measure_big_vl(pattern, workers, batch, batches, seed, scale,
                   uint8=False, threads=4):
  """Images/s of one fresh big_vl training iterator (after warm-up)."""
  from big_vl.data import pipeline  # pylint: disable=g-import-not-at-top
  from big_vl.data import sources  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  src = sources.get(f"wds:{pattern}")
  it = pipeline.make_train_iterator(src, pp=big_vl_pp(scale, uint8),
                                    batch_size=batch, seed=seed,
                                    workers=workers, read_threads=threads,
                                    process_index=0, process_count=1)
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


def device_pp_ms(batch, reps=5):
  """Median ms of the jitted DEVICE_PP on a uint8 [batch, 224, 224, 3] batch
  on JAX's default device (this machine's CPU cores here)."""
  import jax  # pylint: disable=g-import-not-at-top
  from big_vl.data import device_pp  # pylint: disable=g-import-not-at-top
  fn = jax.jit(device_pp.build(DEVICE_PP))
  images = jax.device_put(np.random.default_rng(0).integers(
      0, 256, (batch, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
  fn({"image": images})["image"].block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn({"image": images})["image"].block_until_ready()
    times.append((time.perf_counter() - t0) * 1e3)
  return statistics.median(times)


def _shm_stack_ms(images, reps=3):
  """ms per image of stacking `images` into a new grain SharedMemoryArray
  (minimum of `reps`), as grain's batch does in a worker process."""
  from grain._src.python.ipc import shared_memory_array  # pylint: disable=g-import-not-at-top
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    out = shared_memory_array.SharedMemoryArray(
        (len(images),) + images[0].shape, dtype=images[0].dtype)
    np.stack(images, out=out)
    best = min(best, time.perf_counter() - t0)
    out.unlink_on_del()
    del out
  return best * 1e3 / len(images)


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
  # With grain workers the batch is stacked into new shared memory instead
  # (grain's batch with shared-memory output), float32 or uint8 images.
  images = np.stack([e["image"] for e in examples])
  for name, dtype in (("float32", np.float32), ("uint8", np.uint8)):
    rows.append((f"batch into shared memory ({name}; workers only)",
                 _shm_stack_ms([im.astype(dtype) for im in images])))
  # The pipeline's per-element work around the ops: the rng, dict copies.
  fn = pp.build(big_vl_pp(scale))
  t0 = time.perf_counter()
  for i, s in enumerate(raw):
    fn(s, np.random.Generator(np.random.Philox(key=i)))
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


def _cell(results, side, w):
  vals = [r["images_per_s"] for r in results[side][w]]
  return (f"{_fmt(statistics.median(vals))} "
          f"({_fmt(min(vals))}-{_fmt(max(vals))})")


def _paired(results, a, b, w):
  return statistics.median(x["images_per_s"] / y["images_per_s"] for x, y in
                           zip(results[a][w], results[b][w]))


def markdown(args, command, results, versions, stages, peer_note, wall_s,
             device_ms=None, machine=None):
  sides = [s for s in ("big_vl", "open_clip") if results.get(s)]
  both = len(sides) == 2
  machine = machine or host.describe(host.facts(peak=False))
  lines = [HEADING, "",
           f"Command: `{command}`  ",
           f"Date: {datetime.date.today()}; machine: {machine}; Python "
           f"{platform.python_version()}"
           f"; {versions}. Whole run: {wall_s / 60:.1f} min; 1-min load "
           f"average after each measurement {_load(results)} (it counts the "
           "benchmark's own worker processes and threads too).", "",
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
           "`pipeline.make_train_iterator` (shuffle buffer 1,000; "
           "preprocessing by 4 threads per process, `read_threads`, the "
           "default), pp "
           f"`{big_vl_pp(args.scale)}`, grain worker processes = W. "
           "open_clip: `open_clip_train.data.get_wds_dataset` (shuffle "
           "buffer 5,000, initial 1,000) with `image_transform(224, "
           "is_train=True)` + `RandomHorizontalFlip` inserted after the "
           "crop (open_clip's own train transform has no flip), "
           "`get_tokenizer('ViT-B-32')`, `wds.WebLoader(num_workers=W)`.", "",
           f"Method: each measurement builds a fresh loader, discards "
           f"max(1, W) warm-up batches, times {args.batches} batches "
           f"({args.batches * args.batch:,} images, every batch materialised "
           "as numpy / torch arrays) and shuts the loader down; the "
           "configurations alternate (order reversed each repetition) "
           f"after one untimed warm-up round; {args.reps} repetitions, "
           "median (min-max) images/s. Ratio = median / median of "
           "open_clip; paired = median of the per-repetition ratios.", ""]
  if peer_note:
    lines += [peer_note, ""]
  head = "| workers | " + " | ".join(f"{s} images/s" for s in sides)
  sep = "|---:|" + "---:|" * len(sides)
  if both:
    head += " | big_vl / open_clip | paired ratio"
    sep += "---:|---:|"
  lines += [head + " |", sep]
  for w in args.workers:
    cells = [_cell(results, s, w) for s in sides]
    if both:
      cells.append(f"{_median(results, 'big_vl', w) / _median(results, 'open_clip', w):.2f}x")
      cells.append(f"{_paired(results, 'big_vl', 'open_clip', w):.2f}x")
    lines.append(f"| {w} | " + " | ".join(cells) + " |")
  variants = [v for v in VARIANTS if v != "big_vl" and results.get(v)]
  if variants:
    ref = "open_clip" if "open_clip" in sides else "big_vl"
    lines += ["", "Other big_vl configurations, timed in the same "
              "alternation (ratios against " + ref + "):", "",
              "- `big_vl_1thread`: the same pipeline with `read_threads=1` "
              "(preprocessing in one thread per process, as before threads "
              "were used for streaming sources).",
              "- `big_vl_device_pp`: pp "
              f"`{big_vl_pp(args.scale, uint8=True)}` and "
              f"`config.input.device_pp = \"{DEVICE_PP}\"`: the loader "
              "hands uint8 batches over and the trainer normalises them "
              "inside the jitted train step, on the accelerator (the model "
              "gets the same float32 images, to float32 rounding; "
              "tests/test_device_pp.py). The host does less work and moves a "
              "quarter of the bytes through grain's shared memory and to the "
              "devices." + (f" That step costs {device_ms:.0f} ms per batch "
                            f"of {args.batch} when the device is this "
                            "machine's CPU, "
                            "not counted here, since on an accelerator host "
                            "it runs on the accelerator."
                            if device_ms is not None else ""), "",
              "| workers | " + " | ".join(
                  f"{v} images/s | vs {ref} | paired" for v in variants)
              + " |", "|---:|" + "---:|---:|---:|" * len(variants)]
    for w in args.workers:
      cells = []
      for v in variants:
        cells += [_cell(results, v, w),
                  f"{_median(results, v, w) / _median(results, ref, w):.2f}x",
                  f"{_paired(results, v, ref, w):.2f}x"]
      lines.append(f"| {w} | " + " | ".join(cells) + " |")
  # The reading below is about a 2-core machine (where it was written, on
  # 2026-11-29); its numbers come from this run's stages.
  if (variants and stages.get("big_vl") and "big_vl_device_pp" in variants
      and host.usable_cores() == 2):
    ms = dict(stages["big_vl"])
    shm = [ms.get(f"batch into shared memory ({t}; workers only)")
           for t in ("float32", "uint8")]
    lines += ["", "Reading the tables (on 2 cores, as here): without "
              "workers (W = 0) and with one "
              "(W = 1) one core idled while open_clip's loader and a "
              "single-threaded big_vl worked; big_vl's threads use it. With "
              "W = 2 both loaders keep both cores busy, so the ratio is "
              "their ratio of CPU time per image, and threads add nothing. "
              "There big_vl's float32 images cost, beyond the uint8 ones, "
              f"value_range + normalize ({ms['value_range(0,1)'] + ms['normalize']:.2f} "
              "ms per image) and the copy of 602 KB per image into new "
              f"shared-memory pages for the main process ({shm[0]:.2f} ms, "
              f"against {shm[1]:.2f} ms for the 150 KB uint8 image): the "
              "margin between the two W = 2 ratios. Both loaders spend "
              "most of their time in the same PIL decode and bicubic "
              "resize (stages below). With workers, big_vl's batches do "
              "not depend on W (README, \"Data\"): every worker reads the "
              "whole tar stream and decodes its blocks of 256 records, and "
              "the training process batches them (one more copy per "
              "image). On 2 cores that costs about 10% at W = 1-2 against "
              "the earlier pipeline, which batched inside each worker "
              "(alternating runs of the two on 2026-12-07, now vs before: "
              "572-605 vs 564-671 images/s at W = 1, 590-639 vs 669-732 at "
              "W = 2)."]
  if stages:
    lines += ["", f"Where the time goes: mean ms per sample of each stage, "
              f"one process, one thread, no workers, {args.stage_images} "
              "samples of the first shard, minimum of 2 passes (torch limited "
              "to 1 thread, as in a DataLoader worker). `whole pp.build fn` "
              "is big_vl's composed pp function with a per-example rng, as "
              "the pipeline calls it; it and the shared-memory rows (grain "
              "workers only) are not added to the sum.", ""]
    for side, rows in stages.items():
      total = sum(ms for name, ms in rows if not name.startswith("whole")
                  and "workers only" not in name)
      lines.append(f"- {side}: " + ", ".join(
          f"{name} {ms:.2f}" for name, ms in rows) +
                   f"; sum of stages {total:.2f} ms "
                   f"(= {1e3 / total:,.0f} images/s on one core).")
  return "\n".join(lines) + "\n"


def driver(args, partial=()):
  """Measures every configuration and publishes the tables.

  Args:
    args: the parsed flags.
    partial: the flags that make this run partial (`PARTIAL_IGNORE`); a
      partial run (or one without the open_clip side) prints its tables and
      leaves RESULTS.md alone.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  t_start = time.perf_counter()
  partial = list(partial)
  machine = host.describe(host.facts())
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
      partial.append("open_clip side not measured (no peer python)")
  if not sides:
    raise SystemExit("Nothing to measure.")

  def run(side, workers, batches, seed):
    if side in VARIANTS:
      uint8, threads = VARIANTS[side]
      r = measure_big_vl(pattern, workers, args.batch, batches, seed,
                         args.scale, uint8=uint8, threads=threads)
    else:
      r = peer.ask(op="measure", workers=workers, batches=batches, seed=seed)
    r["load1"] = os.getloadavg()[0]
    print(json.dumps({"side": side, "workers": workers, "seed": seed,
                      **{k: round(v, 2) for k, v in r.items()}}),
          file=sys.stderr, flush=True)
    return r

  timed = sides + ([v for v in VARIANTS if v != "big_vl"]
                   if args.variants and "big_vl" in sides else [])
  results = {s: {w: [] for w in args.workers} for s in timed}
  try:
    stages = {}
    device_ms = device_pp_ms(args.batch) if "big_vl_device_pp" in timed \
        else None
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
      time.perf_counter() - t_start, device_ms, machine),
      write=not args.no_write, partial=partial)


# Options that do not change the tables; any other non-default flag makes
# the run partial.
PARTIAL_IGNORE = ("peer_python", "data_dir", "pattern")


def make_parser():
  """The command-line flags."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  peer_lib.add_side_flag(parser)
  parser.add_argument("--num_images", type=int, default=5000)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--batches", type=int, default=6,
                      help="timed batches per measurement")
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--variants", type=int, default=1,
                      help="also time big_vl with 1 preprocessing thread "
                      "and with normalisation in the train step (device_pp)")
  parser.add_argument("--only", choices=("big_vl", "open_clip"))
  parser.add_argument("--peer_python", default="/tmp/ocvenv/bin/python")
  parser.add_argument("--scale", default="0.9,1.0",
                      help="RandomResizedCrop area scale, both sides")
  parser.add_argument("--stage_images", type=int, default=200,
                      help="samples for the per-stage breakdown (0: skip)")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--pattern", default=None, help="internal (peer)")
  parser.add_argument("--no_write", action="store_true")
  return parser


def main(argv=None):
  parser = make_parser()
  args = parser.parse_args(argv)
  partial = results_md.non_default(parser, args, ignore=PARTIAL_IGNORE)
  args.scale = tuple(float(v) for v in args.scale.split(","))
  args.workers = [int(w) for w in args.workers.split(",")]
  if args.side == "open_clip":
    peer_server(args)
  else:
    driver(args, partial)


if __name__ == "__main__":
  main(sys.argv[1:])
