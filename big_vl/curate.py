r"""Curates a corpus from its embeddings: CLIP-score filtering, near-duplicate
removal, evaluation decontamination and concept balancing.

    python -m big_vl.embed --checkpoint=workdirs/demo \
        --data=tfds:big_vl_demo_noisy --split=train --out=/tmp/noisy_emb
    python -m big_vl.embed --checkpoint=workdirs/demo \
        --data=tfds:big_vl_demo_shapes --split=test --out=/tmp/test_emb
    python -m big_vl.curate --embeddings=/tmp/noisy_emb --out=/tmp/curated \
        --top_fraction=0.5 --dedup=0.95 --decontaminate=/tmp/test_emb
    python -m big_vl.train --config=configs/demo.py \
        --config.input.data=subset:/tmp/curated --workdir=...

Filters, applied in this order (each on the rows the earlier ones kept):

1. `--decontaminate=DIR[,DIR]` (embed folders of evaluation sets): drop
   rows whose image is at least `--decontaminate_threshold` similar to an
   evaluation image (`curation.filters.contaminated`).
2. `--dedup=T`: near-duplicate groups (image similarity >= T, faiss index
   `--index`); keep one row per group, the one with the best CLIP score.
3. `--min_score=S` (LAION-5B: 0.28 for OpenAI's ViT-B/32) or
   `--top_fraction=F` (DataComp: the best 30% of the pool; the threshold
   is computed over all rows): the cosine of each row's image and caption
   embeddings.
4. `--reward=DIR` with `--reward_min=S` or `--reward_top_fraction=F`: the
   same corpus embedded by a caption reward model (Compress & Align: a
   CLIP fine-tuned on preferred captions, `configs/preference.py:
   kind=captions`); rows whose caption it scores low are dropped.
5. `--balance=ENTRIES --balance_cap=N`: MetaCLIP's balancing of the
   captions' concepts (`curation.filters.balance`); ENTRIES is a file (one
   per line), a comma-separated list, or `classes:SPEC` (a TFDS source's
   class names).

Outputs in `--out`:

* `curate.json`: the settings; rows in, kept, the embed run's skipped
  records; per filter its threshold, the rows it flags on its own
  (`flagged`) and those it removed in the sequence (`removed`);
* `decisions.parquet`: one row per embedded record: key, component,
  index, clip_score, reward, nn_sim (nearest other image), group (duplicate
  group),
  eval_sim / eval_key (nearest evaluation image), matched (balance), and
  `removed_by` (the filter that removed it, or null);
* `clip_score.png`, `reward.png`, `dedup.png`, `decontamination.png`:
  histograms of the
  scores with the thresholds drawn, kept and removed rows stacked;
* the curated data (`--write`): `subset` writes subset.json/subset.npy, read
  by the `subset:DIR` source (random-access, so training resumes exactly);
  `wds` writes WebDataset shards in img2dataset's layout
  (`curation.write`), read by `wds:DIR/{00000..N}.tar`; `auto`: subset
  for one random-access source, else wds. Reading the kept records back
  and writing them is the stage that grows with the corpus: with
  `--engine=beam` an Apache Beam pipeline does it (`curation.beam`;
  `--beam_args` picks the runner: Beam's DirectRunner here, Dataflow,
  Flink or Spark on a cluster), writing the same files.
"""

import collections
import dataclasses
import json
import os
import shlex
import sys
import time

from absl import app
from absl import flags
from absl import logging
from etils import epath
import numpy as np

from big_vl import cli
from big_vl import plots
from big_vl.curation import filters
from big_vl.curation import shards
from big_vl.curation import write as write_lib

WRITES = ("auto", "subset", "wds", "none")


@dataclasses.dataclass
class Options:
  """What to filter by (None / empty: that filter is off).

  Attributes: as the flags of the same names (module docstring).
  """
  min_score: float | None = None
  top_fraction: float | None = None
  dedup: float | None = None
  dedup_k: int = 16
  decontaminate: tuple[str, ...] = ()
  decontaminate_threshold: float = 0.9
  balance: tuple[str, ...] = ()
  balance_cap: int | None = None
  reward: str | None = None
  reward_min: float | None = None
  reward_top_fraction: float | None = None
  index: str = "auto"
  seed: int = 0


