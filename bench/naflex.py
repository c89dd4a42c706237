r"""NaFlex in miniature (SigLIP 2): native aspect ratios against square
resizing, and the step time of NaFlex sequences.

    python bench/naflex.py                       # writes bench/RESULTS.md
    python bench/naflex.py --seeds=0 --steps=50 --budgets=64 --no_write

1. Aspect shapes. A small image-text set made here (`make_aspect_data`):
each image holds one shape in one of 4 colours, the shape one of "square",
"wide rectangle", "tall rectangle", "circle", "wide ellipse", "tall
ellipse" (24 classes), drawn to fill its image with a random margin, and
the image has the shape's aspect ratio (1:1, 2:1 or 1:2; long side 48 to
64 px). Resized to a square, a wide rectangle is a square: the aspect is
gone from the pixels. NaFlex keeps it: the `naflex(16, 8)` pp op resizes
to a grid of at most 16 patches of 8 px with the aspect kept (4x4 for
square images, 3x5 or 5x3 for the others) and the ViT reads each patch's
position. Both arms train configs/demo.py's towers (32 px budget: 16
patches of 8 px) for `--steps` steps of `--batch` with the image's captions
("a photo of a red wide rectangle." and 4 other templates), then classify
the test images zero-shot ("a photo of a {class}."): top-1 over the 24
classes, colour accuracy and aspect accuracy (square / wide / tall) of the
predicted class. Expected: the square arm's aspect accuracy near chance
(1/3) and its top-1 at most about a third, NaFlex's both far above.

Measured 2026-12-07 (bench/RESULTS.md, "NaFlex in miniature"; 2 CPU
cores, 3 seeds): NaFlex 99.9% ± 0.1% zero-shot top-1 (aspect 100%),
square resizing 52.7% ± 4.4% (aspect 52.7%; colour 100% in both), +47.2 ±
4.4 points paired. The square arm's aspect accuracy is above chance:
squashing a 2:1 image also squashes its background noise and softens the
shape's edges along one axis, a cue the pixels keep. The ViT-B/16 step on
NaFlex sequences costs what the fixed-size step with as many patches
costs (0.99x to 1.07x at 64, 256 and 1,024 patches, equal FLOPs and
temporary memory); the CI suite shared the machine during that part, so
the few-percent differences are noise.

2. Step time. The trainer's jitted step on `--speed_arch` (open_clip's
ViT-B-16 towers), batch `--speed_batch`, float32, one CPU device
(bench/train_throughput.py's big_vl side): NaFlex sequences of each
`--budgets` size (full square grids, position embedding resized from the
14x14 grid) against fixed-resolution images with as many patches (128,
256, 512 px for 64, 256, 1,024 patches), timed in alternation; FLOPs and
temporary memory from the compiled step.

Results go to the "## NaFlex in miniature" section of RESULTS.md (only a
run at the default flags writes it). Runs are resumable (bench/runs.py).
"""

import argparse
import collections
import datetime
import io
import json
import os
import sys

from absl import flags

flags.FLAGS.mark_as_parsed()

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import host  # pylint: disable=g-import-not-at-top,wrong-import-position
import results_md  # pylint: disable=g-import-not-at-top,wrong-import-position
import runs  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

HEADING = "## NaFlex in miniature (bench/naflex.py)"
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60),
           "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = {"square": ("rect", 1), "wide rectangle": ("rect", 2),
          "tall rectangle": ("rect", 0.5), "circle": ("ellipse", 1),
          "wide ellipse": ("ellipse", 2), "tall ellipse": ("ellipse", 0.5)}
CLASSES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
ARMS = {"square": "resize(32)", "naflex": "naflex(16, 8)"}
MAX_LEN = 16


def draw(class_name, rng):
  """PNG bytes of one example of `class_name` ("red wide rectangle")."""
  colour, shape = class_name.split(" ", 1)
  kind, aspect = SHAPES[shape]
  long_side = int(rng.integers(48, 65))
  if aspect >= 1:
    width, height = long_side, int(round(long_side / aspect))
  else:
    height, width = long_side, int(round(long_side * aspect))
  shade = int(rng.integers(60, 200))
  noise = rng.normal(0, 12, (height, width, 3))
  image = Image.fromarray(np.clip(shade + noise, 0, 255).astype(np.uint8))
  margin = rng.uniform(0.08, 0.2)
  box = [margin * width, margin * height, (1 - margin) * width - 1,
         (1 - margin) * height - 1]
  fill = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255))
               for v in COLOURS[colour])
  getattr(ImageDraw.Draw(image), "rectangle" if kind == "rect"
          else "ellipse")(box, fill=fill)
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  return buf.getvalue()


