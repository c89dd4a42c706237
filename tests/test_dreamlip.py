"""DreamLIP: multi-positive contrastive and grouping losses against loop
references, the sub-caption pp op, the long-caption field of the demo data,
and the config training the same with and without gradient accumulation."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vl import losses
from big_vl.losses import dreamlip
from big_vl.data import pp as pp_lib
from big_vl.data.builders import demo_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 5.0


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _data(b=4, k=3, n=5, d=8, seed=0):
  rng = np.random.default_rng(seed)
  zimg = _unit(rng.normal(size=(b, d)))
  ztxt = _unit(zimg[:, None] + rng.normal(size=(b, k, d)))
  patches = _unit(rng.normal(size=(b, n, d)))
  return (zimg.astype(np.float32), ztxt.astype(np.float32),
          patches.astype(np.float32))


def _lse(x):
  m = x.max()
  return m + np.log(np.exp(x - m).sum())


def test_losses_match_loop_references():
  zimg, ztxt, patches = _data()
  b, k, _ = ztxt.shape
  aux = {"t": jnp.float32(T), "img/ztokens": patches}
  loss, metrics = dreamlip.dreamlip_loss(zimg, ztxt, aux)
  texts = ztxt.reshape(b * k, -1)
  i2t = [_lse(T * zimg[i] @ texts.T) - T * zimg[i] @ ztxt[i, j]
         for i in range(b) for j in range(k)]
  t2i = [_lse(T * zimg @ ztxt[i, j]) - T * zimg[i] @ ztxt[i, j]
         for i in range(b) for j in range(k)]
  contrastive = (np.mean(i2t) + np.mean(t2i)) / 2
  np.testing.assert_allclose(metrics["contrastive_loss"], contrastive,
                             rtol=1e-5)
  grouped = []
  for i in range(b):
    for j in range(k):
      w = np.exp(T * patches[i] @ ztxt[i, j])
      grouped.append(_unit((w / w.sum()) @ patches[i]))
  grouped = np.stack(grouped)
  g_logits = T * grouped @ texts.T
  grouping = (np.mean([_lse(row) for row in g_logits] - np.diag(g_logits))
              + np.mean([_lse(col) for col in g_logits.T]
                        - np.diag(g_logits))) / 2
  np.testing.assert_allclose(metrics["grouping_loss"], grouping, rtol=1e-5)
  np.testing.assert_allclose(loss, contrastive + grouping, rtol=1e-5)


def test_one_sub_caption_without_grouping_is_the_softmax_loss():
  zimg, ztxt, _ = _data(b=6, k=1)
  aux = {"t": jnp.float32(T)}
  got, _ = dreamlip.dreamlip_loss(zimg, ztxt, aux, grouping_weight=0)
  want, _ = losses.softmax_loss(zimg, ztxt[:, 0], aux)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  with pytest.raises(ValueError, match="token_features"):
    dreamlip.dreamlip_loss(zimg, ztxt, aux)
  with pytest.raises(ValueError, match="impl"):
    dreamlip.dreamlip_loss(zimg, ztxt, aux, impl="blocked",
                                 grouping_weight=0)


def test_grouping_attends_to_the_patch_a_sentence_describes():
  # Patch 2 of the image is the sentence's direction: the pooled feature
  # lies (almost) on it.
  d = 6
  patches = np.eye(d, dtype=np.float32)[None, :4]        # [1, 4, d]
  sentence = np.eye(d, dtype=np.float32)[None, None, 2]  # [1, 1, d]
  grouped = dreamlip.grouped_patches(sentence, patches, 20.0)
  assert float(grouped[0, 0, 2]) > 0.99


def test_sample_sentences_and_the_long_caption_field():
  example = demo_shapes.generate_example("train", 0)
  sentences = example["long_caption"].split(". ")
  n_objects = len(example["objects"]["label"])
  assert len(sentences) == n_objects + 1   # one per object + background
  assert example["long_caption"].startswith("There is ")
  fn = pp_lib.build("sample_sentences(3)|tokenize(max_len=16, key='texts', "
                    "out='text')")
  out = fn(dict(example), np.random.default_rng(0))
  assert out["text"].shape == (3, 16)
  assert all(s.endswith(".") for s in out["texts"])
  assert set(out["texts"]) <= {s if s.endswith(".") else s + "."
                               for s in sentences}
  # Deterministic (evaluation) picks are the first sentences.
  assert pp_lib.build("sample_sentences(2)")(dict(example), None)[
      "texts"] == [s if s.endswith(".") else s + "." for s in sentences[:2]]


@pytest.mark.slow
def test_dreamlip_config_trains_the_same_with_accumulation(tmp_path,
                                                           demo_data):
  del demo_data
  from big_vl import config as config_lib  # pylint: disable=g-import-not-at-top
  from big_vl import train  # pylint: disable=g-import-not-at-top
  runs = {}
  for accum in (1, 2):
    config = config_lib.load_config_module(os.path.join(
        ROOT, "configs", "dreamlip.py")).get_config("runlocal")
    config.total_steps, config.log_steps, config.evals = 6, 1, {}
    config.grad_accum_steps = accum
    result = train.train(config, str(tmp_path / f"accum{accum}"))
    runs[accum] = [result["losses"][s] for s in range(1, 7)]
  np.testing.assert_allclose(runs[2], runs[1], rtol=1e-4)
  assert runs[1][-1] < runs[1][0]


@pytest.mark.parametrize("grouping_weight", [0.0, 1.0])
@pytest.mark.parametrize("mesh_config", [[("data", 8)],
                                         [("data", 2), ("fsdp", 4)]])
def test_ring_equals_dense(mesh_config, grouping_weight):
  from big_vl import sharding  # pylint: disable=g-import-not-at-top
  zimg, ztxt, patches = _data(b=16, k=3, n=5)

  def grad(impl, mesh):
    def f(zi, zt, p, t_):
      loss, metrics = dreamlip.dreamlip_loss(
          zi, zt, {"t": t_, "img/ztokens": p}, mesh=mesh, impl=impl,
          grouping_weight=grouping_weight)
      return loss, metrics
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3),
                                      has_aux=True))

  t = jnp.float32(T)
  (want, want_m), want_g = grad("dense", None)(zimg, ztxt, patches, t)
  mesh = sharding.make_mesh(mesh_config)
  rows = sharding.batch_sharding(mesh)
  (got, got_m), got_g = grad("ring", mesh)(
      *jax.device_put((zimg, ztxt, patches), rows), t)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for k in want_m:
    np.testing.assert_allclose(got_m[k], want_m[k], rtol=1e-5, err_msg=k)
  for g, w in zip(got_g, want_g):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def test_sharded_over_8_devices_equals_one_device():
  from big_vl import sharding  # pylint: disable=g-import-not-at-top
  zimg, ztxt, patches = _data(b=16, k=3, n=5)
  t = jnp.float32(T)

  def f(zi, zt, p, t_):
    return dreamlip.dreamlip_loss(zi, zt, {"t": t_,
                                                 "img/ztokens": p})[0]

  grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
  one = jax.device_put((zimg, ztxt, patches), jax.devices()[0])
  want = grad(*one, t)
  mesh = sharding.make_mesh([("data", 8)])
  rows = sharding.batch_sharding(mesh)
  got = grad(*jax.device_put((zimg, ztxt, patches), rows), t)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for g, w in zip(got[1], want[1]):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(want[1][2])).sum() > 0   # grouping reaches patches


@pytest.mark.parametrize("impl,mesh_config", [("dense", None),
                                              ("ring", [("data", 8)])])
def test_naflex_padding_patches_are_not_grouped(impl, mesh_config):
  """NaFlex: 3 junk patches per image, masked by "img/mask", give the loss
  and gradients of the unpadded patches (dense and on an 8-device ring);
  unmasked, the junk would be grouped."""
  from big_vl import sharding  # pylint: disable=g-import-not-at-top
  zimg, ztxt, patches = _data(b=16, k=3, n=5)
  padded = np.concatenate([patches, -patches[:, :3]], axis=1)
  mask = np.broadcast_to(np.arange(8) < 5, (16, 8))
  mesh = mesh_config and sharding.make_mesh(mesh_config)
  put = (lambda a: a) if mesh is None else (
      lambda a: jax.device_put(a, sharding.batch_sharding(mesh)))

  def f(p, *m):
    aux = {"t": jnp.float32(T), "img/ztokens": p,
           **dict(zip(["img/mask"], m))}
    return dreamlip.dreamlip_loss(put(zimg), put(ztxt), aux, mesh=mesh,
                                  impl=impl)[0]

  want, want_g = jax.jit(jax.value_and_grad(f))(put(patches))
  got, got_g = jax.jit(jax.value_and_grad(f))(put(padded), put(mask))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(got_g)[:, :5], want_g, atol=1e-7)
  assert not np.asarray(got_g)[:, 5:].any()
  assert abs(float(jax.jit(f)(put(padded))) - float(want)) > 1e-3
