r"""Writes tests/data/big_vision_naflex.npz: a tiny SigLIP 2 NaFlex two-tower
model run by big_vision's own code, for the import test
(tests/test_convert_big_vision.py).

big_vision is not on PyPI, so the test cannot run it; this script did, once,
and stored what it computed: a random-init checkpoint in big_vision's `.npz`
layout (the released `gs://big_vision/siglip2/*naflex*.npz` files' layout:
`params/img` from `big_vision.models.proj.image_text.naflex_vit`,
`params/txt` from `...image_text.text_transformer`, `t`, `b`) and the
towers' outputs on fixed NaFlex inputs.

    git clone https://github.com/google-research/big_vision /tmp/bv
    # (the fixture was made at commit 0127fb6, 2026-12-07)
    PYTHONPATH=/tmp/bv python tests/make_big_vision_naflex_fixture.py

(`tensorflow` is replaced by a stand-in where it is missing, as in
tests/make_big_vision_cappa_fixture.py.)

The image tower: width 32, 2 layers, 2 heads, MLP 64, 8 px patches, MAP
pooling, a 16-wide head, a 4x4 learned position-embedding grid
(`nposemb=4`). Four images in a budget of 16 patches, with grids 4x4 (no
padding), 2x5, 3x3 and 1x7 (padded), as big_vision's `patchify` writes
them: patches [B, 16, 8 * 8 * 3], type (1 = patch, 0 = padding) and the
y / x grid indices (0 at padding). Every parameter is its init value plus
noise, so that each one matters.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_big_vision_cappa_fixture as cappa_fixture  # pylint: disable=g-import-not-at-top,wrong-import-position

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                   "big_vision_naflex.npz")
PATCH, BUDGET, GRIDS = 8, 16, ((4, 4), (2, 5), (3, 3), (1, 7))
SIZES = dict(width=32, depth=2, mlp_dim=64, num_heads=2)


def naflex_inputs(rng):
  """(patches, ptype, yabs, xabs) of random images with GRIDS."""
  b = len(GRIDS)
  patches = np.zeros((b, BUDGET, PATCH * PATCH * 3), np.float32)
  ptype = np.zeros((b, BUDGET), np.int32)
  yabs = np.zeros((b, BUDGET), np.int32)
  xabs = np.zeros((b, BUDGET), np.int32)
  for i, (rows, cols) in enumerate(GRIDS):
    n = rows * cols
    patches[i, :n] = rng.uniform(-1, 1, (n, PATCH * PATCH * 3))
    ptype[i, :n] = 1
    yabs[i, :n] = np.repeat(np.arange(rows), cols)
    xabs[i, :n] = np.tile(np.arange(cols), rows)
  return patches, ptype, yabs, xabs


def main():
  cappa_fixture._tensorflow_stand_in()  # pylint: disable=protected-access
  import jax  # pylint: disable=g-import-not-at-top
  from big_vision.models.proj.image_text import naflex_vit  # pylint: disable=g-import-not-at-top
  from big_vision.models.proj.image_text import text_transformer  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  inputs = naflex_inputs(rng)
  text = rng.integers(2, 64, (len(GRIDS), 8)).astype(np.int32)
  text[:, 6:] = 1  # big_vision's sticky EOS.
  img = naflex_vit.Model(num_classes=16, pool_type="map",
                         posemb="learn_2d(16)", nposemb=4, **SIZES)
  txt = text_transformer.Model(num_classes=16, vocab_size=64, **SIZES)
  params = {
      "img": img.init(jax.random.PRNGKey(0), inputs)["params"],
      "txt": txt.init(jax.random.PRNGKey(1), text)["params"],
      "t": np.full([1], np.log(10.0), np.float32),
      "b": np.full([1], -10.0, np.float32)}
  params = cappa_fixture._noisy(  # pylint: disable=protected-access
      jax.tree_util.tree_map(np.asarray, params), rng)
  out = dict(zip(("patches", "ptype", "yabs", "xabs"), inputs))
  out["text"] = text
  out["img_out"] = np.asarray(img.apply({"params": params["img"]},
                                        inputs)[0])
  out["txt_out"] = np.asarray(txt.apply({"params": params["txt"]},
                                        text)[0])
  out.update(cappa_fixture._flat(params))  # pylint: disable=protected-access
  assert np.isfinite(out["img_out"]).all()
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT}: {len(out)} arrays, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
  main()
