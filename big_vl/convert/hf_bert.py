"""HF BERT-family text encoders (BERT, MiniLM, sentence-transformers) -> big_vl.

A Hugging Face `BertModel` maps onto a post-LN `TextTransformer` without a
projection head: word + position + token-type-0 embeddings, `embed_norm`,
post-LN blocks with exact (erf) GELU, LayerNorm epsilon from the config
(1e-12), attention that ignores [PAD] keys, and sentence-transformers'
pooling ("mean" over non-pad tokens, or "first" = [CLS]).

Example (all-MiniLM-L6-v2, a sentence-transformers folder)::

  from big_vl import models
  from big_vl.convert import hf_bert
  from big_vl.data import tokenizers
  model_config, params = hf_bert.load("/models/all-MiniLM-L6-v2")
  model = models.get(model_config)
  pp = hf_bert.preprocessing(model_config, "/models/all-MiniLM-L6-v2")
  tok = tokenizers.get(**pp["tokenizer"])
  text = tok(["A photo of a cat.", "a dog"])          # int32 [2, 256]
  _, ztxt, _ = model.apply({"params": params}, None, text)
  ztxt.shape                                          # (2, 384), unit rows

`ztxt` equals sentence-transformers' `encode(texts,
normalize_embeddings=True)` (tests/test_convert_hf_bert.py).

Parameter mapping (torch Linear weights are [out, in], flax kernels [in,
out]; H heads of width d = hidden / H):

  embeddings.word_embeddings            Embed_0/embedding
  embeddings.position_embeddings        pos_embedding [1, max_len, hidden]
  embeddings.token_type_embeddings      type_embedding [types, hidden]
  embeddings.LayerNorm                  embed_norm
  encoder.layer.{i}.attention.self.{query,key,value}
                                        .../MultiHeadDotProductAttention_0/
                                        {query,key,value} ([hidden, H, d])
  encoder.layer.{i}.attention.output.dense
                                        .../MultiHeadDotProductAttention_0/out
                                        ([H, d, hidden])
  encoder.layer.{i}.attention.output.LayerNorm    .../LayerNorm_0
  encoder.layer.{i}.intermediate.dense            .../MlpBlock_0/Dense_0
  encoder.layer.{i}.output.dense                  .../MlpBlock_0/Dense_1
  encoder.layer.{i}.output.LayerNorm              .../LayerNorm_1

with `...` = `Encoder_0/encoderblock_{i}`. `pooler.*` (BERT's [CLS] Dense +
tanh, unused by sentence encoders) is dropped.
"""

import json
import os

import numpy as np
import safetensors.numpy

# HF `hidden_act` -> big_vl activation name. HF's "gelu" is the exact (erf)
# GELU; "gelu_new" / "gelu_pytorch_tanh" are the tanh approximation.
_ACTIVATIONS = {
    "gelu": "gelu_exact",
    "gelu_python": "gelu_exact",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
}
_POOL_TYPES = {"mean": "mean", "cls": "first", "first": "first"}
_PREFIX = "bert."
# Names that are not tower weights: BERT's pooler, pre-training heads, buffers.
_IGNORED = ("pooler.", "cls.", "embeddings.position_ids",
            "embeddings.token_type_ids")


def _strip_prefix(state_dict):
  """Drops the "bert." prefix (BertFor* checkpoints) from every name."""
  return {n[len(_PREFIX):] if n.startswith(_PREFIX) else n: v
          for n, v in state_dict.items()}


def _f32(x):
  """A float32 numpy copy of a numpy / torch array."""
  if hasattr(x, "detach"):  # torch tensor
    x = x.detach().float().cpu().numpy()
  return np.array(x, dtype=np.float32)


def _layer_norm(sd, name):
  return {"scale": _f32(sd[f"{name}.weight"]), "bias": _f32(sd[f"{name}.bias"])}


