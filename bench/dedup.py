r"""Near-duplicate search at corpus scale: time, memory and recall of the
faiss indexes `big_vl.curate --dedup` can use, against exact search.

    python bench/dedup.py                         # writes bench/RESULTS.md
    python bench/dedup.py --sizes=20000 --no_write

Synthetic unit vectors (`--dim`), of which 5% are planted near copies of
another vector (the copy plus Gaussian noise, cosine 0.95-0.99 to its
original, like a re-encoded image's embedding) and the rest independent.
For each size N and index kind ("Flat": exact; "HNSW32"; "IVF{4 sqrt N},
Flat" with nprobe 16; `big_vl.curation.index`):

* build and search seconds for `big_vl.curation.filters.near_duplicates`
  over all N rows (k = 16 neighbours per row, threshold `--threshold`);
  exact search of all N rows is measured only up to `--exact_up_to`
  (quadratic), above that on `--queries` rows and scaled up (marked ~);
* recall of the planted pairs (a copy's group holds its original);
* neighbour recall@16 against exact search, on `--queries` rows;
* the index's size (faiss serialised bytes) and the process's peak
  resident memory after the run (ru_maxrss, all kinds so far).

Results go to the "## Near-duplicate search" section of RESULTS.md; only a
run at the default flags writes it.
"""

import argparse
import datetime
import os
import resource
import sys
import time

from absl import flags

flags.FLAGS.mark_as_parsed()

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from big_vl.curation import filters  # pylint: disable=g-import-not-at-top,wrong-import-position
from big_vl.curation import index as index_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
import host  # pylint: disable=g-import-not-at-top,wrong-import-position
import results_md  # pylint: disable=g-import-not-at-top,wrong-import-position

HEADING = "## Near-duplicate search (bench/dedup.py)"
K = 16


def planted(n, dim, seed, fraction=0.05):
  """(vectors f32[n, dim] unit rows, copy int[m], original int[m])."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dim)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  m = int(n * fraction)
  copy = rng.choice(n, m, replace=False)
  others = np.setdiff1d(np.arange(n), copy)
  original = rng.choice(others, m)
  # Noise scale for a cosine of c: |noise| = sqrt(1/c^2 - 1).
  cos = rng.uniform(0.95, 0.99, m)
  noise = rng.normal(size=(m, dim)).astype(np.float32)
  noise *= (np.sqrt(1 / cos ** 2 - 1) / np.linalg.norm(noise, axis=1))[:,
                                                                       None]
  y = x[original] + noise
  x[copy] = y / np.linalg.norm(y, axis=1, keepdims=True)
  return x, copy, original


def kinds(n):
  return ("Flat", "HNSW32", f"IVF{int(4 * np.sqrt(n))},Flat")


def measure(x, kind, threshold, copy, original, queries, exact_ids,
            exact_up_to):
  """One row of the table for index `kind` on vectors `x`."""
  import faiss  # pylint: disable=g-import-not-at-top
  n = len(x)
  row = {"n": n, "kind": kind}
  t0 = time.perf_counter()
  index = index_lib.build(x, kind)
  row["build_s"] = time.perf_counter() - t0
  row["index_mb"] = len(faiss.serialize_index(index)) / 2 ** 20
  t0 = time.perf_counter()
  _, found = index_lib.search(index, x[queries], K)
  per_query = (time.perf_counter() - t0) / len(queries)
  row["recall_at_16"] = float(np.mean([
      len(set(f) & set(e)) / K for f, e in zip(found, exact_ids)]))
  if kind == "Flat" and n > exact_up_to:
    row["dedup_s"] = f"~{per_query * n + row['build_s']:.0f}"
    row["pair_recall"] = ""
  else:
    t0 = time.perf_counter()
    _, _, group = filters.near_duplicates(x, threshold, k=K, factory=kind)
    row["dedup_s"] = f"{time.perf_counter() - t0:.1f}"
    row["pair_recall"] = f"{np.mean(group[copy] == group[original]):.4f}"
  row["peak_rss_gb"] = resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
  return row


def make_parser():
  """The command-line flags (any non-default one makes a partial run)."""
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes", default="100000,1000000")
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--threshold", type=float, default=0.94)
  parser.add_argument("--queries", type=int, default=2000)
  parser.add_argument("--exact_up_to", type=int, default=200_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no_write", action="store_true")
  return parser


def main(argv):
  parser = make_parser()
  args = parser.parse_args(argv)
  partial = results_md.non_default(parser, args)
  machine = host.describe(host.facts())
  lines = ["| N | index | build s | dedup s (all rows) | planted-pair recall "
           "| neighbour recall@16 | index MiB | peak RSS GiB |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
  for n in [int(s) for s in args.sizes.split(",")]:
    x, copy, original = planted(n, args.dim, args.seed)
    queries = np.random.default_rng(args.seed + 1).choice(
        n, min(args.queries, n), replace=False)
    exact = index_lib.build(x, "Flat")
    _, exact_ids = index_lib.search(exact, x[queries], K)
    del exact
    for kind in kinds(n):
      row = measure(x, kind, args.threshold, copy, original, queries,
                    exact_ids, args.exact_up_to)
      print(row, flush=True)
      lines.append(
          f"| {n:,} | {kind} | {row['build_s']:.1f} | {row['dedup_s']} | "
          f"{row['pair_recall']} | {row['recall_at_16']:.4f} | "
          f"{row['index_mb']:.0f} | {row['peak_rss_gb']:.2f} |")
  section = "\n".join([
      HEADING, "",
      f"Measured {datetime.date.today()} on {machine}. {args.dim}-d unit "
      f"vectors, 5% planted near copies (cosine 0.95-0.99 to their "
      f"original), threshold {args.threshold}, k = {K}; "
      "`near_duplicates` over all rows (~: exact search timed on "
      f"{args.queries} rows and scaled to N); neighbour recall against "
      f"exact search on {args.queries} rows.",
      "", "```", results_md.command(__file__, argv), "```", "", *lines, ""])
  results_md.publish(HEADING, section, write=not args.no_write,
                     partial=partial)


if __name__ == "__main__":
  main(sys.argv[1:])
