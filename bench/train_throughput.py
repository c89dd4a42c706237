r"""Train and inference throughput: big_vl vs open_clip, same model, same CPU.

    .venv/bin/python bench/train_throughput.py              # writes RESULTS.md
    .venv/bin/python bench/train_throughput.py --models=ViT-S-32 --reps=1 \
        --no_write
    .venv/bin/python bench/train_throughput.py --only=big_vl --profile

Only the full run (both models, both sides, the default measurement flags;
`--profile` and `--peer_python` allowed) writes its RESULTS.md section; any
other run prints its table and says on stderr why it left RESULTS.md alone.

On a GPU (issue #7's H200 row: ViT-B/16, bf16, batch 256; the peer Python
needs torch + open_clip_torch, and --peer_compile adds torch.compile):

    python bench/train_throughput.py --models=ViT-B-16 --batch=256 \
        --dtype=bfloat16 --peak_n=8192 --peer_compile --peer_python=python3 \
        --steps=10 --infer_steps=10 --reps=3 --settle=0 --no_write

For each open_clip architecture (default ViT-S-32 and ViT-B-32: context 77,
vocab 49,408, image 224, fp32, random init) both sides train with AdamW
(b1 0.9, b2 0.98, eps 1e-6, weight decay 0.2) on the softmax (CLIP) loss at
`--batch` (default 32), on one fixed random batch:

  big_vl:    the trainer's own jitted step, `big_vl.train.build(config, ...)`
             (state donated, metrics computed, one CPU device), on the model
             `big_vl.convert.open_clip.model_config_from_open_clip(ARCHS[m])`
             (the same widths, depths, heads, activations and LayerNorm eps
             as open_clip's); inference: the evaluators' `predict_fn` (image
             and text embeddings) under `jax.jit`.
  open_clip: `open_clip.create_model(m)`, `torch.optim.AdamW`,
             `open_clip.loss.ClipLoss`; forward, backward, step; inference:
             `encode_image` + `encode_text` under `torch.no_grad()` in eval
             mode. PyTorch 2.14 with oneDNN, `torch.get_num_threads()` threads.

open_clip runs in a long-lived subprocess started with `--peer_python` (a venv
with torch + open_clip_torch, e.g. the project's `.venv-peer`; see
bench/peer.py). After a warm-up (compilation, 2 steps) each measurement times
`--steps` consecutive steps (big_vl: dispatched back to back, the last one
waited for), after `--settle` seconds of idle and one untimed round of both
sides; big_vl and open_clip alternate, order swapped every repetition;
`--reps` repetitions, median. The machine's fp32 matmul peak (a jitted
2048x2048 matmul, best of 10) is measured at the start and the end of the run;
MFU = model FLOPs per second / that peak, with big_vl's FLOPs per step from the
compiled step's XLA cost analysis and open_clip's from torch's FlopCounterMode
(each side's own count; the table also gives big_vl's MFU on torch's count).

`--profile` traces two big_vl train steps (jax.profiler) and sums the time of
the compiled step's operations by what they compute (matmuls forward /
backward, GELU, LayerNorm, attention softmax, layout copies, the optimiser
update, ...) using the HLO metadata of each fused operation.
"""

import argparse
import collections
import datetime
import glob
import gzip
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time

import numpy as np

import host  # bench/host.py
import peer as peer_lib  # bench/peer.py
import results_md  # bench/results_md.py

HEADING = "## Train and inference throughput (bench/train_throughput.py)"
IMAGE_SIZE = 224
CONTEXT = 77
VOCAB = 49408
OPTIM = dict(lr=5e-4, b1=0.9, b2=0.98, eps=1e-6, wd=0.2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_batch(batch, seed=0, image_size=IMAGE_SIZE):
  """The fixed batch both sides train on (NHWC float images, int tokens)."""
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(batch, image_size, image_size, 3)).astype(
      np.float32)
  text = rng.integers(1, VOCAB - 1, size=(batch, CONTEXT)).astype(np.int32)
  text[:, -1] = VOCAB - 1  # End of text, the largest id (argmax pooling).
  return image, text