def _dense(sd, name):
  return {"kernel": np.ascontiguousarray(_f32(sd[f"{name}.weight"]).T),
          "bias": _f32(sd[f"{name}.bias"])}


def _pool_type(pool_type):
  if pool_type not in _POOL_TYPES:
    raise ValueError(f"hf_bert: unknown pool_type {pool_type!r}; known: "
                     f"{', '.join(_POOL_TYPES)}.")
  return _POOL_TYPES[pool_type]


def tower_config(hf_config, *, pool_type="mean", max_len=None):
  """TextTransformer kwargs (no head) for an HF BERT config.

  Args:
    hf_config: the parsed config.json of a BERT-family model.
    pool_type: "mean" (masked mean over non-pad tokens, sentence-transformers'
      default) or "cls" / "first" (the [CLS] token's features).
    max_len: position-table length; None: `max_position_embeddings`.

  Returns:
    A dict of `text_transformer.TextTransformer` arguments with
    `num_classes: 0`.

  Raises:
    ValueError: an unsupported activation, position embedding type or
      model type, or `max_len` above `max_position_embeddings`.
  """
  c = hf_config
  model_type = c.get("model_type", "bert")
  if model_type not in ("bert",):
    raise ValueError(f"hf_bert: model_type {model_type!r} is not supported "
                     "(only 'bert': BERT, MiniLM, sentence-transformers BERT "
                     "encoders).")
  act = c.get("hidden_act", "gelu")
  if act not in _ACTIVATIONS:
    raise ValueError(f"hf_bert: hidden_act {act!r} is not supported; known: "
                     f"{', '.join(_ACTIVATIONS)}.")
  pos_type = c.get("position_embedding_type", "absolute")
  if pos_type != "absolute":
    raise ValueError(f"hf_bert: position_embedding_type {pos_type!r} is not "
                     "supported (only 'absolute').")
  positions = int(c["max_position_embeddings"])
  if max_len is None:
    max_len = positions
  if not 1 <= max_len <= positions:
    raise ValueError(f"hf_bert: max_len {max_len} must be in [1, "
                     f"max_position_embeddings={positions}].")
  return {
      "width": int(c["hidden_size"]),
      "depth": int(c["num_hidden_layers"]),
      "mlp_dim": int(c["intermediate_size"]),
      "num_heads": int(c["num_attention_heads"]),
      "vocab_size": int(c["vocab_size"]),
      "max_len": int(max_len),
      "causal": False,
      "pool_type": _pool_type(pool_type),
      "pad_id": int(c.get("pad_token_id") or 0),
      "mask_pad": True,
      "num_classes": 0,
      "act": _ACTIVATIONS[act],
      "norm_eps": float(c.get("layer_norm_eps", 1e-12)),
      "norm_position": "post",
      "embed_norm": True,
      "type_vocab_size": int(c.get("type_vocab_size", 0) or 0),
  }


