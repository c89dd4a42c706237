"""big_vision CapPa checkpoints as big_vl captioners.

The fixture (tests/data/big_vision_cappa.npz) holds two tiny CapPa models
in big_vision's `.npz` layout and the logits big_vision's own
`big_vision.models.proj.cappa.cappa.Model` computed for them
(tests/make_big_vision_cappa_fixture.py): the paper's settings (no decoder
biases, a mask-token row, parallel prediction) unscanned, and a scanned one
with biases.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from big_vl import decode
from big_vl import models
from big_vl import predict
from big_vl.convert import big_vision
from big_vl.convert import big_vision_cappa

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                       "big_vision_cappa.npz")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fixture():
  with np.load(FIXTURE) as npz:
    return {k: npz[k] for k in npz.files}


def _checkpoint(fixture, name):
  """The flat `.npz` dict of model `name` ("paper" or "scan")."""
  return {k[len(name) + 1:]: v for k, v in fixture.items()
          if k.startswith(name + "/")}


def _text(targets):
  """big_vision's decoder reads shift_right(targets): big_vl's text is the
  start token 0 and then the targets."""
  return np.concatenate([np.zeros((len(targets), 1), np.int32), targets], 1)


@pytest.mark.parametrize("name", ["paper", "scan"])
def test_logits_equal_big_visions(fixture, name):
  model_config, params = big_vision_cappa.convert(_checkpoint(fixture, name))
  paper = name == "paper"
  assert model_config["name"] == "captioner"
  assert model_config["decoder"] == {"width": 32, "depth": 2, "mlp_dim": 64,
                                     "num_heads": 2, "act": "gelu",
                                     "norm_eps": 1e-6}
  assert model_config["image"]["patch_size"] == 8
  assert model_config["image"]["image_size"] == 16
  assert model_config["vocab_size"] == 64 and model_config["max_len"] == 9
  assert model_config["mask_token"] == (64 if paper else 0)
  assert model_config["parallel_fraction"] == (0.75 if paper else 0.0)
  assert model_config["project_memory"] is False
  model = models.get(model_config)
  image, text = fixture["image"], _text(fixture["targets"])
  got = model.apply({"params": params}, image, text)
  want = fixture[f"logits_{name}"]
  assert np.abs(want).max() > 1.0  # Real logits, not the zero init.
  # Measured: bit-identical unscanned, 8.3e-7 scanned (2026-12-07).
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  if paper:
    # Parallel prediction: every input the mask token (its own embedding
    # row), no causal mask; big_vision's numbers for every example masked.
    every = models.get({**model_config, "parallel_fraction": 1.0})
    got = every.apply({"params": params}, image, text, train=True,
                      rngs={"dropout": jax.random.PRNGKey(0)})
    np.testing.assert_allclose(got, fixture["logits_paper_parallel"],
                               atol=1e-5, rtol=0)
    assert np.abs(fixture["logits_paper_parallel"] - want).max() > 1.0


def test_missing_and_misfit_keys_are_named(fixture):
  flat = _checkpoint(fixture, "paper")
  assert big_vision_cappa.is_cappa(flat)
  assert big_vision_cappa.is_cappa({k[len("params/"):]: v
                                    for k, v in flat.items()})
  assert not big_vision_cappa.is_cappa({"params/img/embedding/kernel": 0,
                                        "params/txt/Embed_0/embedding": 0})
  broken = dict(flat)
  del broken["params/decoder/EncDecBlock1/CrossAttn/value/kernel"]
  with pytest.raises(ValueError, match=r"missing "
                     r"decoder/EncDecBlock1/CrossAttn/value/kernel"):
    big_vision_cappa.convert(broken)
  broken = dict(flat)
  del broken["params/encoder/embedding/kernel"]
  with pytest.raises(ValueError, match="CapPa checkpoint: missing required "
                     "key 'encoder/embedding/kernel'"):
    big_vision_cappa.convert(broken)
  broken = {k: v for k, v in flat.items() if "pos_embedding_decoder" not in k}
  with pytest.raises(ValueError, match=r"missing \['pos_embedding_decoder'\]"):
    big_vision_cappa.convert(broken)
  broken = dict(flat)
  broken["params/decoder/EncDecBlock0/MLP/Dense_1/kernel"] = np.zeros(
      (64, 30), np.float32)
  with pytest.raises(ValueError, match="decoderblock_0/MlpBlock_0/Dense_1/"
                     r"kernel: \(64, 30\), expected \(64, 32\)"):
    big_vision_cappa.convert(broken)
  # Another image size: the learned position embedding is resampled.
  model_config, params = big_vision_cappa.convert(flat, image_size=32)
  assert params["img"]["pos_embedding"].shape == (1, 16, 32)
  assert model_config["image"]["image_size"] == 32
  logits = models.get(model_config).apply(
      {"params": params}, np.zeros((1, 32, 32, 3), np.float32),
      _text(fixture["targets"][:1]))
  assert logits.shape == (1, 8, 64) and np.isfinite(logits).all()
  # A two-tower converter given a CapPa file says what it is missing.
  with pytest.raises(ValueError, match="two-tower checkpoint"):
    big_vision.convert(flat)


def test_convert_command_and_predictor_caption(fixture, tmp_path):
  """`python -m big_vl.convert --from big_vision` on a CapPa file, then
  `Predictor.load(...).caption(images)`: big_vision's greedy decoding from
  start id 0 to EOS 1, read by the SentencePiece model given."""
  src = tmp_path / "cappa.npz"
  np.savez(src, **_checkpoint(fixture, "paper"))
  import sentencepiece  # pylint: disable=g-import-not-at-top
  words = ("a photo of the cat dog bird tree runs fast two on in big small "
           "red green blue house car street yellow purple orange circle "
           "square star cross triangle window garden river mountain "
           "kitchen table chair people walking jumping sleeping").split()
  rng = np.random.default_rng(0)
  spm = str(tmp_path / "spm.model")
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter([" ".join(rng.choice(words, 6))
                              for _ in range(300)]),
      model_prefix=spm[:-6], vocab_size=64, model_type="unigram",
      character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      minloglevel=2, num_threads=1)
  out = tmp_path / "converted"
  run = subprocess.run(
      [sys.executable, "-m", "big_vl.convert", "--from=big_vision",
       f"--src={src}", f"--tokenizer_model={spm}", f"--out={out}"],
      capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "captioner" in run.stdout
  predictor = predict.Predictor.load(str(out), batch_size=4)
  assert predictor.caption_options["start_id"] == 0
  assert predictor.caption_options["end_id"] == 1
  images = [(rng.uniform(size=(16, 16, 3)) * 255).astype(np.uint8)
            for _ in range(3)]
  captions = predictor.caption(images)
  # The same by hand: the converted model, big_vision's image pp, greedy.
  model_config, params = big_vision_cappa.load(src)
  model = models.get(model_config)
  pixels = np.stack([im.astype(np.float32) / 127.5 - 1.0 for im in images])
  tokens = decode.greedy(model, params, pixels, start_id=0, end_id=1)
  from big_vl.data import tokenizers  # pylint: disable=g-import-not-at-top
  tok = tokenizers.get("sentencepiece", model=spm, max_len=8)
  assert captions == [tok.decode(row) for row in np.asarray(tokens)]
  assert any(captions)  # Random weights still write some words.
  # Without the tokenizer model, captions say what is missing.
  bare = tmp_path / "bare"
  run = subprocess.run(
      [sys.executable, "-m", "big_vl.convert", "--from=big_vision",
       f"--src={src}", f"--out={bare}"],
      capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
  assert run.returncode == 0, run.stderr[-2000:]
  with pytest.raises(ValueError, match="--tokenizer_model"):
    predict.Predictor.load(str(bare)).caption(images[:1])
