"""SigLIP 2's model: two towers with a LocCa decoder on the image tower
(`two_towers.Model(decoder=...)`), against the plain captioner it extends."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vl import decode
from big_vl import models
from big_vl.losses import caption as caption_loss
from big_vl.models import captioner
from big_vl.models import two_towers

DECODER = {"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 2}


def _model(**kw):
  return two_towers.Model(
      image={"variant": "mu/8", "pool_type": "map"},
      text={"variant": "mu", "vocab_size": 60, "max_len": 8}, out_dim=32,
      bias_init=-10.0, decoder=DECODER, vocab_size=60, max_len=8, **kw)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  image = jnp.asarray(rng.normal(size=(3, 32, 32, 3)), jnp.float32)
  text = jnp.asarray(rng.integers(1, 58, (3, 8)), jnp.int32)
  caption = jnp.asarray(rng.integers(1, 58, (3, 8)), jnp.int32)
  return image, text, caption


def _params(model, seed=0):
  image, text, caption = _inputs()
  params = model.init(jax.random.key(seed), image, text,
                      caption=caption)["params"]
  head = params["decoder"]["head"]  # Zero at init: give it values.
  head["kernel"] = jax.random.normal(jax.random.key(seed + 1),
                                     head["kernel"].shape)
  return params


def test_decoder_is_the_captioner_beside_two_towers():
  model = _model()
  params = _params(model)
  assert {"img", "txt", "t", "b", "decoder", "memory_proj",
          "null_memory"} == set(params)
  image, text, caption = _inputs()
  out = two_towers.outputs(model, {"params": params},
                           {"image": image, "text": text, "caption": caption})
  assert out["zimg"].shape == out["ztxt"].shape == (3, 32)
  assert out["logits"].shape == (3, 7, 60)
  # The same decoder and image tokens in a plain captioner.
  cap = captioner.Captioner(image={"variant": "mu/8", "pool_type": "map"},
                            decoder=DECODER, vocab_size=60, max_len=8)
  cap_params = {k: params[k] for k in ("decoder", "memory_proj",
                                       "null_memory")}
  cap_params["img"] = {k: v for k, v in params["img"].items() if k != "head"}
  want = captioner.outputs(cap, {"params": cap_params},
                           {"image": image, "text": caption})["logits"]
  np.testing.assert_allclose(out["logits"], want, atol=1e-5)
  kw = dict(start_id=58, end_id=59)
  np.testing.assert_array_equal(decode.greedy(model, params, image, **kw),
                                decode.greedy(cap, cap_params, image, **kw))
  assert captioner.decodes(model) and captioner.decodes(cap)
  assert not captioner.decodes(two_towers.Model(image={}, text={}))
  # Without "caption" in the batch: the two-tower outputs alone.
  plain = two_towers.outputs(model, {"params": params},
                             {"image": image, "text": text})
  assert "logits" not in plain
  np.testing.assert_array_equal(plain["zimg"], out["zimg"])


def test_caption_loss_reads_the_decoder_field():
  model = _model()
  params = _params(model)
  image, text, caption = _inputs()
  batch = {"image": image, "text": text, "caption": caption}
  out = two_towers.outputs(model, {"params": params}, batch)
  got, _ = caption_loss.caption_loss(out, batch, text_key="caption")
  want, _ = caption_loss.caption_loss({"logits": out["logits"]},
                                      {"text": caption})
  assert float(got) == float(want) > 0
  # A config of this model checks, decoder block included.
  models.check_config("two_towers", {
      "image": {"variant": "mu/8"}, "text": {"variant": "mu"},
      "decoder": DECODER, "vocab_size": 60, "max_len": 8})


def _runlocal(**changes):
  import os  # pylint: disable=g-import-not-at-top
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config(
      os.path.join(root, "configs", "siglip2.py") + ":runlocal,naflex,steps=8")
  config.evals = {}
  config.log_steps = 1
  for k, v in changes.items():
    config[k] = v
  return config


def _losses(workdir):
  import json  # pylint: disable=g-import-not-at-top
  with open(f"{workdir}/metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: {k: v for k, v in r.items() if k.startswith("train/")
                      and ("loss" in k or "active" in k)}
          for r in rows if "train/loss" in r}


@pytest.mark.slow
def test_runlocal_trains_every_objective_resumes_exactly_and_runs_fsdp(
    demo_data, tmp_path):
  """configs/siglip2.py:runlocal,naflex (sigmoid + LocCa decoder, and
  self-distillation on multi-crop views and masked prediction from 80% of
  the steps, NaFlex with padding): every objective
  trains; a run stopped and resumed equals the uninterrupted one bit for
  bit (EMA teacher included); an 8-device FSDP mesh follows the
  one-device run."""
  del demo_data
  from big_vl import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from big_vl import train as train_lib  # pylint: disable=g-import-not-at-top
  one = jax.devices()[:1]
  config = _runlocal(mesh=(("data", 1),))
  train_lib.train(config, str(tmp_path / "full"), devices=one)
  full = _losses(tmp_path / "full")
  assert sorted(full) == list(range(1, 9))
  # The self-supervised terms switch on at step round(0.8 * 8) = 6 (logged
  # as step 7), not before; the total is the weighted sum of the terms.
  for name in ("masked", "self_distillation"):
    assert [full[s][f"train/{name}/active"] for s in (6, 7)] == [0.0, 1.0]
    assert full[6][f"train/{name}/loss"] == 0.0 < full[7][f"train/{name}/loss"]
  for step in (6, 7, 8):
    on = float(step >= 7)
    want = (full[step]["train/contrastive/loss"]
            + full[step]["train/caption/loss"]
            + on * full[step]["train/self_distillation/loss"]
            + on * 0.25 * full[step]["train/masked/loss"])
    assert full[step]["train/loss"] == pytest.approx(want, rel=1e-5)
  for key in ("train/contrastive/loss", "train/caption/loss"):
    assert full[8][key] < full[1][key], (key, full[1][key], full[8][key])
  train_lib.train(config, str(tmp_path / "cut"), devices=one,
                  stop_after_steps=4)
  train_lib.train(config, str(tmp_path / "cut"), devices=one)
  assert _losses(tmp_path / "cut") == full
  a = ckpt_lib.restore_params(str(tmp_path / "full" / "checkpoints"), 8,
                              item="ema")
  b = ckpt_lib.restore_params(str(tmp_path / "cut" / "checkpoints"), 8,
                              item="ema")
  jax.tree.map(np.testing.assert_array_equal, a, b)
  fsdp = _runlocal(mesh=(("fsdp", 8),), sharding_rules=((".*", "fsdp"),))
  train_lib.train(fsdp, str(tmp_path / "fsdp"))
  sharded = _losses(tmp_path / "fsdp")
  for step in full:
    for key, value in full[step].items():
      np.testing.assert_allclose(sharded[step][key], value, rtol=2e-3,
                                 atol=1e-4, err_msg=f"{step} {key}")


def test_exported_encoder_drops_the_decoder_and_matches():
  from big_vl.convert import big_vision  # pylint: disable=g-import-not-at-top
  model = _model(token_features=True)
  params = _params(model)
  assert {"img_token_head", "txt_token_head"} <= set(params)
  config = {"name": "two_towers", "image": model.image, "text": model.text,
            "out_dim": 32, "bias_init": -10.0, "token_features": True,
            "decoder": DECODER, "vocab_size": 60, "max_len": 8}
  flat = big_vision.to_npz_dict(config, params, strict=False)
  assert not any(k.split("/")[1] in ("decoder", "memory_proj", "null_memory",
                                     "img_token_head", "txt_token_head")
                 for k in flat)
  back_config, back = big_vision.convert(flat)
  image, text, _ = _inputs()
  want = two_towers.outputs(model, {"params": params},
                            {"image": image, "text": text})
  got = two_towers.outputs(models.get(back_config), {"params": back},
                           {"image": image, "text": text})
  for key in ("zimg", "ztxt"):
    np.testing.assert_allclose(got[key], want[key], atol=1e-6)


def test_predictor_captions_naflex_images_whatever_their_padding():
  """A NaFlex SigLIP 2 model's `Predictor.caption` decodes the patch
  sequence with its positions: the captions equal `decode.greedy` on the
  NaFlex input, and a larger budget (more padding) changes nothing."""
  from big_vl import predict  # pylint: disable=g-import-not-at-top
  from big_vl.data import locca  # pylint: disable=g-import-not-at-top
  from big_vl.data import pp as pp_lib  # pylint: disable=g-import-not-at-top
  from big_vl.data import tokenizers  # pylint: disable=g-import-not-at-top
  model = two_towers.Model(
      image={"variant": "mu/8", "pool_type": "map", "posemb_grid": 4},
      text={"variant": "mu", "vocab_size": 60, "max_len": 8}, out_dim=32,
      decoder=DECODER, vocab_size=60, max_len=8)
  params = _params(model)
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, shape, np.uint8)
            for shape in ((32, 64, 3), (48, 32, 3), (40, 40, 3))]
  options = {"start_id": 58, "end_id": 59}
  spec = "naflex(20, 8)|value_range(-1,1)|keep('image','image_pos')"
  predictor = predict.Predictor(model, params, pp_img="decode|" + spec,
                                batch_size=2, caption_options=options)
  captions = predictor.caption(images)
  examples = [pp_lib.build(spec)({"image": x}, None) for x in images]
  patches = np.stack([e["image"] for e in examples])
  pos = np.stack([e["image_pos"] for e in examples])
  tokenizer = tokenizers.from_spec("clip_bpe")
  # 12 more padding slots (zeros at position -1) change nothing.
  for extra in (0, 12):
    padded = {"patches": jnp.asarray(np.pad(
        patches, ((0, 0), (0, extra), (0, 0), (0, 0), (0, 0)))),
              "pos": jnp.asarray(np.pad(pos, ((0, 0), (0, extra), (0, 0)),
                                        constant_values=-1))}
    tokens = decode.greedy(model, params, padded, **options)
    assert captions == [locca.text_of(tokenizer, np.asarray(row))
                        for row in tokens], extra
  assert len(set(captions)) > 1  # The images give different captions.
