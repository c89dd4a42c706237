"""open_clip CoCa checkpoints (`coca_ViT-B-32`, `coca_ViT-L-14`) in and out
of big_vl's model "coca" (`big_vl.models.coca`).

    model_config, params = convert(state_dict, "coca_ViT-B-32")
    arch, state_dict = to_state_dict(model_config, params)   # and back

Supported: open_clip's `CoCa` with a ViT image tower whose attentional
pooler is the original one (`attentional_pool: true`: one pooler; query 0
is the contrastive embedding), its own causal text tower with the appended
class token (`embed_cls`) and its multimodal decoder, in any size. Not
supported (a ValueError names it): the "parallel" / "cascade" poolers, HF
text towers (`coca_roberta-*`), layer scale and the custom blocks.

Parameter mapping beyond the CLIP towers' (`open_clip.py`):

    visual.attn_pool.query [Q, E]     img_pool/query
    visual.attn_pool.ln_q, ln_k       img_pool/ln_q, ln_k
    visual.attn_pool.attn             img_pool/attn (q/k/v from
      (in_proj_weight, or q/k/v_proj_     in_proj_weight when the tower
       weight when width != E)            width is E, else the three)
    visual.ln_post                    img_norm
    visual.proj [E, E]                img_proj/kernel
    text.cls_emb [W]                  txt/cls
    text.positional_embedding         txt/pos_embedding [1, L + 1, W]
    text.transformer.resblocks.{i}    txt/Encoder_0/encoderblock_{i}
    text.ln_final                     txt/cls_norm
    text.text_projection [W, E]       txt/head/kernel
    text_decoder.resblocks.{i}        dec/selfblock_{i}
    text_decoder.cross_attn.{i}       dec/crossblock_{i}: ln_1 ->
                                      LayerNorm_0, ln_1_kv -> LayerNorm_kv,
                                      attn, ln_2 -> LayerNorm_1, mlp
    text_decoder.ln_final             dec/LayerNorm_0
    text_decoder.text_projection      dec/head/kernel [W, V]
      [W, V]

big_vl's `null_memory` (classifier-free guidance) has no open_clip
counterpart: an import sets it to zero and an export drops it.
"""

import math

import jax
import numpy as np

from big_vl.convert import open_clip as oc
from big_vl.convert import torch_params

# open_clip 3.3's model_configs/coca_*.json (HF-text coca_roberta excluded).
ARCHS = {
    "coca_ViT-B-32": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768,
                       "patch_size": 32, "attentional_pool": True,
                       "attn_pooler_heads": 8, "output_tokens": True},
        "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 512,
                     "heads": 8, "layers": 12, "embed_cls": True,
                     "output_tokens": True},
        "multimodal_cfg": {"context_length": 76, "vocab_size": 49408,
                           "width": 512, "heads": 8, "layers": 12,
                           "attn_pooler_heads": 8},
        "custom_text": True,
    },
    "coca_ViT-L-14": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024,
                       "patch_size": 14, "attentional_pool": True,
                       "attn_pooler_heads": 8, "output_tokens": True},
        "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 768,
                     "heads": 12, "layers": 12, "embed_cls": True,
                     "output_tokens": True},
        "multimodal_cfg": {"context_length": 76, "vocab_size": 49408,
                           "width": 768, "heads": 12, "layers": 12,
                           "attn_pooler_heads": 12},
        "custom_text": True,
    },
}
DEFAULT_POOLER_QUERIES = 256
DEFAULT_POOLER_HEADS = 8
_TOP_KNOWN = ("embed_dim", "quick_gelu", "vision_cfg", "text_cfg",
              "multimodal_cfg", "custom_text", "init_logit_scale",
              "init_logit_bias", "nonscalar_logit_scale", "cast_dtype",
              "pad_id", "output_dict")
_MULTIMODAL_KNOWN = ("context_length", "vocab_size", "width", "heads",
                     "layers", "mlp_ratio", "dim_head", "n_queries",
                     "attn_pooler_heads", "ls_init_value")


