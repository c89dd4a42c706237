"""Image <-> text retrieval with several captions per image.

Image -> text R@k: an image is a hit if any of its captions is among the k
texts most similar to it. Text -> image R@k: a caption is a hit if its image
is among the k most similar images.

Config block:

    config.evals.retrieval = dict(
        type="retrieval", every=500,
        data="tfds:big_vl_demo_shapes", split="test",
        pp="decode|resize(32)|value_range(-1,1)|"
           "tokenize(max_len=32, key='captions', out='texts')|"
           "keep('image','texts')",
        batch_size=256)

Metrics: retrieval/<dataset>/img2txt_r@{1,5,10}, txt2img_r@{1,5,10}.
"""

import jax
import numpy as np

from big_vl import plots, registry
from big_vl.data import sources
from big_vl.evaluators import common


def recall_at_k(sim, text_to_image, ks=(1, 5, 10)):
  """Retrieval recalls from a similarity matrix.

  Args:
    sim: f32[N_img, N_txt] similarities.
    text_to_image: int[N_txt] index of each text's image.
    ks: cut-offs.

  Returns:
    dict "img2txt_r@k" and "txt2img_r@k" -> fraction in [0, 1].
  """
  n_img = sim.shape[0]
  # Rank of each text for each image (0 = most similar).
  order = np.argsort(-sim, axis=1)
  ranks = np.empty_like(order)
  rows = np.arange(n_img)[:, None]
  ranks[rows, order] = np.arange(sim.shape[1])[None, :]
  own = text_to_image[None, :] == np.arange(n_img)[:, None]
  best_text_rank = np.where(own, ranks, np.iinfo(ranks.dtype).max).min(axis=1)
  # Rank of each text's own image among all images.
  own_score = sim[text_to_image, np.arange(sim.shape[1])]
  image_rank = (sim > own_score[None, :]).sum(axis=0)
  out = {}
  for k in ks:
    out[f"img2txt_r@{k}"] = float((best_text_rank < k).mean())
  for k in ks:
    out[f"txt2img_r@{k}"] = float((image_rank < k).mean())
  return out


@registry.register("evaluator", "retrieval")
class Evaluator:
  """Multi-caption retrieval evaluator.

  Args:
    predict_fn: `(params, image=None, text=None) -> (zimg, ztxt, aux)`.
    mesh: the Mesh.
    data, split, data_dir: the source.
    pp: pp string producing "image" f32[H,W,3] and "texts" i32[C, L] (C
      captions per image).
    batch_size: global eval batch size (images).
    name: dataset name in metric keys.
    keep_images: keep the images of the last run for `plot_examples`.
  """

  def __init__(self, predict_fn, *, mesh, data, split, pp, batch_size=256,
               data_dir=None, name=None, keep_images=False):
    self.source = sources.get(data, split=split, data_dir=data_dir)
    self.mesh = mesh
    self.pp = pp
    self.batch_size = batch_size
    self.name = name or common.dataset_label(data)
    self.keep_images = keep_images
    self.last = None

    def fn(params, batch, keep_images):
      texts = batch["texts"]
      b, c, l = texts.shape
      zimg, ztxt, _ = predict_fn(params, image=batch["image"],
                                 text=texts.reshape(b * c, l))
      out = {"zimg": zimg, "ztxt": ztxt.reshape(b, c, -1), "texts": texts}
      if keep_images:
        out["image"] = batch["image"]
      return out

    self._fn = jax.jit(fn, static_argnums=2)

  def run(self, params):
    """Yields (metric_name, value) pairs."""
    fn = lambda p, b: self._fn(p, b, self.keep_images)
    out = common.run_over(self.source, pp=self.pp, batch_size=self.batch_size,
                          mesh=self.mesh, fn=fn, params=params)
    n, c, d = out["ztxt"].shape
    ztxt = out["ztxt"].reshape(n * c, d)
    sim = out["zimg"] @ ztxt.T
    text_to_image = np.repeat(np.arange(n), c)
    self.last = dict(out, sim=sim, text_to_image=text_to_image)
    for k, v in recall_at_k(sim, text_to_image).items():
      yield f"retrieval/{self.name}/{k}", v

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
    n, c = last["texts"].shape[:2]
    picks = rng.choice(n * c, size=min(num_queries, n * c), replace=False)
    queries, images, scores, correct = [], [], [], []
    for t in picks:
      i, j = divmod(int(t), c)
      queries.append(tokenizer.decode(last["texts"][i, j]))
      top = np.argsort(-last["sim"][:, t])[:k]
      images.append(last["image"][top])
      scores.append(last["sim"][top, t])
      correct.append(top == i)
    plots.plot_retrieval(queries, np.stack(images), np.stack(scores), path,
                         correct=np.stack(correct))
