"""The curated WebDataset written by an Apache Beam pipeline, for corpora one
machine should not read alone (`python -m big_vl.curate --engine=beam`).

The decisions (which rows stay) are made where the embeddings are (they
fit one machine: 1M rows of 768-d float32 are 3 GB); reading the kept
records back and writing them is the part that scales with the corpus, so
it is what Beam runs: one element per output shard, holding where each of
its rows is (`shards.locate`: plain values), and a `DoFn` that reads them
from their source and writes the shard (`write.write_shard`). Shard s
holds kept rows [s * shard_size, (s + 1) * shard_size), a row that no
longer reads leaves its key unused, so the files are byte for byte the
ones the local writer (`write.write_webdataset`) makes, on any runner and
any number of workers.

    result = write_webdataset(out, table, shard_size=10_000,
                              captions_meta=curate.kept_rows(table, keep),
                              pipeline_args=["--runner=DirectRunner"])

Runners: Beam's DirectRunner (the default; `--direct_num_workers=N
--direct_running_mode=multi_processing` for N local processes, what the
tests use) or any other Beam runner (Dataflow, Flink, Spark) given in
`pipeline_args`, whose workers must have big_vl installed and read the
sources' paths (gs:// for Dataflow).
"""

import collections
import json

from etils import epath

from big_vl.curation import shards as shards_lib
from big_vl.curation import write as write_lib


def shard_tasks(table, shard_size, captions_meta):
  """The pipeline's elements: (shard, [(position, located, caption, meta)]).

  Args:
    table: the `shards.Table`.
    shard_size: samples per output shard.
    captions_meta: `curate.kept_rows(table, keep)`'s [(row, caption, meta)].
  """
  located = shards_lib.locate(table, [r for r, _, _ in captions_meta])
  tasks = collections.defaultdict(list)
  for j, ((_, caption, meta), where) in enumerate(zip(captions_meta,
                                                      located)):
    tasks[j // shard_size].append((j % shard_size, where, caption, meta))
  return sorted(tasks.items())


class _WriteShard:
  """Reads one shard's records and writes the shard (a Beam DoFn)."""

  def __init__(self, out, data_dir):
    self.out, self.data_dir = str(out), data_dir

  def __call__(self, task):
    from big_vl import curate  # pylint: disable=g-import-not-at-top
    shard, planned = task
    counts = collections.Counter()
    records = dict(shards_lib.read_located([w for _, w, _, _ in planned],
                                           self.data_dir))
    samples = [(position, curate.writable(records.get(where["row"]),
                                          caption, meta, counts))
               for position, where, caption, meta in planned]
    written = write_lib.write_shard(epath.Path(self.out), shard, samples)
    yield {"shards": 1, "samples": written, **counts}


def write_webdataset(out, table, *, shard_size, captions_meta,
                     data_dir=None, pipeline_args=()):
  """Runs the write stage on Beam (module docstring).

  Args:
    out: the output folder.
    table: the corpus's `shards.Table`.
    shard_size: samples per shard.
    captions_meta: `curate.kept_rows(table, keep)`: the kept rows.
    data_dir: the TFDS data dir the workers read.
    pipeline_args: Beam pipeline options, e.g. ["--runner=DirectRunner"].

  Returns:
    {"shards", "samples", "failed", "pattern", "skipped": {reason: n}},
    as the local writer's, summed from the shards' stats files.
  """
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  write_lib.check_shard_size(shard_size)
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  tasks = shard_tasks(table, shard_size, captions_meta)
  counts_path = out / "beam_counts.json"
  options = pipeline_options.PipelineOptions(list(pipeline_args))
  with beam.Pipeline(options=options) as pipeline:
    _ = (pipeline
         | "shards" >> beam.Create(tasks, reshuffle=True)
         | "write" >> beam.FlatMap(_WriteShard(out, data_dir))
         | "sum" >> beam.CombineGlobally(_sum_counts)
         | "json" >> beam.Map(json.dumps)
         | "save" >> beam.Map(_save, str(counts_path)))
  counts = json.loads(counts_path.read_text())
  counts_path.unlink()
  planned = len(captions_meta)
  shards = -(-planned // shard_size)
  skipped = {k: v for k, v in counts.items()
             if k not in ("shards", "samples")}
  return {"shards": shards, "samples": counts.get("samples", 0),
          "failed": planned - counts.get("samples", 0),
          "pattern": write_lib.pattern(out, shards), "skipped": skipped}


def _sum_counts(dicts):
  total = collections.Counter()
  for d in dicts:
    total.update(d)
  return dict(total)


def _save(text, path):
  epath.Path(path).write_text(text)
