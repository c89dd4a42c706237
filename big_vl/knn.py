r"""Searches an embedded corpus with text or image queries.

    python -m big_vl.knn --index=/tmp/noisy_emb --query="a red circle" \
        --query="two shapes: a blue square and a star" --k=8 \
        --out=/tmp/knn.png
    python -m big_vl.knn --index=/tmp/noisy_emb --image=photo.png

`--index` is a `python -m big_vl.embed` folder; the queries are embedded
with the model that embedded it (its manifest's checkpoint, or
`--checkpoint`). Prints one JSON row per result: {"query", "rank", "score",
"key", "caption", "component", "index"}; `--out` draws the queries with
their top results (images read back from the corpus's source). The faiss
index is built on first use and kept in the folder (`--index_kind`).
"""

import io
import json
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image

from big_vl import cli
from big_vl import config as config_lib
from big_vl import plots
from big_vl import predict
from big_vl.curation import shards

_FLAGS = flags.FlagValues()
_INDEX = flags.DEFINE_string("index", None, "An embed folder.",
                             flag_values=_FLAGS)
_QUERY = flags.DEFINE_multi_string("query", [], "A text query.",
                                   flag_values=_FLAGS)
_IMAGE = flags.DEFINE_multi_string("image", [], "An image query (path).",
                                   flag_values=_FLAGS)
_K = flags.DEFINE_integer("k", 8, "Results per query.", flag_values=_FLAGS)
_TARGET = flags.DEFINE_enum("target", "img", ("img", "txt"), "Search the "
                            "corpus's images or captions.",
                            flag_values=_FLAGS)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The model (default: "
                                  "the embed run's).", flag_values=_FLAGS)
_OUT = flags.DEFINE_string("out", None, "A PNG of the results.",
                           flag_values=_FLAGS)
_INDEX_KIND = flags.DEFINE_string("index_kind", "auto", "faiss index kind.",
                                  flag_values=_FLAGS)
_THUMB = 96  # Pixels of a result's thumbnail in --out.


def thumbnails(table, results, size=_THUMB):
  """uint8[Q, K, size, size, 3] of the results' images (grey if one no
  longer reads), read back from the corpus's source."""
  rows = sorted({r["row"] for per_query in results for r in per_query})
  images = {}
  for row, record in shards.records_of(table, rows):
    try:
      image = Image.open(io.BytesIO(record["image"])).convert("RGB")
      images[row] = np.asarray(image.resize((size, size)))
    except (TypeError, KeyError, OSError, ValueError):
      pass
  grey = np.full((size, size, 3), 128, np.uint8)
  k = max((len(r) for r in results), default=0)
  return np.stack([np.stack([images.get(r["row"], grey) for r in per_query]
                            + [grey] * (k - len(per_query)))
                   for per_query in results])


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _INDEX.value or not (_QUERY.value or _IMAGE.value):
    raise app.UsageError("--index and a --query or --image are required.")
  config_lib.setup_cli_runtime(logging.ERROR)
  table = shards.load(_INDEX.value)
  checkpoint = _CHECKPOINT.value or table.manifest["checkpoint"]
  predictor = predict.Predictor.load(
      checkpoint, pp_img=table.manifest.get("pp_img"),
      pp_txt=table.manifest.get("pp_txt"))
  results = predictor.search(table, texts=_QUERY.value,
                             images=_IMAGE.value, k=_K.value,
                             target=_TARGET.value, factory=_INDEX_KIND.value)
  queries = list(_QUERY.value) + list(_IMAGE.value)
  for query, per_query in zip(queries, results):
    for rank, r in enumerate(per_query):
      print(json.dumps({"query": query, "rank": rank, "score": round(
          r["score"], 5), "key": r["key"], "caption": r["caption"],
                        "component": r["component"], "index": r["index"]}))
  if _OUT.value:
    plots.plot_retrieval(queries, thumbnails(table, results),
                         [[r["score"] for r in q] for q in results],
                         _OUT.value)
    sys.stderr.write(f"wrote {_OUT.value}\n")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(_FLAGS))
