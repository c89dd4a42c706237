"""Pictures of a run: training curves, retrieval and caption examples, as
PNGs.

    plot_curves(rows, "workdir/curves.png")      # rows from metrics.jsonl
    plot_retrieval(queries, images, scores, "workdir/retrieval.png")
    plot_captions(images, generated, references, "workdir/captions.png")
    plot_histogram(scores, "curated/clip_score.png", thresholds={"min": .28})
"""

import io
import math
import textwrap

from matplotlib import patches
from matplotlib.figure import Figure
import numpy as np

from big_vl import storage


def new_figure(nrows, ncols, **subplots_kw):
  """(Figure, axes) drawn off-screen, without pyplot.

  Figures made this way never switch matplotlib's backend or touch pyplot's
  global figure list, so importing big_vl leaves inline plots in notebooks
  alone; `fig.savefig(path)` writes the PNG.
  """
  fig = Figure(figsize=subplots_kw.pop("figsize", None))
  return fig, fig.subplots(nrows, ncols, **subplots_kw)


def plot_curves(rows, path, train_keys=("train/loss",)):
  """Plots training loss and every eval metric over steps.

  Args:
    rows: metric rows (dicts with "step"), e.g. `metrics.read_jsonl(...)`.
    path: output PNG path.
    train_keys: train metrics drawn in the first panel.
  """
  # Skip counts (`<evaluator>/<ds>/skipped[/<reason>]`) are counts, not
  # scores on the metrics' scale: left out of the panels.
  eval_keys = sorted({k for r in rows for k in r if "/" in k and not
                      k.startswith(("train/", "data/", "eval_time/")) and
                      "skipped" not in k.split("/")[2:]})
  panels = [("training", list(train_keys))]
  groups = {}
  for k in eval_keys:
    groups.setdefault(k.rsplit("/", 1)[0], []).append(k)
  panels += sorted(groups.items())
  cols = min(len(panels), 3)
  nrows = math.ceil(len(panels) / cols)
  fig, axes = new_figure(nrows, cols, figsize=(5 * cols, 3.6 * nrows),
                         squeeze=False)
  for ax, (title, keys) in zip(axes.flat, panels):
    for k in keys:
      pts = [(r["step"], r[k]) for r in rows if k in r]
      if pts:
        steps, values = zip(*pts)
        ax.plot(steps, values, marker="o" if len(pts) < 30 else None,
                markersize=3, label=k.rsplit("/", 1)[-1])
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if keys:
      ax.legend(fontsize=8)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.tight_layout()
  save(fig, path)


def plot_retrieval(queries, images, scores, path, correct=None):
  """Shows text queries with their top retrieved images.

  Args:
    queries: list of Q query strings.
    images: uint8 or float images [Q, K, H, W, 3] (float in [-1, 1] or
      [0, 1]), the top-K retrieved per query, best first.
    scores: [Q, K] similarity scores.
    path: output PNG path.
    correct: optional bool [Q, K]: the retrieved image is the one the query
      caption was written for (drawn with a green frame; other images may
      match the query just as well, so they get no frame).
  """
  images = _to_unit(images)
  q, k = images.shape[:2]
  fig, axes = new_figure(q, k + 1, figsize=(1.6 * (k + 1) + 2.4, 1.7 * q),
                         squeeze=False,
                         gridspec_kw={"width_ratios": [3] + [1] * k})
  for i in range(q):
    axes[i, 0].text(0.98, 0.5, textwrap.fill(queries[i], 34), ha="right",
                    va="center", fontsize=9)
    axes[i, 0].axis("off")
    for j in range(k):
      ax = axes[i, j + 1]
      ax.imshow(images[i, j], interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f"{scores[i][j]:.2f}", fontsize=7)
      if correct is not None and correct[i][j]:
        for spine in ax.spines.values():
          spine.set_edgecolor("tab:green")
          spine.set_linewidth(4)
  fig.tight_layout()
  save(fig, path)


