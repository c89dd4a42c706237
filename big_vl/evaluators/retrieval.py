"""Image <-> text retrieval with several captions per image.

Image -> text R@k: an image is a hit if any of its captions is among the k
texts most similar to it. Text -> image R@k: a caption is a hit if its image
is among the k most similar images. Mean ranks are 1-based; an image's rank
is the best rank among its captions.

Ties are broken conservatively (and so deterministically): an item tied in
similarity with a wrong item is ranked after it. Image -> text: rank =
1 + #{wrong texts with similarity >= the image's best caption}; the image's
other captions never count against it. Text -> image: rank =
1 + #{other images with similarity >= its own image's}. A model that maps
everything to one point therefore scores chance-or-worse, never 100%.

Two kinds of data:

- a dataset whose examples hold an image and all its captions (TFDS, e.g.
  the demo set), with one pp giving "image" f32[H, W, 3] and "texts"
  i32[C, L]:

    config.evals.retrieval = dict(
        type="retrieval", every=500,
        data="tfds:big_vl_demo_shapes", split="test",
        pp="decode|resize(32)|value_range(-1,1)|"
           "tokenize(max_len=32, key='captions', out='texts')|"
           "keep('image','texts')",
        batch_size=256)

- a `jsonl:FILE` / `csv:FILE` listing (see `sources.CaptionFileSource`),
  where rows are grouped by image path: an image may have several rows (one
  caption each) and a jsonl row's caption may be a list of captions (a CSV
  cell holding a JSON list, '["a", "b"]', is read as one too). Each distinct
  image is embedded once, with `pp_img`; each caption with `pp_txt`:

    config.evals.retrieval = dict(
        type="retrieval", data="jsonl:/data/coco_val.jsonl",
        pp_img="decode|resize(224)|value_range(-1,1)|keep('image')",
        pp_txt="tokenize(max_len=77)", batch_size=256)

  Images that cannot be read are dropped with their captions; rows whose
  caption is empty, whitespace-only or null are dropped (reason
  "bad_caption"; empty entries of a list are dropped, the row only if none
  is left), and an image left without a caption is dropped.

Metrics: retrieval/<dataset>/img2txt_r@{1,5,10}, txt2img_r@{1,5,10},
img2txt_mean_rank, txt2img_mean_rank (over the records that could be used),
and retrieval/<dataset>/skipped: records left out (dataset examples, or
listing rows), with skipped/<reason> for each reason seen (see
`common.Skipped`). With a dataset's pp, an example one of whose captions is
empty is left out (`tokenize` of the list, reason "bad_caption").
"""

import collections
import csv
import json
import urllib.parse

from etils import epath
import jax
import numpy as np

from big_vl import plots, registry
from big_vl.data import pp as pp_lib
from big_vl.data import sources
from big_vl.evaluators import common
from big_vl.models import naflex


def _ranks(img_emb, txt_emb, txt_to_img, chunk):
  """0-based conservative ranks: (per image [N_img], per text [N_txt])."""
  img = np.asarray(img_emb, np.float32)
  txt = np.asarray(txt_emb, np.float32)
  t2i = np.asarray(txt_to_img, np.int64)
  n_img, n_txt = len(img), len(txt)
  img_rank = np.zeros(n_img, np.int64)
  for s in range(0, n_img, chunk):
    sim = img[s:s + chunk] @ txt.T
    own = t2i[None, :] == np.arange(s, s + len(sim))[:, None]
    best = np.where(own, sim, -np.inf).max(axis=1, initial=-np.inf)
    img_rank[s:s + chunk] = ((sim >= best[:, None]) & ~own).sum(axis=1)
  txt_rank = np.zeros(n_txt, np.int64)
  for s in range(0, n_txt, chunk):
    sim = txt[s:s + chunk] @ img.T
    own_score = sim[np.arange(len(sim)), t2i[s:s + chunk]]
    # Counts the own image too (sim >= itself), hence the -1.
    txt_rank[s:s + chunk] = (sim >= own_score[:, None]).sum(axis=1) - 1
  return img_rank, txt_rank


