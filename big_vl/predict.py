"""Use a trained or converted model on your own images and texts.

    predictor = Predictor.load("workdirs/demo")          # or a converted dir
    probs = predictor.classify(["cat.jpg", pil_image],
                               ["cat", "dog"], templates=["a photo of a {}."])
    # f32[2, 2], rows sum to 1 (softmax of the model's scaled similarities)
    zimg = predictor.embed_images(images)                # f32[N, D], unit rows
    ztxt = predictor.embed_texts(["a red circle"])       # f32[1, D]

    captioner = Predictor.load("workdirs/cappa")         # a captioner run
    captioner.caption(["cat.jpg"], beam=4)               # ["a cat on a mat"]

    locca = Predictor.load("workdirs/locca")             # a LocCa run
    locca.locate(["shapes.png"], ["red circle"])         # f64[1, 4] boxes
    locca.describe(["shapes.png"], [[0.1, 0.1, 0.5, 0.5]])  # ["red circle"]

    # Nearest neighbours in a corpus embedded by `python -m big_vl.embed`:
    predictor.search("/data/noisy_emb", texts=["a red circle"], k=5)
    # [[{"row": 17, "key": "17", "score": 0.41, "caption": "...", ...}, ..]]

Images may be file paths, encoded bytes, PIL images or uint8 arrays
[H, W, 3]; they go through the model's evaluation pp (a converted model's
`preprocessing`, or a training run's zero-shot evaluator pp; a
captioner's: its captioning evaluator's pp), in fixed-size batches so that
any number of images compiles once.
"""

import io
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from big_vl import checkpoint as ckpt_lib
from big_vl import decode
from big_vl import models
from big_vl import pretrained
from big_vl.data import locca
from big_vl.data import pp as pp_lib
from big_vl.data import tokenizers
from big_vl.evaluators import common
from big_vl.evaluators import zeroshot
from big_vl.models import captioner as captioner_lib
from big_vl.models import naflex

_KEEP = re.compile(r"\|\s*(keep|drop)\([^|]*\)\s*$")


def _strip_keep(pp):
  """A pp string without trailing keep(...)/drop(...) ops."""
  while _KEEP.search(pp):
    pp = _KEEP.sub("", pp)
  return pp


def default_pp(config):
  """(pp_img, pp_txt) a checkpoint's config says its model expects.

  Args:
    config: the run config stored with the checkpoint (converted:
      "preprocessing"; trained: the first evaluator with "pp_img" and
      "pp_txt", e.g. zero-shot; a captioner: its captioning evaluator's
      "pp", with no pp_txt).

  Returns:
    (pp_img, pp_txt) strings, either None if the config names none.
  """
  prep = config.get("preprocessing", None) or {}
  if prep.get("pp_img") or prep.get("pp_txt"):
    return prep.get("pp_img"), prep.get("pp_txt")
  blocks = list((config.get("evals", None) or {}).values())
  for block in blocks:
    if block.get("pp_img") and block.get("pp_txt"):
      return _strip_keep(block["pp_img"]), _strip_keep(block["pp_txt"])
  for block in blocks:
    if block.get("type") == "captioning" and block.get("pp"):
      return _strip_keep(block["pp"]), None
  return None, None


def caption_options(config):
  """The tokenizer, start / end ids and prefix of a run's captioning
  evaluator (defaults: CLIP BPE's, no prefix), for `Predictor.caption`.
  A prefix of token ids (LocCa's "<cap>" task token) starts every caption
  the Predictor writes."""
  options = {"tokenizer": "clip_bpe", "start_id": 49406, "end_id": 49407,
             "prefix": None}
  # A converted captioner's (big_vision CapPa: SentencePiece, 0 and 1).
  converted = (config.get("preprocessing", None) or {}).get("caption", None)
  options.update({k: converted[k] for k in options
                  if converted and k in converted})
  for block in (config.get("evals", None) or {}).values():
    if block.get("type") == "captioning":
      options.update({k: block[k] for k in options if k in block})
      break
  if isinstance(options["prefix"], str):  # A text prefix is the caller's.
    options["prefix"] = None
  return options


