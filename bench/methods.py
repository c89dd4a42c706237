r"""The papers' methods in miniature: each against the CLIP baseline.

    python bench/methods.py                      # all rows; writes RESULTS.md
    python bench/methods.py --rows=siglip --steps=50 --no_write

Every run is the one trainer on the embedded demo data (configs/demo.py at
32 px, demo-size towers) at equal steps and batch within a comparison, seed
0, on this machine's CPU. Evaluation on the first 512 test images (their
colour+shape pairs include the 5 never seen in training):

- zero-shot top-1 over the 35 classes (prompt "a {class}."), and
- attribute R@1: for each image, its main object's true "a {colour}
  {shape}." among 11 captions that differ from it in exactly one attribute
  (the 6 other colours, the 4 other shapes); chance 1/11.

A hit must score strictly higher than every alternative (ties are misses).

Both are scored with each model's own similarity: the cosine of pooled
embeddings, or FILIP's late interaction (mean over patches of the best
word) for FILIP. Rows:

  siglip    SigLIP (sigmoid) vs CLIP (softmax) at a small batch (16)
  filip     FILIP (late interaction, ring loss) vs CLIP
  dreamlip  DreamLIP (3 sentences of the long caption, grouping loss) vs
            CLIP trained on the same long captions (one text, 48 tokens)
  vitamin   ViTamin (tiny "mu") vs a ViT with about as many image-tower
            parameters
  growth    a model grown from 2 to 4 blocks per tower half-way vs the
            4-block model throughout (equal steps; the grown one computes
            less)

Results go to the "## Methods in miniature" section of bench/RESULTS.md.
"""

import argparse
import datetime
import json
import os
import sys
import time

from absl import flags

flags.FLAGS.mark_as_parsed()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl import late_interaction  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl import pretrained  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data import pp as pp_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data import sources  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.data.builders import demo_shapes  # pylint: disable=g-import-not-at-top,wrong-import-position
import results_md  # pylint: disable=g-import-not-at-top,wrong-import-position

HEADING = "## Methods in miniature (bench/methods.py)"
RES, MAX_LEN, EVAL_IMAGES = 32, 24, 512


def _config(name, **kw):
  return config_lib.load_config_module(
      os.path.join(ROOT, "configs", f"{name}.py")).get_config(
          ",".join(f"{k}={v}" for k, v in kw.items()))


