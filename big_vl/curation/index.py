"""Nearest-neighbour search over unit-norm embeddings with faiss.

    index = build(vectors)                 # f32[N, D], unit rows
    sims, ids = search(index, queries, k)  # f32[Q, k], int64[Q, k]

Similarity is the inner product (the cosine of unit vectors). The index
kind is a faiss `index_factory` string: "Flat" searches exactly; "HNSW32"
(a graph, no training) and "IVF{n},Flat" (clusters, trained on the data)
search approximately and much faster on large collections. "auto" picks
"Flat" up to `EXACT_UP_TO` vectors and "HNSW32" above (`bench/dedup.py`
measures the recall of each against exact search). Missing neighbours
(fewer than k vectors, or an approximate search that found fewer) have id
-1 and similarity -inf.
"""

import os

import numpy as np

EXACT_UP_TO = 100_000
HNSW_EF_SEARCH = 128  # HNSW's search breadth: recall against speed.
IVF_NPROBE = 16       # IVF's clusters visited per query.
_CHUNK = 16384        # Queries per search call (bounds the result memory).


def choose(n, factory="auto"):
  """The factory string `factory` means for `n` vectors."""
  if factory != "auto":
    return factory
  return "Flat" if n <= EXACT_UP_TO else "HNSW32"


def build(vectors, factory="auto"):
  """A faiss inner-product index holding `vectors` (row i has id i).

  Args:
    vectors: f32[N, D].
    factory: a faiss index_factory string, or "auto" (see module doc).

  Returns:
    The faiss index (trained if its kind needs it).
  """
  import faiss  # pylint: disable=g-import-not-at-top
  vectors = np.ascontiguousarray(vectors, np.float32)
  n, d = vectors.shape
  kind = choose(n, factory)
  index = faiss.index_factory(d, kind, faiss.METRIC_INNER_PRODUCT)
  if not index.is_trained:
    if n < 40:
      raise ValueError(f"A {kind!r} index needs training vectors; {n} are "
                       "too few: use factory='Flat'.")
    index.train(vectors)
  index.add(vectors)
  _set_search_params(index, kind)
  return index


def _set_search_params(index, kind):
  import faiss  # pylint: disable=g-import-not-at-top
  params = faiss.ParameterSpace()
  if "HNSW" in kind:
    params.set_index_parameter(index, "efSearch", HNSW_EF_SEARCH)
  if "IVF" in kind:
    params.set_index_parameter(index, "nprobe", IVF_NPROBE)


def search(index, queries, k):
  """The `k` most similar indexed vectors of each query.

  Args:
    index: from `build`.
    queries: f32[Q, D].
    k: neighbours per query (at most the index size is found).

  Returns:
    (sims f32[Q, k] in decreasing order, ids int64[Q, k]); -inf / -1 where
    no neighbour was found.
  """
  queries = np.ascontiguousarray(queries, np.float32)
  sims, ids = [], []
  for start in range(0, len(queries), _CHUNK):
    s, i = index.search(queries[start:start + _CHUNK], k)
    sims.append(s)
    ids.append(i)
  if not sims:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
  sims, ids = np.concatenate(sims), np.concatenate(ids).astype(np.int64)
  sims[ids < 0] = -np.inf
  return sims, ids


def cached(folder, name, vectors, factory="auto"):
  """`build(vectors, factory)`, saved as `folder/index-{name}-{kind}.faiss`
  and read back on later calls (local folders; others build each time).

  Args:
    folder: the embed folder the vectors come from.
    name: what is indexed ("img", "txt").
    vectors: f32[N, D].
    factory: the index kind.

  Returns:
    The faiss index.
  """
  import faiss  # pylint: disable=g-import-not-at-top
  kind = choose(len(vectors), factory)
  path = os.path.join(os.fspath(folder), f"index-{name}-{kind}.faiss")
  local = "://" not in os.fspath(folder)
  if local and os.path.exists(path):
    index = faiss.read_index(path)
    if index.ntotal == len(vectors):
      _set_search_params(index, kind)
      return index
  index = build(vectors, factory)
  if local:
    tmp = f"{path}.tmp{os.getpid()}"
    faiss.write_index(index, tmp)
    os.replace(tmp, path)
  return index
