"""Captioning: decode a split's captions and score them against its
references (CIDEr-D, BLEU-1..4; `caption_metrics`).

    config.evals.captioning = dict(
        type="captioning", data="tfds:big_vl_demo_shapes", split="test",
        pp="decode|resize(32)|value_range(-1,1)|keep('image')",
        captions_key="captions", batch_size=64, beam=1)

The images go through `pp`; their captions are decoded by
`big_vl.decode.greedy` (or `beam_search` with `beam` > 1; `guidance` for
classifier-free guidance) on the eval mesh, then detokenized; the references
are the records' `captions_key` field (a list of captions), read from the
source. Records that fail are skipped and counted like every evaluator's.

With `scorer` (a contrastive model: "self" for a CoCa run's own model, or
the path of a big_vl workdir / converted folder of a two-tower model or a
CoCa) the captions are also scored by how well they fit their images
(`clip_score`): CLIPScore and RefCLIPScore (Hessel et al. 2021) and
caption-to-image self-retrieval R@1 / R@5 among the evaluated images.

Metrics: captioning/<dataset>/cider, bleu_1 ... bleu_4, skipped; with a
scorer also clip_score, ref_clip_score, self_retrieval_r@1, _r@5 and
empty_captions (scored 0). The
evaluator keeps `captions`: (index, generated, references) of every
example, and `last`, the first `keep` of them; `write_files(folder)` writes
them as `captions.jsonl` (every example) and `captions.png` (the first
`keep` images with their generated and reference captions), which the
trainer and `big_vl.evaluate` do at the end.
"""

import collections
import io
import json
import os

import jax
import numpy as np
from PIL import Image

from big_vl import decode
from big_vl import plots
from big_vl import predict
from big_vl import storage
from big_vl import registry
from big_vl.data import locca
from big_vl.data import pp as pp_lib
from big_vl.data import sources
from big_vl.data import tokenizers
from big_vl.evaluators import caption_metrics
from big_vl.evaluators import clip_score
from big_vl.evaluators import common
from big_vl.models import captioner as captioner_lib
from big_vl.models import naflex


