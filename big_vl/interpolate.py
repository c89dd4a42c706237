r"""WiSE-FT: weight-space interpolation between two checkpoints of one model.

Robust fine-tuning (Wortsman et al., 2022, https://arxiv.org/abs/2109.01903)
mixes the zero-shot weights A and the fine-tuned weights B of the same
model: theta(alpha) = (1 - alpha) * theta_A + alpha * theta_B. alpha = 0 is
A, alpha = 1 is B, and in between often beats both under distribution
shift.

One mix, written as a checkpoint folder (readable by `big_vl.evaluate`,
`config.model_init`, `big_vl.predict`):

    python -m big_vl.interpolate --a=workdirs/zeroshot --b=workdirs/ft \
        --alpha=0.5 --out=workdirs/wise_0.5

Several mixes, each evaluated with an eval config, in one command: a
folder per alpha plus a table (`wise_ft.md`, `wise_ft.csv`) and a plot of
every metric against alpha (`wise_ft.png`):

    python -m big_vl.interpolate --a=workdirs/zeroshot --b=workdirs/ft \
        --alphas=0,0.25,0.5,0.75,1 --out=workdirs/wise \
        --eval_config=configs/eval/demo.py

`--a`/`--b` take a training workdir, a converted checkpoint folder or
either's `checkpoints/` folder (latest step; URLs work too). The model
config comes from B; A must have the same parameters (scanned or unscanned
blocks are matched). Integer leaves (none in big_vl's models) are taken
from B.
"""

import argparse
import os

import jax
import numpy as np

from big_vl import cli
from big_vl import config as config_lib
from big_vl import plots
from big_vl import pretrained
from big_vl import storage