def oc_patch_size(arch):
  """The image patch size of an open_clip architecture."""
  from big_vl.convert import open_clip as oc  # pylint: disable=g-import-not-at-top
  return int(oc.ARCHS[arch]["vision_cfg"]["patch_size"])


def naflex_batch(image, patch):
  """{"image": [B, N, p, p, C] patches, "image_pos": int32 [B, N, 2]} of
  whole images (every patch real), the layout of the `naflex` pp op."""
  b, h, w, c = image.shape
  rows, cols = h // patch, w // patch
  patches = image.reshape(b, rows, patch, cols, patch, c).transpose(
      0, 1, 3, 2, 4, 5).reshape(b, rows * cols, patch, patch, c)
  pos = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"),
                 -1).reshape(1, rows * cols, 2)
  return {"image": patches,
          "image_pos": np.repeat(pos, b, axis=0).astype(np.int32)}


# --------------------------------------------------------------------------
# big_vl side (driver process).


def big_vl_config(arch, batch, dtype="float32", patch_keep=1.0,
                  posemb_grid=None):
  """The trainer config of one benchmark model (softmax loss, AdamW);
  dtype "bfloat16" computes activations in bf16 (params stay float32, as in
  configs/clip.py); patch_keep < 1 trains with FLIP patch dropout
  (bench/patch_dropout.py); posemb_grid makes a NaFlex-ready image tower
  (bench/naflex.py)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from big_vl.convert import open_clip as oc  # pylint: disable=g-import-not-at-top
  model = oc.model_config_from_open_clip(oc.ARCHS[arch])
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model_name = model.pop("name")
  config.model = ml_collections.ConfigDict(model)
  if dtype != "float32":
    config.model.dtype = dtype
  if patch_keep != 1.0:
    config.model.image.patch_keep = patch_keep
  if posemb_grid:
    config.model.image.posemb_grid = posemb_grid
  config.objectives = ml_collections.ConfigDict(dict(
      contrastive=dict(loss="softmax", weight=1.0)))
  config.input = ml_collections.ConfigDict(dict(batch_size=batch))
  config.lr = OPTIM["lr"]
  config.wd = OPTIM["wd"]
  config.wd_mode = "coupled"
  config.schedule = dict(name="cosine", end_frac=0.0)
  config.optim = dict(name="adamw", b1=OPTIM["b1"], b2=OPTIM["b2"],
                      eps=OPTIM["eps"])
  config.mesh = (("data", -1),)
  config.sharding_rules = ()
  return config


class BigVlSide:
  """big_vl's jitted train step and predict function for one model."""

  def __init__(self, arch, batch, dtype="float32", patch_keep=1.0,
               image_size=IMAGE_SIZE, naflex_patches=None):
    """naflex_patches: N, a perfect square, to train on NaFlex inputs (a
    full sqrt(N) x sqrt(N) grid of patches, no padding) with the position
    embedding kept at the `image_size` grid and resized to them."""
    import jax  # pylint: disable=g-import-not-at-top
    from big_vl import sharding  # pylint: disable=g-import-not-at-top
    from big_vl import models  # pylint: disable=g-import-not-at-top
    from big_vl import train  # pylint: disable=g-import-not-at-top
    self.jax = jax
    patch = oc_patch_size(arch)
    config = big_vl_config(arch, batch, dtype, patch_keep,
                           image_size // patch if naflex_patches else None)
    self.mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    side = int(round(np.sqrt(naflex_patches or 1))) * patch
    image, text = random_batch(batch, image_size=side if naflex_patches
                               else image_size)
    fields = {"image": image, "text": text}
    if naflex_patches:
      fields = {**naflex_batch(image, patch), "text": text}
    run = train.build(config, self.mesh,
                      {k: v[0] for k, v in fields.items()}, 10**6, 100)
    self.run = run
    self.batch = sharding.to_global(fields, self.mesh)
    self.state = run.init_state()
    self.n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
        run.abstract_state["params"]))
    compiled = run.train_step.lower(self.state, self.batch).compile()
    self.flops = float(_cost(compiled)["flops"])
    self.temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
    predict = models.make_predict_fn(run.model)
    self.predict = jax.jit(lambda p, i, t: predict(p, i, t)[:2])
    self.infer_flops = float(_cost(self.predict.lower(
        self.state["params"], self._image(),
        self.batch["text"]).compile())["flops"])
    self.train(2)
    self.infer(2)

  def _image(self):
    """The predict function's image input (a NaFlex dict or images)."""
    from big_vl.models import naflex  # pylint: disable=g-import-not-at-top
    return naflex.image_input(self.batch)

  def train(self, steps):
    """Seconds per step over `steps` back-to-back steps."""
    t0 = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.run.train_step(self.state, self.batch)
    loss = float(metrics["train/loss"])
    assert np.isfinite(loss), loss
    return (time.perf_counter() - t0) / steps

  def infer(self, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
      out = self.predict(self.state["params"], self._image(),
                         self.batch["text"])
    self.jax.block_until_ready(out)
    return (time.perf_counter() - t0) / steps

  def profile(self, steps=2):
    """{category: ms per step} of the train step's operations."""
    with tempfile.TemporaryDirectory() as d:
      with self.jax.profiler.trace(d, create_perfetto_trace=True):
        for _ in range(steps):
          self.state, metrics = self.run.train_step(self.state, self.batch)
        self.jax.block_until_ready(metrics)
      trace = sorted(glob.glob(os.path.join(d, "**", "*.trace.json.gz"),
                               recursive=True))[-1]
      with gzip.open(trace) as f:
        events = json.load(f)
    hlo = self.run.train_step.lower(self.state, self.batch).compile().as_text()
    return op_time_by_category(events, hlo, steps)


def _cost(compiled):
  cost = compiled.cost_analysis()
  return cost[0] if isinstance(cost, (list, tuple)) else cost


matmul_peak = host.matmul_peak  # The device's peak (bench/host.py).


# Operation categories, first match wins: (name, regex on the HLO op_name
# metadata, applies to matmul ops / elementwise ops / both).
CATEGORIES = (
    ("optimiser update (AdamW, norms)", r"^(?!.*jvp\()", "any"),
    ("loss (logits, softmax CE)", r"jvp\(Model\)\)?/(?!img/|txt/)|losses",
     "any"),
    ("patch embedding", r"img/embedding", "any"),
    ("token embedding (gather / scatter-add)", r"txt/Embed", "any"),
    ("attention matmuls (QK^T, PV)", r"bhq|hqk,|qhd,\.\.\.khd", "mm"),
    ("projection matmuls (QKV, out, MLP, heads)", r".", "mm"),
    ("GELU", r"MlpBlock_0/(erf|erfc|tanh|mul|logistic|pow|gelu)", "ew"),
    ("LayerNorm", r"LayerNorm|_norm/", "ew"),
    ("attention softmax / mask / scale", r"Attention.*(exp|max|reduce|div"
     r"|select|sub|softmax|where|integer_pow)", "ew"),
    ("attention layout copies", r"Attention", "ew"),
    ("other elementwise (bias, residual, ...)", r".", "ew"),
)
_SKIP_EVENTS = ("ThunkExecutor", "$", "SlinkyThreadPool", "PjitFunction",
                "end:", "Common", "ParseArguments", "Handle inputs")


def op_time_by_category(events, hlo_text, steps):
  """Sums traced operation time by CATEGORIES.

  Args:
    events: a perfetto trace (dict with "traceEvents", or a list).
    hlo_text: the compiled step's HLO (`compiled.as_text()`), for the
      `op_name` metadata of each instruction the trace names.
    steps: steps traced (results are per step).

  Returns:
    [(category, ms per step, of which in matmul operations)], largest
    first. Operations may run concurrently, so the sum can exceed the wall
    time of a step.
  """
  meta = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", line)
    if m:
      meta[m.group(1)] = m.group(2)
  if isinstance(events, dict):
    events = events["traceEvents"]
  totals = collections.Counter()
  matmul = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith(_SKIP_EVENTS) or (
        name not in meta and not re.match(r"[a-z_\-]+(\.\d+)?$", name)):
      continue
    kind = re.sub(r"\.\d+$", "", name)
    is_mm = kind.startswith("ynn") or kind in ("dot", "convolution")
    op = meta.get(name, "")
    for cat, pattern, applies in CATEGORIES:
      if applies == ("ew" if is_mm else "mm"):
        continue
      if re.search(pattern, op):
        totals[cat] += e.get("dur", 0) / 1e3 / steps
        matmul[cat] += e.get("dur", 0) / 1e3 / steps if is_mm else 0.0
        break
  return [(cat, ms, matmul[cat]) for cat, ms in totals.most_common()]


# --------------------------------------------------------------------------
# open_clip side (peer venv; never imports big_vl / jax).


class OpenClipSide:
  """open_clip's train step and inference for one model."""

  def __init__(self, arch, batch, dtype="float32", compile_model=False):
    import contextlib  # pylint: disable=g-import-not-at-top
    import open_clip  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    from open_clip import loss as oc_loss  # pylint: disable=g-import-not-at-top
    from torch.utils import flop_counter  # pylint: disable=g-import-not-at-top
    self.torch = torch
    torch.manual_seed(0)
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    # Mixed precision as open_clip's trainer does it (--precision amp_bf16).
    self.autocast = (
        (lambda: torch.autocast(self.device, dtype=torch.bfloat16))
        if dtype == "bfloat16" else contextlib.nullcontext)
    self.model = open_clip.create_model(arch, pretrained=None).to(
        self.device)
    self.opt = torch.optim.AdamW(
        self.model.parameters(), lr=OPTIM["lr"], betas=(OPTIM["b1"],
                                                        OPTIM["b2"]),
        eps=OPTIM["eps"], weight_decay=OPTIM["wd"])
    self.loss = oc_loss.ClipLoss()
    image, text = random_batch(batch)
    self.image = torch.from_numpy(image.transpose(0, 3, 1, 2).copy()).to(
        self.device)
    self.text = torch.from_numpy(text.astype(np.int64)).to(self.device)
    self.n_params = sum(p.numel() for p in self.model.parameters())
    self.forward = self.model
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
      self._step()
    self.flops = float(counter.get_total_flops())
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
      self._infer()
    self.infer_flops = float(counter.get_total_flops())
    if compile_model:  # FLOPs counted above, on the eager model.
      self.forward = torch.compile(self.model)
    self.train(2)
    self.infer(2)

  def _step(self):
    self.model.train()
    with self.autocast():
      image_features, text_features, logit_scale = self.forward(
          self.image, self.text)[:3]
      loss = self.loss(image_features, text_features, logit_scale)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return loss

  def _infer(self):
    self.model.eval()
    with self.torch.no_grad(), self.autocast():
      return (self.model.encode_image(self.image),
              self.model.encode_text(self.text))

  def train(self, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
      loss = self._step()
    assert np.isfinite(float(loss.detach()))
    return (time.perf_counter() - t0) / steps

  def infer(self, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
      self._infer()
    if self.device == "cuda":
      self.torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def peer_server(args):
  """Answers open_clip measurements (bench/peer.py protocol)."""
  import open_clip  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  models = {}

  def setup(arch, batch, dtype="float32", compile_model=False):
    models[arch] = OpenClipSide(arch, batch, dtype, compile_model)
    m = models[arch]
    return {"flops": m.flops, "infer_flops": m.infer_flops,
            "n_params": m.n_params}

  def measure(arch, what, steps):
    return {"s_per_step": getattr(models[arch], what)(steps)}

  def drop(arch):
    models.pop(arch, None)
    return {}

  del args
  peer_lib.serve({"setup": setup, "measure": measure, "drop": drop},
                 hello={"torch": torch.__version__,
                        "open_clip": open_clip.__version__,
                        "torch_threads": torch.get_num_threads(),
                        "torch_device": (torch.cuda.get_device_name()
                                         if torch.cuda.is_available()
                                         else "cpu")})


# What was tried on big_vl's side (kept only with a measured gain; one
# process, --only=big_vl, batch 32, same session, 2026-11-29). Written under
# every full results table so the history stays next to the numbers; these
# are past experiments, dated, and no run re-measures them.
NOTES = """Past experiments (2026-11-29, on a 2-core x86_64 machine; big_vl alone,
`--only=big_vl`, batch 32; quoted from then, not re-measured by the run
above):

- Kept: `gelu_exact` as `x / 2 * (1 + erf(x / sqrt 2))` (PyTorch's formula)
  instead of `jax.nn.gelu(approximate=False)`, which XLA expands through
  `erfc`: forward + backward of a [2464, 1536] activation 11.8 -> 2.5 ms.
- Kept: the ViT patch embedding as one matmul of flattened patches (same
  params and init as `nn.Conv`): ViT-B-32 forward + backward at batch 32
  93 -> 39 ms.
- Together: train 14.4-15.0 -> 15.6 img/s (ViT-S-32) and 6.3-6.4 -> 6.9
  img/s (ViT-B-32).
- Kept: the trainer reads each step's metrics after dispatching the next
  step (no host wait between steps; not visible here, where steps are
  dispatched back to back), and a test checks that 5 trainer steps compile
  the train step once.
- Not kept: a self-attention with one fused QKV matmul in the [B, H, L, D/H]
  layout (scale folded into the query kernel), and the same in [B, L, H,
  D/H]: within +-4% of flax's `MultiHeadDotProductAttention` (ViT-S-32 train
  16.0 vs 15.6, ViT-B-32 6.9 vs 6.9; inference 61.5 vs 59.8 and 24.3 vs
  25.3 img/s).
- Not kept: other XLA CPU library settings (`XLA_FLAGS`, 2026-11-29,
  ViT-S-32 batch 32, best of 3 x 3 steps, train / inference img/s). The
  default (matmuls as YNNPACK fusions): 15.5 / 64.4. YNNPACK also fusing
  elementwise and reductions
  (`--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce`): 14.1 /
  55.7; elementwise only: 13.2 / 56.9; YNNPACK off (`...ynn_fusion_type=`,
  Eigen matmuls): 14.4 / 63.4. oneDNN fusions (`--xla_cpu_use_onednn=true
  --xla_cpu_experimental_onednn_fusion_type=dot[,eltwise]`, YNNPACK off)
  fail to compile this step ("partition compile failed"). The XNNPACK
  fusion flags changed nothing measurable (15.0 / 64.5; a small dot + relu
  compiled with them holds no XNNPACK fusion).

Why train MFU stayed near 60% (goal 75%) in the 2026-11-29 run on 2 CPU
cores: at the peak, the step's XLA FLOPs would take about 1.2 s (ViT-S-32)
against 2.1 s measured. About a third of
the operation time is memory-bound elementwise work that XLA's CPU backend
does not fuse into the matmuls: GELU 8-9%, LayerNorm 7-8%, the AdamW update
6%, attention softmax, masking and layout copies 7-9% (that run's profile). The
matmuls themselves run at 90-107% of the 2048x2048 peak in isolation at
these shapes (M = 1,600-2,464 tokens, K, N = 384-3,072). Inference, with no
backward and no optimiser, reaches 79-86%.
"""

# --------------------------------------------------------------------------
# Driver.


def measure_model(arch, args, peer):
  """A dict of medians, ratios and MFU for one model (both sides)."""
  print(f"[{arch}] building big_vl (compiling)...", file=sys.stderr,
        flush=True)
  bv = BigVlSide(arch, args.batch, args.dtype)
  oc_info = None
  if peer is not None:
    print(f"[{arch}] building open_clip...", file=sys.stderr, flush=True)
    oc_info = peer.ask(op="setup", arch=arch, batch=args.batch,
                       dtype=args.dtype, compile_model=args.peer_compile)
  times = collections.defaultdict(list)
  sides = ["big_vl"] + (["open_clip"] if peer else [])

  def measure(side, what, steps):
    time.sleep(args.settle)  # Lets the other side's threads go idle.
    if side == "big_vl":
      return getattr(bv, what)(steps)
    return peer.ask(op="measure", arch=arch, what=what,
                    steps=steps)["s_per_step"]

  for side in sides:  # Untimed round: both sides warm after set-up.
    for what in ("train", "infer"):
      measure(side, what, 1)
  for rep in range(args.reps):
    for what in ("train", "infer"):
      steps = args.steps if what == "train" else args.infer_steps
      for side in (sides if rep % 2 == 0 else sides[::-1]):
        s = measure(side, what, steps)
        times[(side, what)].append(s)
        print(json.dumps({"model": arch, "side": side, "what": what,
                          "rep": rep, "img_s": round(args.batch / s, 2),
                          "load1": os.getloadavg()[0]}),
              file=sys.stderr, flush=True)
  row = {"model": arch, "batch": args.batch,
         "big_vl_params": bv.n_params,
         "big_vl_train_flops_per_step_xla": bv.flops,
         "big_vl_infer_flops_per_step_xla": bv.infer_flops}
  for (side, what), ts in times.items():
    row[f"{side}_{what}_img_s"] = args.batch / statistics.median(ts)
    row[f"{side}_{what}_img_s_range"] = [args.batch / max(ts),
                                         args.batch / min(ts)]
  if oc_info:
    row["open_clip_params"] = oc_info["n_params"]
    row["open_clip_train_flops_per_step_torch"] = oc_info["flops"]
    row["open_clip_infer_flops_per_step_torch"] = oc_info["infer_flops"]
    for what in ("train", "infer"):
      row[f"{what}_ratio"] = (row[f"big_vl_{what}_img_s"]
                              / row[f"open_clip_{what}_img_s"])
      row[f"{what}_paired_ratio"] = statistics.median(
          o / b for b, o in zip(times[("big_vl", what)],
                                times[("open_clip", what)]))
    peer.ask(op="drop", arch=arch)
  if args.profile:
    row["profile_ms_per_step"] = bv.profile()
  return row


def add_mfu(row, peak_gflops):
  """Adds MFU fields (fractions of the matmul peak) to a result row."""
  b = row["batch"]
  for what in ("train", "infer"):
    bv_flops = row[f"big_vl_{what}_flops_per_step_xla"]
    row[f"big_vl_{what}_mfu"] = (bv_flops * row[f"big_vl_{what}_img_s"]
                                 / b / peak_gflops / 1e9)
    if f"open_clip_{what}_img_s" in row:
      oc_flops = row[f"open_clip_{what}_flops_per_step_torch"]
      row[f"open_clip_{what}_mfu"] = (oc_flops * row[f"open_clip_{what}_img_s"]
                                      / b / peak_gflops / 1e9)
      row[f"big_vl_{what}_mfu_torch_flops"] = (
          oc_flops * row[f"big_vl_{what}_img_s"] / b / peak_gflops / 1e9)
  return row


def _f(v, digits=1):
  return f"{v:,.{digits}f}"


def _pct(v):
  return f"{100 * v:.0f}%"


_DTYPE = {"float32": "fp32",
          "bfloat16": "bf16 (big_vl: model dtype bfloat16, float32 params; "
                      "open_clip: torch.autocast bfloat16)"}


def markdown(args, rows, peaks, versions, wall_s, command, machine=None):
  both = any("train_ratio" in r for r in rows)
  machine = machine or host.describe(host.facts(peak=False))
  lines = [
      HEADING, "",
      f"Command: `{command}`  ",
      f"Date: {datetime.date.today()}; machine: {machine}; Python "
      f"{platform.python_version()}; "
      f"{versions}. Whole run: {wall_s / 60:.1f} min. {args.dtype} "
      f"matmul peak (jitted {args.peak_n}x{args.peak_n}, best of 10) at the "
      "start / end of the run: "
      f"{peaks[0]:,.0f} / {peaks[1]:,.0f} GFLOP/s; MFU below uses the larger.",
      "",
      f"Both sides: the open_clip architecture, image {IMAGE_SIZE}, context "
      f"{CONTEXT}, vocab {VOCAB:,}, {_DTYPE[args.dtype]}, random init, "
      f"batch {args.batch}, "
      "softmax loss, AdamW (b1 0.9, b2 0.98, eps 1e-6, wd 0.2), one fixed "
      "random batch. big_vl: the trainer's jitted step (`train.build`) and "
      "the evaluators' predict function; open_clip: `create_model`, "
      "`ClipLoss`, `torch.optim.AdamW`, inference `encode_image` + "
      f"`encode_text` under no_grad. {args.steps} train steps / "
      f"{args.infer_steps} inference batches per measurement after a warm-up;"
      f" sides alternate (order swapped each repetition); {args.reps} "
      "repetitions, median (min-max) images/s. Ratio = median big_vl / median"
      " open_clip; paired = median of the per-repetition ratios. MFU = "
      "FLOPs/s over the matmul peak, with big_vl's FLOPs from XLA's cost "
      "analysis of the compiled step and open_clip's from torch's "
      "FlopCounterMode.", ""]
  head = ("| model | what | big_vl img/s | "
          + ("open_clip img/s | big_vl / open_clip | paired | " if both else "")
          + "big_vl GFLOP/img (XLA) | big_vl MFU | "
          + ("open_clip GFLOP/img (torch) | open_clip MFU | "
             "big_vl MFU on torch's FLOPs |" if both else ""))
  lines += [head, "|---|---|" + "---:|" * (head.count("|") - 3)]
  for r in rows:
    for what in ("train", "infer"):
      lo, hi = r[f"big_vl_{what}_img_s_range"]
      cells = [r["model"], what,
               f"{_f(r[f'big_vl_{what}_img_s'])} ({_f(lo)}-{_f(hi)})"]
      if both:
        lo, hi = r[f"open_clip_{what}_img_s_range"]
        cells += [f"{_f(r[f'open_clip_{what}_img_s'])} ({_f(lo)}-{_f(hi)})",
                  f"{r[f'{what}_ratio']:.2f}x",
                  f"{r[f'{what}_paired_ratio']:.2f}x"]
      cells += [_f(r[f"big_vl_{what}_flops_per_step_xla"] / r["batch"] / 1e9),
                _pct(r[f"big_vl_{what}_mfu"])]
      if both:
        cells += [_f(r[f"open_clip_{what}_flops_per_step_torch"]
                     / r["batch"] / 1e9),
                  _pct(r[f"open_clip_{what}_mfu"]),
                  _pct(r[f"big_vl_{what}_mfu_torch_flops"])]
      lines.append("| " + " | ".join(cells) + " |")
  profiled = [r for r in rows if r.get("profile_ms_per_step")]
  if profiled:
    lines += ["", "Where big_vl's train step spends its time "
              "(`--profile`: jax.profiler trace of 2 steps, operation time "
              "summed by what the HLO metadata says each fused operation "
              f"computes; operations overlap on the {os.cpu_count()} cores, so "
              "shares are of summed operation time, not of wall time):", ""]
    for r in profiled:
      prof = r["profile_ms_per_step"]
      total = sum(ms for _, ms, _ in prof)
      mm = sum(mm_ms for _, _, mm_ms in prof)
      lines.append(f"- {r['model']} (matmuls {_pct(mm / total)} of "
                   f"{total:,.0f} ms of operation time per step): " + "; ".join(
                       f"{cat} {_pct(ms / total)}" for cat, ms, _ in prof
                       if ms / total >= 0.005) + ".")
  lines += ["", NOTES.rstrip()]
  return "\n".join(lines) + "\n"


def driver(args, partial=()):
  """Measures every model and publishes the table.

  Args:
    args: the parsed flags.
    partial: the flags that make this run partial (`PARTIAL_IGNORE`); a
      partial run prints its table and leaves RESULTS.md alone.
  """
  t_start = time.perf_counter()
  import jax  # pylint: disable=g-import-not-at-top
  versions = [f"jax {jax.__version__}"]
  machine = host.describe(host.facts(peak=False))
  peer = None
  if args.only != "big_vl":
    if not os.path.exists(args.peer_python):
      raise SystemExit(
          f"Peer python {args.peer_python!r} not found: create it with "
          "`python3 -m venv .venv-peer && .venv-peer/bin/python -m pip "
          "install -r requirements-peer.txt -e .`, or pass --only=big_vl.")
    peer = peer_lib.Peer(args.peer_python, os.path.abspath(__file__),
                         ["--side=open_clip"])
    versions += [f"{k} {v}" for k, v in peer.versions.items()]
  peak = lambda: matmul_peak(args.peak_n, dtype=args.dtype)
  peaks = [peak()]
  rows = []
  try:
    for arch in args.models:
      rows.append(measure_model(arch, args, peer))
  finally:
    if peer is not None:
      peer.close()
  peaks.append(peak())
  for row in rows:
    add_mfu(row, max(peaks))
    row["matmul_peak_gflops"] = max(peaks)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                      for k, v in row.items()
                      if k != "profile_ms_per_step"}), flush=True)
  command = results_md.command(__file__, sys.argv[1:])
  results_md.publish(HEADING, markdown(
      args, rows, peaks, ", ".join(versions), time.perf_counter() - t_start,
      command, machine), write=not args.no_write, partial=partial)