def _encoded(image):
  """Image bytes for the pp's `decode` from a path, bytes, PIL or array."""
  if isinstance(image, bytes):
    return image
  if isinstance(image, (str, os.PathLike)):
    with open(image, "rb") as f:
      return f.read()
  if isinstance(image, np.ndarray):
    image = Image.fromarray(np.asarray(image, np.uint8))
  if isinstance(image, Image.Image):
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
  raise TypeError(f"Unsupported image type {type(image).__name__}: give a "
                  "path, bytes, a PIL image or a uint8 array.")


class Predictor:
  """A model with its preprocessing: a two-tower model for embedding and
  zero-shot, a captioner for captions (CoCa: both).

  Args:
    model: the linen model.
    params: its params (numpy or jax arrays).
    pp_img: pp string from {"image": encoded bytes} to {"image": f32[H,W,3]}.
    pp_txt: pp string from {"text": str} to {"text": i32[L]} (two-tower
      models; None for a captioner).
    batch_size: images / texts per compiled call.
    caption_options: a captioner's {"tokenizer", "start_id", "end_id"}
      (default: CLIP BPE's).
    model_name: the registered model kind (its outputs function embeds:
      "two_towers", "coca").
  """

  def __init__(self, model, params, *, pp_img, pp_txt=None, batch_size=64,
               caption_options=None, model_name="two_towers"):
    self.model, self.params = model, params
    self.pp_img, self.pp_txt = pp_img, pp_txt
    self.batch_size = batch_size
    self.caption_options = {"tokenizer": "clip_bpe", "start_id": 49406,
                            "end_id": 49407, "prefix": None,
                            **(caption_options or {})}
    self.is_captioner = captioner_lib.decodes(model)
    self._img_fn = pp_lib.build(pp_img)
    self._txt_fn = None if pp_txt is None else pp_lib.build(pp_txt)
    outputs = lambda p, batch: models.outputs_fn(model_name)(
        model, {"params": p}, batch, train=False)
    self._embed_img = jax.jit(lambda p, x, *pos: outputs(
        p, {"image": x, **dict(zip(["image" + naflex.POS_SUFFIX], pos))}
    )["zimg"])
    self._embed_txt = jax.jit(lambda p, x: outputs(p, {"text": x})["ztxt"])
    self._aux = jax.jit(lambda p, x: outputs(p, {"text": x}))
    self._sharding = None
    self._tables = {}  # search(): the last embed folder loaded.

  def shard_over(self, devices):
    """Splits each batch over `devices` (data parallel; e.g. a host's
    `jax.local_devices()`), when `batch_size` divides evenly over them;
    one device (or an uneven split): the default placement."""
    devices = list(devices)
    if len(devices) > 1 and self.batch_size % len(devices) == 0:
      mesh = jax.sharding.Mesh(np.array(devices), ("data",))
      self._sharding = jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec("data"))
    else:
      self._sharding = None

  @classmethod
  def load(cls, path, *, step=None, pp_img=None, pp_txt=None, batch_size=64):
    """A Predictor from a training workdir or a converted checkpoint.

    Args:
      path: workdir, converted folder, or either's `checkpoints/`.
      step: checkpoint step (None: the latest).
      pp_img, pp_txt: override the preprocessing the checkpoint names.
      batch_size: images / texts per compiled call.

    Returns:
      A Predictor.

    Raises:
      ValueError: if neither the arguments nor the checkpoint give a pp.
    """
    model_config, params = pretrained.load(path, step)
    ckpt_dir = ckpt_lib.checkpoint_dir(path)
    latest, _ = ckpt_lib.latest_step(ckpt_dir)
    config = ckpt_lib.run_config(ckpt_dir, ckpt_lib.read_meta(
        ckpt_dir, latest if step is None else step))
    default_img, default_txt = default_pp(config)
    pp_img, pp_txt = pp_img or default_img, pp_txt or default_txt
    model = models.get(model_config)
    captioner = captioner_lib.decodes(model)
    if not pp_img or not (pp_txt or captioner):
      raise ValueError(f"The checkpoint in {path} names no evaluation "
                       "preprocessing; pass pp_img="
                       + ("" if captioner else " and pp_txt=") + ".")
    return cls(model, params, pp_img=pp_img, pp_txt=pp_txt,
               batch_size=batch_size,
               caption_options=caption_options(config) if captioner
               else None, model_name=model_config.get("name", "two_towers"))

  def _batched(self, fn, rows, *columns):
    """fn(params, rows, *columns) in fixed-size batches (the last one padded
    with zeros); `columns` are further per-row arrays."""
    out = []
    for start in range(0, len(rows), self.batch_size):
      chunks = [np.stack(c[start:start + self.batch_size])
                for c in (rows, *columns)]
      n = len(chunks[0])
      chunks = [np.concatenate([c, np.zeros((self.batch_size - n,
                                             *c.shape[1:]), c.dtype)])
                for c in chunks]
      if self._sharding is not None:
        chunks = [jax.device_put(c, self._sharding) for c in chunks]
      out.append(np.asarray(fn(self.params, *chunks))[:n])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  def preprocess_images(self, images, with_pos=False):
    """f32[N, H, W, 3] model inputs of `images` (paths, bytes, PIL, arrays).

    With a NaFlex pp (the `naflex` op) they are patches f32[N, M, ph, pw,
    3]; `with_pos=True` then returns (patches, int32[N, M, 2] positions),
    and (images, None) for other pps.
    """
    examples = [self._img_fn({"image": _encoded(x)}) for x in images]
    pixels = np.stack([e["image"] for e in examples])
    if not with_pos:
      return pixels
    key = "image" + naflex.POS_SUFFIX
    return pixels, (np.stack([e[key] for e in examples]) if examples
                    and key in examples[0] else None)

  def embed_images(self, images):
    """f32[N, D] unit-norm image embeddings."""
    pixels, pos = self.preprocess_images(images, with_pos=True)
    return self.embed_pixels(list(pixels), pos)

  def embed_pixels(self, pixels, pos=None):
    """f32[N, D] unit-norm embeddings of preprocessed images (a list of
    `preprocess_images` rows; NaFlex: with their positions `pos`)."""
    return self._batched(self._embed_img, list(pixels), *_columns(pos))

  def tokenize(self, texts):
    """i32[N, L] token ids of `texts` with the model's text pp."""
    if self._txt_fn is None:
      raise ValueError("This Predictor has no text pp (pp_txt): a "
                       f"{type(self.model).__name__} does not embed texts.")
    return np.stack([np.asarray(self._txt_fn({"text": t})["text"], np.int32)
                     for t in texts])

  def embed_tokens(self, tokens):
    """f32[N, D] unit-norm text embeddings of token ids i32[N, L]."""
    return self._batched(self._embed_txt, list(np.asarray(tokens, np.int32)))

  def embed_texts(self, texts):
    """f32[N, D] unit-norm text embeddings."""
    return self.embed_tokens(self.tokenize(texts))

  def search(self, embeddings, *, texts=None, images=None, k=8,
             target="img", factory="auto"):
    """The `k` rows of an embedded corpus nearest each query.

    Args:
      embeddings: a `big_vl.embed` folder or its `curation.shards.load`
        table,
        embedded with this model.
      texts: text queries; images: image queries (paths, bytes, PIL,
        arrays); the results list the text queries first.
      k: results per query.
      target: search the corpus's "img" or "txt" embeddings.
      factory: the faiss index kind (`curation.index`; cached in the
        folder).

    Returns:
      Per query, up to k dicts {"row", "key", "score", "caption",
      "component", "index"}, best first.
    """
    from big_vl.curation import index as index_lib  # pylint: disable=g-import-not-at-top
    from big_vl.curation import shards  # pylint: disable=g-import-not-at-top
    if isinstance(embeddings, shards.Table):
      table, folder = embeddings, embeddings.folder
    else:
      folder = embeddings
      table = self._tables.get(folder) or shards.load(folder)
      self._tables = {folder: table}
    vectors = table.img if target == "img" else table.txt
    if vectors is None:
      raise ValueError(f"The corpus has no {target!r} embeddings.")
    index = (index_lib.cached(folder, target, vectors, factory)
             if folder is not None else index_lib.build(vectors, factory))
    queries = []
    if texts:
      queries.append(self.embed_texts(list(texts)))
    if images:
      queries.append(self.embed_images(list(images)))
    if not queries:
      return []
    sims, ids = index_lib.search(index, np.concatenate(queries), k)
    return [[{"row": int(i), "key": table.keys[i], "score": float(s),
              "caption": table.captions[i],
              "component": int(table.component[i]),
              "index": int(table.index[i])}
             for s, i in zip(row_s, row_i) if i >= 0]
            for row_s, row_i in zip(sims, ids)]

  def temperature(self):
    """The model's learned logit scale (exp of its log temperature)."""
    tokens = jnp.zeros((1, *self.tokenize(["a"]).shape[1:]), jnp.int32)
    return float(self._aux(self.params, tokens)["t"])

  def classify(self, images, classnames, templates=("a photo of a {}.",)):
    """Zero-shot class probabilities of `images` over `classnames`.

    Args:
      images: paths, bytes, PIL images or uint8 arrays.
      classnames: C class names.
      templates: prompt templates, each with one "{}" (their embeddings are
        averaged per class).

    Returns:
      f32[N, C]: softmax over classes of the model's temperature times the
      cosine similarity to each class's prompt-ensemble embedding.
    """
    weights = zeroshot.classifier(self.embed_tokens, self.tokenize,
                                  classnames, templates)
    logits = self.temperature() * common.l2_normalize(
        self.embed_images(images)) @ weights
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)

  def caption(self, images, **options):
    """Captions of `images` (paths, bytes, PIL images or uint8 arrays) by a
    captioner: `caption_pixels` of their preprocessed pixels.

    Returns:
      A list of N caption strings.
    """
    pixels, pos = self.preprocess_images(images, with_pos=True)
    return self.caption_pixels(pixels, pos=pos, **options)

  def caption_pixels(self, pixels, *, beam=1, alpha=0.0, guidance=None,
                     temperature=0.0, top_k=None, top_p=None, seed=0,
                     first=0, prefix=None, pos=None):
    """Captions of preprocessed images by a captioner.

    Args:
      pixels: f32[N, H, W, 3] (`preprocess_images`' output), or NaFlex
        patches f32[N, M, ph, pw, 3] with their `pos`.
      beam: 1: greedy (or sampled, with `temperature` > 0); K > 1: beam
        search with K hypotheses (`big_vl.decode.beam_search`).
      alpha: beam search's length penalty exponent.
      guidance: classifier-free guidance gamma (greedy or sampling), or
        None.
      temperature, top_k, top_p: sampling (`big_vl.decode.sample`);
        temperature 0 is greedy.
      seed: the sampling seed; the batch starting at image i draws with
        `fold_in(PRNGKey(seed), first + i)`.
      first: the position of `pixels[0]` in a longer stream captioned in
        chunks (a multiple of `batch_size`), so that the chunks draw what
        one call would.
      prefix: optional text every caption starts with (e.g. "a photo
        of"); decoding continues after it (greedy or sampling).
      pos: int32[N, M, 2] NaFlex patch positions (`preprocess_images(...,
        with_pos=True)`), or None for images.

    Returns:
      A list of N caption strings.
    """
    if not self.is_captioner:
      raise ValueError(f"caption() needs a captioner; this model is a "
                       f"{type(self.model).__name__}.")
    options = self.caption_options
    if beam > 1 and (guidance is not None or temperature > 0 or prefix
                     or options["prefix"]):
      raise ValueError(
          "beam search takes neither guidance, temperature nor a prefix "
          "(use beam=1 for those)" + (
              "; this model's captions start with a task prompt "
              f"{list(options['prefix'])}." if options["prefix"] else "."))
    tokenizer = tokenizers.from_spec(options["tokenizer"])
    ids = {"start_id": options["start_id"], "end_id": options["end_id"]}
    start = list(options["prefix"] or []) + (
        tokenizer.encode(prefix) if prefix else [])
    if start:
      ids["prefix"] = np.tile(np.asarray(start, np.int32),
                              (self.batch_size, 1))
    model, starts = self.model, iter(range(first, first + len(pixels),
                                           self.batch_size))

    def run(params, image, *pos):
      image = _tower_input(image, pos)
      if beam > 1:
        return decode.beam_search(model, params, image, beam=beam,
                                  alpha=alpha, **ids)[0]
      if temperature > 0:
        key = jax.random.fold_in(jax.random.PRNGKey(seed), next(starts))
        return decode.sample(model, params, image, key,
                             temperature=temperature, top_k=top_k,
                             top_p=top_p, guidance=guidance, **ids)
      return decode.greedy(model, params, image, guidance=guidance, **ids)

    tokens = self._batched(run, list(pixels), *_columns(pos))
    return [locca.text_of(tokenizer, row) for row in tokens]

  def _locca(self):
    """(layout, tokenizer) of a LocCa model: its box bins are what its
    vocabulary holds beyond the tokenizer's, tasks and separator."""
    tokenizer = tokenizers.from_spec(self.caption_options["tokenizer"])
    vocab = getattr(self.model, "vocab_size", 0)
    bins = vocab - tokenizer.vocab_size - locca.Layout.EXTRA_IDS
    if not self.is_captioner or bins < 2:
      raise ValueError(
          f"{type(self.model).__name__} with vocab_size "
          f"{getattr(self.model, 'vocab_size', None)} is not a LocCa "
          "captioner (its vocabulary would hold the text tokenizer's "
          f"{tokenizer.vocab_size} ids, box bins, 3 tasks and a separator).")
    return locca.Layout.of_model(vocab, tokenizer.vocab_size), tokenizer

  def _complete(self, images, prompts):
    """Greedy continuations of per-image prompts (lists of ids after the
    start token) on `images`: int32[N, L - 1]."""
    pixels, pos = self.preprocess_images(images, with_pos=True)
    width = max(len(p) for p in prompts)
    prefix = np.full((len(prompts), width), -1, np.int32)
    for i, p in enumerate(prompts):
      prefix[i, :len(p)] = p
    ends = {"start_id": self.caption_options["start_id"],
            "end_id": self.caption_options["end_id"]}
    run = lambda params, image, rows, *pos: decode.greedy(
        self.model, params, _tower_input(image, pos), prefix=rows, **ends)
    return self._batched(run, list(pixels), list(prefix), *_columns(pos))

  def locate(self, images, descriptions):
    """Where each description is in its image, by a LocCa model
    (`configs/locca.py`): grounded captioning forced with the description
    ("<gcap> description <sep>"), then the decoded box.

    Args:
      images: N images (paths, bytes, PIL images or uint8 arrays).
      descriptions: N texts, e.g. "red circle".

    Returns:
      f64[N, 4] relative boxes [ymin, xmin, ymax, xmax] (bin centres); a
      row of NaN where the decoder wrote no box.
    """
    layout, tokenizer = self._locca()
    prompts = [[layout.task_id("gcap"), *tokenizer.encode(d), layout.sep_id]
               for d in descriptions]
    tokens = self._complete(images, prompts)
    boxes = np.full((len(prompts), 4), np.nan)
    for i, (p, row) in enumerate(zip(prompts, tokens)):
      box = layout.box_of(row[len(p):len(p) + 4])
      if box is not None:
        boxes[i] = box
    return boxes

  def describe(self, images, boxes):
    """What is in each box of its image, by a LocCa model: automatic
    referring expression forced with the box ("<aref> box <sep>"), then the
    decoded description.

    Args:
      images: N images.
      boxes: N relative boxes [ymin, xmin, ymax, xmax] in [0, 1].

    Returns:
      N description strings.
    """
    layout, tokenizer = self._locca()
    prompts = [[layout.task_id("aref"), *layout.box_ids(b), layout.sep_id]
               for b in boxes]
    tokens = self._complete(images, prompts)
    return [locca.text_of(tokenizer, row[len(p):])
            for p, row in zip(prompts, tokens)]


def _tower_input(image, pos):
  """The image tower's input from a batch of pixels and the optional
  NaFlex positions column (`_batched`'s extra column)."""
  if not pos:
    return image
  return naflex.image_input({"image": image, "image" + naflex.POS_SUFFIX:
                             pos[0]})


def _columns(pos):
  """`_batched`'s extra columns for optional NaFlex positions."""
  return [] if pos is None else [list(pos)]