def _to_unit(images):
  """uint8 images as they are; float ones ([-1, 1] or [0, 1]) in [0, 1]."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  lo = -1.0 if images.min() < 0 else 0.0
  return np.clip((images - lo) / (1.0 - lo), 0, 1)


def _grid(n, columns, cell):
  """A figure with a grid of axes (off) for `n` images, `cell` inches
  (width, height) each."""
  rows = max(1, math.ceil(n / columns))
  fig, axes = new_figure(rows, columns, figsize=(cell[0] * columns,
                                                  cell[1] * rows),
                         squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  return fig, axes


def plot_captions(images, generated, references, path, columns=4):
  """A grid of images, each with its generated caption (bold) and its
  reference captions below.

  Args:
    images: N images [H, W, 3] (uint8, or float in [-1, 1] / [0, 1]); they
      may differ in size.
    generated: N generated captions.
    references: N lists of reference captions (the first 3 are shown).
    path: output PNG path.
    columns: images per row.
  """
  n = len(images)
  fig, axes = _grid(n, columns, (3.2, 3.6))
  for i in range(n):
    ax = axes.flat[i]
    ax.imshow(_to_unit(images[i]), interpolation="nearest")
    ax.set_title(textwrap.fill(generated[i] or "(empty caption)", 36),
                 fontsize=8, fontweight="bold")
    refs = "\n".join(textwrap.fill("- " + r, 40)
                     for r in list(references[i])[:3])
    ax.text(0.5, -0.02, refs, transform=ax.transAxes, ha="center",
            va="top", fontsize=7, color="0.3")
  fig.tight_layout()
  save(fig, path)


def plot_boxes(images, titles, true_boxes, predicted_boxes, path,
               columns=4):
  """A grid of images with a true box (green) and a predicted one (red,
  dashed; None draws none) each, titled (e.g. the referring expression).

  Args:
    images: N images [H, W, 3] (as `plot_captions`).
    titles: N strings.
    true_boxes, predicted_boxes: N relative boxes [ymin, xmin, ymax, xmax]
      (a predicted one may be None).
    path: output PNG path.
    columns: images per row.
  """
  n = len(images)
  fig, axes = _grid(n, columns, (2.6, 2.9))
  for i in range(n):
    ax = axes.flat[i]
    h, w = np.shape(images[i])[:2]
    ax.imshow(_to_unit(images[i]), interpolation="nearest")
    for box, colour, style in ((true_boxes[i], "lime", "-"),
                               (predicted_boxes[i], "red", "--")):
      if box is None:
        continue
      y0, x0, y1, x1 = box
      ax.add_patch(patches.Rectangle(
          (x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h,
          fill=False, edgecolor=colour, linestyle=style, linewidth=1.5))
    ax.set_title(textwrap.fill(titles[i], 30), fontsize=8)
  fig.tight_layout()
  save(fig, path)


def plot_histogram(values, path, *, thresholds=None, title="", xlabel="",
                   groups=None, bins=60):
  """A histogram of `values` with vertical threshold lines.

  Args:
    values: f[N] (non-finite values are left out, their count in the
      title).
    path: output PNG path.
    thresholds: {label: value} drawn as dashed lines (None values skipped).
    title, xlabel: text.
    groups: optional {label: bool[N]}: one stacked histogram per group
      (e.g. rows kept and removed) instead of one.
    bins: bin count.
  """
  values = np.asarray(values, np.float64)
  finite = np.isfinite(values)
  fig, ax = new_figure(1, 1, figsize=(6, 3.6))
  edges = np.histogram_bin_edges(values[finite], bins=bins) if finite.any() \
      else bins
  if groups:
    labels = list(groups)
    ax.hist([values[finite & np.asarray(groups[k], bool)] for k in labels],
            bins=edges, stacked=True, label=labels)
  else:
    ax.hist(values[finite], bins=edges, color="tab:blue")
  for j, (label, value) in enumerate((thresholds or {}).items()):
    if value is not None and np.isfinite(value):
      ax.axvline(value, color=f"C{3 + j}", linestyle="--",
                 label=f"{label} = {value:.3g}")
  if groups or thresholds:
    ax.legend(fontsize=8)
  missing = int((~finite).sum())
  ax.set_title(title + (f" ({missing} without a value)" if missing else ""),
               fontsize=10)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("rows")
  fig.tight_layout()
  save(fig, path)


def save(fig, path, dpi=100):
  """Writes `fig` as a PNG to `path` (a local path or a URL)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi)
  storage.write(path, buffer.getvalue())
