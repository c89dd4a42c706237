"""CoCa (big_vl/models/coca.py): its outputs, cached decoding, losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vl import decode
from big_vl import models
from big_vl.models import coca as coca_lib

TOWER = {"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 2}


def _model(**kw):
  return coca_lib.CoCa(image={"variant": "mu/8"}, text=TOWER, decoder=TOWER,
                       out_dim=32, vocab_size=50, max_len=9, num_queries=5,
                       pool_heads=2, **kw)


def _inputs(batch=3, seed=0, pad=True):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(batch, 16, 16, 3)).astype(np.float32)
  text = rng.integers(1, 48, size=(batch, 9)).astype(np.int32)
  text[:, 0] = 48
  if pad:
    text[0, 6:] = 0
  return jnp.asarray(image), jnp.asarray(text)


def _params(model, seed=0):
  image, text = _inputs()
  params = model.init(jax.random.PRNGKey(seed), image, text)["params"]
  head = params["dec"]["head"]
  params["dec"]["head"]["kernel"] = jax.random.normal(
      jax.random.PRNGKey(seed + 1), head["kernel"].shape)
  return params


def test_outputs_embed_and_caption():
  model = _model(bias_init=-5.0)
  params = _params(model)
  image, text = _inputs()
  fn = models.outputs_fn("coca")
  out = fn(model, {"params": params}, {"image": image, "text": text})
  assert out["zimg"].shape == (3, 32) and out["ztxt"].shape == (3, 32)
  assert out["logits"].shape == (3, 8, 50)
  np.testing.assert_allclose(jnp.linalg.norm(out["zimg"], axis=1), 1.0,
                             rtol=1e-5)
  assert float(out["b"]) == -5.0
  alone = fn(model, {"params": params}, {"image": image})
  np.testing.assert_allclose(alone["zimg"], out["zimg"], atol=1e-6)
  assert "logits" not in alone and "ztxt" not in alone
  text_only = fn(model, {"params": params}, {"text": text})
  np.testing.assert_allclose(text_only["ztxt"], out["ztxt"], atol=1e-6)
  assert sorted(fn(model, {"params": params}, {})) == ["b", "t", "t_log"]
  # The caption logits at a position read only the tokens before it.
  changed = text.at[1, 5].set(7)
  again = fn(model, {"params": params}, {"image": image, "text": changed})
  np.testing.assert_allclose(again["logits"][1, :5], out["logits"][1, :5],
                             atol=1e-5)
  assert not np.allclose(again["logits"][1, 5], out["logits"][1, 5])


def test_cached_decoding_equals_teacher_forcing_and_greedy_uncached():
  model = _model()
  params = _params(model, seed=2)
  image, text = _inputs(pad=False)
  forced = model.apply({"params": params}, image, text)["logits"]
  dec = model.clone(decode=True)
  memory = dec.apply({"params": params}, image, method="encode")
  _, cache = dec.apply({"params": params}, jnp.zeros_like(text[:, :-1]),
                       memory, method="decode_tokens", mutable=["cache"])
  for t in range(text.shape[1] - 1):
    logits, cache = dec.apply({"params": params, **cache}, text[:, t:t + 1],
                              memory, method="decode_tokens",
                              mutable=["cache"])
    np.testing.assert_allclose(logits[:, 0], forced[:, t], atol=1e-5,
                               rtol=1e-5, err_msg=f"step {t}")
  kw = dict(start_id=48, end_id=49)
  image4, _ = _inputs(batch=4, seed=1)
  cached = decode.greedy(model, params, image4, **kw)
  np.testing.assert_array_equal(
      cached, decode.greedy_uncached(model, params, image4, **kw))
  assert len({tuple(r) for r in np.asarray(cached).tolist()}) > 1
  one, _ = decode.beam_search(model, params, image4, beam=1, **kw)
  np.testing.assert_array_equal(one, cached)


# open_clip CoCa of a tiny size: the image tower (48) is wider than the
# embedding (32), so its pooler has separate q / k / v projections
# (`WIDE`); `NARROW` has the packed ones.
def _oc_config(width, length=12, vocab=64):
  return dict(
      embed_dim=32,
      vision_cfg=dict(image_size=32, layers=2, width=width, patch_size=8,
                      head_width=width // 2, attentional_pool=True,
                      attn_pooler_heads=2, attn_pooler_queries=6,
                      output_tokens=True),
      text_cfg=dict(context_length=length, vocab_size=vocab, width=32,
                    heads=2, layers=2, embed_cls=True, output_tokens=True),
      multimodal_cfg=dict(context_length=length, vocab_size=vocab, width=32,
                          heads=2, layers=2))


def _open_clip_greedy(model, torch, image, length, sot, eot):
  """open_clip's `CoCa.generate(generation_type="top_k", top_k=1)` loop
  (its forward on the whole prefix, argmax of the last position, pad after
  the end token). open_clip 3.3's `generate` itself imports transformers'
  `BeamSearchScorer`, which transformers 5 removed, so the loop is
  restated here with the model's own forward."""
  latent, embs = model._encode_image(image)  # pylint: disable=protected-access
  out = torch.full((image.shape[0], 1), sot, dtype=torch.long)
  for _ in range(length - 1):
    logits = model(image, out, image_latent=latent, image_embs=embs,
                   output_labels=False)["logits"][:, -1]
    token = logits.argmax(-1)
    done = (out[:, -1] == eot) | (out[:, -1] == 0)
    token = torch.where(done, torch.zeros_like(token), token)
    out = torch.cat([out, token[:, None]], 1)
  return out[:, 1:].numpy()


