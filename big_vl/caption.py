r"""Captions images with a trained (or converted) captioner, as JSONL.

    python -m big_vl.caption --checkpoint=workdirs/cappa --images=photos/ \
        [--beam=4 | --guidance=2.0 | --temperature=0.7 --top_p=0.9] \
        [--prefix="a photo of"] [--output=captions.jsonl]
    python -m big_vl.caption --checkpoint=workdirs/cappa \
        --images=tfds:big_vl_demo_shapes --split=test --limit=100

`--images` is a folder (its image files, sorted by path, subfolders
included), one image file, or a data source spec (`tfds:NAME`, `jsonl:FILE`,
`csv:FILE`; the records' "image" field, `--split` for tfds). Each image is
one row {"image": path or record index, "caption": "..."} of `--output`
(default: stdout), in input order. An image that cannot be read or decoded
is skipped and counted (the count and the first reasons go to stderr), so
one bad file does not stop a folder. The images go through the model's
evaluation pp (`big_vl.predict.Predictor.load`); decoding is greedy unless
`--beam` > 1 (beam search) or `--temperature` > 0 (sampling), with optional
classifier-free `--guidance`.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import tqdm

from big_vl import cli
from big_vl import config as config_lib
from big_vl import predict
from big_vl import storage
from big_vl.data import pp as pp_lib
from big_vl.data import sources
from big_vl.data.builders import image_folder

# The image folder builder's suffixes, and TIFF (PIL reads it too).
IMAGE_SUFFIXES = image_folder.IMAGE_EXTENSIONS + (".tif", ".tiff")

# Also a library (list_images, caption_all): its flags live in their own
# FlagValues (export defines --checkpoint too).
_FLAGS = flags.FlagValues()
_DEFINE = {"string": flags.DEFINE_string, "integer": flags.DEFINE_integer,
           "float": flags.DEFINE_float}


def _flag(kind, name, default, help_):
  return _DEFINE[kind](name, default, help_, flag_values=_FLAGS)


_CHECKPOINT = _flag("string", "checkpoint", None,
                    "A captioner's training workdir or converted folder.")
_IMAGES = _flag("string", "images", None,
                "A folder of images, an image file, or a data source spec "
                "(tfds:NAME, jsonl:FILE, csv:FILE).")
_SPLIT = _flag("string", "split", "test", "Split of a tfds source.")
_OUTPUT = _flag("string", "output", "-", "Output JSONL ('-': stdout).")
_STEP = _flag("integer", "step", None, "Checkpoint step (default: latest).")
_BEAM = _flag("integer", "beam", 1, "Beam size (1: greedy or sampling).")
_ALPHA = _flag("float", "alpha", 0.0, "Beam search length penalty.")
_GUIDANCE = _flag("float", "guidance", None,
                  "Classifier-free guidance gamma (needs a model trained "
                  "with uncond_prob > 0).")
_TEMPERATURE = _flag("float", "temperature", 0.0,
                     "Sampling temperature (0: greedy).")
_TOP_K = _flag("integer", "top_k", None,
               "Sampling: keep the k most likely tokens.")
_TOP_P = _flag("float", "top_p", None, "Sampling: nucleus mass.")
_SEED = _flag("integer", "seed", 0, "Sampling seed.")
_PREFIX = _flag("string", "prefix", None,
                "Text every caption starts with (greedy or sampling).")
_BATCH_SIZE = _flag("integer", "batch_size", 64,
                    "Images per decoding call.")
_LIMIT = _flag("integer", "limit", None,
               "Caption at most this many images.")


def list_images(spec, split=None, limit=None):
  """[(id, image)]: the images `spec` names, in order.

  Args:
    spec: a folder (its files with an image suffix, recursively, sorted),
      an image file, or a source spec "KIND:..." (records' "image").
    split: a tfds source's split.
    limit: at most this many (None: all).

  Returns:
    A list of (path or record index, path or encoded bytes). A source
    record is read when its image is needed (`load`).
  """
  if os.path.isdir(spec):
    found = sorted(
        os.path.join(root, name) for root, _, names in os.walk(spec)
        for name in names if name.lower().endswith(IMAGE_SUFFIXES))
    return [(p, p) for p in found[:limit]]
  if os.path.isfile(spec):
    return [(spec, spec)]
  if ":" not in spec:
    raise FileNotFoundError(f"--images={spec!r}: no such folder or file "
                            "(or give a source spec such as tfds:NAME).")
  source = sources.get(spec, split=split)
  if not hasattr(source, "__getitem__"):
    raise ValueError(f"--images={spec!r}: a streaming source; give a "
                     "random-access one (tfds:, jsonl:, csv:) or a folder.")
  n = len(source) if limit is None else min(limit, len(source))
  return [(i, _Record(source, i)) for i in range(n)]


class _Record:
  """A source record's image, read on demand."""

  def __init__(self, source, index):
    self.source, self.index = source, index

  def read(self):
    return self.source[self.index]["image"]


def _load(image):
  """Encoded bytes or a path, as `Predictor.preprocess_images` takes."""
  return image.read() if isinstance(image, _Record) else image


def caption_all(predictor, items, write, *, chunk=None, progress=True,
                **options):
  """Captions `items` chunk by chunk, writing a row per usable image.

  Args:
    predictor: a captioner's `Predictor`.
    items: `list_images`' [(id, image)].
    write: called with each row dict, in input order.
    chunk: images preprocessed at a time (default 4 batches).
    progress: show a progress bar (stderr).
    **options: `Predictor.caption_pixels` options.

  Returns:
    {"captioned": n, "skipped": n, "reasons": [(id, reason)] of the first
    skipped images (up to 10)}.
  """
  chunk = chunk or 4 * predictor.batch_size
  done, skipped, reasons, first = 0, 0, [], 0
  bar = tqdm.tqdm(total=len(items), unit="img", file=sys.stderr,
                  disable=not progress, dynamic_ncols=True)
  for start in range(0, len(items), chunk):
    ids, pixels, positions = [], [], []
    for ident, image in items[start:start + chunk]:
      try:
        one, pos = predictor.preprocess_images([_load(image)], with_pos=True)
        pixels.append(one[0])
        positions.append(None if pos is None else pos[0])  # NaFlex.
        ids.append(ident)
      except (pp_lib.CorruptRecordError, OSError, ValueError) as e:
        skipped += 1
        if len(reasons) < 10:
          reasons.append((ident, f"{type(e).__name__}: {e}"))
    if pixels:
      # `first` counts captioned images, so sampling does not depend on the
      # chunk size (only on the order of the usable images).
      naflex_pos = None if positions[0] is None else positions
      for ident, text in zip(ids, predictor.caption_pixels(
          pixels, first=first, pos=naflex_pos, **options)):
        write({"image": ident, "caption": text})
      first += len(pixels)
      done += len(pixels)
    bar.update(min(chunk, len(items) - start))
  bar.close()
  return {"captioned": done, "skipped": skipped, "reasons": reasons}


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not (_CHECKPOINT.value and _IMAGES.value):
    raise app.UsageError("--checkpoint and --images are required.")
  config_lib.setup_cli_runtime(logging.ERROR)
  predictor = predict.Predictor.load(_CHECKPOINT.value, step=_STEP.value,
                                     batch_size=_BATCH_SIZE.value)
  if not predictor.is_captioner:
    raise ValueError(f"--checkpoint={_CHECKPOINT.value} holds a "
                     f"{type(predictor.model).__name__}, not a captioner.")
  items = list_images(_IMAGES.value, _SPLIT.value, _LIMIT.value)
  if not items:
    raise FileNotFoundError(f"--images={_IMAGES.value}: no images found "
                            f"(suffixes {', '.join(IMAGE_SUFFIXES)}).")
  options = dict(beam=_BEAM.value, alpha=_ALPHA.value,
                 guidance=_GUIDANCE.value, temperature=_TEMPERATURE.value,
                 top_k=_TOP_K.value, top_p=_TOP_P.value, seed=_SEED.value,
                 prefix=_PREFIX.value)
  if _OUTPUT.value == "-":
    stats = caption_all(predictor, items,
                        lambda row: print(json.dumps(row), flush=True),
                        **options)
  else:  # Rows are written as they come: an interrupted run keeps them.
    target = storage.path(_OUTPUT.value)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w") as f:
      stats = caption_all(
          predictor, items,
          lambda row: (f.write(json.dumps(row) + "\n"), f.flush()),
          **options)
  message = (f"Captioned {stats['captioned']} images"
             + (f" into {_OUTPUT.value}" if _OUTPUT.value != "-" else "")
             + f"; skipped {stats['skipped']}.")
  for ident, reason in stats["reasons"]:
    message += f"\n  skipped {ident}: {reason}"
  sys.stderr.write(message + "\n")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(_FLAGS))
