r"""Writes tests/data/big_vision_cappa.npz: tiny CapPa models run by
big_vision's own code, for the import test (tests/test_convert_big_vision_cappa.py).

big_vision is not on PyPI, so the test cannot run it; this script did, once,
and stored what it computed: two random-init models' checkpoints in
big_vision's `.npz` layout (the param tree flattened with "/" under
`params/`) and their logits on fixed inputs.

    git clone https://github.com/google-research/big_vision /tmp/bv
    # (the fixture was made at commit 0127fb6, 2026-12-07)
    PYTHONPATH=/tmp/bv python tests/make_big_vision_cappa_fixture.py

big_vision imports `tensorflow.io.gfile` for file access only; where
tensorflow is not installed (big_vl's environment) a stand-in module is put
in its place before the import. Nothing here reads or writes files through
it.

The two models (`big_vision.models.proj.cappa.cappa.Model`, ViT encoder of
width 32 with 8 px patches on 16 px images, 2 + 2 layers, 2 heads, MLP 64,
vocabulary 64, 8 text tokens):
- "paper": the paper's config flags (`decoder_bias=False`,
  `masked_pred_prob=0.75`, `masking_ratio=1.0`: an extra embedding row for
  the mask token), unscanned. Logits teacher-forced (`logits_paper`) and in
  parallel prediction (`logits_paper_parallel`: the same params in a model
  with `masked_pred_prob=1.0`, train=True, so every example is masked).
- "scan": `scan=True` (big_vision's stacked layout: the decoder's layer
  axis is axis 1, the encoder's axis 0), `decoder_bias=True`, no masked
  prediction. Logits teacher-forced (`logits_scan`).
Every parameter is its init value plus noise (LayerNorm scales 1 + noise,
the zero-initialised logits layer too), so that each one matters.
"""

import importlib.machinery
import importlib.util
import os
import sys
import types

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                   "big_vision_cappa.npz")
SIZES = dict(num_heads=2, num_layers=2, mlp_dim=64, emb_dim=32,
             vocab_size=64, seq_len=8, patches=(8, 8))


def _tensorflow_stand_in():
  """Modules `tensorflow`, `tensorflow.io.gfile` and `tensorflow.errors`
  for big_vision's and flax's imports, where tensorflow is missing."""
  if importlib.util.find_spec("tensorflow") is not None:
    return
  tf = types.ModuleType("tensorflow")
  tf.io = types.ModuleType("tensorflow.io")
  tf.io.gfile = types.ModuleType("tensorflow.io.gfile")
  tf.errors = types.ModuleType("tensorflow.errors")
  tf.errors.NotFoundError = FileNotFoundError
  for module in (tf, tf.io, tf.io.gfile, tf.errors):
    module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
    sys.modules[module.__name__] = module


def _flat(tree, prefix="params"):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flat(v, f"{prefix}/{k}"))
    else:
      out[f"{prefix}/{k}"] = np.asarray(v, np.float32)
  return out


def _noisy(tree, rng):
  """Every leaf plus noise (so that no leaf is 0 or 1 everywhere)."""
  return {k: _noisy(v, rng) if isinstance(v, dict) or hasattr(v, "items")
          else np.asarray(v, np.float32) + rng.normal(
              0.0, 0.1, np.shape(v)).astype(np.float32)
          for k, v in tree.items()}


def main():
  _tensorflow_stand_in()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from big_vision.models.proj.cappa import cappa  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  image = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  # c4_en ids with big_vision's sticky EOS (1) as padding.
  targets = rng.integers(2, SIZES["vocab_size"], (2, 8)).astype(np.int32)
  targets[0, 5:] = 1
  targets[1, 7:] = 1
  out = {"image": image, "targets": targets}

  paper = dict(decoder_bias=False, masking_ratio=1.0, **SIZES)
  model = cappa.Model(masked_pred_prob=0.75, **paper)
  params = model.init(jax.random.PRNGKey(0), image, targets)["params"]
  params = _noisy(jax.tree_util.tree_map(np.asarray, params), rng)
  out["logits_paper"] = np.asarray(model.apply({"params": params}, image,
                                               targets))
  every = cappa.Model(masked_pred_prob=1.0, **paper)
  out["logits_paper_parallel"] = np.asarray(every.apply(
      {"params": params}, image, targets, train=True,
      rngs={"dropout": jax.random.PRNGKey(1)}))
  out.update({"paper/" + k: v for k, v in _flat(params).items()})

  scan = cappa.Model(scan=True, **SIZES)
  params = scan.init(jax.random.PRNGKey(2), image, targets)["params"]
  params = _noisy(jax.tree_util.tree_map(np.asarray, params), rng)
  out["logits_scan"] = np.asarray(scan.apply({"params": params}, image,
                                             targets))
  out.update({"scan/" + k: v for k, v in _flat(params).items()})
  assert jnp.isfinite(out["logits_scan"]).all()
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT}: {len(out)} arrays, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
  main()