def _tower(width, layers, heads, mlp_ratio):
  return {"width": int(width), "depth": int(layers), "num_heads": int(heads),
          "mlp_dim": oc.mlp_width(int(width), mlp_ratio)}


def model_config_from_open_clip(oc_config):
  """The big_vl "coca" model config of an open_clip CoCa model config.

  Raises:
    ValueError: naming an open_clip feature big_vl cannot represent.

  Example:
    >>> mc = model_config_from_open_clip(ARCHS["coca_ViT-B-32"])
    >>> mc["out_dim"], mc["max_len"], mc["num_queries"]
    (512, 76, 256)
  """
  for key, value in oc_config.items():
    if key not in _TOP_KNOWN:
      raise ValueError(f"open_clip CoCa config key {key}={value!r} is not "
                       "supported.")
  vision = dict(oc_config["vision_cfg"])
  text = dict(oc_config["text_cfg"])
  multi = dict(oc_config["multimodal_cfg"])
  if vision.pop("attentional_pool", False) is not True:
    raise ValueError(
        "open_clip CoCa vision_cfg.attentional_pool="
        f"{oc_config['vision_cfg'].get('attentional_pool')!r}: only the "
        "original pooler (true) is supported, not 'parallel' / 'cascade'.")
  if not text.pop("embed_cls", False):
    raise ValueError("open_clip CoCa text_cfg.embed_cls must be true.")
  for key, value in multi.items():
    if key not in _MULTIMODAL_KNOWN:
      raise ValueError(f"open_clip multimodal_cfg.{key}={value!r} is not "
                       "supported.")
  if multi.get("ls_init_value") is not None:
    raise ValueError("open_clip multimodal_cfg.ls_init_value (layer scale) "
                     "is not supported.")
  quick_gelu = bool(oc_config.get("quick_gelu", False))
  queries = int(vision.pop("attn_pooler_queries", DEFAULT_POOLER_QUERIES))
  pool_heads = int(vision.pop("attn_pooler_heads", DEFAULT_POOLER_HEADS))
  image = oc.image_kwargs(vision, quick_gelu)
  image.pop("head_bias")
  for key in ("pool_type", "pre_norm", "act", "norm_eps"):
    image.pop(key)
  txt = oc.text_kwargs(text, quick_gelu)
  if multi.get("context_length", txt["max_len"]) != txt["max_len"]:
    raise ValueError("open_clip CoCa: the text and multimodal context "
                     "lengths differ.")
  scale = oc_config.get("init_logit_scale", oc.DEFAULT_INIT_LOGIT_SCALE)
  config = {
      "name": "coca",
      "image": image,
      "text": _tower(txt["width"], txt["depth"], txt["num_heads"],
                     text.get("mlp_ratio")),
      "decoder": _tower(multi.get("width", 512), multi.get("layers", 12),
                        multi.get("heads", 8), multi.get("mlp_ratio")),
      "out_dim": int(oc_config["embed_dim"]),
      "vocab_size": txt["vocab_size"],
      "max_len": txt["max_len"],
      "num_queries": queries,
      "pool_heads": pool_heads,
      "temperature_init": float(math.exp(scale)),
      "pad_id": int(oc_config.get("pad_id", 0)),
      "act": txt["act"],
      "norm_eps": txt["norm_eps"],
  }
  if oc_config.get("init_logit_bias") is not None:
    config["bias_init"] = float(oc_config["init_logit_bias"])
  return config