@pytest.mark.peer
@pytest.mark.parametrize("width", [48, 32])
def test_peer_open_clip_coca_import_and_export(width, tmp_path):
  torch = pytest.importorskip("torch")
  open_clip = pytest.importorskip("open_clip")
  from big_vl.convert import open_clip_coca as occ  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  config = _oc_config(width)
  peer = open_clip.CoCa(**config).eval()
  # open_clip leaves some tensors uninitialised (torch.empty, e.g. the
  # decoder's text_projection) and others at zero / one: draw them all.
  with torch.no_grad():
    for name, p in peer.named_parameters():
      if name != "logit_scale":
        norm = ".ln" in f".{name}" and name.endswith("weight")
        p.copy_(torch.randn_like(p) * (0.1 if p.ndim > 1 else 0.02)
                + (1.0 if norm else 0.0))
  state_dict = {k: v.numpy() for k, v in peer.state_dict().items()}
  model_config, params = occ.convert(state_dict, config)
  model = models.get(model_config)
  rng = np.random.default_rng(0)
  image = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
  text = rng.integers(1, 60, size=(3, 12)).astype(np.int64)
  text[:, 0], text[0, 7], text[0, 8:] = 62, 63, 0  # a padded caption too
  torch_image = torch.tensor(image).permute(0, 3, 1, 2)
  with torch.no_grad():
    theirs = peer(torch_image, torch.tensor(text))
  ours = models.outputs_fn("coca")(
      model, {"params": params},
      {"image": jnp.asarray(image), "text": jnp.asarray(text, jnp.int32)})
  for key, name in (("image_features", "zimg"), ("text_features", "ztxt"),
                    ("logits", "logits")):
    np.testing.assert_allclose(ours[name], theirs[key].numpy(), atol=1e-4,
                               rtol=1e-4, err_msg=key)
  assert float(ours["t"]) == pytest.approx(peer.logit_scale.exp().item())
  # Greedy captions: big_vl's cached decoder against open_clip's loop (the
  # last open_clip position is its forced end token, not compared).
  with torch.no_grad():
    want = _open_clip_greedy(peer, torch, torch_image, 12, 62, 63)
  got = decode.greedy(model, params, jnp.asarray(image), start_id=62,
                      end_id=63)
  np.testing.assert_array_equal(np.asarray(got)[:, :10], want[:, :10])
  # Export: open_clip loads it strictly and computes the same.
  oc_config, exported = occ.to_state_dict(model_config, params)
  assert oc_config.pop("custom_text")  # a model-config JSON key only
  back = open_clip.CoCa(**oc_config).eval()
  back.load_state_dict({k: torch.tensor(v) for k, v in exported.items()},
                       strict=True)
  with torch.no_grad():
    again = back(torch_image, torch.tensor(text))
  for key in ("image_features", "text_features", "logits"):
    np.testing.assert_allclose(again[key].numpy(), theirs[key].numpy(),
                               atol=1e-5, err_msg=key)
  # `python -m big_vl.export`'s files: open_clip builds the model by name.
  from big_vl import export  # pylint: disable=g-import-not-at-top
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  _, _, (weights, config_json) = export.export_open_clip(
      model_config, params, str(tmp_path / f"tiny_coca_{width}.safetensors"))
  open_clip.add_model_config(config_json)
  built = open_clip.create_model(f"tiny_coca_{width}").eval()
  built.load_state_dict(load_file(weights), strict=True)
  with torch.no_grad():
    np.testing.assert_allclose(
        built(torch_image, torch.tensor(text))["logits"].numpy(),
        theirs["logits"].numpy(), atol=1e-5)


