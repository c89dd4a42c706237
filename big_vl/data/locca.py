"""LocCa's token sequences: task prompts and boxes as tokens after the text.

LocCa (Wan et al. 2024, "LocCa: Visual Pretraining with Location-aware
Captioners") trains one captioner on three tasks, each a token sequence the
decoder predicts after a task token:

* "cap" (captioning):  <cap> caption
* "aref" (automatic referring expression): <aref> box <sep> description
* "gcap" (grounded captioning): <gcap> description <sep> box

A box is 4 coordinate tokens (ymin, xmin, ymax, xmax, as TFDS's
`BBoxFeature`), each one of `num_bins` quantised positions. The decoder
predicts every token after the task token (the task token itself gets loss
weight 0: it is the prompt). At inference a prefix picks the task and, for
"aref" / "gcap", its first half: the box of a region to describe, or the
description of a region to find (referring-expression comprehension, the
`locca` evaluator).

The vocabulary (`Layout`): ids [0, text_vocab) are the text tokenizer's;
then `num_bins` coordinate ids, the 3 task ids and the separator. On the
CLIP BPE tokenizer (49,408 ids) with 64 bins the model's vocabulary is
49,408 + 64 + 4 = 49,476:

    layout = Layout(text_vocab=49408, num_bins=64)
    layout.task_id("gcap")        # 49408 + 64 + 2 = 49474
    layout.box_ids([0.25, 0.5, 0.75, 1.0])  # [49424, 49440, 49456, 49471]

The pp op `locca_tasks` writes one row per task for an image, int32[T, L]
with its loss weights f32[T, L]; `big_vl.models.captioner.Captioner`
encodes the image once and decodes every row.
"""

import dataclasses

import numpy as np

from big_vl import registry
from big_vl.data import pp as pp_lib

TASKS = ("cap", "aref", "gcap")


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where LocCa's extra tokens sit after a text vocabulary.

  Attributes:
    text_vocab: the text tokenizer's vocabulary size (CLIP BPE: 49408).
    num_bins: quantised positions per box coordinate.
  """
  text_vocab: int = 49408
  num_bins: int = 64

  def __post_init__(self):
    if self.num_bins < 2:
      raise ValueError(f"num_bins={self.num_bins}: a box coordinate needs at "
                       "least 2 bins.")

  # Ids after the bins: one per task, then the separator.
  EXTRA_IDS = len(TASKS) + 1

  @classmethod
  def of_model(cls, vocab_size, text_vocab):
    """The layout of a model with `vocab_size` ids over a `text_vocab`
    tokenizer: its bins are what the vocabulary holds beyond the text,
    tasks and separator."""
    return cls(text_vocab=text_vocab,
               num_bins=vocab_size - text_vocab - cls.EXTRA_IDS)

  @property
  def vocab_size(self):
    """The model's vocabulary: text, bins, tasks and the separator."""
    return self.text_vocab + self.num_bins + self.EXTRA_IDS

  @property
  def sep_id(self):
    return self.text_vocab + self.num_bins + len(TASKS)

  def task_id(self, task):
    """The id of a task token ("cap", "aref" or "gcap")."""
    if task not in TASKS:
      raise ValueError(f"Unknown LocCa task {task!r}; known: {TASKS}.")
    return self.text_vocab + self.num_bins + TASKS.index(task)

  def box_ids(self, box):
    """4 coordinate ids of a relative box [ymin, xmin, ymax, xmax] in [0, 1]:
    bin `floor(v * num_bins)`, clipped to the last bin."""
    box = np.asarray(box, np.float64).reshape(4)
    bins = np.clip(np.floor(box * self.num_bins), 0, self.num_bins - 1)
    return [self.text_vocab + int(b) for b in bins]

  def box_of(self, ids):
    """The box f64[4] (bin centres) of 4 coordinate ids, or None when they
    are not 4 coordinate ids or not ordered (ymin <= ymax, xmin <= xmax)."""
    ids = np.asarray(ids).reshape(-1)
    bins = ids - self.text_vocab
    if len(ids) != 4 or np.any((bins < 0) | (bins >= self.num_bins)):
      return None
    if bins[0] > bins[2] or bins[1] > bins[3]:
      return None
    return (bins + 0.5) / self.num_bins

  def is_text(self, ids):
    """bool array: which ids are text tokens."""
    ids = np.asarray(ids)
    return (ids >= 0) & (ids < self.text_vocab)


def text_of(tokenizer, ids):
  """The text of decoded ids, leaving out ids outside the tokenizer's
  vocabulary (task and box tokens)."""
  ids = np.asarray(ids).reshape(-1)
  return tokenizer.decode(ids[(ids >= 0) & (ids < tokenizer.vocab_size)])


