"""LocCa's localisation evaluation: referring-expression comprehension
(description -> box) and region captioning (box -> description).

    config.evals.locca = dict(
        type="locca", data="tfds:big_vl_demo_shapes", split="test",
        pp="decode|resize(32)|value_range(-1, 1)|locca_tasks(24, "
           "classes=NAMES, tasks=('aref', 'gcap'))|keep('image', 'text')",
        batch_size=64)

Every object of every image is one query (`all_objects=False`: the main
one only): the image and its object's task rows, made by the same pp op
as training (`big_vl.data.locca.get_locca_tasks`, which takes the first
object at evaluation; this evaluator shows it one object at a time). A
"gcap" row is forced up to its separator (task token and the object's
description) and the decoder writes the box: a hit when its IoU with the
object's true box is >= `iou_threshold` (0.5, RefCOCO's rule). An "aref"
row is forced up to its separator (the box) and the decoder writes the
description: a hit when it equals the true one token for token.

Metrics: locca/<dataset>/grounding_acc (IoU >= threshold),
grounding_acc_first and grounding_acc_others (the records' first object,
the demo data's largest, and the rest: a model that boxes the most salient
object whatever the description scores on the first only), grounding_miou, grounding_invalid (decoded tokens that are not a box),
region_caption_acc, queries, skipped. `write_files` writes `locca.jsonl`
(one row per query) and `locca.png` (the first `keep` queries: true box
green, decoded box red).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from big_vl import decode
from big_vl import plots
from big_vl import registry
from big_vl import storage
from big_vl.data import locca
from big_vl.data import pp as pp_lib
from big_vl.data import tokenizers
from big_vl.data import sources
from big_vl.evaluators import captioning
from big_vl.evaluators import common
from big_vl.models import captioner as captioner_lib
from big_vl.models import naflex


class _OneObject:
  """A source with one record per (image, object): the object is the only
  entry of the record's `objects`. A record that cannot be read stays one
  entry, so that reading it again fails where `run_over` skips and counts
  it."""

  def __init__(self, source, key, all_objects, what="the source"):
    self.source, self.key = source, key
    self.pairs = []
    for i in range(len(source)):
      try:
        record = source[i]
      except pp_lib.CorruptRecordError:
        self.pairs.append((i, 0))
        continue
      if key not in record:
        raise ValueError(f"locca: the records of {what!r} have no {key!r} "
                         f"field (fields: {sorted(record)}); set "
                         "objects_key.")
      count = len(np.reshape(record[key]["label"], -1))
      self.pairs += [(i, k) for k in range(count if all_objects else
                                           min(count, 1))]

  def __len__(self):
    return len(self.pairs)

  def __getitem__(self, q):
    i, k = self.pairs[q]
    record = dict(self.source[i])
    objects = record[self.key]
    record[self.key] = {"label": np.reshape(objects["label"], -1)[k:k + 1],
                        "bbox": np.reshape(objects["bbox"], (-1, 4))[k:k + 1]}
    return record


def prefixes(text, sep_id):
  """Each row's decoding prefix: its tokens after the start token up to and
  including its first separator (-1 after); a row without a separator is
  forced through its task token only.

  Args:
    text: int[R, L] task rows (`locca.sequence`).
    sep_id: the separator's id.

  Returns:
    int32[R, L - 1], for `decode.greedy(prefix=...)`.
  """
  body = text[:, 1:]
  is_sep = body == sep_id
  last = jnp.where(is_sep.any(axis=1), jnp.argmax(is_sep, axis=1), 0)
  keep = jnp.arange(body.shape[1])[None, :] <= last[:, None]
  return jnp.where(keep, body, -1).astype(jnp.int32)


def _after_sep(row, sep_id, end_id):
  """The ids of a token row after its first separator, up to the end id."""
  row = [int(t) for t in row]
  if sep_id not in row:
    return []
  rest = row[row.index(sep_id) + 1:]
  return rest[:rest.index(end_id)] if end_id in rest else rest


def score_query(layout, tokenizer, text, tokens, box):
  """One query's outcome from its task rows and their decoded tokens.

  Args:
    layout: the `locca.Layout`.
    tokenizer: the text tokenizer (CLIP BPE).
    text: int[T, L] the query's task rows (the ground truth).
    tokens: int[T, L - 1] what the decoder wrote after the start token
      (each row's prefix included).
    box: the object's true relative box [ymin, xmin, ymax, xmax].

  Returns:
    {"box", "description"; for a "gcap" row "predicted_box" (None when the
    decoded tokens are not a box) and "iou"; for an "aref" row
    "predicted_description" and "description_hit" (token for token)}.
  """
  sep, end = layout.sep_id, tokenizer.eot_id
  words = lambda ids: locca.text_of(tokenizer, ids)
  row = {"box": [float(v) for v in np.reshape(box, 4)]}
  for t in range(len(text)):
    truth = _after_sep(text[t], sep, end)
    said = _after_sep(tokens[t], sep, end)
    task = int(text[t][1])
    if task == layout.task_id("gcap"):
      body = [int(v) for v in text[t][2:]]
      row["description"] = words(body[:body.index(sep)] if sep in body
                                 else body)
      found = layout.box_of(said)
      row["predicted_box"] = None if found is None else found.tolist()
      row["iou"] = 0.0 if found is None else locca.iou(found, row["box"])
    elif task == layout.task_id("aref"):
      row["description"] = words(truth)
      row["predicted_description"] = words(said)
      row["description_hit"] = said == truth
  return row


@registry.register("evaluator", "locca")
class Evaluator:
  """LocCa localisation evaluator.

  Args:
    predict_fn: unused (the evaluator decodes with `model`).
    mesh: the Mesh the params live on.
    data: source spec whose records have `objects_key`.
    split: split to evaluate.
    pp: pp string giving "image" and "text" ([T, L] task rows, with
      `locca_tasks`, among them "aref" and / or "gcap").
    model: the captioner (the trainer passes it).
    num_bins: the coordinate bins of the pp op (`locca.Layout`).
    batch_size: global eval batch size (queries).
    objects_key: the records' objects field ({"label", "bbox"}).
    all_objects: every object is a query (False: the first only).
    iou_threshold: a grounding hit's minimum IoU.
    tokenizer: the text tokenizer ("clip_bpe").
    keep: queries drawn in locca.png.
    data_dir: data directory.
    name: dataset name in metric keys (default from `data`).
  """

  FILE_STEM = "locca"

  def __init__(self, predict_fn, *, mesh, data, split, pp, model=None,
               num_bins=64, batch_size=64, objects_key="objects",
               all_objects=True, iou_threshold=0.5, tokenizer="clip_bpe",
               keep=16, data_dir=None, name=None):
    del predict_fn
    if model is None or not captioner_lib.decodes(model):
      raise ValueError("locca: the model is not a captioner "
                       f"({type(model).__name__}).")
    source = sources.get(data, split=split, data_dir=data_dir)
    self.source = _OneObject(source, objects_key, all_objects, what=data)
    self.model, self.mesh, self.pp = model, mesh, pp
    self.batch_size, self.keep = batch_size, keep
    self.objects_key, self.threshold = objects_key, iou_threshold
    self.name = name or common.dataset_label(data)
    self.tokenizer = tokenizers.from_spec(tokenizer)
    self.layout = locca.Layout(text_vocab=self.tokenizer.vocab_size,
                               num_bins=num_bins)
    if model.vocab_size != self.layout.vocab_size:
      raise ValueError(
          f"locca: the model's vocab_size is {model.vocab_size}; the "
          f"tokenizer's {self.layout.text_vocab} ids plus {num_bins} bins, "
          f"3 tasks and a separator make {self.layout.vocab_size}.")
    self.queries = None
    ends = dict(start_id=self.tokenizer.sot_id, end_id=self.tokenizer.eot_id)
    sep = self.layout.sep_id

    def run(params, batch):
      text = batch["text"]
      rows = text.shape[1]
      flat = text.reshape(-1, text.shape[-1])
      image = jax.tree.map(lambda x: jnp.repeat(x, rows, axis=0),
                           naflex.image_input(batch))
      tokens = decode.greedy(model, params, image,
                             prefix=prefixes(flat, sep), **ends)
      return {"tokens": tokens.reshape(text.shape[0], rows, -1),
              "text": text}

    self._decode = run

  def run(self, params):
    """Yields (metric_name, value) pairs."""
    prefix = f"locca/{self.name}"
    skipped = common.Skipped()
    out = common.run_over(self.source, pp=self.pp,
                          batch_size=self.batch_size, mesh=self.mesh,
                          fn=self._decode, params=params, desc=prefix,
                          with_index=True, skipped=skipped)
    self.queries = []
    for q, text, tokens in zip(out["index"], out["text"], out["tokens"]):
      i, k = self.source.pairs[int(q)]
      box = np.reshape(self.source.source[i][self.objects_key]["bbox"],
                       (-1, 4))[k]
      self.queries.append({"index": i, "object": k, **score_query(
          self.layout, self.tokenizer, text, tokens, box)})
    yield f"{prefix}/queries", len(self.queries)
    grounded = [r for r in self.queries if "iou" in r]
    if grounded:
      ious = np.array([r["iou"] for r in grounded])
      hits = ious >= self.threshold
      yield f"{prefix}/grounding_acc", float(np.mean(hits))
      # The first object (the demo data's main, largest one) and the others:
      # a model that ignores the description and boxes the most salient
      # object scores on the first only.
      main = np.array([r["object"] == 0 for r in grounded])
      if main.any() and not main.all():
        yield f"{prefix}/grounding_acc_first", float(np.mean(hits[main]))
        yield f"{prefix}/grounding_acc_others", float(np.mean(hits[~main]))
      yield f"{prefix}/grounding_miou", float(np.mean(ious))
      yield f"{prefix}/grounding_invalid", float(np.mean(
          [r["predicted_box"] is None for r in grounded]))
    described = [r for r in self.queries if "description_hit" in r]
    if described:
      yield f"{prefix}/region_caption_acc", float(np.mean(
          [r["description_hit"] for r in described]))
    yield from skipped.metrics(prefix)

  def write_files(self, folder, stem="locca"):
    """Writes the last run's queries: `stem`.jsonl (every query) and
    `stem`.png (the first `keep`: true box green, decoded box red).

    Returns:
      The paths written.
    """
    if self.queries is None:
      return []
    jsonl = os.path.join(folder, f"{stem}.jsonl")
    storage.write(jsonl, "".join(json.dumps(r) + "\n"
                                 for r in self.queries).encode())
    png = os.path.join(folder, f"{stem}.png")
    shown = self.queries[:self.keep]
    images = [captioning.image_array(self.source.source[r["index"]]["image"])
              for r in shown]
    titles = [f"{r.get('description', '')} (IoU {r['iou']:.2f})"
              if "iou" in r else r.get("description", "") for r in shown]
    plots.plot_boxes(images, titles, [r["box"] for r in shown],
                     [r.get("predicted_box") for r in shown], png)
    return [jsonl, png]

