"""Captioners (CapPa): the decoder, the caption loss and cached decoding."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vl import decode
from big_vl import losses
from big_vl import models
from big_vl import paths
from big_vl import sharding
from big_vl.models import captioner as captioner_lib
from big_vl.models import common

START, END = 49406, 49407
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(**kw):
  return captioner_lib.Captioner(
      image={"variant": "mu/8"},
      decoder={"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 2},
      vocab_size=50, max_len=9, **kw)


def _inputs(batch=3, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(batch, 16, 16, 3)).astype(np.float32)
  text = rng.integers(1, 48, size=(batch, 9)).astype(np.int32)
  text[:, 0] = 48  # a start token
  text[0, 6:] = 0  # padding
  return jnp.asarray(image), jnp.asarray(text)


def _params(model, seed=0):
  image, text = _inputs()
  params = model.init(jax.random.PRNGKey(seed), image, text)["params"]
  # The head starts at zero (uniform predictions); give it values so that
  # the tests see real logits.
  head = params["decoder"]["head"]
  params["decoder"]["head"]["kernel"] = jax.random.normal(
      jax.random.PRNGKey(seed + 1), head["kernel"].shape)
  return params


def test_cached_decoding_equals_teacher_forcing_step_by_step():
  model = _model()
  params = _params(model)
  image, text = _inputs()
  forced = model.apply({"params": params}, image, text)  # [B, 8, V]
  dec = model.clone(decode=True)
  memory = dec.apply({"params": params}, image,
                     method=captioner_lib.Captioner.encode)
  _, cache = dec.apply({"params": params}, jnp.zeros_like(text[:, :-1]),
                       memory, method=captioner_lib.Captioner.decode_tokens,
                       mutable=["cache"])
  # The image tokens' keys and values are cached by the first call: the
  # steps read them, not `memory` (zeros here).
  cross = cache["cache"]["decoder"]["decoderblock_0"]["CrossAttention"]
  assert cross["cross_key"].shape == (3, 4, 2, 16)  # [B, N, heads, dim]
  for t in range(text.shape[1] - 1):
    logits, cache = dec.apply(
        {"params": params, **cache}, text[:, t:t + 1], jnp.zeros_like(memory),
        method=captioner_lib.Captioner.decode_tokens, mutable=["cache"])
    np.testing.assert_allclose(logits[:, 0], forced[:, t], atol=1e-5,
                               rtol=1e-5, err_msg=f"step {t}")


def test_greedy_with_a_cache_equals_greedy_without():
  model = _model()
  params = _params(model, seed=3)
  image, _ = _inputs(batch=4, seed=1)
  cached = decode.greedy(model, params, image, start_id=48, end_id=49)
  plain = decode.greedy_uncached(model, params, image, start_id=48,
                                 end_id=49)
  np.testing.assert_array_equal(cached, plain)
  assert cached.shape == (4, 8)
  # Not a constant: the images lead to different captions.
  assert len({tuple(r) for r in np.asarray(cached).tolist()}) > 1


def test_parallel_prediction_reads_only_the_image():
  # parallel_fraction=1: every input is the mask token and attention is
  # full, so the caption's tokens cannot change the logits; the image can.
  model = _model(parallel_fraction=1.0)
  params = _params(model)
  image, text = _inputs()
  run = lambda im, tx: model.apply({"params": params}, im, tx, train=True,
                                   rngs={"dropout": jax.random.PRNGKey(0)})
  other_text = jnp.roll(text, 1, axis=0)
  np.testing.assert_allclose(run(image, text), run(image, other_text),
                             atol=1e-6)
  assert not np.allclose(run(image, text), run(image[::-1], text))
  # Teacher forcing (eval) does read the caption.
  assert not np.allclose(model.apply({"params": params}, image, text),
                         model.apply({"params": params}, image, other_text))


def test_caption_dropout_reads_only_the_caption():
  model = _model(uncond_prob=1.0)
  params = _params(model)
  image, text = _inputs()
  run = lambda im: model.apply({"params": params}, im, text, train=True,
                               rngs={"dropout": jax.random.PRNGKey(0)})
  np.testing.assert_allclose(run(image), run(image[::-1]), atol=1e-6)


def test_caption_loss_is_the_mean_over_real_tokens():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 5)).astype(np.float32)
  text = np.array([[9, 1, 2, 0, 0], [9, 3, 4, 1, 2]], np.int32)
  targets = text[:, 1:]
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  real = targets != 0
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  want = nll[real].mean()
  loss, metrics = losses.caption_loss({"logits": jnp.asarray(logits)},
                                      {"text": jnp.asarray(text)})
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  np.testing.assert_allclose(metrics["perplexity"], np.exp(want), rtol=1e-6)
  acc = (logits.argmax(-1) == targets)[real].mean()
  np.testing.assert_allclose(metrics["token_acc"], acc)
  smooth, _ = losses.caption_loss({"logits": jnp.asarray(logits)},
                                  {"text": jnp.asarray(text)},
                                  label_smoothing=0.1)
  want_smooth = (0.9 * nll + 0.1 * -logp.mean(-1))[real].mean()
  np.testing.assert_allclose(smooth, want_smooth, rtol=1e-6)
  with pytest.raises(ValueError, match="label_smoothing"):
    losses.caption_loss({"logits": logits}, {"text": text},
                        label_smoothing=1.0)
  # Per-token weights: a prompt's tokens (here the first target of each
  # row) do not count.
  weights = np.ones_like(text, np.float32)
  weights[:, 1] = 0.0  # weighs the target text[:, 1]
  counted = real.copy()
  counted[:, 0] = False
  weighted, metrics = losses.caption_loss(
      {"logits": jnp.asarray(logits)},
      {"text": jnp.asarray(text), "w": jnp.asarray(weights)},
      weights_key="w")
  np.testing.assert_allclose(weighted, nll[counted].mean(), rtol=1e-6)
  np.testing.assert_allclose(
      metrics["token_acc"], (logits.argmax(-1) == targets)[counted].mean())
  with pytest.raises(ValueError, match="weights_key"):
    losses.caption_loss({"logits": logits}, {"text": text},
                        weights_key="mask")


def test_the_outputs_function_and_config_checks():
  model = _model()
  params = _params(model)
  image, text = _inputs()
  out = models.outputs_fn("captioner")(model, {"params": params},
                                       {"image": image, "text": text})
  assert out["logits"].shape == (3, 8, 50)
  assert models.outputs_fn("captioner")(model, {"params": params}, {}) == {}
  models.check_config("captioner", {
      "image": {"variant": "mu/8"},
      "decoder": {"width": 8, "depth": 1, "mlp_dim": 16, "num_heads": 2}})
  with pytest.raises(ValueError, match=r"config.model.decoder.widht"):
    models.check_config("captioner", {"decoder": {"widht": 8}})


@pytest.mark.slow
def test_cappa_trains_on_the_demo_data_and_decodes(demo_data, tmp_path):
  del demo_data
  from big_vl import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from big_vl import train as train_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(ROOT, "configs", "cappa.py")
                                  + ":runlocal")
  config.mesh = (("data", 1),)
  result = train_lib.train(config, str(tmp_path), devices=jax.devices()[:1])
  assert result["step"] == 20
  # The final evaluation decoded and scored the test captions.
  final = result["final"]
  assert final["captioning/demo_shapes/skipped"] == 0
  for key in ("cider", "bleu_1", "bleu_4"):
    assert 0.0 <= final[f"captioning/demo_shapes/{key}"] < 10.0, key
  rows = [r for r in metrics_lib.read_jsonl(tmp_path / "metrics.jsonl")
          if "train/caption/loss" in r]
  # From about ln(49408) = 10.8 (uniform over the vocabulary) down; the
  # captions' frequent words are learnt first (measured 10.58 -> 9.67).
  assert rows[0]["train/caption/loss"] < 10.81
  assert rows[-1]["train/caption/loss"] < rows[0]["train/caption/loss"] - 0.5
  assert rows[-1]["train/caption/token_acc"] > 0.15
  params = ckpt_lib.restore_params(str(tmp_path / "checkpoints"), 20)
  model = train_lib.make_model(config)
  # The evaluator's numbers are those of its plain twin: greedy captions of
  # the same images, detokenized, scored by caption_metrics against the
  # records' captions.
  from big_vl import evaluators  # pylint: disable=g-import-not-at-top
  from big_vl import registry  # pylint: disable=g-import-not-at-top
  from big_vl import sharding  # pylint: disable=g-import-not-at-top
  from big_vl.data import pp as pp_lib  # pylint: disable=g-import-not-at-top
  from big_vl.data import sources  # pylint: disable=g-import-not-at-top
  from big_vl.evaluators import caption_metrics  # pylint: disable=g-import-not-at-top
  block = config.evals.captioning
  mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
  (_, _, ev), = evaluators.make_evaluators(config, model, mesh)
  ev.keep = 64
  got = dict(ev.run(params))
  source = sources.get(block.data, split=block.split)
  pp = pp_lib.build(block.pp)
  images = jnp.stack([pp(source[i], None)["image"] for i in range(64)])
  tokenizer = registry.get("tokenizer", "clip_bpe")()
  captions = [tokenizer.decode(r) for r in decode.greedy(
      model, params, images, start_id=START, end_id=END)]
  refs = [[c.decode() for c in source[i]["captions"]] for i in range(64)]
  assert [g for _, g, _ in ev.last] == captions
  assert [r for _, _, r in ev.last] == refs
  assert got["captioning/demo_shapes/cider"] == pytest.approx(
      caption_metrics.cider_d(captions, refs)[0])
  assert got["captioning/demo_shapes/bleu_1"] == pytest.approx(
      caption_metrics.bleu(captions, refs)["bleu_1"])
  # The run wrote every test caption (64) and a grid of the first 16.
  import json  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rows = [json.loads(line) for line in
          (tmp_path / "captions.jsonl").read_text().splitlines()]
  assert [r["index"] for r in rows] == list(range(64))
  assert [r["caption"] for r in rows] == captions
  assert rows[3]["references"] == refs[3]
  with Image.open(tmp_path / "captions.png") as png:
    assert png.size[0] > 600 and png.size[1] > 600
  # Predictor.caption and `python -m big_vl.caption` give the same captions
  # from the image files; a file that is not an image is skipped, counted.
  from big_vl import caption as caption_cli  # pylint: disable=g-import-not-at-top
  from big_vl import predict  # pylint: disable=g-import-not-at-top
  predictor = predict.Predictor.load(str(tmp_path), batch_size=8)
  assert predictor.caption([source[i]["image"] for i in range(5)]) == (
      captions[:5])
  folder = tmp_path / "photos"
  folder.mkdir()
  for i in range(3):
    (folder / f"{i}.png").write_bytes(source[i]["image"])
  (folder / "3.png").write_bytes(b"not an image")
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  out = subprocess.run(
      [sys.executable, "-m", "big_vl.caption", f"--checkpoint={tmp_path}",
       f"--images={folder}", f"--output={tmp_path / 'out.jsonl'}",
       "--batch_size=2"], cwd=ROOT, capture_output=True, text=True,
      timeout=300, check=False, env=dict(
          os.environ, JAX_COMPILATION_CACHE_DIR=(
              jax.config.jax_compilation_cache_dir or "")))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Captioned 3 images" in out.stderr and "skipped 1." in out.stderr
  got_rows = [json.loads(line) for line in
              (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [r["caption"] for r in got_rows] == captions[:3]
  assert got_rows[0]["image"] == str(folder / "0.png")
  # A source spec, in process: the same captions; sampling with top_k = 1
  # is greedy, and sampled rows do not depend on the chunk size.
  items = caption_cli.list_images(block.data, "test", limit=4)
  written = []
  caption_cli.caption_all(predictor, items, written.append, progress=False)
  assert [r["caption"] for r in written] == captions[:4]
  assert [r["image"] for r in written] == [0, 1, 2, 3]
  drawn = {}
  for chunk in (8, 16):
    drawn[chunk] = []
    caption_cli.caption_all(
        predictor, caption_cli.list_images(block.data, "test", limit=16),
        drawn[chunk].append, chunk=chunk, progress=False, temperature=1.0,
        seed=3)
  assert drawn[8] == drawn[16]
  with pytest.raises(ValueError, match="no 'refs' field"):
    block.captions_key = "refs"
    evaluators.make_evaluators(config, model, mesh)
  image = jnp.zeros((2, 32, 32, 3), jnp.float32)
  tokens = decode.greedy(model, params, image, start_id=START, end_id=END)
  assert tokens.shape == (2, 23)
  np.testing.assert_array_equal(
      tokens, decode.greedy_uncached(model, params, image, start_id=START,
                                     end_id=END))



@pytest.mark.slow
def test_cappa_captions_far_above_the_caption_agnostic_baseline(demo_data,
                                                                 tmp_path):
  """configs/cappa.py at its runlocal sizes trained 300 steps of 32 at lr
  3e-3, teacher-forced (parallel=0): its greedy captions of the 64 runlocal
  test images against the most frequent training caption ("a yellow square
  shape") given to every image.

  Measured (2026-12-07, 2 CPU cores): at 300 steps (about 2.2 min alone)
  CIDEr-D 0.861 / 0.675 / 1.210 (seeds 0 / 1 / 2; the test runs seed 0)
  against the baseline's 0.390; the thresholds 0.55 and 1.4x the baseline
  sit 0.125 under the lowest seed. At 600 steps (4.5 min, the test's
  length until the suite neared its 30-minute bound) 1.574 / 1.465 /
  1.627. What does not get there: the runlocal lr 1e-3 (set for its 20
  steps; 300 steps scored 0.0, every caption "a a a ..."), and parallel
  prediction at the paper's 0.75 (600 steps: 1.371 for seed 0 but 0.395
  for seed 1, whose captions name the right shape and colour and then never
  end: "a purple cross on a small small small ..."; only a quarter of the
  examples teach the decoder when to stop).
  """
  del demo_data
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl import train as train_lib  # pylint: disable=g-import-not-at-top
  from big_vl.data import sources  # pylint: disable=g-import-not-at-top
  from big_vl.evaluators import caption_metrics  # pylint: disable=g-import-not-at-top
  from big_vl.evaluators import captioning  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(
      os.path.join(ROOT, "configs", "cappa.py")
      + ":runlocal,steps=300,parallel=0")
  config.lr = 3e-3
  config.mesh = (("data", 1),)
  config.log_steps = 100
  result = train_lib.train(config, str(tmp_path), devices=jax.devices()[:1])
  cider = result["final"]["captioning/demo_shapes/cider"]
  block = config.evals.captioning
  caption, base = captioning.majority_baseline(block.data, block.split)
  # The baseline by hand: count the training captions, score the winner.
  import collections  # pylint: disable=g-import-not-at-top
  train = sources.get(block.data, split="train")
  counts = collections.Counter(c.decode() for i in range(len(train))
                               for c in train[i]["captions"])
  assert caption == counts.most_common(1)[0][0] == "a yellow square shape"
  test = sources.get(block.data, split=block.split)
  refs = [[c.decode() for c in test[i]["captions"]] for i in range(64)]
  assert base == pytest.approx(caption_metrics.cider_d([caption] * 64,
                                                       refs)[0])
  assert base == pytest.approx(0.390, abs=0.001)
  assert cider > 0.55 and cider > 1.4 * base, (cider, base)


def test_guidance_one_is_conditional_and_zero_unconditional():
  model = _model(uncond_prob=0.5)
  params = _params(model, seed=5)
  image, _ = _inputs(batch=4, seed=2)
  kw = dict(start_id=48, end_id=49)
  cond = decode.greedy(model, params, image, **kw)
  np.testing.assert_array_equal(
      decode.greedy(model, params, image, guidance=1.0, **kw), cond)
  # gamma = 0: p(c) alone, the same caption for every image.
  uncond = decode.greedy(model, params, image, guidance=0.0, **kw)
  assert len({tuple(r) for r in np.asarray(uncond).tolist()}) == 1
  for gamma in (0.0, 2.5):
    np.testing.assert_array_equal(
        decode.greedy(model, params, image, guidance=gamma, **kw),
        decode.greedy_uncached(model, params, image, guidance=gamma, **kw))
  # Guidance above 1 moves away from the unconditional caption.
  strong = decode.greedy(model, params, image, guidance=4.0, **kw)
  assert strong.shape == cond.shape


def _sequence_logp(model, params, image, tokens, start, end):
  """Summed log-probability of each row's tokens up to its first `end`
  (included), by teacher forcing without a cache."""
  memory = model.apply({"params": params}, image,
                       method=captioner_lib.Captioner.encode)
  inputs = jnp.concatenate(
      [jnp.full((tokens.shape[0], 1), start, jnp.int32), tokens[:, :-1]], 1)
  logp = jax.nn.log_softmax(model.apply(
      {"params": params}, inputs, memory,
      method=captioner_lib.Captioner.decode_tokens), axis=-1)
  picked = np.take_along_axis(np.asarray(logp), np.asarray(tokens)[..., None],
                              -1)[..., 0]
  seen_end = np.cumsum(np.asarray(tokens) == end, axis=1)
  counted = (seen_end == 0) | ((seen_end == 1) & (np.asarray(tokens) == end))
  return (picked * counted).sum(1)


def test_beam_search_finds_at_least_greedy_and_beam_one_is_greedy():
  model = _model()
  params = _params(model, seed=7)
  # A likely end token, so that hypotheses finish at different lengths.
  params["decoder"]["head"]["bias"] = params["decoder"]["head"]["bias"].at[
      49].set(2.0)
  image, _ = _inputs(batch=4, seed=3)
  kw = dict(start_id=48, end_id=49)
  greedy_tokens = decode.greedy(model, params, image, **kw)
  one, one_scores = decode.beam_search(model, params, image, beam=1, **kw)
  np.testing.assert_array_equal(one, greedy_tokens)
  wide, scores = decode.beam_search(model, params, image, beam=4, **kw)
  # Its scores are the log-probabilities of what it returns ...
  np.testing.assert_allclose(
      scores, _sequence_logp(model, params, image, wide, 48, 49), atol=1e-4)
  np.testing.assert_allclose(
      one_scores, _sequence_logp(model, params, image, one, 48, 49),
      atol=1e-4)
  # With a beam as wide as every prefix, beam search is exhaustive: on a
  # 6-token vocabulary and 3 steps it finds the best of all 216 captions.
  small = captioner_lib.Captioner(
      image={"variant": "mu/8"},
      decoder={"width": 16, "depth": 1, "mlp_dim": 32, "num_heads": 2},
      vocab_size=6, max_len=4)
  params = small.init(jax.random.PRNGKey(0), image, jnp.zeros(
      (4, 4), jnp.int32))["params"]
  params["decoder"]["head"]["kernel"] = jax.random.normal(
      jax.random.PRNGKey(1), params["decoder"]["head"]["kernel"].shape)
  every = np.array(np.meshgrid(*[np.arange(6)] * 3, indexing="ij")).reshape(
      3, -1).T.astype(np.int32)  # [216, 3]
  best = []
  for b in range(4):
    logp = _sequence_logp(small, params, jnp.repeat(image[b:b + 1], 216, 0),
                          jnp.asarray(every), 4, 5)
    best.append(logp.max())
  _, scores = decode.beam_search(small, params, image, beam=36, start_id=4,
                                 end_id=5)
  np.testing.assert_allclose(scores, best, atol=1e-5)
  narrow, narrow_scores = decode.beam_search(small, params, image, beam=2,
                                             start_id=4, end_id=5)
  assert np.all(np.asarray(narrow_scores) <= np.asarray(best) + 1e-5)


def test_filter_scores_keeps_the_top_k_and_the_nucleus():
  probs = jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05],
                       [0.05, 0.1, 0.15, 0.2, 0.5]])
  scores = jnp.log(probs)
  kept = lambda s: np.isfinite(np.asarray(s)).tolist()
  assert kept(decode.sampling.filter_scores(scores, top_k=2)) == [
      [True, True, False, False, False], [False, False, False, True, True]]
  # 0.5 + 0.2 = 0.7 < 0.8: the token that crosses 0.8 (0.15) is kept too.
  assert kept(decode.sampling.filter_scores(scores, top_p=0.8)) == [
      [True, True, True, False, False], [False, False, True, True, True]]
  assert kept(decode.sampling.filter_scores(scores, top_p=0.7))[0] == [
      True, True, False, False, False]
  assert kept(decode.sampling.filter_scores(scores, top_p=0.01))[0] == [
      True, False, False, False, False]
  assert kept(decode.sampling.filter_scores(scores, top_k=3, top_p=0.6))[
      0] == [True, True, False, False, False]
  np.testing.assert_array_equal(
      decode.sampling.filter_scores(scores, top_k=5, top_p=1.0), scores)
  for bad in (dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0),
              dict(top_p=1.5)):
    with pytest.raises(ValueError, match=next(iter(bad))):
      decode.sample(_model(), None, None, None, start_id=48, end_id=49,
                    **bad)


def test_sampling_draws_from_the_cut_distribution():
  model = _model()
  params = _params(model, seed=11)
  image, _ = _inputs(batch=1, seed=4)
  kw = dict(start_id=48, end_id=49)
  many = jnp.repeat(image, 4000, axis=0)
  # The first token's distribution, by teacher forcing.
  memory = model.apply({"params": params}, image,
                       method=captioner_lib.Captioner.encode)
  logp = jax.nn.log_softmax(model.apply(
      {"params": params}, jnp.full((1, 1), 48, jnp.int32), memory,
      method=captioner_lib.Captioner.decode_tokens)[0, 0])
  for temperature, top_k in ((1.0, None), (0.5, 3)):
    want = jax.nn.softmax(decode.sampling.filter_scores(
        logp[None] / temperature, top_k=top_k))[0]
    first = np.asarray(decode.sample(
        model, params, many, jax.random.PRNGKey(0), temperature=temperature,
        top_k=top_k, **kw))[:, 0]
    seen = np.bincount(first, minlength=50) / len(first)
    sigma = np.sqrt(np.asarray(want) * (1 - np.asarray(want)) / len(first))
    assert np.all(np.abs(seen - want) <= 5 * sigma + 1e-9), temperature
    if top_k is not None:
      assert set(first.tolist()) <= set(np.argsort(-np.asarray(logp))[
          :top_k].tolist())
  # Every later token too stays inside the top k of its prefix's
  # distribution (checked by teacher forcing the sampled captions).
  image4, _ = _inputs(batch=4, seed=5)
  drawn = decode.sample(model, params, image4, jax.random.PRNGKey(1),
                        top_k=2, **kw)
  mem4 = model.apply({"params": params}, image4,
                     method=captioner_lib.Captioner.encode)
  inputs = jnp.concatenate([jnp.full((4, 1), 48, jnp.int32), drawn[:, :-1]],
                           1)
  forced = model.apply({"params": params}, inputs, mem4,
                       method=captioner_lib.Captioner.decode_tokens)
  rank = (np.asarray(forced) > np.take_along_axis(
      np.asarray(forced), np.asarray(drawn)[..., None], -1)).sum(-1)
  live = np.cumsum(np.asarray(drawn) == 49, axis=1) - (
      np.asarray(drawn) == 49) == 0
  assert rank[live].max() <= 1
  # The same key draws the same captions; another key others; top_k = 1
  # and temperature 0 are greedy.
  again = decode.sample(model, params, image4, jax.random.PRNGKey(1),
                        top_k=2, **kw)
  np.testing.assert_array_equal(drawn, again)
  other = decode.sample(model, params, image4, jax.random.PRNGKey(2),
                        top_k=2, **kw)
  assert not np.array_equal(drawn, other)
  greedy = decode.greedy(model, params, image4, **kw)
  for options in (dict(top_k=1), dict(temperature=0.0),
                  dict(top_p=1e-6, temperature=3.0)):
    np.testing.assert_array_equal(
        decode.sample(model, params, image4, jax.random.PRNGKey(3),
                      **options, **kw), greedy)


def test_decoding_sharded_over_8_devices_equals_one_device():
  from jax.sharding import NamedSharding, PartitionSpec as P
  assert jax.device_count() == 8
  model = _model(uncond_prob=0.5)
  params = _params(model, seed=13)
  image, _ = _inputs(batch=16, seed=6)
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.device_put(image, NamedSharding(mesh, P("data")))
  replicated = jax.device_put(params, NamedSharding(mesh, P()))
  one = jax.devices()[0]
  single = (jax.device_put(image, one), jax.device_put(params, one))
  kw = dict(start_id=48, end_id=49)
  runs = {
      "greedy": lambda p, x: decode.greedy(model, p, x, **kw),
      "guidance": lambda p, x: decode.greedy(model, p, x, guidance=2.0, **kw),
      "beam": lambda p, x: decode.beam_search(model, p, x, beam=3, **kw)[0],
      "sample": lambda p, x: decode.sample(model, p, x, jax.random.PRNGKey(4),
                                           top_k=5, **kw),
  }
  for name, run in runs.items():
    out = run(replicated, sharded)
    assert len(out.sharding.device_set) == 8, name
    np.testing.assert_array_equal(out, run(single[1], single[0]),
                                  err_msg=name)


def _decoder_model(**decoder):
  return captioner_lib.Captioner(
      image={"variant": "mu/8"},
      decoder={"width": 32, "depth": 3, "mlp_dim": 64, "num_heads": 4,
               **decoder},
      vocab_size=50, max_len=9)


def _with_stacked_decoder(params):
  return {**params, "decoder": common.stack_block_params(params["decoder"],
                                                         3)}


def _caption_loss_and_grads(model, params, image, text, **jit_kw):
  def loss(p):
    logits = model.apply({"params": p}, image, text)
    return losses.get("caption")({"logits": logits}, {"text": text})[0]
  return jax.jit(jax.value_and_grad(loss), **jit_kw)(params)


def _assert_grads_close(got, want, rtol):
  """Every gradient within rtol of the largest one of its tree."""
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want))
  for path, g, w in zip(paths.leaf_paths(want), jax.tree.leaves(got),
                        jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, atol=rtol * scale, err_msg=path)


def test_scanned_and_rematerialised_decoders_equal_the_plain_one():
  """`decoder.scan` stacks the blocks (params and, decoding, KV caches);
  `remat_policy` recomputes them in the backward pass: the same logits,
  captions (greedy, beam 3) and gradients as the plain decoder."""
  plain = _decoder_model()
  params = _params(plain, seed=5)
  image, text = _inputs(batch=3, seed=2)
  stacked = _with_stacked_decoder(params)
  assert "decoderblock" in stacked["decoder"]
  assert stacked["decoder"]["decoderblock"]["MlpBlock_0"]["Dense_0"][
      "kernel"].shape == (3, 32, 64)
  back = common.unstack_block_params(stacked["decoder"])
  assert jax.tree.structure(back) == jax.tree.structure(params["decoder"])
  scanned = _decoder_model(scan=True)
  shapes = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), image,
                          text)["params"]
  assert jax.tree.structure(shapes) == jax.tree.structure(stacked)
  want = plain.apply({"params": params}, image, text)
  np.testing.assert_allclose(scanned.apply({"params": stacked}, image, text),
                             want, atol=2e-5, rtol=1e-5)
  # Several rows per image (LocCa) through the scanned blocks.
  rows = jnp.stack([text, text[::-1]], axis=1)
  np.testing.assert_allclose(
      scanned.apply({"params": stacked}, image, rows)[:, 0], want,
      atol=2e-5, rtol=1e-5)
  kw = dict(start_id=48, end_id=49)
  np.testing.assert_array_equal(
      decode.greedy(scanned, stacked, image, **kw),
      decode.greedy(plain, params, image, **kw))
  # Beam search reorders the stacked caches along their row axis.
  np.testing.assert_array_equal(
      decode.beam_search(scanned, stacked, image, beam=3, **kw)[0],
      decode.beam_search(plain, params, image, beam=3, **kw)[0])
  loss, grads = _caption_loss_and_grads(plain, params, image, text)
  for policy in ("full", "dots_saveable"):
    for scan in (False, True):
      model = _decoder_model(remat_policy=policy, scan=scan)
      p = stacked if scan else params
      got_loss, got = _caption_loss_and_grads(model, p, image, text)
      np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
      if scan:
        got = {**got, "decoder": common.unstack_block_params(got["decoder"])}
      _assert_grads_close(got, grads, 1e-5)
  with pytest.raises(ValueError, match="unknown remat_policy 'most'"):
    _decoder_model(remat_policy="most").init(jax.random.PRNGKey(0), image,
                                             text)


def test_decoder_tensor_parallel_equals_one_device():
  """Megatron rules split the decoder's self- and cross-attention heads and
  MLP over "model" (data 2 x model 4): the same loss and gradients."""
  from jax.sharding import PartitionSpec as P
  mesh = sharding.make_mesh((("data", 2), ("model", 4)))
  model = _decoder_model()
  params = _params(model, seed=7)
  image, text = _inputs(batch=4, seed=3)
  loss, grads = _caption_loss_and_grads(model, params, image, text)
  rules = (("img/.*", "replicate"), *sharding.TENSOR_PARALLEL_RULES,
           (".*", "replicate"))
  shardings = sharding.tree_shardings(params, mesh, rules)
  block = shardings["decoder"]["decoderblock_1"]
  assert block["SelfAttention"]["query"]["kernel"].spec == P(
      None, "model", None)
  assert block["CrossAttention"]["out"]["kernel"].spec == P(
      "model", None, None)
  assert block["MlpBlock_0"]["Dense_0"]["kernel"].spec == P(None, "model")
  got_loss, got = _caption_loss_and_grads(
      model, jax.device_put(params, shardings),
      *jax.device_put((image, text), sharding.batch_sharding(mesh)),
      out_shardings=(None, shardings))
  kernel = got["decoder"]["decoderblock_1"]["MlpBlock_0"]["Dense_0"]["kernel"]
  assert {s.data.shape for s in kernel.addressable_shards} == {(32, 16)}
  np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
  _assert_grads_close(jax.device_get(got), grads, 1e-5)


def test_caption_scoring_is_the_likelihood_of_each_class_prompt(demo_data):
  """The evaluator's class scores are the mean over templates of each
  prompt's summed token log-probability (a plain teacher-forced twin)."""
  del demo_data
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl import evaluators  # pylint: disable=g-import-not-at-top
  from big_vl import sharding  # pylint: disable=g-import-not-at-top
  from big_vl.data import pp as pp_lib  # pylint: disable=g-import-not-at-top
  from big_vl.data import sources  # pylint: disable=g-import-not-at-top
  from big_vl.evaluators import caption_scoring  # pylint: disable=g-import-not-at-top
  from big_vl.evaluators import zeroshot  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  model = captioner_lib.Captioner(
      image={"variant": "mu/8"},
      decoder={"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 2},
      max_len=12)
  image = jnp.zeros((2, 16, 16, 3))
  params = model.init(jax.random.PRNGKey(0), image,
                      jnp.zeros((2, 12), jnp.int32))["params"]
  params["decoder"]["head"]["kernel"] = 0.3 * jax.random.normal(
      jax.random.PRNGKey(1), params["decoder"]["head"]["kernel"].shape)
  pp = config_lib.demo_pp(16, 12)
  templates = ["a {}.", "a photo of a {}."]
  config = ml_collections.ConfigDict(dict(
      model_name="captioner", evals=dict(scored=dict(
          type="caption_scoring", data=config_lib.DEMO_DATA,
          split="test[:12]", pp_img=pp.zeroshot_img, pp_txt=pp.text,
          templates=templates, batch_size=8))))
  mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
  (_, _, ev), = evaluators.make_evaluators(config, model, mesh)
  got = dict(ev.run(params))
  # The twin: one image and one prompt at a time.
  source = sources.get(config_lib.DEMO_DATA, split="test")
  img_fn, txt_fn = pp_lib.build(pp.zeroshot_img), pp_lib.build(pp.text)
  rows = [img_fn(source[i]) for i in range(12)]
  names = ev.class_names
  prompts = [t.format(name) for name in names for t in templates]

  @jax.jit
  def one(image, tokens):  # One image, one prompt: teacher forcing.
    memory = model.apply({"params": params}, image[None], method="encode")
    logp = jax.nn.log_softmax(model.apply(
        {"params": params}, tokens[None, :-1], memory,
        method="decode_tokens")[0])
    picked = logp[jnp.arange(tokens.shape[0] - 1), tokens[1:]]
    return jnp.sum(jnp.where(tokens[1:] != 0, picked, 0.0))

  loglik = np.zeros((12, len(prompts)))
  for k, prompt in enumerate(prompts):
    tokens = jnp.asarray(txt_fn({"text": prompt})["text"])
    for i, row in enumerate(rows):
      loglik[i, k] = float(one(row["image"], tokens))
  scores = loglik.reshape(12, len(names), len(templates)).mean(axis=2)
  labels = np.array([r["label"] for r in rows])
  want = zeroshot.classification_metrics(scores, labels, len(names))
  for key, value in want.items():
    assert got[f"zeroshot/demo_shapes/{key}"] == pytest.approx(value), key
  assert got["zeroshot/demo_shapes/skipped"] == 0
  # Directly: the batched log-likelihoods equal the twin's sums.
  batch = jnp.stack([r["image"] for r in rows[:4]])
  fast = caption_scoring.prompt_log_likelihoods(
      model, params, batch, jnp.asarray(ev.tokens[:3]))
  np.testing.assert_allclose(fast, loglik[:4, :3], rtol=1e-4, atol=1e-3)


def test_a_prefix_is_forced_and_decoding_continues_after_it():
  model = _model(uncond_prob=0.5)
  params = _params(model, seed=17)
  image, _ = _inputs(batch=3, seed=7)
  kw = dict(start_id=48, end_id=49)
  plain = np.asarray(decode.greedy(model, params, image, **kw))
  # Row 0: two forced tokens; row 1: one; row 2: none (-1 throughout).
  prefix = np.array([[7, 8], [9, -1], [-1, -1]], np.int32)
  for guidance in (None, 2.0):
    got = np.asarray(decode.greedy(model, params, image, prefix=prefix,
                                   guidance=guidance, **kw))
    np.testing.assert_array_equal(
        got, decode.greedy_uncached(model, params, image, prefix=prefix,
                                    guidance=guidance, **kw))
    assert got[0, :2].tolist() == [7, 8] and got[1, 0] == 9
    if guidance is None:
      np.testing.assert_array_equal(got[2], plain[2])  # not forced
      assert got[0, 2:].tolist() != plain[0, 2:].tolist()  # continues
  # Sampling with top_k = 1 keeps the prefix and equals greedy.
  np.testing.assert_array_equal(
      decode.sample(model, params, image, jax.random.PRNGKey(0), top_k=1,
                    prefix=prefix, **kw),
      decode.greedy(model, params, image, prefix=prefix, **kw))
  with pytest.raises(ValueError, match="prefix"):
    decode.greedy(model, params, image, prefix=np.zeros((3, 9)), **kw)


def test_predictor_captions_continue_a_text_prefix():
  from big_vl import predict  # pylint: disable=g-import-not-at-top
  model = captioner_lib.Captioner(
      image={"variant": "mu/8"},
      decoder={"width": 32, "depth": 1, "mlp_dim": 64, "num_heads": 2},
      max_len=10)
  image = jnp.zeros((1, 16, 16, 3))
  params = model.init(jax.random.PRNGKey(0), image,
                      jnp.zeros((1, 10), jnp.int32))["params"]
  params["decoder"]["head"]["kernel"] = jax.random.normal(
      jax.random.PRNGKey(1), params["decoder"]["head"]["kernel"].shape)
  predictor = predict.Predictor(model, params, pp_img="value_range(-1,1)",
                                batch_size=2)
  pixels = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(
      np.float32)
  plain = predictor.caption_pixels(pixels)
  prompted = predictor.caption_pixels(pixels, prefix="a red circle")
  assert all(c.startswith("a red circle") for c in prompted), prompted
  assert prompted != plain
  with pytest.raises(ValueError, match="prefix"):
    predictor.caption_pixels(pixels, beam=2, prefix="a")


def test_captioning_skips_and_counts_a_corrupt_first_record(tmp_path):
  """A record that cannot be read, even the first, is skipped and counted;
  the others are captioned and scored."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from big_vl import registry  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  lines = ["{not json"]
  for i in range(2):
    Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(
        tmp_path / f"{i}.png")
    lines.append(json.dumps({"image": f"{i}.png",
                             "caption": [f"shape {i}", "a picture"]}))
  (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
  model = _model()
  ev = registry.get("evaluator", "captioning")(
      None, model=model, mesh=sharding.make_mesh([("data", 1)],
                                                 jax.devices()[:1]),
      data=f"jsonl:{tmp_path / 'pairs.jsonl'}", captions_key="caption",
      pp="decode|resize(16)|value_range(-1,1)|keep('image')", batch_size=4,
      start_id=48, end_id=49)
  got = dict(ev.run(_params(model)))
  assert got[f"captioning/{ev.name}/skipped"] == 1
  assert got[f"captioning/{ev.name}/skipped/bad_record"] == 1
  assert [i for i, _, _ in ev.last] == [1, 2]
  assert ev.last[1][2] == ["shape 1", "a picture"]
  assert 0.0 <= got[f"captioning/{ev.name}/cider"] < 10.0