@dataclasses.dataclass
class Decisions:
  """The outcome of `decide`.

  Attributes:
    keep: bool[N] rows kept.
    removed_by: N filter names (None: kept).
    columns: per-row arrays for decisions.parquet.
    filters: [{"name", "threshold", "flagged", "removed", ...}].
  """
  keep: np.ndarray
  removed_by: list[str | None]
  columns: dict[str, np.ndarray]
  filters: list[dict]


def _log(message):
  sys.stderr.write(message + "\n")
  sys.stderr.flush()


def decide(table, options, eval_tables=(), reward_table=None):
  """Applies the filters of `options` to an `curation.shards.Table`.

  Args:
    table: the corpus's embeddings.
    options: an `Options`.
    eval_tables: `curation.shards.Table`s of the evaluation sets
      (decontamination).
    reward_table: the same corpus embedded by a reward model (the reward
      filter).

  Returns:
    A `Decisions`.
  """
  n = len(table)
  keep = np.ones(n, bool)
  removed_by = [None] * n
  columns, report = {}, []

  def apply(name, flagged_alone, removes, **info):
    removes = removes & keep
    for i in np.nonzero(removes)[0]:
      removed_by[i] = name
    keep[removes] = False
    report.append({"name": name, **info,
                   "flagged": int(flagged_alone.sum()),
                   "removed": int(removes.sum()), "left": int(keep.sum())})

  score = (filters.clip_score(table.img, table.txt) if table.txt is not None
           else None)
  if score is not None:
    columns["clip_score"] = score
  if eval_tables:
    eval_img = np.concatenate([t.img for t in eval_tables])
    eval_keys = [f"{j}:{k}" for j, t in enumerate(eval_tables)
                 for k in t.keys]
    leaked, sim, ids = filters.contaminated(
        table.img, eval_img, options.decontaminate_threshold, options.index)
    columns["eval_sim"] = sim
    columns["eval_key"] = np.array([eval_keys[i] if i >= 0 else None
                                    for i in ids], object)
    apply("decontaminate", leaked, leaked,
          threshold=options.decontaminate_threshold,
          eval_sets=list(options.decontaminate), eval_rows=len(eval_img))
  if options.dedup is not None:
    first, nn_sim, group = filters.near_duplicates(
        table.img, options.dedup, k=options.dedup_k, priority=score,
        factory=options.index)
    columns["nn_sim"], columns["group"] = nn_sim, group
    # Within the rows still kept: one per group (the best score).
    sub = np.nonzero(keep)[0]
    if len(sub) == n:
      kept_sub = first
    elif len(sub):
      kept_sub = filters.near_duplicates(
          table.img[sub], options.dedup, k=options.dedup_k,
          priority=None if score is None else score[sub],
          factory=options.index)[0]
    else:
      kept_sub = np.zeros(0, bool)
    removes = np.zeros(n, bool)
    removes[sub[~kept_sub]] = True
    apply("dedup", ~first, removes, threshold=options.dedup,
          groups=int(len(np.unique(group))),
          index=options.index)
  if options.min_score is not None or options.top_fraction is not None:
    if score is None:
      raise ValueError("CLIP-score filtering needs text embeddings; the "
                       "embed run had none (--text_key).")
    threshold = filters.score_threshold(score, min_score=options.min_score,
                                        top_fraction=options.top_fraction)
    low = score < threshold
    apply("clip_score", low, low, threshold=threshold,
          min_score=options.min_score, top_fraction=options.top_fraction)
  if reward_table is not None:
    if options.reward_min is None and options.reward_top_fraction is None:
      raise ValueError("--reward needs --reward_min or "
                       "--reward_top_fraction.")
    reward = reward_scores(table, reward_table)
    columns["reward"] = reward
    threshold = filters.score_threshold(
        reward, min_score=options.reward_min,
        top_fraction=options.reward_top_fraction)
    low = reward < threshold
    apply("reward", low, low, threshold=threshold,
          min_score=options.reward_min,
          top_fraction=options.reward_top_fraction, model=options.reward)
  if options.balance:
    if options.balance_cap is None:
      raise ValueError("--balance needs --balance_cap (rows per entry).")
    alone, matched, _ = filters.balance(
        table.captions, options.balance, options.balance_cap,
        seed=options.seed)
    kept, _, counts = filters.balance(
        table.captions, options.balance, options.balance_cap,
        seed=options.seed, keep=keep)
    columns["matched"] = matched
    apply("balance", ~alone, ~kept, cap=options.balance_cap,
          entries=len(options.balance),
          entry_counts=dict(sorted(counts.items(), key=lambda kv: -kv[1])))
  return Decisions(keep, removed_by, columns, report)


