"""colabs/: every notebook runs top to bottom in a fresh kernel (small
settings), and its last cell's numbers are checked."""

import json
import os

import jax
import nbclient  # requirements-dev.txt: a missing one fails, not skips.
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(name, tmp_path, monkeypatch, **env):
  """Executes colabs/NAME; returns the JSON its last cell printed."""
  for key, value in {
      "BIG_VL_COLAB_SMALL": "1",
      "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
      **env}.items():
    monkeypatch.setenv(key, str(value))
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  nb = nbformat.read(os.path.join(ROOT, "colabs", name), as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": ROOT}}).execute()
  # Every code cell ran without an error output.
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not [o for o in cell.outputs if o.output_type == "error"], cell
  text = "".join(o.get("text", "") for o in nb.cells[-1].outputs
                 if o.output_type == "stream" and o.name == "stdout")
  lines = [line for line in text.splitlines() if line.startswith("{")]
  assert lines, nb.cells[-1].outputs
  return json.loads(lines[-1])


@pytest.mark.slow
def test_train_demo_notebook(tmp_path, monkeypatch, demo_data):
  del demo_data
  workdir = tmp_path / "demo"
  out = _run("train_demo.ipynb", tmp_path, monkeypatch,
             BIG_VL_COLAB_WORKDIR=workdir)
  assert out["step"] == 20
  assert 0 <= out["final"]["zeroshot/demo_shapes/top1"] <= 1
  assert (workdir / "retrieval.png").exists()
  assert (workdir / "curves.png").exists()


@pytest.mark.slow
def test_zeroshot_notebook(tmp_path, monkeypatch, demo_data):
  del demo_data
  out = _run("zeroshot_your_images.ipynb", tmp_path, monkeypatch,
             BIG_VL_COLAB_CHECKPOINT=tmp_path / "ckpt")
  assert out["shape"] == [3, 35]
  assert out["row_sums"] == pytest.approx([1, 1, 1], abs=1e-4)
  assert len(out["top1"]) == 3


def test_inspect_data_notebook(tmp_path, monkeypatch, demo_data):
  del demo_data
  out = _run("inspect_data.ipynb", tmp_path, monkeypatch)
  assert out == {"batch": 11, "skipped": 1, "by_reason": {"decode": 1}}