# Options that do not change the table: RESULTS.md is written only when all
# others are at their defaults (both models, both sides, all repetitions).
# `--profile` adds a breakdown under the same table.
PARTIAL_IGNORE = ("peer_python", "profile")


def make_parser():
  """The command-line flags."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  peer_lib.add_side_flag(parser)
  parser.add_argument("--models", default="ViT-S-32,ViT-B-32",
                      help="comma list of open_clip architectures")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=3,
                      help="train steps per measurement")
  parser.add_argument("--infer_steps", type=int, default=4,
                      help="inference batches per measurement")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--settle", type=float, default=1.0,
                      help="seconds of idle before each measurement")
  parser.add_argument("--only", choices=("big_vl",))
  parser.add_argument("--profile", action="store_true",
                      help="also break big_vl's step time down by operation")
  parser.add_argument("--peer_python",
                      default=os.path.join(ROOT, ".venv-peer", "bin",
                                           "python"))
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"),
                      help="bfloat16: big_vl's model dtype (activations; "
                      "params float32) and torch.autocast for open_clip; the "
                      "matmul peak is measured in this dtype")
  parser.add_argument("--peer_compile", action="store_true",
                      help="torch.compile open_clip's model for the train step "
                      "(inference stays eager)")
  parser.add_argument("--peak_n", type=int, default=2048,
                      help="matmul size of the peak measurement (8192 on a "
                      "GPU)")
  parser.add_argument("--no_write", action="store_true")
  return parser


def main(argv=None):
  parser = make_parser()
  args = parser.parse_args(argv)
  partial = results_md.non_default(parser, args, ignore=PARTIAL_IGNORE)
  args.models = [m for m in args.models.split(",") if m]
  if args.side == "open_clip":
    peer_server(args)
  else:
    driver(args, partial)


if __name__ == "__main__":
  main(sys.argv[1:])