def reward_scores(table, reward_table):
  """Each row's image-caption score under a reward model: the cosine of
  `reward_table`'s embeddings of the same record (matched by component and
  index), so the two embed runs may have skipped different records; a row
  the reward run lacks scores -inf (it is removed)."""
  if reward_table.txt is None:
    raise ValueError("The reward embeddings have no text embeddings.")
  score = filters.clip_score(reward_table.img, reward_table.txt)
  where = {(int(c), int(i)): r for r, (c, i) in enumerate(
      zip(reward_table.component, reward_table.index))}
  rows = [where.get((int(c), int(i)), -1)
          for c, i in zip(table.component, table.index)]
  return np.array([score[r] if r >= 0 else -np.inf for r in rows],
                  np.float32)


def _histograms(out, decisions):
  """The score histograms with their thresholds: rows this filter removed,
  rows another one removed, and kept rows, stacked."""
  thresholds = {f["name"]: f.get("threshold") for f in decisions.filters}
  removed_by = np.array(decisions.removed_by, object)
  for column, name, png, title in (
      ("clip_score", "clip_score", "clip_score",
       "CLIP score (image-caption cosine)"),
      ("reward", "reward", "reward", "Reward model score (cosine)"),
      ("nn_sim", "dedup", "dedup", "Nearest other image"),
      ("eval_sim", "decontaminate", "decontamination",
       "Nearest evaluation image")):
    if column in decisions.columns:
      here = removed_by == name
      plots.plot_histogram(
          decisions.columns[column], os.fspath(out / f"{png}.png"),
          thresholds={name: thresholds.get(name)}, title=title,
          xlabel="cosine similarity",
          groups={"kept": decisions.keep, f"removed by {name}": here,
                  "removed by another filter": ~decisions.keep & ~here})


def _write_decisions(out, table, decisions):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  columns = {"key": table.keys, "component": table.component,
             "index": table.index,
             **{k: (list(v) if v.dtype == object else v)
                for k, v in decisions.columns.items()},
             "removed_by": decisions.removed_by}
  path = out / "decisions.parquet"
  with path.open("wb") as f:
    pq.write_table(pa.table(columns), f)


def writable(record, caption, meta, counts):
  """The row a curated shard holds for a re-read `record` (image bytes,
  caption, meta), or None, counted in `counts` by reason, for one that
  cannot be written."""
  image = None if record is None else record.get("image")
  if not isinstance(image, bytes):
    counts["unreadable"] += 1
    return None
  try:
    write_lib.image_extension(image)
  except ValueError:
    counts["image_format"] += 1
    return None
  return {"image": image, "caption": caption, **meta}


def kept_rows(table, keep):
  """[(row, caption, meta)] of the kept rows, in row order."""
  return [(int(i), table.captions[i],
           {"source_key": table.keys[i], "source_index": int(table.index[i]),
            "component": int(table.component[i])})
          for i in np.nonzero(keep)[0]]


def _kept_records(table, keep, data_dir, counts):
  """The writable rows of the kept records, in row order (None for one that
  no longer reads)."""
  planned = kept_rows(table, keep)
  records = shards.records_of(table, [r for r, _, _ in planned], data_dir)
  # Table rows are in shard order, so the records come back in row order.
  for (row, caption, meta), (got, record) in zip(planned, records):
    assert row == got, (row, got)
    yield writable(record, caption, meta, counts)