@pytest.mark.peer
def test_peer_coca_arch_table_matches_open_clip():
  open_clip = pytest.importorskip("open_clip")
  from big_vl.convert import open_clip_coca as occ  # pylint: disable=g-import-not-at-top
  for name, config in occ.ARCHS.items():
    assert open_clip.get_model_config(name) == config, name
    mc = occ.model_config_from_open_clip(config)
    assert occ.arch_name(occ.open_clip_config(mc)) == name


def test_config_errors_and_the_cls_mask():
  image, text = _inputs()
  with pytest.raises(ValueError, match="must be equal"):
    coca_lib.CoCa(image={"variant": "mu/8"}, text=TOWER,
                  decoder={**TOWER, "width": 48}, out_dim=32, vocab_size=50,
                  max_len=9, num_queries=5).init(jax.random.PRNGKey(0),
                                                 image, text)
  with pytest.raises(ValueError, match="pool_type"):
    _model().clone(image={"variant": "mu/8", "pool_type": "gap"}).init(
        jax.random.PRNGKey(0), image, text)
  with pytest.raises(ValueError, match="unknown keys"):
    _model().clone(text={**TOWER, "causal": False}).init(
        jax.random.PRNGKey(0), image, text)
  # open_clip's mask: key 0 always, key j when token j - 1 is not padding
  # (the [CLS] key: the last token); the corrected one: key j when token j
  # is not padding, the [CLS] always.
  tokens = jnp.asarray([[5, 6, 0, 0]])
  assert coca_lib.text_key_mask(tokens, 0, False).tolist() == [
      [True, True, True, False, False]]
  assert coca_lib.text_key_mask(tokens, 0, True).tolist() == [
      [True, True, False, False, True]]
  # So the text embedding of a padded caption differs between the two.
  model = _model()
  params = _params(model)
  fn = models.outputs_fn("coca")
  plain = fn(model, {"params": params}, {"text": text})["ztxt"]
  fixed = fn(model.clone(correct_cls_mask=True), {"params": params},
             {"text": text})["ztxt"]
  assert not np.allclose(plain[0], fixed[0], atol=1e-4)  # padded row


@pytest.mark.slow
def test_coca_trains_on_the_demo_data(demo_data, tmp_path):
  del demo_data
  import os  # pylint: disable=g-import-not-at-top
  from big_vl import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from big_vl import predict  # pylint: disable=g-import-not-at-top
  from big_vl import train as train_lib  # pylint: disable=g-import-not-at-top
  from big_vl.data import sources  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config(os.path.join(root, "configs", "coca.py")
                                  + ":runlocal")
  config.mesh = (("data", 1),)
  result = train_lib.train(config, str(tmp_path), devices=jax.devices()[:1])
  assert result["step"] == 20
  final = result["final"]
  for key in ("zeroshot/demo_shapes/top1", "retrieval/demo_shapes/img2txt_r@1",
              "captioning/demo_shapes/cider",
              "captioning/demo_shapes/clip_score",
              "zeroshot/demo_shapes_scored/top1"):
    assert 0.0 <= final[key] <= 10.0, key
  rows = [r for r in metrics_lib.read_jsonl(tmp_path / "metrics.jsonl")
          if "train/caption/loss" in r]
  # Both objectives learn (measured: contrastive 3.62 -> 3.43, caption
  # 10.66 -> 9.84) and the step's loss is their weighted sum.
  for row in rows:
    assert row["train/loss"] == pytest.approx(
        row["train/contrastive/loss"] + 2.0 * row["train/caption/loss"],
        rel=1e-5)
  assert rows[-1]["train/caption/loss"] < rows[0]["train/caption/loss"] - 0.5
  assert (rows[-1]["train/contrastive/loss"]
          < rows[0]["train/contrastive/loss"] - 0.1)
  assert (tmp_path / "captions.jsonl").exists()
  # The trained model through Predictor: embeddings as the outputs function
  # gives them, captions as greedy decoding.
  params = ckpt_lib.restore_params(str(tmp_path / "checkpoints"), 20)
  model = train_lib.make_model(config)
  predictor = predict.Predictor.load(str(tmp_path), batch_size=8)
  source = sources.get(config.evals.captioning.data, split="test")
  images = [source[i]["image"] for i in range(4)]
  pixels = predictor.preprocess_images(images)
  want = models.outputs_fn("coca")(model, {"params": params},
                                   {"image": jnp.asarray(pixels)})["zimg"]
  np.testing.assert_allclose(predictor.embed_images(images), want,
                             atol=1e-5)
  tokens = decode.greedy(model, params, jnp.asarray(pixels), start_id=49406,
                         end_id=49407)
  from big_vl import registry  # pylint: disable=g-import-not-at-top
  tokenizer = registry.get("tokenizer", "clip_bpe")()
  assert predictor.caption(images) == [tokenizer.decode(r) for r in tokens]


