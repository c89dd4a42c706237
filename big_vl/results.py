r"""Evaluation result files in the CLIP_benchmark format, and their tables.

Every evaluation (`python -m big_vl.evaluate`, or the trainer's final
evaluation) writes one JSON file per (model, dataset, task), laid out as
CLIP_benchmark (github.com/LAION-AI/CLIP_benchmark) writes them, so that its
tooling and ours read each other's results:

    {"dataset": "demo_shapes", "model": "two_towers",
     "pretrained": "demo-step800", "task": "zeroshot_classification",
     "metrics": {"acc1": 0.459, "acc5": 0.995, "mean_per_class_recall": 0.46,
                 "skipped": 0},
     "language": "en"}

`metrics["skipped"]` (an int) is the number of records the evaluation left
out (undecodable images, missing files, empty captions; big_vl's
`<evaluator>/<ds>/skipped`), and `metrics["skipped/<reason>"]` the count of
each reason that occurred (`.../skipped/<reason>`), e.g.
"skipped/missing_file": 2; the other metrics are over the records used.

File name: `{dataset}_{pretrained}_{model}_{language}_{task}.json`
(CLIP_benchmark's default `--output` template; "/" in a name becomes "_").

big_vl metric names map to CLIP_benchmark's where it has them:

    zeroshot/<ds>/top1, top5, mean_per_class_recall
        -> zeroshot_classification: acc1, acc5, mean_per_class_recall
    retrieval/<ds>/img2txt_r@k  (image -> text)
        -> zeroshot_retrieval: text_retrieval_recall@k
    retrieval/<ds>/txt2img_r@k  (text -> image)
        -> zeroshot_retrieval: image_retrieval_recall@k
    linear_probe/<ds>/top1, top5, mean_per_class_recall
        -> linear_probe: lp_acc1, lp_acc5, lp_mean_per_class_recall
    fewshot/<ds>/<name> -> fewshot: <name> (CLIP_benchmark has no few-shot task)

Other metrics of a known task keep their big_vl name (the skip counts:
"skipped", "skipped/<reason>"); metrics of unknown evaluator kinds (and
`eval_time/*`) are not written.

Aggregate a folder of result files into one table (one row per file):

    python -m big_vl.results aggregate workdirs/demo/results \
        [--format csv|markdown] [--out FILE]
"""

import argparse
import csv
import glob
import io
import json
import os
import re
import sys

from big_vl import cli

LANGUAGE = "en"

# big_vl evaluator prefix -> CLIP_benchmark task.
TASKS = {
    "zeroshot": "zeroshot_classification",
    "retrieval": "zeroshot_retrieval",
    "linear_probe": "linear_probe",
    "fewshot": "fewshot",
}

_CLASSIFICATION = {"top1": "acc1", "top5": "acc5",
                   "mean_per_class_recall": "mean_per_class_recall"}
_LINEAR_PROBE = {k: f"lp_{v}" for k, v in _CLASSIFICATION.items()}

HEADER = ("dataset", "model", "pretrained", "task", "language")


def metric_name(task, name):
  """CLIP_benchmark's name for big_vl metric `name` of `task`.

  Args:
    task: a CLIP_benchmark task (a value of `TASKS`).
    name: the last part of a big_vl metric key, e.g. "top1", "img2txt_r@5".

  Returns:
    The CLIP_benchmark metric name (`name` itself when it has none).
  """
  if task == "zeroshot_classification":
    return _CLASSIFICATION.get(name, name)
  if task == "linear_probe":
    return _LINEAR_PROBE.get(name, name)
  if task == "zeroshot_retrieval":
    direction, sep, k = name.partition("_r@")
    if sep:
      # CLIP_benchmark names retrieval by what is retrieved: image->text
      # queries retrieve texts ("text retrieval"), and vice versa.
      kind = {"img2txt": "text", "txt2img": "image"}.get(direction)
      if kind:
        return f"{kind}_retrieval_recall@{k}"
  return name