def convert(state_dict, hf_config, *, pool_type="mean", max_len=None):
  """Converts an HF BERT state dict to a big_vl text tower.

  Args:
    state_dict: HF parameter name -> array (numpy, or torch tensors), names
      with or without a "bert." prefix; `pooler.*` is ignored.
    hf_config: the parsed config.json (hidden_size, num_hidden_layers,
      num_attention_heads, intermediate_size, vocab_size,
      max_position_embeddings, type_vocab_size, layer_norm_eps, hidden_act,
      pad_token_id).
    pool_type: "mean" or "cls" (see `tower_config`).
    max_len: keep the first `max_len` position embeddings (None: all).

  Returns:
    (tower_config, params): `TextTransformer` kwargs (num_classes 0) and the
    tower's params, a nested dict of float32 numpy arrays. For MiniLM-L6
    (hidden 384, 12 heads): `Encoder_0/encoderblock_0/
    MultiHeadDotProductAttention_0/query/kernel` is [384, 12, 32].

  Raises:
    ValueError: unsupported config (see `tower_config`), or missing /
      wrongly shaped / unused weights.
  """
  cfg = tower_config(hf_config, pool_type=pool_type, max_len=max_len)
  sd = _strip_prefix(state_dict)
  used = set()

  def get(name):
    if name not in sd:
      raise ValueError(f"hf_bert: missing weight {name!r}.")
    used.add(name)
    return sd[name]

  def dense(name):
    get(f"{name}.weight")
    get(f"{name}.bias")
    return _dense(sd, name)

  def norm(name):
    get(f"{name}.weight")
    get(f"{name}.bias")
    return _layer_norm(sd, name)

  width, heads = cfg["width"], cfg["num_heads"]
  head_dim = width // heads
  word = _f32(get("embeddings.word_embeddings.weight"))
  if word.shape != (cfg["vocab_size"], width):
    raise ValueError(f"hf_bert: word embeddings {word.shape} do not match "
                     f"vocab_size {cfg['vocab_size']} x hidden {width}.")
  pos = _f32(get("embeddings.position_embeddings.weight"))
  params = {
      "Embed_0": {"embedding": word},
      "pos_embedding": pos[None, :cfg["max_len"]],
      "embed_norm": norm("embeddings.LayerNorm"),
  }
  if cfg["type_vocab_size"]:
    params["type_embedding"] = _f32(
        get("embeddings.token_type_embeddings.weight"))

  encoder = {}
  for i in range(cfg["depth"]):
    p = f"encoder.layer.{i}."
    attn = {}
    for n in ("query", "key", "value"):
      d = dense(f"{p}attention.self.{n}")
      attn[n] = {"kernel": d["kernel"].reshape(width, heads, head_dim),
                 "bias": d["bias"].reshape(heads, head_dim)}
    d = dense(f"{p}attention.output.dense")
    attn["out"] = {"kernel": d["kernel"].reshape(heads, head_dim, width),
                   "bias": d["bias"]}
    encoder[f"encoderblock_{i}"] = {
        "MultiHeadDotProductAttention_0": attn,
        "LayerNorm_0": norm(f"{p}attention.output.LayerNorm"),
        "MlpBlock_0": {"Dense_0": dense(f"{p}intermediate.dense"),
                       "Dense_1": dense(f"{p}output.dense")},
        "LayerNorm_1": norm(f"{p}output.LayerNorm"),
    }
  params["Encoder_0"] = encoder

  unused = sorted(n for n in sd
                  if n not in used and not n.startswith(_IGNORED))
  if unused:
    raise ValueError(f"hf_bert: unexpected weights {unused[:8]} (a model "
                     f"with more than {cfg['depth']} layers, or not BERT?).")
  return cfg, params


def _read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _load_state_dict(folder):
  """Name -> numpy array from model.safetensors or pytorch_model.bin."""
  path = os.path.join(folder, "model.safetensors")
  if os.path.isfile(path):
    return safetensors.numpy.load_file(path)
  path = os.path.join(folder, "pytorch_model.bin")
  if os.path.isfile(path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(
          f"hf_bert: {path} is a PyTorch pickle and reading it needs torch "
          "(pip install torch), or convert it to model.safetensors.") from None
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in sd.items()}
  raise FileNotFoundError(
      f"hf_bert: no model.safetensors or pytorch_model.bin in {folder!r}.")