def iou(a, b):
  """Intersection over union of two boxes [ymin, xmin, ymax, xmax]."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = h * w
  union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
           - inter)
  return float(inter / union) if union > 0 else 0.0


def sequence(layout, task, *, caption, region, box, max_len, sot_id, eot_id):
  """One task's ids and loss weights.

  Args:
    layout: the `Layout`.
    task: "cap", "aref" or "gcap".
    caption: text ids of the image's caption (for "cap").
    region: text ids of the region's description (for "aref", "gcap").
    box: the region's relative box [ymin, xmin, ymax, xmax].
    max_len: row length L; text is cut (never the box or the end token)
      to fit.
    sot_id, eot_id: the tokenizer's start and end ids.

  Returns:
    (int32[L] ids, float32[L] weights): [sot, task, ..., eot, 0...]; the
    weight of the task token is 0, of every later real token 1 (padding is
    the caption loss's own business).

  Example ("gcap", L = 12):
    [sot, <gcap>, red, circle, <sep>, y0, x0, y1, x1, eot, 0, 0]
  """
  sep = layout.sep_id
  if task == "cap":
    room = max_len - 3
    body = list(caption[:room])
  else:
    room = max_len - 3 - 5
    if room < 1:
      raise ValueError(f"max_len={max_len} leaves no room for a box task "
                       "(4 box tokens, a separator, at least one word).")
    words = list(region[:room])
    box_ids = layout.box_ids(box)
    body = (box_ids + [sep] + words if task == "aref"
            else words + [sep] + box_ids)
  ids = [sot_id, layout.task_id(task)] + body + [eot_id]
  row = np.zeros(max_len, np.int32)
  row[:len(ids)] = ids
  weights = np.zeros(max_len, np.float32)
  weights[2:len(ids)] = 1.0
  return row, weights


@registry.register("pp", "locca_tasks")
def get_locca_tasks(max_len, classes, tasks=TASKS, num_bins=64,
                    captions_key="captions", objects_key="objects",
                    out="text", weights_out="text_weights",
                    tokenizer="clip_bpe"):
  """LocCa's task rows of an example: int32[T, max_len] and their weights.

  The caption is drawn from `captions_key` (the first one without an rng,
  at evaluation) and the region from `objects_key` ({"label": [n],
  "bbox": [n, 4]}, relative [ymin, xmin, ymax, xmax]: the demo data's
  objects; drawn uniformly, the first one without an rng); a region is
  described by its class name.

  Args:
    max_len: row length.
    classes: the class names, indexed by the objects' labels.
    tasks: which tasks, in row order (a subset of `TASKS`).
    num_bins: quantised positions per coordinate (`Layout`).
    captions_key, objects_key: the example's fields.
    out, weights_out: the fields written.
    tokenizer: the text tokenizer (its vocabulary comes first).

  Raises (from the op):
    CorruptRecordError: "bad_caption" as `choice` and `tokenize`; reason
      "bad_caption" for an example without objects when a box task is
      asked for.
  """
  tok = registry.get("tokenizer", tokenizer)()
  if not hasattr(tok, "sot_id"):
    raise ValueError(f"locca_tasks: tokenizer {tokenizer!r} has no start "
                     "and end tokens (sot_id, eot_id); use clip_bpe.")
  layout = Layout(text_vocab=tok.vocab_size, num_bins=num_bins)
  unknown = [t for t in tasks if t not in TASKS]
  if unknown or not tasks:
    raise ValueError(f"locca_tasks: tasks={tasks!r}; choose from {TASKS}.")
  classes = list(classes)
  region_ids = [tok.encode(name) for name in classes]

  def op(example, rng):
    captions = pp_lib.caption_list(example[captions_key], captions_key)
    i = 0 if rng is None else int(rng.integers(len(captions)))
    caption = tok.encode(captions[i])
    label = box = None
    if any(t != "cap" for t in tasks):
      objects = example.get(objects_key) or {}
      labels = np.asarray(objects.get("label", []), np.int64).reshape(-1)
      boxes = np.asarray(objects.get("bbox", []), np.float32).reshape(-1, 4)
      if not len(labels) or len(labels) != len(boxes):
        raise pp_lib.CorruptRecordError(
            f"{objects_key!r} has no usable object for LocCa's box tasks",
            reason="bad_caption")
      j = 0 if rng is None else int(rng.integers(len(labels)))
      label, box = int(labels[j]), boxes[j]
      if not 0 <= label < len(classes):
        raise ValueError(f"locca_tasks: object label {label} has no class "
                         f"name ({len(classes)} given).")
    rows = [sequence(layout, t, caption=caption,
                     region=[] if label is None else region_ids[label],
                     box=box, max_len=max_len, sot_id=tok.sot_id,
                     eot_id=tok.eot_id) for t in tasks]
    example[out] = np.stack([r for r, _ in rows])
    example[weights_out] = np.stack([w for _, w in rows])
    return example

  return op
