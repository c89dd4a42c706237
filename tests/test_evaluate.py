"""big_vl.evaluate on a trained checkpoint, result files, exact eval padding."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vl import config as config_lib
from big_vl import evaluate as evaluate_lib
from big_vl import metrics as metrics_lib
from big_vl import registry
from big_vl import results as results_lib
from big_vl import train as train_lib
from big_vl.data import pp as pp_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_CONFIG = os.path.join(REPO, "configs", "eval", "demo.py")
CLIP_BENCHMARK_KEYS = {"dataset", "model", "pretrained", "task", "metrics",
                       "language"}


def _eval_metrics(metrics):
  return {k: v for k, v in metrics.items() if not k.startswith("eval_time/")}


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
  """A 2-step demo runlocal run on ONE device: (workdir, final metrics)."""
  del demo_data
  workdir = str(tmp_path_factory.mktemp("evaluate") / "run")
  config = config_lib.load_config_module(
      os.path.join(REPO, "configs", "demo.py")).get_config("runlocal")
  config.total_steps = 2
  config.log_steps = 1
  config.mesh = (("data", 1),)
  result = train_lib.train(config, workdir, devices=jax.devices()[:1])
  final = _eval_metrics(result["final"])
  assert "zeroshot/demo_shapes/top1" in final
  return workdir, final


@pytest.mark.slow
def test_evaluate_matches_the_trainer_and_writes_results(trained, tmp_path):
  workdir, final = trained
  # The trainer logged the same final metrics it returned.
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  logged = {k: v for r in rows if r["step"] == 2 for k, v in r.items()
            if k in final}
  assert logged == pytest.approx(final, abs=1e-6)

  # 8-device data-parallel eval mesh. Each device gets the per-device batch
  # of the 1-device training eval (512 / 8 = 64): XLA's CPU matmuls round
  # differently for other batch shapes, which flips near-ties (duplicate
  # captions) in ranks. The checkpoints folder works as well as the workdir.
  config = config_lib.load_config_module(EVAL_CONFIG).get_config(
      "runlocal,batch=512")
  result = evaluate_lib.evaluate(
      config, os.path.join(workdir, "checkpoints"), output=str(tmp_path))
  assert result["step"] == 2
  got = _eval_metrics(result["metrics"])
  assert set(got) == set(final)
  for key, value in final.items():
    assert got[key] == pytest.approx(value, abs=1e-6), key

  # CLIP_benchmark-format files, the same as the trainer's final ones.
  assert len(result["files"]) == 2
  mine = {os.path.basename(p): json.load(open(p)) for p in result["files"]}
  theirs_dir = os.path.join(workdir, "results")
  theirs = {n: json.load(open(os.path.join(theirs_dir, n)))
            for n in os.listdir(theirs_dir)}
  assert sorted(mine) == sorted(theirs) == [
      "demo_shapes_run-step2_two_towers_en_zeroshot_classification.json",
      "demo_shapes_run-step2_two_towers_en_zeroshot_retrieval.json"]
  for name, record in mine.items():
    assert set(record) == CLIP_BENCHMARK_KEYS
    assert record["metrics"] == pytest.approx(theirs[name]["metrics"],
                                              abs=1e-6)
  zs = mine["demo_shapes_run-step2_two_towers_en_zeroshot_classification.json"]
  assert zs["task"] == "zeroshot_classification"
  assert zs["dataset"] == "demo_shapes" and zs["model"] == "two_towers"
  assert zs["pretrained"] == "run-step2" and zs["language"] == "en"
  assert zs["metrics"] == pytest.approx({
      "acc1": final["zeroshot/demo_shapes/top1"],
      "acc5": final["zeroshot/demo_shapes/top5"],
      "mean_per_class_recall": final[
          "zeroshot/demo_shapes/mean_per_class_recall"],
      "skipped": 0}, abs=1e-6)  # no corrupt record in the demo data
  assert final["zeroshot/demo_shapes/skipped"] == 0
  assert final["retrieval/demo_shapes/skipped"] == 0
  rt = mine["demo_shapes_run-step2_two_towers_en_zeroshot_retrieval.json"]
  expected = {}
  for k in (1, 5, 10):  # image->text is "text retrieval" in CLIP_benchmark.
    expected[f"text_retrieval_recall@{k}"] = final[
        f"retrieval/demo_shapes/img2txt_r@{k}"]
    expected[f"image_retrieval_recall@{k}"] = final[
        f"retrieval/demo_shapes/txt2img_r@{k}"]
  for key, value in expected.items():  # (+ metrics without a CB name)
    assert rt["metrics"][key] == pytest.approx(value, abs=1e-6), key
  with open(tmp_path / "metrics.json") as f:
    assert json.load(f)["step"] == 2

  # Aggregation: one row per file, names then metrics.
  csv_out = tmp_path / "table.csv"
  results_lib.main(["aggregate", str(tmp_path / "results"),
                    "--out", str(csv_out)])
  lines = csv_out.read_text().splitlines()
  header = lines[0].split(",")
  assert header[:5] == ["dataset", "model", "pretrained", "task", "language"]
  assert header.index("image_retrieval_recall@5") < header.index(
      "image_retrieval_recall@10")
  rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
  assert [r["task"] for r in rows] == ["zeroshot_classification",
                                       "zeroshot_retrieval"]
  assert float(rows[0]["acc1"]) == pytest.approx(
      final["zeroshot/demo_shapes/top1"])
  assert rows[0]["text_retrieval_recall@5"] == ""
  assert float(rows[1]["text_retrieval_recall@5"]) == pytest.approx(
      final["retrieval/demo_shapes/img2txt_r@5"])
  md = results_lib.aggregate(str(tmp_path / "results"), "markdown")
  md_lines = md.splitlines()
  assert len(md_lines) == 4 and md_lines[1].startswith("|---")
  assert "| demo_shapes | two_towers | run-step2 | zeroshot_retrieval |" in md


@pytest.mark.slow
def test_cli_on_a_sharded_mesh(trained, tmp_path):
  """`python -m big_vl.evaluate`, params FSDP-sharded over (2 data x 4).

  Batch 512 over 8 data shards: 64 rows per device, as in training (see
  above).
  """
  workdir, final = trained
  env = dict(os.environ,
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = tmp_path / "eval"
  proc = subprocess.run(
      [sys.executable, "-m", "big_vl.evaluate",
       f"--config={EVAL_CONFIG}:runlocal,batch=512",
       f"--checkpoint={workdir}",
       f"--output={out}", "--step=2",
       "--config.mesh=(('data', 2), ('fsdp', 4))",
       "--config.sharding_rules=(('.*', 'fsdp'),)",
       "--config.pretrained=cli"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "zeroshot/demo_shapes/top1" in proc.stdout
  with open(out / "metrics.json") as f:
    got = json.load(f)
  for key, value in final.items():
    assert got[key] == pytest.approx(value, abs=1e-6), key
  assert sorted(os.listdir(out / "results")) == [
      "demo_shapes_cli_two_towers_en_zeroshot_classification.json",
      "demo_shapes_cli_two_towers_en_zeroshot_retrieval.json"]
  agg = subprocess.run(
      [sys.executable, "-m", "big_vl.results", "aggregate",
       str(out / "results"), "--format", "markdown"],
      cwd=REPO, capture_output=True, text=True, timeout=60)
  assert agg.returncode == 0, agg.stderr
  assert agg.stdout.count("| demo_shapes | two_towers | cli |") == 2


def test_unknown_eval_config_key_is_an_error(tmp_path):
  config = config_lib.load_config_module(EVAL_CONFIG).get_config("runlocal")
  config.unlock()
  config.mesh_shape = 1
  with pytest.raises(ValueError, match="config.mesh_shape"):
    evaluate_lib.evaluate(config, str(tmp_path))
  config = config_lib.load_config_module(EVAL_CONFIG).get_config("runlocal")
  with pytest.raises(FileNotFoundError, match="No checkpoints"):
    evaluate_lib.evaluate(config, str(tmp_path))


# A checkpoint that does not fit the eval config (issue 33, item 7).


def _param_shape_error():
  """flax's own error for params of another width: a Dense "img/proj"
  built for 4 inputs, applied to 6."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Tower(nn.Module):

    @nn.compact
    def __call__(self, x):
      return nn.Dense(2, name="proj")(x)

  class Model(nn.Module):

    @nn.compact
    def __call__(self, x):
      return Tower(name="img")(x)

  params = Model().init(jax.random.PRNGKey(0), jnp.ones([1, 4]))
  try:
    Model().apply(params, jnp.ones([1, 6]))
  except Exception as e:  # pylint: disable=broad-except
    return e
  raise AssertionError("applied params of another width")