def write_curated(out, table, decisions, *, write="auto", shard_size=10_000,
                  data_dir=None, engine="local", beam_args=()):
  """Writes the kept rows as a subset index or WebDataset shards (with
  `engine="beam"`: on an Apache Beam pipeline, `curation.beam`, given
  `beam_args`; the same files).

  Returns:
    {"kind": "subset"|"wds"|"none", "spec": the source spec that reads it,
    ...}.
  """
  manifest = table.manifest
  comps = {e["spec"] for e in manifest["shards"]}
  streaming = any(e["shard"]["url"] is not None for e in manifest["shards"])
  if write == "auto":
    write = "subset" if len(comps) == 1 and not streaming else "wds"
  if write == "none":
    return {"kind": "none"}
  if write == "subset":
    if len(comps) != 1 or streaming:
      raise ValueError("--write=subset needs one random-access source; "
                       f"the embeddings come from {sorted(comps)}: use "
                       "--write=wds.")
    indices = table.index[decisions.keep]
    write_lib.write_subset(out, comps.pop(), manifest["split"], indices,
                           data_dir=data_dir, made_by="big_vl.curate")
    return {"kind": "subset", "spec": f"subset:{out}", "rows": len(indices)}
  if engine == "beam":
    from big_vl.curation import beam  # pylint: disable=g-import-not-at-top
    result = beam.write_webdataset(
        out, table, shard_size=shard_size,
        captions_meta=kept_rows(table, decisions.keep), data_dir=data_dir,
        pipeline_args=beam_args)
  else:
    counts = collections.Counter()
    result = write_lib.write_webdataset(
        out, _kept_records(table, decisions.keep, data_dir, counts),
        shard_size=shard_size)
    result["skipped"] = dict(counts)
  return {"kind": "wds", "spec": f"wds:{result['pattern']}",
          "rows": result["samples"], "shards": result["shards"],
          "skipped": result["skipped"], "engine": engine}


def run(embeddings, out, options, *, write="auto", shard_size=10_000,
        data_dir=None, plots_=True, engine="local", beam_args=()):
  """Curates the embed folder `embeddings` into `out` (module docstring).

  Returns:
    The curate.json dict.
  """
  start = time.time()
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  table = shards.load(embeddings)
  eval_tables = [shards.load(d) for d in options.decontaminate]
  reward_table = shards.load(options.reward) if options.reward else None
  _log(f"curate: {len(table)} rows from {embeddings}"
       + (f", {sum(len(t) for t in eval_tables)} evaluation images"
          if eval_tables else ""))
  decisions = decide(table, options, eval_tables, reward_table)
  for f in decisions.filters:
    setting = (f"threshold {f['threshold']:.4g}" if "threshold" in f
               else f"cap {f['cap']}")
    _log(f"  {f['name']}: {setting}, flags {f['flagged']} alone, removed "
         f"{f['removed']}, {f['left']} left")
  _write_decisions(out, table, decisions)
  if plots_:
    _histograms(out, decisions)
  output = write_curated(out, table, decisions, write=write,
                         shard_size=shard_size, data_dir=data_dir,
                         engine=engine, beam_args=beam_args)
  report = {"embeddings": str(embeddings),
            "options": dataclasses.asdict(options),
            "rows": len(table), "kept": int(decisions.keep.sum()),
            "embed_skipped": table.manifest.get("skipped", {}),
            "filters": decisions.filters, "output": output,
            "seconds": round(time.time() - start, 2)}
  (out / "curate.json").write_text(json.dumps(report, indent=1))
  _log(f"curate: kept {report['kept']} of {report['rows']} rows -> "
       f"{output.get('spec', 'no data written')} ({report['seconds']} s)")
  return report


def entries(value):
  """Balance entries: `classes:SPEC` (the class names of a TFDS source's
  "label" feature, e.g. "classes:tfds:big_vl_demo_shapes"), a file (one
  per line) or a comma-separated list."""
  if not value:
    return ()
  if value.startswith("classes:"):
    from big_vl.data import sources  # pylint: disable=g-import-not-at-top
    spec = value[len("classes:"):]
    names = sources.class_names(sources.get(spec, split="train"))
    if not names:
      raise ValueError(f"--balance={value}: {spec} has no class names.")
    return tuple(names)
  if os.path.exists(value):
    with open(value) as f:
      return tuple(line.strip() for line in f if line.strip())
  return tuple(v.strip() for v in value.split(",") if v.strip())