def open_clip_config(model_config):
  """The open_clip CoCa model config of a big_vl "coca" model config."""
  mc = oc.as_plain(model_config)
  image, text, dec = mc["image"], mc["text"], mc["decoder"]
  act = mc.get("act", "gelu_exact")
  if act not in ("gelu_exact", "quick_gelu"):
    raise ValueError(f"coca act={act!r}: open_clip CoCa uses exact GELU or "
                     "QuickGELU.")
  if abs(mc.get("norm_eps", 1e-5) - 1e-5) > 1e-12:
    raise ValueError("coca norm_eps must be 1e-5 (open_clip's LayerNorm).")
  if mc.get("correct_cls_mask"):
    raise ValueError("coca correct_cls_mask=True: open_clip's CoCa builds "
                     "the original mask.")
  width, heads = image["width"], image["num_heads"]
  config = {
      "embed_dim": mc["out_dim"],
      "vision_cfg": {"image_size": image["image_size"],
                     "layers": image["depth"], "width": width,
                     "patch_size": image["patch_size"],
                     "attentional_pool": True,
                     "attn_pooler_queries": mc.get("num_queries", 256),
                     "attn_pooler_heads": mc.get("pool_heads", 8),
                     "output_tokens": True},
      "text_cfg": {"context_length": mc.get("max_len", 76),
                   "vocab_size": mc.get("vocab_size", 49408),
                   "width": text["width"], "heads": text["num_heads"],
                   "layers": text["depth"], "embed_cls": True,
                   "output_tokens": True},
      "multimodal_cfg": {"context_length": mc.get("max_len", 76),
                         "vocab_size": mc.get("vocab_size", 49408),
                         "width": dec["width"], "heads": dec["num_heads"],
                         "layers": dec["depth"]},
      "custom_text": True,
  }
  if width // heads != oc.DEFAULT_HEAD_WIDTH:
    config["vision_cfg"]["head_width"] = width // heads
  for key, tower, cfg in (("image", image, "vision_cfg"),
                          ("text", text, "text_cfg"),
                          ("decoder", dec, "multimodal_cfg")):
    ratio = oc.mlp_ratio_of(tower["width"], tower["mlp_dim"])
    if ratio is not None:
      config[cfg]["mlp_ratio"] = ratio
    del key
  if act == "quick_gelu":
    config["quick_gelu"] = True
  if "bias_init" in mc:
    config["init_logit_bias"] = mc["bias_init"]
  return config


def arch_name(oc_config):
  """The `ARCHS` name of an open_clip CoCa config, or None."""
  for name, arch in ARCHS.items():
    if oc_config == {**arch, "vision_cfg": {
        **arch["vision_cfg"], "attn_pooler_queries": DEFAULT_POOLER_QUERIES},
                     "multimodal_cfg": {
                         k: v for k, v in arch["multimodal_cfg"].items()
                         if k != "attn_pooler_heads"}}:
      return name
  return None


# ---------------------------------------------------------------------------
# State dict <-> params.

_norm, _dense = torch_params.norm, torch_params.dense


def _pooler_attention(read, prefix, heads):
  """The pooler's nn.MultiheadAttention (packed or separate q/k/v) ->
  flax MultiHeadDotProductAttention params."""
  if read.has(f"{prefix}.in_proj_weight"):
    return oc.attention_params(read, prefix, heads)
  q, k, v = (read(f"{prefix}.{n}_proj_weight") for n in "qkv")
  bias = read(f"{prefix}.in_proj_bias")
  width = q.shape[0]
  head_dim = width // heads
  out = {}
  for i, (name, w) in enumerate(zip(("query", "key", "value"), (q, k, v))):
    out[name] = {"kernel": w.T.reshape(w.shape[1], heads, head_dim),
                 "bias": bias[i * width:(i + 1) * width].reshape(
                     heads, head_dim)}
  out["out"] = {"kernel": read(f"{prefix}.out_proj.weight").T.reshape(
      heads, head_dim, width), "bias": read(f"{prefix}.out_proj.bias")}
  return out


def _rename(blocks, new):
  return {k.replace("encoderblock_", new): v for k, v in blocks.items()}