def test_a_mismatch_names_the_parameter_both_shapes_and_the_matching_arg():
  from big_vl.evaluators import common  # pylint: disable=g-import-not-at-top
  error = common.InputMismatchError(_param_shape_error(),
                                    {"image": (6,), "texts": (5, 24)})
  assert (error.param, error.have, error.want) == (
      "img/proj/kernel", "(4, 2)", "(6, 2)")
  meta = {"input_shapes": {"image": [32, 32, 3], "text": [24]},
          "config_spec": "configs/demo.py:runlocal"}
  train_config = {"model": {"image": {"width": 64}, "text": {"width": 64}}}
  eval_config = config_lib.load_config_module(EVAL_CONFIG).get_config()
  message = evaluate_lib.mismatch_message(
      error, evaluator="zeroshot", step=7, ckpt_dir="/runs/a/checkpoints",
      meta=meta, train_config=train_config, eval_config=eval_config,
      config_spec="configs/eval/demo.py")
  assert message.splitlines() == [
      "Checkpoint 7 in /runs/a/checkpoints does not fit evaluator 'zeroshot'"
      " of the eval config: parameter img/proj/kernel is (4, 2) in the "
      "checkpoint, but the model builds (6, 2) for the evaluator's inputs.",
      "The run was trained on image 32x32x3, text 24 (--config=configs/"
      "demo.py:runlocal); the evaluator feeds image 6, texts 5x24.",
      "Evaluate with the run's config arguments: --config=configs/eval/"
      "demo.py:runlocal (or give the eval config the run's image size / "
      "text length)."]
  # An eval config `model` of another width is named key by key; a run
  # trained without an argument matches the eval config without one.
  eval_config.model = {"image": {"width": 128}, "text": {"width": 64}}
  meta["config_spec"] = "configs/demo.py"
  message = evaluate_lib.mismatch_message(
      error, evaluator="zeroshot", step=7, ckpt_dir="/c", meta=meta,
      train_config=train_config, eval_config=eval_config,
      config_spec="configs/eval/demo.py:runlocal")
  assert ("The eval config's `model` differs from the run's:\n"
          "  config.model.image.width: 64 -> 128\n"
          "Leave config.model unset" in message)
  assert message.endswith("--config=configs/eval/demo.py (or give the eval "
                          "config the run's image size / text length).")
  # Nothing recorded (an older checkpoint): the shapes it can give.
  message = evaluate_lib.mismatch_message(
      error, evaluator="zeroshot", step=7, ckpt_dir="/c", meta={},
      train_config=train_config, eval_config=config_lib.load_config_module(
          EVAL_CONFIG).get_config(), config_spec=None)
  assert ("The run was trained on inputs this checkpoint does not record; "
          "the evaluator feeds image 6, texts 5x24." in message)
  assert "`:runlocal` or `:res=N`" in message