def recall_at_k(img_emb, txt_emb, txt_to_img, ks=(1, 5, 10), chunk=1024):
  """Retrieval recalls and mean ranks from embeddings.

  Args:
    img_emb: f32[N_img, D] image embeddings.
    txt_emb: f32[N_txt, D] text embeddings (similarity = dot product).
    txt_to_img: int[N_txt] index of each text's image.
    ks: cut-offs.
    chunk: rows of the similarity matrix computed at once (memory bound).

  Returns:
    dict of python floats: "img2txt_r@k" and "txt2img_r@k" (fractions in
    [0, 1]) for each k, "img2txt_mean_rank" and "txt2img_mean_rank"
    (1-based). Images without captions are left out of the image -> text
    numbers. Ties count against the hit (see the module docstring).
  """
  t2i = np.asarray(txt_to_img, np.int64)
  n_img = len(img_emb)
  if len(t2i) != len(txt_emb):
    raise ValueError(f"txt_to_img has {len(t2i)} entries for "
                     f"{len(txt_emb)} texts.")
  if len(t2i) and (t2i.min() < 0 or t2i.max() >= n_img):
    raise ValueError(f"txt_to_img must index the {n_img} images.")
  img_rank, txt_rank = _ranks(img_emb, txt_emb, t2i, chunk)
  img_rank = img_rank[np.bincount(t2i, minlength=n_img) > 0]
  out = {}
  for k in ks:
    out[f"img2txt_r@{k}"] = float((img_rank < k).mean())
  for k in ks:
    out[f"txt2img_r@{k}"] = float((txt_rank < k).mean())
  out["img2txt_mean_rank"] = float(img_rank.mean() + 1)
  out["txt2img_mean_rank"] = float(txt_rank.mean() + 1)
  return out


def _as_captions(value):
  """A caption cell -> list of usable captions (a list, or a JSON list
  string: empty entries dropped).

  Raises:
    pp.CorruptRecordError: reason "bad_caption" for a null, empty or
      whitespace-only cell (or a list without a usable entry).
  """
  if isinstance(value, (list, tuple)):
    return pp_lib.caption_list(value)
  if isinstance(value, str) and value.startswith("["):
    try:
      parsed = json.loads(value)
      if isinstance(parsed, list):
        return pp_lib.caption_list(parsed)
    except ValueError:
      pass
  return [pp_lib.caption_text(value, "caption")]


def read_listing(spec, source, skipped=None):
  """Groups a jsonl/csv listing's rows by image path.

  Rows without a usable caption (null, empty, whitespace-only; see
  `pp.caption_text`) are left out and counted in `skipped` by reason; an
  image with no usable row is left out.

  Args:
    spec: the "jsonl:FILE[?..]" / "csv:FILE[?sep=..]" spec.
    source: the `sources.CaptionFileSource` opened from it (for its file and
      column names).
    skipped: a `common.Skipped` for the rows left out (None: not counted).

  Returns:
    (first_rows, captions, caption_image, image_rows): row index in `source`
    of each distinct image (its first row with a usable caption; in order of
    first appearance), all captions, the image index of each caption, and
    the number of rows of each image.
  """
  kind, _, rest = spec.partition(":")
  query = rest.partition("?")[2]
  options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
  with epath.Path(source.path).open("r") as f:
    text = f.read()
  if kind == "jsonl":
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
  else:
    sep = options.get("sep", ",").replace("\\t", "\t")
    rows = list(csv.DictReader(text.splitlines(), delimiter=sep))
  groups = collections.OrderedDict()
  for i, row in enumerate(rows):
    try:
      row_captions = _as_captions(row.get(source.caption_key))
    except pp_lib.CorruptRecordError as e:
      if skipped is not None:
        skipped.add(e.reason)
      continue
    path = str(row.get(source.image_key, ""))
    _, caps, count = groups.setdefault(path, (i, [], [0]))
    caps.extend(row_captions)
    count[0] += 1
  first_rows, captions, caption_image, image_rows = [], [], [], []
  for j, (first, caps, count) in enumerate(groups.values()):
    first_rows.append(first)
    captions.extend(caps)
    caption_image.extend([j] * len(caps))
    image_rows.append(count[0])
  return (first_rows, captions, np.asarray(caption_image, np.int64),
          image_rows)