def interpolate(params_a, params_b, alpha):
  """(1 - alpha) * params_a + alpha * params_b, leaf by leaf.

  Args:
    params_a: pytree of arrays (the zero-shot / starting weights).
    params_b: pytree of arrays of the same structure and shapes.
    alpha: mixing coefficient; 0 gives params_a, 1 gives params_b exactly.

  Returns:
    The mixed pytree of numpy arrays (in params_b's dtypes).

  Raises:
    ValueError: if the structures or shapes differ.
  """
  if jax.tree.structure(params_a) != jax.tree.structure(params_b):
    raise ValueError("The two checkpoints have different parameters: "
                     f"{jax.tree.structure(params_a)} vs "
                     f"{jax.tree.structure(params_b)}.")

  def mix(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
      raise ValueError(f"Shapes differ: {a.shape} vs {b.shape}.")
    if alpha == 0:
      return a.astype(b.dtype)
    if alpha == 1 or b.dtype.kind not in "fc":
      return b
    mixed = (1.0 - alpha) * a.astype(np.float64) + alpha * b.astype(
        np.float64)
    return mixed.astype(b.dtype)

  return jax.tree.map(mix, params_a, params_b)


def load_pair(path_a, path_b):
  """(model_config, params_a, params_b) with A in B's block layout."""
  model_config, params_b = pretrained.load(path_b)
  _, params_a = pretrained.load(path_a)
  params_a = pretrained.match_layout(params_b, params_a)
  return model_config, params_a, params_b


def write_mix(out, model_config, params_a, params_b, alpha, *, a, b):
  """Writes the alpha mix as a checkpoint folder; returns its path."""
  params = interpolate(params_a, params_b, alpha)
  return pretrained.save(out, model_config, params,
                         source={"wise_ft": {"a": storage.absolute(a),
                                             "b": storage.absolute(b),
                                             "alpha": float(alpha)}})


def alpha_name(alpha):
  """Folder name of one mix: "alpha_0.25"."""
  return f"alpha_{float(alpha):g}"


def sweep(path_a, path_b, alphas, out, eval_config, *, log=print):
  """Writes and evaluates the mix for every alpha.

  Args:
    path_a: the zero-shot checkpoint (alpha = 0).
    path_b: the fine-tuned checkpoint (alpha = 1).
    alphas: the mixing coefficients.
    out: output folder (or URL): one checkpoint folder per alpha
      (`alpha_name`), each with its evaluation in `eval/`, plus the tables
      and the plot.
    eval_config: the eval ConfigDict (as for `big_vl.evaluate`).
    log: progress printer.

  Returns:
    A list of rows {"alpha": a, **metrics} in the order of `alphas`.
  """
  from big_vl import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  model_config, params_a, params_b = load_pair(path_a, path_b)
  rows = []
  for i, alpha in enumerate(alphas):
    folder = os.path.join(storage.absolute(out), alpha_name(alpha))
    log(f"[wise-ft {i + 1}/{len(alphas)}] alpha={alpha:g}: {folder}")
    write_mix(folder, model_config, params_a, params_b, alpha, a=path_a,
              b=path_b)
    result = evaluate_lib.evaluate(eval_config, folder,
                                   output=os.path.join(folder, "eval"),
                                   progress=False)
    rows.append({"alpha": float(alpha), **{
        k: v for k, v in result["metrics"].items()
        if not k.startswith("eval_time/")}})
  write_table(rows, out)
  plot(rows, os.path.join(storage.absolute(out), "wise_ft.png"))
  return rows


def table(rows, fmt="markdown"):
  """The rows as a markdown or CSV table (alpha first, then metrics)."""
  keys = sorted({k for r in rows for k in r if k != "alpha"})
  if fmt == "csv":
    lines = [",".join(["alpha"] + keys)]
    lines += [",".join([f"{r['alpha']:g}"] + [repr(r.get(k, "")) for k in keys])
              for r in rows]
  else:
    lines = ["| alpha | " + " | ".join(keys) + " |",
             "|---:|" + "---:|" * len(keys)]
    lines += ["| " + " | ".join([f"{r['alpha']:g}"] + [
        f"{r[k]:.4f}" if k in r else "" for k in keys]) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def write_table(rows, out):
  """Writes OUT/wise_ft.md and OUT/wise_ft.csv."""
  for fmt, ext in (("markdown", "md"), ("csv", "csv")):
    storage.write(os.path.join(storage.absolute(out), f"wise_ft.{ext}"),
                  table(rows, fmt))


def plot(rows, path):
  """Every metric against alpha, one panel per evaluator and dataset."""
  keys = sorted({k for r in rows for k in r if k != "alpha"})
  groups = {}
  for k in keys:
    if k.endswith("mean_rank") or "skipped" in k.split("/")[2:]:
      continue  # Another scale (ranks, skip counts); it is in the table.
    groups.setdefault(k.rsplit("/", 1)[0], []).append(k)
  fig, axes = plots.new_figure(1, max(len(groups), 1),
                               figsize=(5 * max(len(groups), 1), 3.6),
                               squeeze=False)
  alphas = [r["alpha"] for r in rows]
  for ax, (group, names) in zip(axes.flat, sorted(groups.items())):
    for k in names:
      ax.plot(alphas, [r.get(k, np.nan) for r in rows], marker="o",
              label=k.rsplit("/", 1)[-1])
    ax.set_title(group)
    ax.set_xlabel("alpha (0: A, 1: B)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  plots.save(fig, path)


@cli.user_errors
def main(argv=None):
  """`python -m big_vl.interpolate --a=A --b=B (--alpha=X | --alphas=...)`."""
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="python -m big_vl.interpolate",
      description="WiSE-FT: mixes two checkpoints of one model.")
  parser.add_argument("--a", required=True,
                      help="zero-shot / starting checkpoint (alpha = 0)")
  parser.add_argument("--b", required=True,
                      help="fine-tuned checkpoint (alpha = 1)")
  parser.add_argument("--alpha", type=float, default=None,
                      help="one mix, written to --out")
  parser.add_argument("--alphas", default=None,
                      help="comma-separated mixes, each written to "
                      "OUT/alpha_X and evaluated with --eval_config")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--eval_config", default=None,
                      help="eval config file[:arg] (with --alphas), e.g. "
                      "configs/eval/demo.py")
  args = parser.parse_args(argv)
  if (args.alpha is None) == (args.alphas is None):
    parser.error("give exactly one of --alpha and --alphas")
  flags.FLAGS.mark_as_parsed()
  config_lib.setup_cli_runtime(logging.ERROR)
  if args.alpha is not None:
    model_config, params_a, params_b = load_pair(args.a, args.b)
    out = write_mix(args.out, model_config, params_a, params_b, args.alpha,
                    a=args.a, b=args.b)
    print(f"Wrote the alpha={args.alpha:g} mix to {out}")
    return
  if not args.eval_config:
    parser.error("--alphas needs --eval_config")
  eval_config = config_lib.load_config(args.eval_config)
  alphas = [float(a) for a in args.alphas.split(",")]
  rows = sweep(args.a, args.b, alphas, args.out, eval_config)
  print(table(rows))
  print(f"Tables and plot in {storage.absolute(args.out)}/wise_ft.*")


if __name__ == "__main__":
  main()