@pytest.mark.slow
def test_cli_on_a_checkpoint_of_another_resolution(demo_data, tmp_path):
  del demo_data
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=(
      jax.config.jax_compilation_cache_dir or ""))

  def cli(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600,
                          check=False)

  run, out = tmp_path / "run", tmp_path / "eval"
  train = cli("big_vl.train", "--config=configs/demo.py:runlocal",
              f"--workdir={run}", "--config.total_steps=1",
              "--config.evals={}")
  assert train.returncode == 0, train.stderr[-3000:]
  # The full demo eval config feeds 64x64 images to a 32x32 run.
  bad = cli("big_vl.evaluate", "--config=configs/eval/demo.py",
            f"--checkpoint={run}", f"--output={out}")
  assert bad.returncode == 1, bad.stderr[-3000:]
  assert "Traceback" not in bad.stderr, bad.stderr[-3000:]
  error = bad.stderr[bad.stderr.index("ERROR: "):].strip().splitlines()
  assert error[0].startswith(
      f"ERROR: Checkpoint 1 in {run}/checkpoints does not fit evaluator ")
  assert ("parameter img/pos_embedding is (1, 16, 64) in the checkpoint, "
          "but the model builds (1, 64, 64)") in error[0]
  assert error[1].startswith(
      "The run was trained on image 32x32x3, text 24 (--config=configs/"
      "demo.py:runlocal); the evaluator feeds image 64x64x3")
  assert "--config=configs/eval/demo.py:runlocal" in error[2]
  assert not (out / "metrics.json").exists()
  # The command it names works.
  good = cli("big_vl.evaluate", "--config=configs/eval/demo.py:runlocal",
             f"--checkpoint={run}", f"--output={out}")
  assert good.returncode == 0, good.stderr[-3000:]
  assert (out / "metrics.json").exists()