def _text(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@registry.register("evaluator", "captioning")
class Evaluator:
  """Captioning evaluator.

  Args:
    predict_fn: unused (the evaluator decodes with `model`).
    mesh: the Mesh the params live on.
    data: source spec, e.g. "tfds:big_vl_demo_shapes".
    split: split to evaluate (tfds; a jsonl / csv listing has none).
    pp: pp string giving "image".
    model: the captioner (`big_vl.models.captioner.Captioner`); the
      trainer and `big_vl.evaluate` pass the run's model.
    captions_key: the records' field holding the reference captions.
    batch_size: global eval batch size.
    beam: 1 for greedy decoding, K > 1 for beam search.
    alpha: beam search's length penalty exponent.
    guidance: classifier-free guidance gamma (greedy only), or None.
    tokenizer: registry tokenizer that decodes the ids ("clip_bpe").
    start_id, end_id: the decoder's first input and the end token.
    keep: examples kept in `last` (and drawn in captions.png).
    data_dir: data directory.
    name: dataset name in metric keys (default from `data`).
    scorer: None, "self" (the run's model, which must embed images and
      texts: a CoCa) or a checkpoint path (`big_vl.predict.Predictor.load`)
      of the contrastive model that scores the captions.
    scorer_pp_img, scorer_pp_txt: the scorer's pp from {"image": encoded
      bytes} / {"text": str} (default: a checkpoint's own; "self": `pp`
      and scorer_pp_txt is required).
    model_name: the run's model kind (the trainer passes it).
    prefix: what every caption starts with (greedy only): a text (e.g.
      "a photo of"), or token ids (a LocCa task token:
      `big_vl.data.locca.Layout.task_id("cap")`). Ids outside the text
      vocabulary (task and box tokens) are dropped from the captions.
  """

  FILE_STEM = "captions"  # `write_files`' default stem

  def __init__(self, predict_fn, *, mesh, data, pp, split=None, model=None,
               captions_key="captions", batch_size=64, beam=1, alpha=0.0,
               guidance=None, tokenizer="clip_bpe", start_id=49406,
               end_id=49407, keep=16, data_dir=None, name=None, scorer=None,
               scorer_pp_img=None, scorer_pp_txt=None,
               model_name="captioner", prefix=None):
    del predict_fn
    if model is None or not captioner_lib.decodes(model):
      raise ValueError("captioning: the model is not a captioner "
                       f"({type(model).__name__}); use model_name="
                       "'captioner'.")
    if beam > 1 and (guidance is not None or prefix is not None):
      raise ValueError("captioning: guidance and prefix work with greedy "
                       "decoding (beam=1) only.")
    self.model, self.mesh = model, mesh
    self.source = sources.get(data, split=split, data_dir=data_dir)
    first = next(_readable(self.source), {})  # A corrupt one is skipped.
    if captions_key not in first:
      raise ValueError(
          f"captioning: the records of {data!r} have no {captions_key!r} "
          f"field for the reference captions (fields: {sorted(first)}); "
          "set captions_key.")
    self.pp, self.captions_key = pp, captions_key
    self.batch_size, self.keep = batch_size, keep
    self.name = name or common.dataset_label(data)
    self.tokenizer = tokenizers.from_spec(tokenizer)
    ids = dict(start_id=start_id, end_id=end_id)
    if prefix is not None:
      row = (self.tokenizer.encode(prefix) if isinstance(prefix, str)
             else [int(i) for i in prefix])
      local = common.local_batch_size(batch_size, mesh)
      # The global batch's prefix: every row starts the same way.
      ids["prefix"] = np.tile(np.asarray(row, np.int32),
                              (local * jax.process_count(), 1))
    if beam > 1:
      self._decode = lambda p, b: {"tokens": decode.beam_search(
          model, p, naflex.image_input(b), beam=beam, alpha=alpha,
          **ids)[0]}
    else:
      self._decode = lambda p, b: {"tokens": decode.greedy(
          model, p, naflex.image_input(b), guidance=guidance, **ids)}
    self.last = self.captions = None
    self.scorer = None
    if scorer == "self":
      if not hasattr(model, "embed_image") or not scorer_pp_txt:
        raise ValueError(
            "captioning: scorer='self' needs a model that embeds images and "
            "texts (a CoCa) and scorer_pp_txt (its text pp).")
      self.scorer = predict.Predictor(
          model, None, pp_img=scorer_pp_img or pp, pp_txt=scorer_pp_txt,
          batch_size=batch_size, model_name=model_name)
    elif scorer:
      self.scorer = predict.Predictor.load(
          scorer, pp_img=scorer_pp_img, pp_txt=scorer_pp_txt,
          batch_size=batch_size)
    self.scorer_is_self = scorer == "self"

  def run(self, params):
    """Yields (metric_name, value) pairs."""
    prefix = f"captioning/{self.name}"
    skipped = common.Skipped()
    out = common.run_over(self.source, pp=self.pp,
                          batch_size=self.batch_size, mesh=self.mesh,
                          fn=self._decode, params=params, desc=prefix,
                          with_index=True, skipped=skipped)
    generated = [locca.text_of(self.tokenizer, row) for row in out["tokens"]]
    references = [[_text(c) for c in self.source[int(i)][self.captions_key]]
                  for i in out["index"]]
    self.captions = list(zip(out["index"].tolist(), generated, references))
    self.last = self.captions[:self.keep]
    if generated:
      yield f"{prefix}/cider", caption_metrics.cider_d(generated,
                                                       references)[0]
      for key, value in caption_metrics.bleu(generated, references).items():
        yield f"{prefix}/{key}", value
      if self.scorer is not None:
        yield from self._scores(params, out["index"], generated, references,
                                prefix)
    yield from skipped.metrics(prefix)

  def _scores(self, params, index, generated, references, prefix):
    """CLIPScore, RefCLIPScore and self-retrieval by the scorer.

    An empty generated caption (a text pp refuses it) gets a zero
    embedding: CLIP-S and RefCLIP-S 0, and its image ranked last; their
    number is `empty_captions`."""
    if self.scorer_is_self:
      self.scorer.params = params
    scorer = self.scorer
    zimg = scorer.embed_images([self.source[int(i)]["image"] for i in index])
    said = [i for i, c in enumerate(generated) if c.strip()]
    zcap = np.zeros_like(zimg)
    if said:
      zcap[said] = scorer.embed_texts([generated[i] for i in said])
    yield f"{prefix}/empty_captions", len(generated) - len(said)
    flat = [r for refs in references for r in refs]
    owner = [i for i, refs in enumerate(references) for _ in refs]
    zref = scorer.embed_texts(flat)
    yield f"{prefix}/clip_score", float(np.mean(
        clip_score.clip_scores(zimg, zcap)))
    yield f"{prefix}/ref_clip_score", float(np.mean(
        clip_score.ref_clip_scores(zimg, zcap, zref, owner)))
    for key, value in clip_score.self_retrieval(zimg, zcap).items():
      yield f"{prefix}/self_retrieval_{key}", value

  def write_files(self, folder, stem="captions"):
    """Writes the last run's captions next to the metrics.

    Args:
      folder: a local folder or URL (the run's files folder).
      stem: file name stem (`big_vl.evaluators.write_files` passes
        "captions", or "captions_<evaluator name>" when a config has
        several captioning evaluators).

    Returns:
      The paths written: `stem`.jsonl (one {"index", "caption",
      "references"} row per example, in index order) and `stem`.png (the
      first `keep` images with their captions).
    """
    if self.captions is None:
      return []
    jsonl = os.path.join(folder, f"{stem}.jsonl")
    storage.write(jsonl, "".join(
        json.dumps({"index": i, "caption": c, "references": r}) + "\n"
        for i, c, r in self.captions).encode())
    png = os.path.join(folder, f"{stem}.png")
    images = [image_array(self.source[i]["image"]) for i, _, _ in self.last]
    plots.plot_captions(images, [c for _, c, _ in self.last],
                        [r for _, _, r in self.last], png)
    return [jsonl, png]


def image_array(value):
  """uint8 [H, W, 3] of a record's image (encoded bytes or an array)."""
  if isinstance(value, (bytes, np.bytes_)):
    with Image.open(io.BytesIO(value)) as im:
      return np.asarray(im.convert("RGB"))
  return np.asarray(value)


def majority_baseline(data, split, *, captions_key="captions",
                      train_split="train", data_dir=None):
  """The caption-agnostic baseline: the most frequent training caption,
  given to every image of `split` and scored by CIDEr-D against its
  references (what a captioner that ignores its image could reach).

  Args:
    data: the source spec (`sources.get`).
    split: the evaluated split, e.g. "test[:64]".
    captions_key: the records' list of captions.
    train_split: where the most frequent caption is counted.
    data_dir: optional data folder.

  Returns:
    (caption, CIDEr-D); records that cannot be read are left out of both.
  """
  counts = collections.Counter()
  train = sources.get(data, split=train_split, data_dir=data_dir)
  for record in _readable(train):
    counts.update(_text(c) for c in np.reshape(record[captions_key], -1))
  if not counts:
    raise ValueError(f"majority_baseline: no captions in {data!r} "
                     f"{train_split}.")
  caption, _ = counts.most_common(1)[0]
  test = sources.get(data, split=split, data_dir=data_dir)
  refs = [[_text(c) for c in np.reshape(r[captions_key], -1)]
          for r in _readable(test)]
  return caption, caption_metrics.cider_d([caption] * len(refs), refs)[0]


def _readable(source):
  """The records of `source` that can be read."""
  for i in range(len(source)):
    try:
      yield source[i]
    except pp_lib.CorruptRecordError:
      continue