def _images(batch):
  """The image fields of a batch kept for pictures: "image", and
  "image_pos" for NaFlex patches."""
  return {k: batch[k] for k in ("image", "image" + naflex.POS_SUFFIX)
          if k in batch}

class _Rows:
  """Random-access view of some rows of a listing, images only."""

  def __init__(self, source, rows):
    self.source, self.rows = source, list(rows)

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    return {"image": self.source[self.rows[i]]["image"]}


@registry.register("evaluator", "retrieval")
class Evaluator:
  """Multi-caption retrieval evaluator.

  Args:
    predict_fn: `(params, image=None, text=None) -> (zimg, ztxt, aux)`.
    mesh: the Mesh.
    data, split, data_dir: the source; a "jsonl:"/"csv:" listing is grouped
      by image path (see the module docstring).
    pp: for a dataset of images with their captions: pp string producing
      "image" f32[H,W,3] and "texts" i32[C, L] (C captions per image) or
      i32[L] (one caption).
    pp_img, pp_txt: for a listing: pp producing "image" from a row, and pp
      tokenizing "text" (a caption string) into "text".
    batch_size: global eval batch size (images, or texts).
    name: dataset name in metric keys.
    keep_images: keep the images of the last run for `plot_examples`.
  """

  def __init__(self, predict_fn, *, mesh, data, split=None, pp=None,
               pp_img=None, pp_txt=None, batch_size=256, data_dir=None,
               name=None, keep_images=False):
    self.source = sources.get(data, split=split, data_dir=data_dir)
    self.listing = isinstance(data, str) and data.split(":")[0] in (
        "jsonl", "csv")
    if self.listing and not (pp_img and pp_txt):
      raise ValueError(f"retrieval on the listing {data!r} needs pp_img "
                       "(image) and pp_txt (tokenize 'text').")
    if not self.listing and not pp:
      raise ValueError("retrieval needs pp giving 'image' and 'texts'.")
    self.data = data
    self.predict_fn = predict_fn
    self.mesh = mesh
    self.pp, self.pp_img, self.pp_txt = pp, pp_img, pp_txt
    self.batch_size = batch_size
    self.name = name or common.dataset_label(data)
    self.keep_images = keep_images
    self.last = None

    def fn(params, batch, keep_images):
      texts = batch["texts"]
      if texts.ndim == 2:
        texts = texts[:, None]
      b, c, l = texts.shape
      zimg, ztxt, _ = predict_fn(params, image=naflex.image_input(batch),
                                 text=texts.reshape(b * c, l))
      out = {"zimg": zimg, "ztxt": ztxt.reshape(b, c, -1), "texts": texts}
      if keep_images:
        out.update(_images(batch))
      return out

    def image_fn(params, batch, keep_images):
      out = {"zimg": predict_fn(params, image=naflex.image_input(batch))[0]}
      if keep_images:
        out.update(_images(batch))
      return out

    self._fn = jax.jit(fn, static_argnums=2)
    self._image_fn = jax.jit(image_fn, static_argnums=2)
    self._text_fn = common.text_fn(predict_fn)

  def _embed_dataset(self, params, skipped):
    fn = lambda p, b: self._fn(p, b, self.keep_images)
    out = common.run_over(self.source, pp=self.pp, batch_size=self.batch_size,
                          mesh=self.mesh, fn=fn, params=params,
                          desc=f"retrieval/{self.name}", skipped=skipped)
    n, c, d = out["ztxt"].shape
    last = {"zimg": out["zimg"], "ztxt": out["ztxt"].reshape(n * c, d),
            "text_to_image": np.repeat(np.arange(n), c),
            "text_tokens": out["texts"].reshape(n * c, -1)}
    last.update(_images(out))
    return last

  def _embed_listing(self, params, skipped):
    prefix = f"retrieval/{self.name}"
    rows = common.Skipped()
    first_rows, captions, caption_image, image_rows = read_listing(
        self.data, self.source, rows)
    rows.seen = len(self.source)
    rows.warn(f"{prefix} (captions)")
    fn = lambda p, b: self._image_fn(p, b, self.keep_images)
    images = common.Skipped()
    out = common.run_over(_Rows(self.source, first_rows), pp=self.pp_img,
                          batch_size=self.batch_size, mesh=self.mesh, fn=fn,
                          params=params, with_index=True,
                          desc=f"{prefix} (images)", skipped=images)
    # A listing's records are its rows: an image that fails takes its rows.
    for j, reason in images.records:
      rows.add(reason, image_rows[j])
    skipped.merge(rows)
    # Renumber the images that could be read; drop the others' captions.
    new_index = np.full(len(first_rows), -1, np.int64)
    new_index[out["index"]] = np.arange(len(out["index"]))
    keep = new_index[caption_image] >= 0
    tokens = common.pp_tokenizer(self.pp_txt)(
        [c for c, k in zip(captions, keep) if k])
    ztxt = common.embed_tokens(tokens, batch_size=self.batch_size,
                               mesh=self.mesh, predict_fn=self.predict_fn,
                               params=params, fn=self._text_fn)
    last = {"zimg": out["zimg"], "ztxt": ztxt,
            "text_to_image": new_index[caption_image[keep]],
            "text_tokens": tokens}
    last.update(_images(out))
    return last

  def run(self, params):
    """Yields (metric_name, value) pairs."""
    skipped = common.Skipped()
    last = (self._embed_listing(params, skipped) if self.listing
            else self._embed_dataset(params, skipped))
    self.last = last
    for k, v in recall_at_k(last["zimg"], last["ztxt"],
                            last["text_to_image"]).items():
      yield f"retrieval/{self.name}/{k}", v
    yield from skipped.metrics(f"retrieval/{self.name}")

  def plot_examples(self, path, tokenizer, num_queries=6, k=5, seed=0):
    """Writes a PNG of text queries and their top-k images from the last run.

    Args:
      path: output PNG.
      tokenizer: object with `decode(ids)` to show the query text.
      num_queries: how many captions to show.
      k: images per query.
      seed: which captions (random but repeatable).
    """
    if self.last is None or "image" not in self.last:
      raise ValueError("plot_examples needs a run() with keep_images=True.")
    last = self.last
    rng = np.random.default_rng(seed)
    n_txt = len(last["ztxt"])
    picks = rng.choice(n_txt, size=min(num_queries, n_txt), replace=False)
    queries, images, scores, correct = [], [], [], []
    for t in picks:
      sim = last["zimg"] @ last["ztxt"][t]
      queries.append(tokenizer.decode(last["text_tokens"][t]))
      top = np.argsort(-sim, kind="stable")[:k]
      shown = last["image"][top]
      if "image_pos" in last:  # NaFlex patches: reassembled for the picture.
        shown = naflex.to_images(shown, last["image_pos"][top])
      images.append(shown)
      scores.append(sim[top])
      correct.append(top == last["text_to_image"][t])
    if len({im.shape for im in images}) > 1:  # NaFlex canvases differ.
      side = max(im.shape[1] for im in images)
      images = [np.pad(im, [(0, 0), (0, side - im.shape[1]),
                            (0, side - im.shape[2]), (0, 0)],
                       constant_values=im.min()) for im in images]
    plots.plot_retrieval(queries, np.stack(images), np.stack(scores), path,
                         correct=np.stack(correct))