def sentence_transformers_settings(path):
  """Pooling and sequence length of a sentence-transformers folder.

  Args:
    path: a model folder.

  Returns:
    {"pool_type": "mean" / "cls" / None, "max_len": int or None}: None where
    the folder does not say (plain HF folders).

  Raises:
    ValueError: a pooling mode other than mean or cls (max, mean_sqrt_len,
      weighted, ...).
  """
  out = {"pool_type": None, "max_len": None}
  pooling_dir = "1_Pooling"
  modules = os.path.join(path, "modules.json")
  if os.path.isfile(modules):
    for m in _read_json(modules):
      if m.get("type", "").endswith("Pooling"):
        pooling_dir = m.get("path") or pooling_dir
  pooling = os.path.join(path, pooling_dir, "config.json")
  if os.path.isfile(pooling):
    cfg = _read_json(pooling)
    modes = [k[len("pooling_mode_"):] for k, v in cfg.items()
             if k.startswith("pooling_mode_") and v is True]
    if "pooling_mode" in cfg:  # Newer sentence-transformers.
      modes = [cfg["pooling_mode"]]
    modes = ["mean" if m == "mean_tokens" else "cls" if m == "cls_token"
             else m for m in modes]
    if len(modes) != 1 or modes[0] not in ("mean", "cls"):
      raise ValueError(f"hf_bert: pooling {modes} in {pooling} is not "
                       "supported (only one of mean / cls).")
    out["pool_type"] = modes[0]
  st = os.path.join(path, "sentence_bert_config.json")
  if os.path.isfile(st) and _read_json(st).get("max_seq_length"):
    out["max_len"] = int(_read_json(st)["max_seq_length"])
  return out


def load(path, *, pool_type=None, max_len=None):
  """Loads an HF / sentence-transformers BERT folder as a text-only model.

  Args:
    path: folder with config.json and model.safetensors (or
      pytorch_model.bin, which needs torch); for sentence-transformers also
      modules.json, 1_Pooling/config.json, sentence_bert_config.json.
    pool_type: "mean" or "cls"; None: the folder's pooling, else "mean".
    max_len: longest input; None: the folder's `max_seq_length`, else
      `max_position_embeddings` (capped by it in both cases).

  Returns:
    (model_config, params): model_config is
    `{"name": "two_towers", "out_dim": hidden_size, "text": {...,
    "num_classes": 0}, "image": None}` for `big_vl.models.get`; params are
    `{"txt": tower params, "t": log temperature}` (numpy float32; `t` is
    two_towers' initial log(10), which the text-only embedding ignores).
    `model.apply({"params": params}, None, text)[1]` gives L2-normalised
    float32 [B, hidden_size] sentence embeddings.
  """
  path = os.fspath(path)
  hf_config = _read_json(os.path.join(path, "config.json"))
  st = sentence_transformers_settings(path)
  if pool_type is None:
    pool_type = st["pool_type"] or "mean"
  if max_len is None:
    max_len = st["max_len"]
  if max_len is not None:
    max_len = min(int(max_len), int(hf_config["max_position_embeddings"]))
  tower, params = convert(_load_state_dict(path), hf_config,
                          pool_type=pool_type, max_len=max_len)
  model_config = {"name": "two_towers", "out_dim": tower["width"],
                  "text": tower, "image": None}
  return model_config, {"txt": params,
                        "t": np.asarray(np.log(10.0), np.float32)}


def preprocessing(model_config, path):
  """The text preprocessing that matches a loaded model.

  Args:
    model_config: as returned by `load`.
    path: the model folder (its tokenizer.json or vocab.txt is used).

  Returns:
    {"pp_txt": pp string for `big_vl.data.pp`, e.g.
    "tokenize(max_len=256, tokenizer='wordpiece', path='/m/minilm')",
    "tokenizer": kwargs for `big_vl.data.tokenizers.get`, e.g. {"name":
    "wordpiece", "path": "/m/minilm", "max_len": 256}}.
  """
  path = os.path.abspath(os.fspath(path))
  if "|" in path:
    raise ValueError(f"hf_bert: a pp string cannot hold the path {path!r} "
                     "('|' separates ops); use the 'tokenizer' kwargs.")
  max_len = int(model_config["text"]["max_len"])
  return {
      "pp_txt": (f"tokenize(max_len={max_len}, tokenizer='wordpiece', "
                 f"path={path!r})"),
      "tokenizer": {"name": "wordpiece", "path": path, "max_len": max_len},
  }
