"""Preference evaluator: does the model rank K candidates as raters do?

Each record holds K candidates (images for one prompt, or captions for one
image) and the raters' scores (`ratings`, higher is better); the model's
score of a candidate is the cosine of its image and text embeddings (for
a CLIP not tuned on preferences: its CLIPScore before rescaling).

    config.evals.preference = dict(
        type="preference", data="tfds:big_vl_demo_prefs/images",
        split="test", batch_size=64,
        pp="each('decode|resize(32)|value_range(-1,1)', key='images', "
           "out='image')|tokenize(max_len=24, key='prompt', out='text')|"
           "keep('image','text','ratings','defects')")

Metrics (preference/<dataset>/...):
* pairwise_acc: over all candidate pairs with different ratings, the
  fraction the model orders as the ratings do (HPS v2's "preference
  prediction accuracy"; ties in the model's scores count half);
* choice_acc: the model's top candidate is the raters' top one;
* spearman, kendall: rank correlation of scores and ratings within a
  record (Kendall's tau-b), averaged over records;
* pairwise_acc/<defect>: pairwise accuracy over the pairs that involve a
  candidate with that defect, when the pp keeps a `defects_key` field
  (int[K], indices into `defect_names`), e.g. the held-out defect;
* skipped (and skipped/<reason>): records the pp could not use.
"""

import jax
import numpy as np

from big_vl import registry
from big_vl.data import sources
from big_vl.evaluators import common
from big_vl.losses import preference as preference_loss


def _ranks(x):
  """Average ranks (1-based; ties share their mean rank) along the last
  axis."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, axis=-1, kind="stable")
  ranks = np.empty_like(x)
  for row in np.ndindex(x.shape[:-1]):
    values = x[row]
    r = np.empty(len(values))
    r[order[row]] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
      tied = values == v
      r[tied] = r[tied].mean()
    ranks[row] = r
  return ranks


def rank_metrics(scores, ratings, defects=None, defect_names=()):
  """The module docstring's metrics of scores vs ratings, both f[N, K].

  Args:
    scores: the model's scores f[N, K].
    ratings: the raters' scores f[N, K].
    defects: optional int[N, K] defect index of each candidate.
    defect_names: names of the defect indices.

  Returns:
    {metric: float}.
  """
  scores = np.asarray(scores, np.float64)
  ratings = np.asarray(ratings, np.float64)
  k = scores.shape[1]
  i, j = np.triu_indices(k, 1)
  ds = np.sign(scores[:, i] - scores[:, j])
  dr = np.sign(ratings[:, i] - ratings[:, j])
  counted = dr != 0
  agree = np.where(ds == 0, 0.5, (ds == dr).astype(np.float64))
  out = {"pairwise_acc": float(agree[counted].mean()) if counted.any()
         else float("nan"),
         "choice_acc": float(np.mean(np.argmax(scores, 1)
                                     == np.argmax(ratings, 1)))}
  rs, rr = _ranks(scores), _ranks(ratings)
  rs -= rs.mean(1, keepdims=True)
  rr -= rr.mean(1, keepdims=True)
  denom = np.sqrt((rs ** 2).sum(1) * (rr ** 2).sum(1))
  out["spearman"] = float(np.mean(np.where(
      denom > 0, (rs * rr).sum(1) / np.where(denom > 0, denom, 1), 0.0)))
  concordant = (ds * dr).sum(1)
  n_s, n_r = (ds != 0).sum(1), (dr != 0).sum(1)
  tau_denom = np.sqrt(n_s * n_r)
  out["kendall"] = float(np.mean(np.where(
      tau_denom > 0, concordant / np.where(tau_denom > 0, tau_denom, 1),
      0.0)))
  if defects is not None:
    defects = np.asarray(defects)
    for d, name in enumerate(defect_names):
      involved = counted & ((defects[:, i] == d) | (defects[:, j] == d))
      if involved.any():
        out[f"pairwise_acc/{name}"] = float(agree[involved].mean())
  return out


@registry.register("evaluator", "preference")
class Evaluator:
  """Preference evaluator (see the module docstring).

  Args:
    predict_fn: `(params, image=None, text=None) -> (zimg, ztxt, aux)`.
    mesh: the Mesh.
    data: the source spec, e.g. "tfds:big_vl_demo_prefs/images".
    pp: pp string giving "image" and "text" (one of them with K
      candidates) and `ratings_key`.
    split: the split.
    batch_size: global eval batch size.
    ratings_key: the field of the raters' scores f[K].
    defects_key: optional field of int[K] defect indices.
    defect_names: their names (default: the source's `hidden.defects`
      names are not known to TFDS, so pass them, e.g.
      `demo_prefs.IMAGE_DEFECTS`).
    data_dir: data directory.
    name: dataset name in metric keys (default from `data`).
  """

  def __init__(self, predict_fn, *, mesh, data, pp, split="test",
               batch_size=64, ratings_key="ratings", defects_key="defects",
               defect_names=(), data_dir=None, name=None):
    self.mesh, self.data, self.split, self.pp = mesh, data, split, pp
    self.batch_size, self.data_dir = batch_size, data_dir
    self.ratings_key, self.defects_key = ratings_key, defects_key
    self.defect_names = tuple(defect_names)
    self.name = name or common.dataset_label(data)

    def fn(params, batch):
      zimg, ztxt, _ = predict_fn(params, image=batch["image"],
                                 text=batch["text"])
      out = {"scores": preference_loss.candidate_scores(zimg, ztxt),
             "ratings": batch[ratings_key]}
      if defects_key in batch:
        out["defects"] = batch[defects_key]
      return out

    self._fn = jax.jit(fn)

  def run(self, params):
    """Yields (metric_name, value) pairs."""
    prefix = f"preference/{self.name}"
    skipped = common.Skipped()
    source = sources.get(self.data, split=self.split, data_dir=self.data_dir)
    out = common.run_over(source, pp=self.pp, batch_size=self.batch_size,
                          mesh=self.mesh, fn=self._fn, params=params,
                          desc=prefix, skipped=skipped)
    metrics = rank_metrics(out["scores"], out["ratings"], out.get("defects"),
                           self.defect_names)
    for key, value in metrics.items():
      yield f"{prefix}/{key}", value
    yield from skipped.metrics(prefix)