def _params(state_dict, mc):
  read = torch_params.StateDictReader(state_dict, "open_clip CoCa")
  image, text, dec = mc["image"], mc["text"], mc["decoder"]
  conv = read("visual.conv1.weight")
  pos = read("visual.positional_embedding")
  params = {
      "img": {
          "embedding": {"kernel": conv.transpose(2, 3, 1, 0),
                        "bias": np.zeros([conv.shape[0]], np.float32)},
          "cls": (read("visual.class_embedding") + pos[0])[None, None],
          "pos_embedding": pos[None, 1:],
          "pre_norm": _norm(read, "visual.ln_pre"),
          "Transformer": oc.encoder_params(read, "visual.transformer",
                                           image["depth"],
                                           image["num_heads"]),
      },
      "img_pool": {
          "query": read("visual.attn_pool.query"),
          "ln_q": _norm(read, "visual.attn_pool.ln_q"),
          "ln_k": _norm(read, "visual.attn_pool.ln_k"),
          "attn": _pooler_attention(read, "visual.attn_pool.attn",
                                    mc["pool_heads"]),
      },
      "img_norm": _norm(read, "visual.ln_post"),
      "img_proj": {"kernel": read("visual.proj")},
      "txt": {
          "Embed_0": {"embedding": read("text.token_embedding.weight")},
          "cls": read("text.cls_emb"),
          "pos_embedding": read("text.positional_embedding")[None],
          "Encoder_0": oc.encoder_params(read, "text.transformer",
                                         text["depth"], text["num_heads"]),
          "cls_norm": _norm(read, "text.ln_final"),
          "head": {"kernel": read("text.text_projection")},
      },
      "dec": {
          **_rename(oc.encoder_params(read, "text_decoder", dec["depth"],
                                      dec["num_heads"]), "selfblock_"),
          "LayerNorm_0": _norm(read, "text_decoder.ln_final"),
          "head": {"kernel": read("text_decoder.text_projection")},
      },
      "t": read("logit_scale").reshape(()),
      "null_memory": np.zeros((1, 1, mc["out_dim"]), np.float32),
  }
  for i in range(dec["depth"]):
    p = f"text_decoder.cross_attn.{i}"
    params["dec"][f"crossblock_{i}"] = {
        "LayerNorm_0": _norm(read, f"{p}.ln_1"),
        "LayerNorm_kv": _norm(read, f"{p}.ln_1_kv"),
        "MultiHeadDotProductAttention_0": oc.attention_params(
            read, f"{p}.attn", dec["num_heads"]),
        "LayerNorm_1": _norm(read, f"{p}.ln_2"),
        "MlpBlock_0": {"Dense_0": _dense(read, f"{p}.mlp.c_fc"),
                       "Dense_1": _dense(read, f"{p}.mlp.c_proj")},
    }
  if "logit_bias" in state_dict:
    params["b"] = read("logit_bias").reshape(())
  read.check_all_used()
  return params


def convert(state_dict, arch_or_config):
  """Converts an open_clip CoCa state dict to big_vl "coca" params.

  Args:
    state_dict: open_clip parameter name -> array.
    arch_or_config: an `ARCHS` name ("coca_ViT-B-32", "coca_ViT-L-14") or
      an open_clip CoCa model-config dict.

  Returns:
    (model_config, params), as `big_vl.convert.open_clip.convert`.
  """
  oc_config = ARCHS[arch_or_config] if isinstance(arch_or_config, str) \
      else arch_or_config
  if isinstance(arch_or_config, str) and arch_or_config not in ARCHS:
    raise ValueError(f"Unknown open_clip CoCa arch {arch_or_config!r}; "
                     f"known: {sorted(ARCHS)}.")
  model_config = model_config_from_open_clip(oc_config)
  params = _params(state_dict, model_config)
  oc.check_params(model_config, params, text_len=model_config["max_len"])
  return model_config, params


def _t_pooler_attention(p, prefix):
  width = p["query"]["kernel"].shape[1] * p["query"]["kernel"].shape[2]
  if p["key"]["kernel"].shape[0] == width:
    return oc.attention_tensors(p, prefix)
  out = {f"{prefix}.{n[0]}_proj_weight": p[n]["kernel"].reshape(
      p[n]["kernel"].shape[0], width).T for n in ("query", "key", "value")}
  out[f"{prefix}.in_proj_bias"] = np.concatenate(
      [p[n]["bias"].reshape(width) for n in ("query", "key", "value")])
  out[f"{prefix}.out_proj.weight"] = p["out"]["kernel"].reshape(
      width, width).T
  out[f"{prefix}.out_proj.bias"] = p["out"]["bias"]
  return out