# Exact evaluation: padding of the last batch must not change any number.

_TEXT_PP = "tokenize(max_len=8)"
_CLASSES = [f"class{i}" for i in range(10)]
_RNG = np.random.default_rng(0)
_PARAMS = {"w": _RNG.normal(size=(4 * 4 * 3, 16)).astype(np.float32),
           "t": _RNG.normal(size=(49408, 16)).astype(np.float32)}


def _examples(n):
  rng = np.random.default_rng(n)
  return [{"image": rng.normal(size=(4, 4, 3)).astype(np.float32),
           "label": np.int64(rng.integers(len(_CLASSES))),
           "texts": rng.integers(1, 500, size=(3, 8)).astype(np.int32)}
          for _ in range(n)]


@pytest.fixture
def list_source():
  """Registers source kind "evaltest" ("evaltest:N": N random examples)."""
  name = "evaltest"
  registry.get("source", "tfds")  # Loads the built-ins first.
  registry.register("source", name)(
      lambda n, *, split, data_dir=None: _examples(int(n)))
  yield name
  del registry._TABLES["source"][name]  # pylint: disable=protected-access


def _normalize(x, xnp):
  return x / xnp.linalg.norm(x, axis=-1, keepdims=True)


def _fake_predict(params, image=None, text=None, xnp=jnp):
  zimg = ztxt = None
  if image is not None:
    zimg = _normalize(image.reshape(image.shape[0], -1) @ params["w"], xnp)
  if text is not None:
    ztxt = _normalize(params["t"][text].sum(axis=1), xnp)
  return zimg, ztxt, {}


def _reference(n):
  """Unpadded numpy metrics of the fake model on `_examples(n)`."""
  ex = _examples(n)
  zimg, _, _ = _fake_predict(_PARAMS, image=np.stack(
      [e["image"] for e in ex]), xnp=np)
  labels = np.array([e["label"] for e in ex])
  tok = pp_lib.build(_TEXT_PP)
  class_tokens = np.stack([tok({"text": f"a {c}."})["text"]
                           for c in _CLASSES])
  _, zcls, _ = _fake_predict(_PARAMS, text=class_tokens, xnp=np)
  logits = zimg @ zcls.T
  top = np.argsort(-logits, axis=1)
  hit1 = top[:, 0] == labels
  hit5 = np.array([labels[i] in top[i, :5] for i in range(n)])
  out = {"zeroshot/evaltest/top1": hit1.mean(),
         "zeroshot/evaltest/top5": hit5.mean(),
         "zeroshot/evaltest/mean_per_class_recall": np.mean(
             [hit1[labels == c].mean() for c in np.unique(labels)])}
  texts = np.concatenate([e["texts"] for e in ex])  # 3 captions per image
  _, ztxt, _ = _fake_predict(_PARAMS, text=texts, xnp=np)
  owner = np.repeat(np.arange(n), 3)
  sim = zimg @ ztxt.T
  for k in (1, 5, 10):
    img2txt = [np.isin(np.argsort(-sim[i])[:k], np.where(owner == i)[0]).any()
               for i in range(n)]
    txt2img = [owner[j] in np.argsort(-sim[:, j])[:k]
               for j in range(len(texts))]
    out[f"retrieval/evaltest/img2txt_r@{k}"] = np.mean(img2txt)
    out[f"retrieval/evaltest/txt2img_r@{k}"] = np.mean(txt2img)
  return out


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_padded_evaluation_equals_unpadded_numpy(list_source, n):
  from big_vl import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh((("data", -1),))
  assert mesh.size == 8
  blocks = {
      "zeroshot": dict(data=f"{list_source}:{n}", split="test",
                       pp_img="keep('image','label')", pp_txt=_TEXT_PP,
                       templates=["a {}."], class_names=_CLASSES,
                       batch_size=64, name="evaltest"),
      "retrieval": dict(data=f"{list_source}:{n}", split="test",
                        pp="keep('image','texts')", batch_size=64,
                        name="evaltest"),
  }
  got = {}
  for kind, block in blocks.items():
    ev = registry.get("evaluator", kind)(_fake_predict, mesh=mesh, **block)
    got.update(dict(ev.run(_PARAMS)))
  expected = _reference(n)
  assert set(expected) <= set(got)  # Evaluators may add metrics.
  for key, value in expected.items():
    assert got[key] == pytest.approx(float(value), abs=1e-6), key