def test_captioning_scores_with_the_run_s_own_coca(demo_data):
  """scorer="self": CLIPScore, RefCLIPScore and self-retrieval of the
  captions are those of the plain twin (the model's embeddings of the
  pp'd images, generated captions and references, `clip_score`)."""
  del demo_data
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl import evaluators  # pylint: disable=g-import-not-at-top
  from big_vl import sharding  # pylint: disable=g-import-not-at-top
  from big_vl.data import pp as pp_lib  # pylint: disable=g-import-not-at-top
  from big_vl.data import sources  # pylint: disable=g-import-not-at-top
  from big_vl.evaluators import clip_score  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  pp = config_lib.demo_pp(16, 9)
  model = coca_lib.CoCa(image={"variant": "mu/8"}, text=TOWER,
                        decoder=TOWER, out_dim=32, max_len=9, num_queries=5,
                        pool_heads=2)
  image, text = _inputs()
  params = model.init(jax.random.PRNGKey(0), image, text)["params"]
  # Captions of real words: the decoder's head favours a few word ids.
  head = np.zeros_like(params["dec"]["head"]["kernel"])
  head[:, 320:340] = np.random.default_rng(0).normal(size=(32, 20)) * 3
  params["dec"]["head"]["kernel"] = jnp.asarray(head)
  img_pp = pp.zeroshot_img.replace("|keep('image','label')", "|keep('image')")
  config = ml_collections.ConfigDict(dict(
      model_name="coca", evals=dict(captioning=dict(
          type="captioning", data=config_lib.DEMO_DATA, split="test[:16]",
          pp=img_pp, batch_size=8, scorer="self", scorer_pp_txt=pp.text))))
  mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
  (_, _, ev), = evaluators.make_evaluators(config, model, mesh)
  got = dict(ev.run(params))
  prefix = "captioning/demo_shapes"
  generated = [c for _, c, _ in ev.captions]
  assert got[f"{prefix}/empty_captions"] == sum(not c for c in generated)
  assert got[f"{prefix}/empty_captions"] < 16
  source = sources.get(config_lib.DEMO_DATA, split="test")
  img_fn, txt_fn = pp_lib.build(img_pp), pp_lib.build(pp.text)
  fn = models.outputs_fn("coca")
  variables = {"params": params}
  zimg = fn(model, variables, {"image": jnp.stack(
      [img_fn({"image": source[i]["image"]})["image"]
       for i in range(16)])})["zimg"]
  embed = lambda texts: np.asarray(fn(model, variables, {"text": jnp.stack(
      [txt_fn({"text": t})["text"] for t in texts])})["ztxt"])
  zcap = np.zeros((16, 32), np.float32)
  said = [i for i, c in enumerate(generated) if c]
  zcap[said] = embed([generated[i] for i in said])
  refs = [[c.decode() for c in source[i]["captions"]] for i in range(16)]
  zref = embed([r for rs in refs for r in rs])
  owner = [i for i, rs in enumerate(refs) for _ in rs]
  assert got[f"{prefix}/clip_score"] == pytest.approx(
      clip_score.clip_scores(zimg, zcap).mean(), abs=1e-5)
  assert got[f"{prefix}/ref_clip_score"] == pytest.approx(
      clip_score.ref_clip_scores(zimg, zcap, zref, owner).mean(), abs=1e-5)
  assert got[f"{prefix}/self_retrieval_r@1"] == pytest.approx(
      clip_score.self_retrieval(zimg, zcap)["r@1"])
  assert got[f"{prefix}/clip_score"] > 0
  with pytest.raises(ValueError, match="scorer_pp_txt"):
    config.evals.captioning.scorer_pp_txt = None
    evaluators.make_evaluators(config, model, mesh)


