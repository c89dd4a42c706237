r"""Ranks candidates with a preference scorer (or any two-tower model).

    python -m big_vl.score --checkpoint=workdirs/hps_demo \
        --prompt="a red circle and a blue star" --images=a.png,b.png,c.png
    python -m big_vl.score --checkpoint=workdirs/reward_demo \
        --image=photo.png --captions="a red circle|a blue star|two shapes"

Images for one prompt (HPS v2's use: which generated image fits the prompt
best), or captions for one image (a caption reward model's use). Prints
one JSON row per candidate, best first: {"rank", "score", "image"} or
{"rank", "score", "caption"}; the score is the cosine of the image and
text embeddings (`configs/preference.py` trains a model whose scores
rank as raters do). `--images` may also be a folder (its image files,
sorted).
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

from big_vl import caption as caption_lib
from big_vl import cli
from big_vl import config as config_lib
from big_vl import predict


def rank_images(predictor, prompt, images):
  """(order, scores f32[K]): the images' scores for `prompt`, and their
  indices best first."""
  scores = predictor.embed_images(images) @ predictor.embed_texts(
      [prompt])[0]
  return np.argsort(-scores, kind="stable"), scores


def rank_captions(predictor, image, captions):
  """(order, scores f32[K]): the captions' scores for `image`, and their
  indices best first."""
  scores = predictor.embed_texts(captions) @ predictor.embed_images(
      [image])[0]
  return np.argsort(-scores, kind="stable"), scores


_FLAGS = flags.FlagValues()
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A two-tower "
                                  "workdir or converted folder.",
                                  flag_values=_FLAGS)
_PROMPT = flags.DEFINE_string("prompt", None, "The prompt the --images "
                              "were made for.", flag_values=_FLAGS)
_IMAGES = flags.DEFINE_list("images", [], "Candidate images (paths, or a "
                            "folder).", flag_values=_FLAGS)
_IMAGE = flags.DEFINE_string("image", None, "The image the --captions "
                             "describe.", flag_values=_FLAGS)
_CAPTIONS = flags.DEFINE_string("captions", None, "Candidate captions, "
                                "separated by '|'.", flag_values=_FLAGS)


def _image_list(values):
  if len(values) == 1 and os.path.isdir(values[0]):
    return [path for path, _ in caption_lib.list_images(values[0])]
  return list(values)


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  by_prompt = bool(_PROMPT.value and _IMAGES.value)
  by_image = bool(_IMAGE.value and _CAPTIONS.value)
  if not _CHECKPOINT.value or by_prompt == by_image:
    raise app.UsageError("Give --checkpoint and either --prompt with "
                         "--images or --image with --captions.")
  config_lib.setup_cli_runtime(logging.ERROR)
  predictor = predict.Predictor.load(_CHECKPOINT.value)
  if by_prompt:
    candidates = _image_list(_IMAGES.value)
    order, scores = rank_images(predictor, _PROMPT.value, candidates)
    field = "image"
  else:
    candidates = [c.strip() for c in _CAPTIONS.value.split("|")
                  if c.strip()]
    order, scores = rank_captions(predictor, _IMAGE.value, candidates)
    field = "caption"
  for rank, i in enumerate(order):
    print(json.dumps({"rank": rank, "score": round(float(scores[i]), 6),
                      field: candidates[i]}))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(_FLAGS))