def base(steps, batch, max_len=MAX_LEN):
  """The CLIP baseline: configs/demo.py at 32 px, no evaluators."""
  config = _config("demo", steps=steps, batch=batch, res=RES,
                   max_len=max_len)
  config.evals = {}
  config.log_steps = max(steps // 10, 1)
  config.ckpt_steps = steps
  return config


def variants(row, steps, batch):
  """[(name, config, scoring)] of a row; scoring "cosine" or "late"."""
  if row == "siglip":
    clip, sig = base(steps, 16), base(steps, 16)
    sig.loss.name = "sigmoid"
    sig.model.bias_init = -10.0
    return [("clip_b16", clip, "cosine"), ("siglip_b16", sig, "cosine")]
  if row == "filip":
    filip = base(steps, batch)
    filip.model.token_features = True
    filip.loss = dict(name="filip", impl="ring", global_weight=0.0)
    return [("clip", base(steps, batch), "cosine"), ("filip", filip, "late")]
  if row == "dreamlip":
    long_len = 48
    clip_long = base(steps, batch, max_len=long_len)
    clip_long.input.pp = (
        f"decode|resize({RES})|value_range(-1,1)|"
        f"tokenize(max_len={long_len}, key='long_caption', out='text')|"
        "keep('image','text')")
    dream = base(steps, batch)
    dream.input.pp = (
        f"decode|resize({RES})|value_range(-1,1)|sample_sentences(3)|"
        f"tokenize(max_len={MAX_LEN}, key='texts', out='text')|"
        "keep('image','text')")
    dream.model.token_features = True
    dream.loss = dict(name="dreamlip", impl="dense", grouping_weight=1.0)
    return [("clip_long", clip_long, "cosine"), ("dreamlip", dream,
                                                 "cosine")]
  if row == "vitamin":
    vitamin, vit = base(steps, batch), base(steps, batch)
    vitamin.model.image = dict(arch="vitamin", variant="mu")
    # About the ViTamin "mu" image tower's 121k parameters.
    vit.model.image = dict(width=64, depth=2, mlp_dim=256, num_heads=2,
                           patch_size=8, pool_type="gap")
    return [("vit_small", vit, "cosine"), ("vitamin_mu", vitamin, "cosine")]
  if row == "growth":
    fixed, grown = base(steps, batch), base(steps, batch)
    for tower in ("image", "text"):
      grown.model[tower].depth = 2
    grown.growth = ((steps // 2, {"image.depth": 4, "text.depth": 4}),)
    grown.growth_ema = 0.99
    return [("fixed_4_blocks", fixed, "cosine"),
            ("grown_2_to_4", grown, "cosine")]
  raise ValueError(f"Unknown row {row!r}.")


def _eval_data():
  src = sources.get(config_lib.DEMO_DATA, split="test")
  fn = pp_lib.build(f"decode|resize({RES})|value_range(-1,1)")
  images, colours, shapes = [], [], []
  for i in range(EVAL_IMAGES):
    record = src[i]
    images.append(fn({"image": record["image"]})["image"])
    label = int(record["label"])
    colours.append(label // len(demo_shapes.SHAPES))
    shapes.append(label % len(demo_shapes.SHAPES))
  return np.stack(images), np.array(colours), np.array(shapes)


def _captions(colour, shape):
  c, s = demo_shapes.COLOURS, demo_shapes.SHAPES
  true = f"a {c[colour]} {s[shape]}."
  others = ([f"a {x} {s[shape]}." for i, x in enumerate(c) if i != colour]
            + [f"a {c[colour]} {x}." for i, x in enumerate(s) if i != shape])
  return [true] + others


def evaluate(workdir, scoring, data):
  """(zero-shot top-1, attribute R@1) of a trained run."""
  model_config, params = pretrained.load(workdir)
  model = models.get(model_config)
  max_len = model_config["text"]["max_len"]
  tok = pp_lib.build(f"tokenize(max_len={max_len})")
  tokens = lambda texts: np.stack([tok({"text": t})["text"] for t in texts])
  apply = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
  images, colours, shapes = data
  classes = [f"a {n}." for n in demo_shapes.CLASS_NAMES]

  def scores(image_batch, texts):
    zimg, ztxt, aux = apply(params, image_batch, tokens(texts))
    if scoring == "late":
      mask = np.asarray(aux["txt/mask"])
      return np.asarray(late_interaction.late_similarities(
          aux["img/ztokens"], aux["txt/ztokens"], mask)[0])
    return np.asarray(zimg) @ np.asarray(ztxt).T

  top1, attr = [], []
  for start in range(0, len(images), 64):
    batch = images[start:start + 64]
    s = scores(batch, classes)
    labels = (colours[start:start + 64] * len(demo_shapes.SHAPES)
              + shapes[start:start + 64])
    # Strictly best: a tie (e.g. every caption scored alike) is a miss.
    true = s[np.arange(len(batch)), labels]
    others = np.where(np.arange(s.shape[1])[None] == labels[:, None],
                      -np.inf, s)
    top1.extend(true > others.max(axis=1))
    for j in range(len(batch)):
      options = _captions(colours[start + j], shapes[start + j])
      row = scores(batch[j:j + 1], options)[0]
      attr.append(row[0] > row[1:].max())
  return float(np.mean(top1)), float(np.mean(attr))


def main(argv):
  parser = argparse.ArgumentParser()
  parser.add_argument("--rows", default="siglip,filip,dreamlip,vitamin,growth")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--root", default=os.path.join(ROOT, "workdirs",
                                                     "bench_methods"))
  parser.add_argument("--no_write", action="store_true")
  args = parser.parse_args(argv)
  demo_shapes.prepare()
  data = _eval_data()
  lines = []
  for row in args.rows.split(","):
    for name, config, scoring in variants(row, args.steps, args.batch):
      workdir = os.path.join(args.root, f"{row}_{name}")
      t0 = time.time()
      result = train.train(config, workdir)
      seconds = time.time() - t0
      top1, attr = evaluate(workdir, scoring, data)
      n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
          pretrained.load(workdir)[1]["img"]))
      record = dict(row=row, run=name, steps=args.steps,
                    batch=config.input.batch_size, scoring=scoring,
                    final_loss=round(result["losses"][max(result["losses"])],
                                     4),
                    zeroshot_top1=round(top1, 4), attribute_r1=round(attr, 4),
                    image_params=n_params, seconds=round(seconds, 1))
      print(json.dumps(record), flush=True)
      lines.append(record)
  table = ["| row | run | batch | scoring | final loss | zero-shot top-1 | "
           "attribute R@1 | image-tower params | train s |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in lines:
    table.append(f"| {r['row']} | {r['run']} | {r['batch']} | {r['scoring']}"
                 f" | {r['final_loss']} | {r['zeroshot_top1']:.1%} | "
                 f"{r['attribute_r1']:.1%} | {r['image_params']:,} | "
                 f"{r['seconds']} |")
  section = "\n".join([
      HEADING, "",
      f"Measured {datetime.date.today()} on this machine's CPU (2 cores), "
      f"{args.steps} steps each, seed 0; 512 test images (chance: zero-shot "
      "1/35 = 2.9%, attribute R@1 1/11 = 9.1%).", "",
      "```", results_md.command(__file__, argv), "```", "",
      *table, "", NOTES.strip(), ""])
  results_md.publish(HEADING, section, write=not args.no_write)


NOTES = """
"""

if __name__ == "__main__":
  main(sys.argv[1:])