_FLAGS = flags.FlagValues()
_EMBEDDINGS = flags.DEFINE_string("embeddings", None, "An embed folder.",
                                  flag_values=_FLAGS)
_OUT = flags.DEFINE_string("out", None, "Output folder.", flag_values=_FLAGS)
_MIN_SCORE = flags.DEFINE_float("min_score", None, "Keep CLIP score >= S.",
                                flag_values=_FLAGS)
_TOP_FRACTION = flags.DEFINE_float("top_fraction", None, "Keep the best F "
                                   "of the pool by CLIP score.",
                                   flag_values=_FLAGS)
_DEDUP = flags.DEFINE_float("dedup", None, "Near-duplicate image "
                            "similarity threshold.", flag_values=_FLAGS)
_DEDUP_K = flags.DEFINE_integer("dedup_k", 16, "Neighbours searched per "
                                "row.", flag_values=_FLAGS)
_DECONTAMINATE = flags.DEFINE_list("decontaminate", [], "Embed folders of "
                                   "evaluation sets.", flag_values=_FLAGS)
_DECONTAMINATE_THRESHOLD = flags.DEFINE_float(
    "decontaminate_threshold", 0.9, "Similarity to an evaluation image at "
    "which a row is dropped.", flag_values=_FLAGS)
_BALANCE = flags.DEFINE_string("balance", None, "Entries file, comma "
                               "list or classes:SPEC (MetaCLIP balancing).",
                               flag_values=_FLAGS)
_BALANCE_CAP = flags.DEFINE_integer("balance_cap", None, "Rows per entry.",
                                    flag_values=_FLAGS)
_REWARD = flags.DEFINE_string("reward", None, "Embed folder of the same "
                              "corpus by a reward model.", flag_values=_FLAGS)
_REWARD_MIN = flags.DEFINE_float("reward_min", None, "Keep reward >= S.",
                                 flag_values=_FLAGS)
_REWARD_TOP_FRACTION = flags.DEFINE_float(
    "reward_top_fraction", None, "Keep the best F of the pool by reward.",
    flag_values=_FLAGS)
_INDEX = flags.DEFINE_string("index", "auto", "faiss index_factory string "
                             "('auto': exact up to 100k rows, else HNSW32).",
                             flag_values=_FLAGS)
_WRITE = flags.DEFINE_enum("write", "auto", WRITES, "What to write.",
                           flag_values=_FLAGS)
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 10_000, "WebDataset "
                                   "samples per shard.", flag_values=_FLAGS)
_SEED = flags.DEFINE_integer("seed", 0, "Balance sampling seed.",
                             flag_values=_FLAGS)
_ENGINE = flags.DEFINE_enum("engine", "local", ("local", "beam"), "Who "
                            "writes the WebDataset: this process, or an "
                            "Apache Beam pipeline.", flag_values=_FLAGS)
_BEAM_ARGS = flags.DEFINE_string(
    "beam_args", "--runner=DirectRunner", "Beam pipeline options (with "
    "--engine=beam), e.g. '--runner=DataflowRunner --project=P "
    "--region=R --temp_location=gs://b/tmp'.", flag_values=_FLAGS)


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not (_EMBEDDINGS.value and _OUT.value):
    raise app.UsageError("--embeddings and --out are required.")
  logging.set_verbosity(logging.ERROR)
  options = Options(
      min_score=_MIN_SCORE.value, top_fraction=_TOP_FRACTION.value,
      dedup=_DEDUP.value, dedup_k=_DEDUP_K.value,
      decontaminate=tuple(_DECONTAMINATE.value),
      decontaminate_threshold=_DECONTAMINATE_THRESHOLD.value,
      balance=entries(_BALANCE.value), balance_cap=_BALANCE_CAP.value,
      reward=_REWARD.value, reward_min=_REWARD_MIN.value,
      reward_top_fraction=_REWARD_TOP_FRACTION.value,
      index=_INDEX.value, seed=_SEED.value)
  run(_EMBEDDINGS.value, _OUT.value, options, write=_WRITE.value,
      shard_size=_SHARD_SIZE.value, engine=_ENGINE.value,
      beam_args=shlex.split(_BEAM_ARGS.value))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(_FLAGS))