def to_records(metrics, *, model, pretrained, language=LANGUAGE):
  """Groups big_vl metrics into CLIP_benchmark result records.

  Args:
    metrics: {"zeroshot/<dataset>/top1": value, ...} as evaluators yield.
    model: the model (architecture) name, e.g. "two_towers".
    pretrained: the weights' name, e.g. "demo-step800".
    language: the language of the prompts / captions.

  Returns:
    A list of dicts with keys dataset, model, pretrained, task, metrics and
    language, one per (dataset, task), in order of first appearance.
  """
  records = {}
  for key, value in metrics.items():
    parts = key.split("/")
    if len(parts) < 3 or parts[0] not in TASKS:
      continue
    task = TASKS[parts[0]]
    # Skip counts (ints): <kind>/<ds>/skipped and <kind>/<ds>/skipped/<why>.
    by_reason = len(parts) >= 4 and parts[-2] == "skipped"
    dataset = "/".join(parts[1:-2] if by_reason else parts[1:-1])
    record = records.setdefault((dataset, task), {
        "dataset": dataset, "model": model, "pretrained": pretrained,
        "task": task, "metrics": {}, "language": language})
    if by_reason:
      record["metrics"][f"skipped/{parts[-1]}"] = int(value)
    elif parts[-1] == "skipped":
      record["metrics"]["skipped"] = int(value)
    else:
      record["metrics"][metric_name(task, parts[-1])] = float(value)
  return list(records.values())


def _slug(name):
  return str(name).replace("/", "_")


def filename(record):
  """`{dataset}_{pretrained}_{model}_{language}_{task}.json` of a record."""
  return "_".join(_slug(record[k]) for k in (
      "dataset", "pretrained", "model", "language", "task")) + ".json"


def write(metrics, directory, *, model, pretrained, language=LANGUAGE):
  """Writes one CLIP_benchmark JSON file per (dataset, task) of `metrics`.

  Args:
    metrics: big_vl metrics dict (see `to_records`).
    directory: output folder (created if missing).
    model, pretrained, language: the records' names (see `to_records`).

  Returns:
    The list of paths written.
  """
  records = to_records(metrics, model=model, pretrained=pretrained,
                       language=language)
  if records:
    os.makedirs(directory, exist_ok=True)
  paths = []
  for record in records:
    path = os.path.join(directory, filename(record))
    with open(path, "w") as f:
      json.dump(record, f)
    paths.append(path)
  return paths


def read(directory):
  """Reads every result file (`*.json`) of a folder, sorted by file name.

  Args:
    directory: a folder of result files, or a single file.

  Returns:
    A list of records (dicts).

  Raises:
    ValueError: for a JSON file that is not a result record.
  """
  if os.path.isfile(directory):
    paths = [directory]
  else:
    paths = sorted(glob.glob(os.path.join(directory, "*.json")))
  records = []
  for path in paths:
    with open(path) as f:
      record = json.load(f)
    missing = [k for k in ("dataset", "model", "pretrained", "task",
                           "metrics") if k not in record]
    if missing:
      raise ValueError(f"{path} is not a result file: no {missing}.")
    records.append(record)
  return records


def _natural(name):
  """Sort key putting "recall@5" before "recall@10"."""
  return [(0, int(t), "") if t.isdigit() else (1, 0, t)
          for t in re.split(r"(\d+)", name)]


def table(records):
  """(header, rows) of records: names first, then every metric (sorted).

  Args:
    records: result records (see `to_records`).

  Returns:
    (header tuple, list of row lists); a metric a record lacks is "".
  """
  names = sorted({m for r in records for m in r["metrics"]}, key=_natural)
  rows = []
  for r in records:
    rows.append([r.get(k, LANGUAGE if k == "language" else "")
                 for k in HEADER] + [r["metrics"].get(m, "") for m in names])
  return HEADER + tuple(names), rows


def format_table(records, fmt="csv"):
  """The records as a CSV or markdown table (a string).

  Args:
    records: result records.
    fmt: "csv" or "markdown".

  Returns:
    The table text, ending in a newline.
  """
  header, rows = table(records)
  if fmt == "csv":
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue()
  if fmt == "markdown":
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
  raise ValueError(f"Unknown table format {fmt!r}; use 'csv' or 'markdown'.")


def aggregate(directory, fmt="csv", out=None):
  """Aggregates a folder of result files into one table.

  Args:
    directory: folder of CLIP_benchmark-format JSON files.
    fmt: "csv" or "markdown".
    out: file to write the table to (None: only return it).

  Returns:
    The table text.
  """
  text = format_table(read(directory), fmt)
  if out:
    with open(out, "w") as f:
      f.write(text)
  return text


@cli.user_errors
def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m big_vl.results",
      description="Tables of CLIP_benchmark-format result files.")
  sub = parser.add_subparsers(dest="command", required=True)
  agg = sub.add_parser("aggregate", help="one table row per result file")
  agg.add_argument("directory")
  agg.add_argument("--format", choices=("csv", "markdown"), default="csv")
  agg.add_argument("--out", default=None,
                   help="write the table here (default: stdout)")
  args = parser.parse_args(argv)
  text = aggregate(args.directory, args.format, args.out)
  if not args.out:
    sys.stdout.write(text)


if __name__ == "__main__":
  main()