def make_aspect_data(root, n_train, n_test, seed=0):
  """Writes ROOT/{train,test}/CLASS/i.png (class folder names with "_" for
  spaces, as `big_vl_image_folder` reads them) unless already there;
  returns the folder."""
  done = os.path.join(root, "done.json")
  want = {"n_train": n_train, "n_test": n_test, "seed": seed}
  if os.path.exists(done):
    with open(done) as f:
      if json.load(f) == want:
        return root
    raise ValueError(f"{root} holds another aspect dataset; delete it (and "
                     "its TFDS build) first.")
  rng = np.random.default_rng(seed)
  for split, n in (("train", n_train), ("test", n_test)):
    for i in range(n):
      name = CLASSES[i % len(CLASSES)]
      folder = os.path.join(root, split, name.replace(" ", "_"))
      os.makedirs(folder, exist_ok=True)
      with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
        f.write(draw(name, rng))
  with open(done, "w") as f:
    json.dump(want, f)
  return root


def make_config(arm, data, seed, steps, batch):
  """configs/demo.py's towers at a 16-patch budget on the aspect data."""
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(
      os.path.join(ROOT, "configs", "demo.py")
      + f":steps={steps},batch={batch},res=32,max_len={MAX_LEN}")
  config.seed = seed
  keep = ("'image','image_pos'" if arm == "naflex" else "'image'")
  image_pp = f"decode|{ARMS[arm]}|value_range(-1,1)"
  config.input.data = data
  config.input.pp = (f"{image_pp}|choice(key='captions', out='text')|"
                     f"tokenize(max_len={MAX_LEN})|keep({keep},'text')")
  config.model.text.max_len = MAX_LEN
  if arm == "naflex":
    config.model.image.posemb_grid = 4
  config.warmup_steps = max(steps // 10, 1)
  config.log_steps = max(steps // 10, 1)
  config.ckpt_steps = steps
  config.evals = {}
  return config


def evaluate(workdir, arm, data):
  """(top-1, colour accuracy, aspect accuracy) of zero-shot classification
  of the test split."""
  from big_vl import predict  # pylint: disable=g-import-not-at-top
  from big_vl.data import sources  # pylint: disable=g-import-not-at-top
  keep = ("'image','image_pos'" if arm == "naflex" else "'image'")
  predictor = predict.Predictor.load(
      workdir, pp_img=f"decode|{ARMS[arm]}|value_range(-1,1)|keep({keep})",
      pp_txt=f"tokenize(max_len={MAX_LEN})")
  test = sources.get(data, split="test")
  images = [test[i]["image"] for i in range(len(test))]
  labels = np.asarray([int(test[i]["label"]) for i in range(len(test))])
  # The ClassLabel's names are the sorted folder names.
  folders = sorted(c.replace(" ", "_") for c in CLASSES)
  classes = [f.replace("_", " ") for f in folders]
  probs = predictor.classify(images, classes, templates=("a photo of a {}.",))
  pred = np.argmax(probs, axis=1)
  colour = lambda i: classes[i].split(" ")[0]
  aspect = lambda i: SHAPES[classes[i].split(" ", 1)[1]][1]
  return (float(np.mean(pred == labels)),
          float(np.mean([colour(p) == colour(t)
                         for p, t in zip(pred, labels)])),
          float(np.mean([aspect(p) == aspect(t)
                         for p, t in zip(pred, labels)])))


def step_times(arch, batch, budgets, reps):
  """{budget: {"naflex" | "fixed": (median s/step, GFLOP, temp MiB)}}."""
  patch = train_throughput.oc_patch_size(arch)
  sides = {}
  for n in budgets:
    side = int(round(np.sqrt(n))) * patch
    sides[n, "naflex"] = train_throughput.BigVlSide(arch, batch,
                                                    naflex_patches=n)
    sides[n, "fixed"] = train_throughput.BigVlSide(arch, batch,
                                                   image_size=side)
  times = collections.defaultdict(list)
  keys = list(sides)
  for rep in range(reps):
    for key in (keys if rep % 2 == 0 else keys[::-1]):
      times[key].append(sides[key].train(2))
  out = collections.defaultdict(dict)
  for (n, kind), s in sides.items():
    out[n][kind] = (float(np.median(times[n, kind])), s.flops / 1e9,
                    s.temp_bytes / 2**20)
  return out


def make_parser():
  """The command-line flags (`--root` aside, any non-default one makes a
  partial run)."""
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--train_images", type=int, default=4800)
  parser.add_argument("--test_images", type=int, default=480)
  parser.add_argument("--budgets", default="64,256,1024")
  parser.add_argument("--speed_arch", default="ViT-B-16")
  parser.add_argument("--speed_batch", type=int, default=2)
  parser.add_argument("--speed_reps", type=int, default=3)
  parser.add_argument("--root", default=os.path.join(ROOT, "workdirs",
                                                     "bench_naflex"))
  parser.add_argument("--no_write", action="store_true")
  return parser


def main(argv):
  parser = make_parser()
  args = parser.parse_args(argv)
  partial = results_md.non_default(parser, args, ignore=("root",))
  machine = host.describe(host.facts())
  from big_vl.data.builders import image_folder  # pylint: disable=g-import-not-at-top
  folder = make_aspect_data(
      os.path.join(args.root, f"aspect_shapes_{args.train_images}_"
                   f"{args.test_images}"), args.train_images,
      args.test_images)
  image_folder.prepare(root=folder)
  data = f"tfds:{image_folder.NAME}/{image_folder.config_name_for(folder)}"
  table = collections.defaultdict(lambda: collections.defaultdict(list))
  for seed in [int(s) for s in args.seeds.split(",")]:
    for arm in ARMS:
      workdir = os.path.join(args.root, f"{arm}_seed{seed}_{args.steps}x"
                             f"{args.batch}")
      runs.train_or_reuse(make_config(arm, data, seed, args.steps,
                                      args.batch), workdir)
      row = dict(zip(("top1", "colour", "aspect"),
                     evaluate(workdir, arm, data)))
      for k, v in row.items():
        table[arm][k].append(v)
      print(json.dumps({"arm": arm, "seed": seed, **row}), flush=True)
  pct = lambda v: f"{np.mean(v):.1%} ± {np.std(v):.1%}"
  diff = lambda k: np.asarray(table["naflex"][k]) - np.asarray(
      table["square"][k])
  lines = ["| images | zero-shot top-1 | colour acc | aspect acc |",
           "|---|---:|---:|---:|"]
  for arm, label in (("square", f"square ({ARMS['square']})"),
                     ("naflex", f"NaFlex ({ARMS['naflex']})")):
    t = table[arm]
    lines.append(f"| {label} | {pct(t['top1'])} | {pct(t['colour'])} | "
                 f"{pct(t['aspect'])} |")
  lines.append(f"| NaFlex - square (paired) | {pct(diff('top1'))} | "
               f"{pct(diff('colour'))} | {pct(diff('aspect'))} |")
  budgets = [int(b) for b in args.budgets.split(",")]
  speed = step_times(args.speed_arch, args.speed_batch, budgets,
                     args.speed_reps)
  patch = train_throughput.oc_patch_size(args.speed_arch)
  speed_lines = ["| patches | fixed px | fixed s / step | NaFlex s / step | "
                 "NaFlex / fixed | GFLOP fixed / NaFlex | temp MiB fixed / "
                 "NaFlex |", "|---:|---:|---:|---:|---:|---:|---:|"]
  for n in budgets:
    (fs, fg, fm), (ns, ng, nm) = speed[n]["fixed"], speed[n]["naflex"]
    speed_lines.append(
        f"| {n} | {int(round(np.sqrt(n))) * patch} | {fs:.2f} | {ns:.2f} | "
        f"{ns / fs:.2f} | {fg:.0f} / {ng:.0f} | {fm:.0f} / {nm:.0f} |")
  section = "\n".join([
      HEADING, "",
      f"Measured {datetime.date.today()} on {machine}. Aspect shapes "
      f"({len(CLASSES)} classes, {args.train_images} train / "
      f"{args.test_images} test images, module docstring): configs/demo.py's "
      f"towers at a 16-patch budget, {args.steps} steps of {args.batch}, "
      f"seeds {args.seeds}; zero-shot over the {len(CLASSES)} classes "
      f"(chance {1 / len(CLASSES):.1%}; colour chance 25%, aspect chance "
      "33%); mean ± std over the seeds.", "",
      "```", results_md.command(__file__, argv), "```", "", *lines, "",
      f"The trainer's step: {args.speed_arch}, batch {args.speed_batch}, "
      "float32, one CPU device (bench/train_throughput.py's big_vl side); "
      "NaFlex sequences of full square grids (the position embedding "
      f"resized from the {train_throughput.IMAGE_SIZE // patch}x"
      f"{train_throughput.IMAGE_SIZE // patch} grid) against fixed-size "
      f"images with as many patches; median of {args.speed_reps} "
      "alternating repetitions of 2 steps; FLOPs and temporary memory from "
      "the compiled step.", "", *speed_lines, ""])
  results_md.publish(HEADING, section, write=not args.no_write,
                     partial=partial)


if __name__ == "__main__":
  main(sys.argv[1:])