def _one_coca_step(grad_accum_steps):
  """(params before, after, metrics) of one trainer step of a tiny CoCa
  (contrastive + caption objectives), Adam with a huge eps so that the
  update is proportional to the gradient."""
  import os  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl import sharding  # pylint: disable=g-import-not-at-top
  from big_vl import train as train_lib  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config(os.path.join(root, "configs", "coca.py")
                                  + ":runlocal")
  config.evals = ml_collections.ConfigDict()
  config.mesh, config.sharding_rules = (("data", 1),), ((".*", "replicate"),)
  config.model.text = config.model.decoder = dict(TOWER)
  config.model.out_dim, config.model.num_queries = 32, 5
  config.model.pool_heads = 2
  config.lr, config.wd, config.grad_clip_norm = 1e3, 0.0, None
  config.optim = dict(name="adam", b1=0.9, b2=0.999, eps=1e3)
  config.schedule, config.warmup_steps = dict(name="constant"), 0
  config.total_steps = config.log_steps = config.ckpt_steps = 1
  config.grad_accum_steps = grad_accum_steps
  image, text = _inputs(batch=8, seed=3)
  batch = {"image": np.asarray(image), "text": np.asarray(text, np.int32)}
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  run = train_lib.build(config, mesh, {k: v[0] for k, v in batch.items()},
                        1, 0)
  state = run.init_state()
  before = jax.tree.map(np.array, state["params"])
  state, metrics = run.train_step(state, sharding.to_global(batch, mesh))
  return before, jax.tree.map(np.array, state["params"]), jax.device_get(
      metrics)


def test_accumulated_coca_step_equals_the_full_batch_step():
  """GradCache over CoCa's outputs (embeddings and caption logits): 2
  micro-batches give the full batch's update and losses."""
  before, full, m_full = _one_coca_step(1)
  moved = jax.tree.map(lambda x, y: np.abs(x - y).max(), before, full)
  assert max(jax.tree.leaves(moved)) > 0.1  # a real, gradient-sized step
  assert moved["dec"]["head"]["kernel"] > 1e-3  # the caption loss acts
  assert moved["t"] > 1e-3  # and the contrastive one
  _, acc, m_acc = _one_coca_step(2)
  # The updates (= the gradients here) agree to float32 rounding of the
  # summed micro-batch gradients (updates reach a few hundred; a param
  # without a gradient moves by its own rounding, ~1e-7).
  for x, y, b in zip(jax.tree.leaves(acc), jax.tree.leaves(full),
                     jax.tree.leaves(before)):
    np.testing.assert_allclose(x - b, y - b, rtol=1e-4,
                               atol=1e-6 * np.abs(y - b).max() + 1e-6)
  for key in ("train/loss", "train/caption/loss", "train/contrastive/loss"):
    np.testing.assert_allclose(m_acc[key], m_full[key], rtol=2e-6,
                               err_msg=key)


def test_rematerialised_coca_equals_the_plain_one():
  """remat_policy recomputes the text and decoder blocks in the backward
  pass: the same params (open_clip's names), outputs and gradients."""
  plain, remat = _model(), _model(remat_policy="full")
  params = _params(plain)
  image, text = _inputs()
  shapes = lambda p: jax.tree.map(jnp.shape, p)
  assert shapes(remat.init(jax.random.PRNGKey(0), image, text)["params"]) \
      == shapes(params)
  fn = models.outputs_fn("coca")

  def loss(model, p):
    out = fn(model, {"params": p}, {"image": image, "text": text},
             train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    return (jnp.sum(out["logits"] ** 2) + jnp.sum(out["zimg"] * out["ztxt"]),
            out)

  (want, out_plain), g_plain = jax.value_and_grad(
      lambda p: loss(plain, p), has_aux=True)(params)
  (got, out_remat), g_remat = jax.value_and_grad(
      lambda p: loss(remat, p), has_aux=True)(params)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(out_remat["logits"], out_plain["logits"],
                             atol=1e-5)
  # Equal to float32 rounding of gradients that reach a few hundred (a
  # param whose gradient is about 0 gets the rounding of that sum).
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g_plain))
  assert scale > 10.0
  for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale)
  # Checkpointed blocks show up in the jaxpr as remat calls.
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss(remat, p)[0]))(params))
  assert "remat" in jaxpr or "checkpoint" in jaxpr
  assert "remat" not in str(jax.make_jaxpr(
      jax.grad(lambda p: loss(plain, p)[0]))(params))