def to_state_dict(model_config, params):
  """Exports big_vl "coca" params as an open_clip CoCa state dict.

  Returns:
    (arch_or_config, state_dict): an `ARCHS` name when the model is one of
    them, else an open_clip CoCa model-config dict (`open_clip.CoCa(**cfg)`);
    the state dict loads into it with strict=True.
  """
  p = jax.tree.map(lambda x: np.asarray(x, np.float32), oc.as_plain(params))
  oc_config = open_clip_config(model_config)
  img, txt, dec = p["img"], p["txt"], p["dec"]
  if np.any(img["embedding"]["bias"]):
    raise ValueError("big_vl image patch embedding has a non-zero bias; "
                     "open_clip's conv1 has none.")
  pos = img["pos_embedding"][0]
  sd = {"visual.conv1.weight": img["embedding"]["kernel"].transpose(
            3, 2, 0, 1),
        "visual.class_embedding": img["cls"].reshape(-1),
        "visual.positional_embedding": np.concatenate(
            [np.zeros_like(pos[:1]), pos], axis=0),
        "visual.attn_pool.query": p["img_pool"]["query"],
        "visual.proj": p["img_proj"]["kernel"],
        "text.token_embedding.weight": txt["Embed_0"]["embedding"],
        "text.cls_emb": txt["cls"],
        "text.positional_embedding": txt["pos_embedding"][0],
        "text.text_projection": txt["head"]["kernel"],
        "text_decoder.text_projection": dec["head"]["kernel"],
        "logit_scale": np.asarray(p["t"]).reshape(())}
  sd.update(oc.norm_tensors(img["pre_norm"], "visual.ln_pre"))
  sd.update(oc.encoder_tensors(img["Transformer"], "visual.transformer"))
  for name in ("ln_q", "ln_k"):
    sd.update(oc.norm_tensors(p["img_pool"][name], f"visual.attn_pool.{name}"))
  sd.update(_t_pooler_attention(p["img_pool"]["attn"],
                                "visual.attn_pool.attn"))
  sd.update(oc.norm_tensors(p["img_norm"], "visual.ln_post"))
  sd.update(oc.encoder_tensors(txt["Encoder_0"], "text.transformer"))
  sd.update(oc.norm_tensors(txt["cls_norm"], "text.ln_final"))
  selfs = {k.replace("selfblock_", "encoderblock_"): v for k, v in dec.items()
           if k.startswith("selfblock_")}
  sd.update(oc.encoder_tensors(selfs, "text_decoder"))
  i = 0
  while f"crossblock_{i}" in dec:
    b, q = dec[f"crossblock_{i}"], f"text_decoder.cross_attn.{i}"
    sd.update(oc.norm_tensors(b["LayerNorm_0"], f"{q}.ln_1"))
    sd.update(oc.norm_tensors(b["LayerNorm_kv"], f"{q}.ln_1_kv"))
    sd.update(oc.attention_tensors(b["MultiHeadDotProductAttention_0"],
                                      f"{q}.attn"))
    sd.update(oc.norm_tensors(b["LayerNorm_1"], f"{q}.ln_2"))
    sd.update(oc.dense_tensors(b["MlpBlock_0"]["Dense_0"], f"{q}.mlp.c_fc"))
    sd.update(oc.dense_tensors(b["MlpBlock_0"]["Dense_1"], f"{q}.mlp.c_proj"))
    i += 1
  sd.update(oc.norm_tensors(dec["LayerNorm_0"], "text_decoder.ln_final"))
  if "b" in p:
    sd["logit_bias"] = np.asarray(p["b"]).reshape(())
  sd = {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}
  return arch_name(oc_config) or oc_config, sd
