"""open_clip / OpenAI CLIP ViT checkpoints in and out of big_vl.

    model_config, params = load("open_clip_model.safetensors", "ViT-B-32")
    model = big_vl.models.get(model_config)
    zimg, ztxt, aux = model.apply({"params": params}, image, text)
    arch, state_dict = to_state_dict(model_config, params)  # and back

Supported: open_clip's `CLIP` with a ViT image tower and its own text
transformer (every `ViT-*` config in `ARCHS`, the `-quickgelu` variants and
OpenAI's released ViT archives), in any size. Not supported (a ValueError
names the feature): ResNet / timm image towers, HF / custom text towers,
attentional poolers (open_clip's CoCa: `open_clip_coca`, which `load`
hands CoCa checkpoints to), layer scale, `no_ln_pre`, text projection biases,
"avg" pooling and the custom attention blocks. Also converted both ways:
`act_kwargs` {"approximate": "tanh"} (big_vl act "gelu"), `norm_kwargs`
{"eps": ...} (norm_eps), text `no_causal_mask` (causal=False) and text
pool_type "last" / "first"; a [1]-shaped logit scale becomes a scalar.

Parameter mapping (torch `nn.Linear` weights are [out, in], flax kernels
[in, out]; `nn.MultiheadAttention` packs q, k, v in `in_proj_weight`
[3W, W], heads contiguous along the output axis):

    visual.conv1.weight [W, 3, p, p]   img/embedding/kernel [p, p, 3, W]
                                       (+ a zero img/embedding/bias)
    visual.class_embedding [W]         img/cls [1, 1, W]  (see below)
    visual.positional_embedding        img/pos_embedding [1, N, W]
      [1 + N, W]
    visual.ln_pre                      img/pre_norm
    visual.transformer.resblocks.{i}   img/Transformer/encoderblock_{i}
      ln_1, ln_2                         LayerNorm_0, LayerNorm_1
      attn.in_proj_{weight,bias}         MultiHeadDotProductAttention_0/
                                         {query,key,value} [W, H, W/H]
      attn.out_proj                      MultiHeadDotProductAttention_0/
                                         out [H, W/H, W]
      mlp.c_fc, mlp.c_proj               MlpBlock_0/Dense_0, Dense_1
    visual.ln_post                     img/Transformer/encoder_norm
    visual.proj [W, E]                 img/head/kernel (no bias)
    token_embedding.weight             txt/Embed_0/embedding
    positional_embedding [L, D]        txt/pos_embedding [1, L, D]
    transformer.resblocks.{i}          txt/Encoder_0/encoderblock_{i}
    ln_final                           txt/Encoder_0/encoder_norm
    text_projection [D, E]             txt/head/kernel (no bias)
    logit_scale (log)                  t (log)
    logit_bias                         b

open_clip adds `positional_embedding[0]` to the class token and big_vl adds
no position to it, so `img/cls = class_embedding + positional_embedding[0]`.
The export writes `class_embedding = img/cls` and a zero
`positional_embedding[0]`: the same model, bit for bit the same class-token
input, but that pair of tensors differs from the original checkpoint's.

Text pooling: open_clip's "argmax" takes the token with the largest id,
big_vl's "eot" the last non-pad (id 0) token; for CLIP BPE tokens (end of
text 49407 is the largest id and the last token before the zero padding)
they are the same position.

Length: both directions of the open_clip mapping (architecture tables,
state-dict reading with shape inference, params in and out, resampling) stay in
one module so that they remain each other's inverse;
tests/test_convert_open_clip.py checks the round trip."""

import json
import math
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import numpy as st_numpy

from big_vl import models
from big_vl.convert import torch_params
from big_vl.models import common
from big_vl.models import text_transformer
from big_vl.models import vit

DEFAULT_NORM_EPS = 1e-5  # torch.nn.LayerNorm
DEFAULT_HEAD_WIDTH = 64
DEFAULT_MLP_RATIO = 4.0
DEFAULT_INIT_LOGIT_SCALE = math.log(1 / 0.07)
CONTEXT_LENGTH = 77
CLIP_VOCAB_SIZE = 49408
# Keys of OpenAI's TorchScript state dicts that are not weights.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")

# name -> (embed_dim, image_size, patch_size, vision width, vision layers,
#          text width, text heads, text layers, vision head_width,
#          vision mlp_ratio); numbers from open_clip 3.3's
#          model_configs/{name}.json (text: context 77, vocab 49408).
_TABLE = {
    "ViT-S-32": (384, 224, 32, 384, 12, 384, 6, 12, None, None),
    "ViT-S-16": (384, 224, 16, 384, 12, 384, 6, 12, None, None),
    "ViT-S-32-alt": (256, 224, 32, 384, 12, 256, 4, 10, None, None),
    "ViT-M-32": (512, 224, 32, 512, 12, 512, 8, 12, None, None),
    "ViT-M-16": (512, 224, 16, 512, 12, 512, 8, 12, None, None),
    "ViT-B-32": (512, 224, 32, 768, 12, 512, 8, 12, None, None),
    "ViT-B-32-256": (512, 256, 32, 768, 12, 512, 8, 12, None, None),
    "ViT-B-16": (512, 224, 16, 768, 12, 512, 8, 12, None, None),
    "ViT-B-16-plus": (640, 224, 16, 896, 12, 640, 10, 12, None, None),
    "ViT-B-16-plus-240": (640, 240, 16, 896, 12, 640, 10, 12, None, None),
    "ViT-B-32-plus-256": (640, 256, 32, 896, 12, 640, 10, 12, None, None),
    "ViT-L-14": (768, 224, 14, 1024, 24, 768, 12, 12, None, None),
    "ViT-L-14-280": (768, 280, 14, 1024, 24, 768, 12, 12, None, None),
    "ViT-L-14-336": (768, 336, 14, 1024, 24, 768, 12, 12, None, None),
    "ViT-L-16": (768, 224, 16, 1024, 24, 768, 12, 12, None, None),
    "ViT-L-16-320": (768, 320, 16, 1024, 24, 768, 12, 12, None, None),
    "ViT-H-14": (1024, 224, 14, 1280, 32, 1024, 16, 24, 80, None),
    "ViT-H-14-378": (1024, 378, 14, 1280, 32, 1024, 16, 24, 80, None),
    "ViT-H-16": (1024, 224, 16, 1280, 32, 1024, 16, 24, 80, None),
    "ViT-g-14": (1024, 224, 14, 1408, 40, 1024, 16, 24, 88, 4.3637),
    "ViT-bigG-14": (1280, 224, 14, 1664, 48, 1280, 20, 32, 104, 4.9231),
}
_QUICKGELU = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14",
              "ViT-H-14-378", "ViT-bigG-14")


def _table_config(row, quick_gelu=False):
  """The open_clip model-config dict of one `_TABLE` row (JSON layout)."""
  (embed, image, patch, v_width, v_layers, t_width, t_heads, t_layers,
   head_width, mlp_ratio) = row
  vision = {"image_size": image, "layers": v_layers, "width": v_width}
  if head_width is not None:
    vision["head_width"] = head_width
  if mlp_ratio is not None:
    vision["mlp_ratio"] = mlp_ratio
  vision["patch_size"] = patch
  config = {"embed_dim": embed}
  if quick_gelu:
    config["quick_gelu"] = True
  config["vision_cfg"] = vision
  config["text_cfg"] = {"context_length": CONTEXT_LENGTH,
                        "vocab_size": CLIP_VOCAB_SIZE, "width": t_width,
                        "heads": t_heads, "layers": t_layers}
  return config


def _build_archs():
  archs = {name: _table_config(row) for name, row in _TABLE.items()}
  for name in _QUICKGELU:
    archs[f"{name}-quickgelu"] = _table_config(_TABLE[name], quick_gelu=True)
  return archs


# open_clip architecture name -> open_clip model config (as its JSON files).
ARCHS = _build_archs()

# ---------------------------------------------------------------------------
# open_clip model config <-> big_vl model config.

# Config keys whose value must be the default (key -> (allowed values, what
# the feature is)); a different value is an unsupported feature.
_TOP_FIXED = {
    "custom_text": ((False, None), "a custom (CustomTextCLIP) text tower"),
    "multimodal_cfg": ((None,), "a CoCa multimodal decoder"),
}
_TOP_KNOWN = ("embed_dim", "quick_gelu", "vision_cfg", "text_cfg",
              "init_logit_scale", "init_logit_bias", "nonscalar_logit_scale",
              "cast_dtype", "output_dict")
_BLOCK_FIXED = {
    "ls_init_value": ((None,), "layer scale"),
    "block_type": ((None, "default"), "custom attention blocks"),
    "qk_norm": ((False,), "q/k LayerNorm"),
    "scaled_cosine_attn": ((False,), "scaled cosine attention"),
    "scale_heads": ((False,), "per-head attention scales"),
    "scale_attn_inner": ((False,), "inner attention LayerNorm"),
    "scale_attn": ((False,), "post-attention LayerNorm"),
    "scale_fc": ((False,), "MLP LayerNorm"),
    "final_ln_after_pool": ((False,), "final LayerNorm after pooling"),
}
_VISION_FIXED = {
    **_BLOCK_FIXED,
    "attentional_pool": ((False,), "an attentional pooler"),
    "no_ln_pre": ((False,), "no ln_pre (no_ln_pre=True)"),
    "pos_embed_type": (("learnable",), "non-learned position embeddings"),
    "pool_type": (("tok",), "image pooling other than the class token"),
    "timm_model_name": ((None,), "a timm image tower"),
}
_VISION_KNOWN = ("layers", "width", "head_width", "mlp_ratio", "patch_size",
                 "image_size", "act_kwargs", "norm_kwargs", "patch_dropout",
                 "attn_pooler_queries", "attn_pooler_heads", "output_tokens",
                 "timm_model_pretrained", "timm_pool", "timm_proj",
                 "timm_proj_bias", "timm_drop", "timm_drop_path")
_TEXT_FIXED = {
    **_BLOCK_FIXED,
    "hf_model_name": ((None,), "a Hugging Face text tower"),
    "hf_tokenizer_name": ((None,), "a non-CLIP (Hugging Face) tokenizer"),
    "tokenizer_mode": ((None,), "a non-default tokenizer mode"),
    "tokenizer_kwargs": ((None,), "tokenizer options"),
    "embed_cls": ((False,), "a text class token (CoCa)"),
    "proj_bias": ((False,), "a text projection bias"),
    "proj_type": (("linear",), "a non-linear text projection"),
}
_TEXT_KNOWN = ("context_length", "vocab_size", "width", "heads", "layers",
               "mlp_ratio", "act_kwargs", "norm_kwargs", "no_causal_mask",
               "pool_type", "pad_id", "eos_id", "output_tokens",
               "hf_model_pretrained", "hf_proj_type", "hf_pooler_type")
# open_clip text pool_type -> big_vl TextTransformer pool_type.
_TEXT_POOL = {"argmax": "eot", "last": "last", "first": "first"}


def _check_keys(cfg, where, fixed, known):
  """Raises ValueError for unsupported features or unknown keys of `cfg`."""
  for key, value in cfg.items():
    if key in fixed:
      allowed, feature = fixed[key]
      if value not in allowed:
        raise ValueError(
            f"open_clip {where}{key}={value!r} ({feature}) is not supported "
            "by big_vl's open_clip converter.")
    elif key not in known:
      raise ValueError(f"open_clip {where}{key}={value!r}: unknown or "
                       "unsupported config key.")


def _square(value, name):
  """An int from an int or an (n, n) pair; ValueError otherwise."""
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"open_clip {name}={value!r}: only square sizes are "
                       "supported.")
    value = value[0]
  return int(value)


def _act(quick_gelu, act_kwargs, where):
  """big_vl activation name for open_clip's quick_gelu flag + act_kwargs."""
  act_kwargs = dict(act_kwargs or {})
  if quick_gelu:
    if act_kwargs:
      raise ValueError(f"open_clip {where}act_kwargs={act_kwargs!r} with "
                       "quick_gelu is not supported.")
    return "quick_gelu"
  approximate = act_kwargs.pop("approximate", "none")
  if act_kwargs or approximate not in ("none", "tanh"):
    raise ValueError(f"open_clip {where}act_kwargs: only nn.GELU's "
                     "'approximate' ('none' or 'tanh') is supported.")
  return "gelu" if approximate == "tanh" else "gelu_exact"


def _norm_eps(norm_kwargs, where):
  """LayerNorm epsilon from open_clip's norm_kwargs (only "eps" allowed)."""
  norm_kwargs = dict(norm_kwargs or {})
  eps = norm_kwargs.pop("eps", DEFAULT_NORM_EPS)
  if norm_kwargs:
    raise ValueError(f"open_clip {where}norm_kwargs keys {sorted(norm_kwargs)}"
                     " are not supported (only 'eps').")
  return float(eps)


def mlp_width(width, mlp_ratio):
  """open_clip's MLP width: int(width * mlp_ratio)."""
  return int(width * (DEFAULT_MLP_RATIO if mlp_ratio is None else mlp_ratio))


def image_kwargs(vision, quick_gelu):
  """big_vl ViT kwargs of an open_clip vision_cfg."""
  _check_keys(vision, "vision_cfg.", _VISION_FIXED, _VISION_KNOWN)
  if isinstance(vision.get("layers", 12), (list, tuple)):
    raise ValueError("open_clip ModifiedResNet (RN50, ...) image towers are "
                     "not supported; only ViTs.")
  width = int(vision.get("width", 768))
  head_width = int(vision.get("head_width", DEFAULT_HEAD_WIDTH))
  if width % head_width:
    raise ValueError(f"open_clip vision width {width} is not a multiple of "
                     f"head_width {head_width}.")
  patch = _square(vision.get("patch_size", 16), "vision_cfg.patch_size")
  image = _square(vision.get("image_size", 224), "vision_cfg.image_size")
  if image % patch:
    raise ValueError(f"open_clip image_size {image} is not a multiple of "
                     f"patch_size {patch}.")
  return {
      "width": width,
      "depth": int(vision.get("layers", 12)),
      "mlp_dim": mlp_width(width, vision.get("mlp_ratio")),
      "num_heads": width // head_width,
      "patch_size": patch,
      "image_size": image,
      "pool_type": "cls",
      "posemb": "learn",
      "pre_norm": True,
      "act": _act(quick_gelu, vision.get("act_kwargs"), "vision_cfg."),
      "norm_eps": _norm_eps(vision.get("norm_kwargs"), "vision_cfg."),
      "head_bias": False,
  }


def text_kwargs(text, quick_gelu):
  """big_vl TextTransformer kwargs of an open_clip text_cfg."""
  _check_keys(text, "text_cfg.", _TEXT_FIXED, _TEXT_KNOWN)
  pool = text.get("pool_type", "argmax")
  if pool not in _TEXT_POOL:
    raise ValueError(f"open_clip text_cfg.pool_type={pool!r} is not "
                     f"supported; supported: {sorted(_TEXT_POOL)}.")
  pad_id = int(text.get("pad_id", 0))
  if pool == "argmax" and pad_id != 0:
    raise ValueError("open_clip text pool_type 'argmax' is only converted "
                     f"for pad_id 0 (CLIP BPE), got pad_id {pad_id}.")
  width = int(text.get("width", 512))
  heads = int(text.get("heads", 8))
  if width % heads:
    raise ValueError(f"open_clip text width {width} is not divisible by "
                     f"heads {heads}.")
  return {
      "width": width,
      "depth": int(text.get("layers", 12)),
      "mlp_dim": mlp_width(width, text.get("mlp_ratio")),
      "num_heads": heads,
      "vocab_size": int(text.get("vocab_size", CLIP_VOCAB_SIZE)),
      "max_len": int(text.get("context_length", CONTEXT_LENGTH)),
      "causal": not text.get("no_causal_mask", False),
      "pool_type": _TEXT_POOL[pool],
      "pad_id": pad_id,
      "mask_pad": False,
      "act": _act(quick_gelu, text.get("act_kwargs"), "text_cfg."),
      "norm_eps": _norm_eps(text.get("norm_kwargs"), "text_cfg."),
      "head_bias": False,
  }


def model_config_from_open_clip(oc_config):
  """The big_vl model config of an open_clip model config.

  Args:
    oc_config: an open_clip model-config dict ({"embed_dim", "quick_gelu",
      "vision_cfg": {...}, "text_cfg": {...}}, as open_clip's
      model_configs/*.json or `ARCHS[name]`).

  Returns:
    {"name": "two_towers", "out_dim", "image": ViT kwargs, "text":
    TextTransformer kwargs, "temperature_init"[, "bias_init"]}, a plain
    JSON-serialisable dict for `big_vl.models.get`.

  Raises:
    ValueError: naming an open_clip feature big_vl cannot represent.

  Example:
    >>> mc = model_config_from_open_clip(ARCHS["ViT-B-32"])
    >>> mc["image"]["width"], mc["image"]["patch_size"], mc["text"]["act"]
    (768, 32, 'gelu_exact')
  """
  _check_keys(oc_config, "", _TOP_FIXED, _TOP_KNOWN)
  for key in ("embed_dim", "vision_cfg", "text_cfg"):
    if key not in oc_config:
      raise ValueError(f"open_clip model config has no {key!r}.")
  quick_gelu = bool(oc_config.get("quick_gelu", False))
  scale = oc_config.get("init_logit_scale", DEFAULT_INIT_LOGIT_SCALE)
  config = {
      "name": "two_towers",
      "out_dim": int(oc_config["embed_dim"]),
      "image": image_kwargs(dict(oc_config["vision_cfg"]), quick_gelu),
      "text": text_kwargs(dict(oc_config["text_cfg"]), quick_gelu),
      "temperature_init": float(math.exp(scale)),
  }
  if oc_config.get("init_logit_bias") is not None:
    config["bias_init"] = float(oc_config["init_logit_bias"])
  return config


def _tower_dims(cls, kwargs):
  """Resolved {width, depth, mlp_dim, num_heads[, patch_size]} of a tower."""
  known = {k: v for k, v in kwargs.items()
           if k in ("variant", "width", "depth", "mlp_dim", "num_heads",
                    "patch_size")}
  return cls(**known).dims()


def _require(kwargs, key, allowed, default, where, why):
  value = kwargs.get(key, default)
  if value not in allowed:
    raise ValueError(f"big_vl {where}.{key}={value!r} cannot be exported to "
                     f"open_clip ({why}).")
  return value


def _oc_act_norm(tower_cfg, act, norm_eps):
  """Adds act_kwargs / norm_kwargs for a non-default act or epsilon."""
  if act == "gelu":
    tower_cfg["act_kwargs"] = {"approximate": "tanh"}
  if float(norm_eps) != DEFAULT_NORM_EPS:
    tower_cfg["norm_kwargs"] = {"eps": float(norm_eps)}


def mlp_ratio_of(width, mlp_dim):
  """An mlp_ratio with int(width * ratio) == mlp_dim (None for 4.0)."""
  if mlp_dim == width * DEFAULT_MLP_RATIO:
    return None
  for ratio in (mlp_dim / width, (mlp_dim + 0.5) / width):
    if int(width * ratio) == mlp_dim:
      return ratio
  raise ValueError(f"No open_clip mlp_ratio gives MLP width {mlp_dim} for "
                   f"width {width}.")


def _oc_vision_cfg(image, image_size):
  """open_clip vision_cfg of big_vl ViT kwargs."""
  for key, allowed, default, why in (
      ("pool_type", ("cls",), "gap", "open_clip pools the class token"),
      ("posemb", ("learn",), "learn", "open_clip learns its posemb"),
      ("pre_norm", (True,), False, "open_clip ViTs have ln_pre"),
      ("act", ("gelu", "gelu_exact", "quick_gelu"), "gelu", "activation")):
    _require(image, key, allowed, default, "image", why)
  dims = _tower_dims(vit.ViT, image)
  patch = dims["patch_size"]
  if not isinstance(patch, int):
    if len(set(patch)) != 1:
      raise ValueError(f"big_vl image patch_size {patch} is not square.")
    patch = int(patch[0])
  cfg = {"image_size": int(image_size), "layers": dims["depth"],
         "width": dims["width"]}
  if dims["width"] // dims["num_heads"] != DEFAULT_HEAD_WIDTH:
    cfg["head_width"] = dims["width"] // dims["num_heads"]
  ratio = mlp_ratio_of(dims["width"], dims["mlp_dim"])
  if ratio is not None:
    cfg["mlp_ratio"] = ratio
  cfg["patch_size"] = patch
  _oc_act_norm(cfg, image.get("act", "gelu"), image.get("norm_eps", 1e-6))
  return cfg


def _oc_text_cfg(text):
  """open_clip text_cfg of big_vl TextTransformer kwargs."""
  for key, allowed, default, why in (
      ("pool_type", ("eot", "last", "first"), "last", "text pooling"),
      ("mask_pad", (False,), True, "open_clip's CLIP text tower never "
       "masks pad tokens (id 0 is also CLIP BPE's '!')"),
      ("norm_position", ("pre",), "pre", "open_clip blocks are pre-LN"),
      ("embed_norm", (False,), False, "no embedding LayerNorm in open_clip"),
      ("type_vocab_size", (0,), 0, "no token types in open_clip"),
      ("act", ("gelu", "gelu_exact", "quick_gelu"), "gelu", "activation")):
    _require(text, key, allowed, default, "text", why)
  pool = text.get("pool_type", "last")
  if pool == "eot":
    _require(text, "pad_id", (0,), 0, "text",
             "'eot' pooling equals open_clip's 'argmax' for pad id 0 only")
  dims = _tower_dims(text_transformer.TextTransformer, text)
  cfg = {"context_length": int(text.get("max_len", CONTEXT_LENGTH)),
         "vocab_size": int(text.get("vocab_size", CLIP_VOCAB_SIZE)),
         "width": dims["width"], "heads": dims["num_heads"],
         "layers": dims["depth"]}
  ratio = mlp_ratio_of(dims["width"], dims["mlp_dim"])
  if ratio is not None:
    cfg["mlp_ratio"] = ratio
  if not text.get("causal", False):
    cfg["no_causal_mask"] = True
  if pool != "eot":
    cfg["pool_type"] = pool
  if int(text.get("pad_id", 0)) != 0:
    cfg["pad_id"] = int(text["pad_id"])
  _oc_act_norm(cfg, text.get("act", "gelu"), text.get("norm_eps", 1e-6))
  return cfg


def as_plain(config):
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
    return config.to_dict()
  return dict(config)


def open_clip_config(model_config, image_size=None):
  """The open_clip model config of a big_vl CLIP-style model config.

  Args:
    model_config: a big_vl model config ({"name": "two_towers", "out_dim",
      "image", "text", ...}, e.g. from `convert` or `big_vl.pretrained`).
    image_size: the image side (default: model_config's image.image_size).

  Returns:
    An open_clip model-config dict (JSON layout) that builds the same model.

  Raises:
    ValueError: naming a big_vl setting open_clip cannot represent.
  """
  mc = as_plain(model_config)
  if mc.get("name", "two_towers") != "two_towers":
    raise ValueError(f"Only two_towers models can be exported to open_clip, "
                     f"not {mc.get('name')!r}.")
  image, text = as_plain(mc.get("image") or {}), as_plain(mc.get("text")
                                                            or {})
  image_size = image_size or image.get("image_size")
  if not image_size:
    raise ValueError("Unknown image size: give image_size (or set "
                     "model_config['image']['image_size']).")
  acts = {image.get("act", "gelu"), text.get("act", "gelu")}
  if "quick_gelu" in acts and len(acts) > 1:
    raise ValueError("open_clip uses QuickGELU in both towers or in neither; "
                     f"big_vl has image act {image.get('act')!r} and text act "
                     f"{text.get('act')!r}.")
  for name, tower in (("image", image), ("text", text)):
    if tower.get("num_classes") == 0:
      raise ValueError(f"big_vl {name} tower without a projection head "
                       "(num_classes=0) cannot be exported to open_clip.")
  config = {"embed_dim": int(mc.get("out_dim", 512))}
  if acts == {"quick_gelu"}:
    config["quick_gelu"] = True
  config["vision_cfg"] = _oc_vision_cfg(image, image_size)
  config["text_cfg"] = _oc_text_cfg(text)
  if mc.get("bias_init") is not None:
    config["init_logit_bias"] = float(mc["bias_init"])
  return config


def _comparable(model_config):
  """A model config without the settings that only affect initialisation."""
  mc = json.loads(json.dumps(as_plain(model_config)))
  for key in ("temperature_init", "bias_init"):
    mc.pop(key, None)
  return mc


def arch_name(oc_config):
  """The `ARCHS` name of an open_clip model config, or None."""
  try:
    target = _comparable(model_config_from_open_clip(oc_config))
  except ValueError:
    return None
  if oc_config.get("init_logit_bias") is not None:
    return None
  for name, arch in ARCHS.items():
    if _comparable(model_config_from_open_clip(arch)) == target:
      return name
  return None


def _resolve_arch(arch_or_config):
  """An open_clip model config from a name or a config dict."""
  if isinstance(arch_or_config, str):
    if arch_or_config not in ARCHS:
      raise ValueError(f"Unknown open_clip architecture {arch_or_config!r}; "
                       f"known: {', '.join(ARCHS)} (or pass an open_clip "
                       "model-config dict).")
    return ARCHS[arch_or_config]
  return as_plain(arch_or_config)


# ---------------------------------------------------------------------------
# Architecture from tensor shapes.

# Checkpoint keys (prefixes / substrings) that show an unsupported feature.
_UNSUPPORTED_PREFIXES = (
    ("visual.attn_pool.", "an attentional pooler"),
    ("visual.trunk.", "a timm image tower"),
    ("visual.layer1.", "a ModifiedResNet (RN50, ...) image tower"),
    ("text.", "a custom (CustomTextCLIP / Hugging Face) text tower"),
    ("text_decoder.", "a CoCa text decoder (convert CoCa checkpoints with "
     "a coca_* arch: big_vl.convert.open_clip_coca)"),
    ("text_projection.weight", "a text projection bias (proj_bias)"),
)
_UNSUPPORTED_PARTS = (
    ("ls_1.gamma", "layer scale (ls_init_value)"),
    (".ln_inner.", "custom attention blocks"),
    (".ln_attn.", "custom attention blocks"),
)


def _check_state_dict_features(state_dict):
  """Raises ValueError if the keys show a feature big_vl cannot convert."""
  for key in state_dict:
    for marker, feature in _UNSUPPORTED_PREFIXES:
      if key.startswith(marker):
        raise ValueError(f"open_clip checkpoint key {key!r}: {feature} is not "
                         "supported by big_vl's open_clip converter.")
    for marker, feature in _UNSUPPORTED_PARTS:
      if marker in key:
        raise ValueError(f"open_clip checkpoint key {key!r}: {feature} is not "
                         "supported by big_vl's open_clip converter.")
  if "visual.conv1.weight" in state_dict and \
      "visual.ln_pre.weight" not in state_dict:
    raise ValueError("open_clip checkpoint without visual.ln_pre "
                     "(no_ln_pre=True) is not supported.")


def _count_blocks(state_dict, prefix):
  n = 0
  while f"{prefix}.resblocks.{n}.attn.in_proj_weight" in state_dict:
    n += 1
  return n


def _infer_config(state_dict, quick_gelu=False):
  """An open_clip model config from tensor shapes (heads: width // 64)."""
  _check_state_dict_features(state_dict)
  needed = ("visual.conv1.weight", "visual.positional_embedding",
            "token_embedding.weight", "positional_embedding",
            "text_projection", "visual.proj", "ln_final.weight")
  missing = [k for k in needed if k not in state_dict]
  if missing:
    raise ValueError(f"Not an open_clip ViT CLIP state dict: missing "
                     f"{missing}.")
  conv = np.shape(state_dict["visual.conv1.weight"])
  v_width, patch = conv[0], conv[-1]
  if conv[-2] != patch:
    raise ValueError(f"Non-square patches {conv[-2:]} are not supported.")
  n_pos = np.shape(state_dict["visual.positional_embedding"])[0] - 1
  grid = int(round(math.sqrt(n_pos)))
  if grid * grid != n_pos:
    raise ValueError(f"visual.positional_embedding has {n_pos} + 1 rows, not "
                     "a square grid plus a class token.")
  v_mlp = np.shape(state_dict["visual.transformer.resblocks.0.mlp.c_fc."
                              "weight"])[0]
  t_width = np.shape(state_dict["ln_final.weight"])[0]
  t_mlp = np.shape(state_dict["transformer.resblocks.0.mlp.c_fc.weight"])[0]
  vision = {"image_size": grid * patch,
            "layers": _count_blocks(state_dict, "visual.transformer"),
            "width": v_width, "patch_size": patch}
  if v_mlp != 4 * v_width:
    vision["mlp_ratio"] = mlp_ratio_of(v_width, v_mlp)
  text = {"context_length": np.shape(state_dict["positional_embedding"])[0],
          "vocab_size": np.shape(state_dict["token_embedding.weight"])[0],
          "width": t_width, "heads": max(t_width // DEFAULT_HEAD_WIDTH, 1),
          "layers": _count_blocks(state_dict, "transformer")}
  if t_mlp != 4 * t_width:
    text["mlp_ratio"] = mlp_ratio_of(t_width, t_mlp)
  config = {"embed_dim": np.shape(state_dict["text_projection"])[1]}
  if quick_gelu:
    config["quick_gelu"] = True
  config["vision_cfg"], config["text_cfg"] = vision, text
  if "logit_bias" in state_dict:
    config["init_logit_bias"] = float(np.asarray(state_dict["logit_bias"]
                                                 ).reshape(()))
  config = json.loads(json.dumps(config, default=int))
  return _adopt_known_heads(config)


def _shape_signature(model_config):
  """A model config without what tensor shapes cannot tell (heads, act)."""
  mc = _comparable(model_config)
  for tower in ("image", "text"):
    for key in ("num_heads", "act"):
      mc[tower].pop(key)
  return mc


def _adopt_known_heads(config):
  """Takes head counts from the `ARCHS` entry with the same shapes, if any.

  Head counts are invisible in tensor shapes; open_clip's default head
  width 64 is wrong for e.g. ViT-H-14 (80) and ViT-g-14 (88).
  """
  signature = _shape_signature(model_config_from_open_clip(config))
  for arch in ARCHS.values():
    if _shape_signature(model_config_from_open_clip(arch)) == signature:
      config["vision_cfg"].pop("head_width", None)
      if "head_width" in arch["vision_cfg"]:
        config["vision_cfg"]["head_width"] = arch["vision_cfg"]["head_width"]
      config["text_cfg"]["heads"] = arch["text_cfg"]["heads"]
      break
  return config


# ---------------------------------------------------------------------------
# State dict -> params.


_norm = torch_params.norm
_dense = torch_params.dense


def attention_params(read, prefix, heads):
  """nn.MultiheadAttention -> flax MultiHeadDotProductAttention params."""
  return torch_params.attention(read, f"{prefix}.in_proj_weight",
                                f"{prefix}.in_proj_bias",
                                f"{prefix}.out_proj", heads)


def encoder_params(read, prefix, depth, heads):
  """open_clip `Transformer` blocks -> big_vl `Encoder` blocks."""
  blocks = {}
  for i in range(depth):
    p = f"{prefix}.resblocks.{i}"
    blocks[f"encoderblock_{i}"] = {
        "LayerNorm_0": _norm(read, f"{p}.ln_1"),
        "MultiHeadDotProductAttention_0": attention_params(read, f"{p}.attn",
                                                     heads),
        "LayerNorm_1": _norm(read, f"{p}.ln_2"),
        "MlpBlock_0": {"Dense_0": _dense(read, f"{p}.mlp.c_fc"),
                       "Dense_1": _dense(read, f"{p}.mlp.c_proj")},
    }
  return blocks


def _image_params(read, image):
  conv = read("visual.conv1.weight")  # [W, 3, p, p]
  pos = read("visual.positional_embedding")  # [1 + N, W]
  transformer = encoder_params(read, "visual.transformer", image["depth"],
                         image["num_heads"])
  transformer["encoder_norm"] = _norm(read, "visual.ln_post")
  return {
      "embedding": {"kernel": conv.transpose(2, 3, 1, 0),
                    "bias": np.zeros([conv.shape[0]], np.float32)},
      "cls": (read("visual.class_embedding") + pos[0])[None, None],
      "pos_embedding": pos[None, 1:],
      "pre_norm": _norm(read, "visual.ln_pre"),
      "Transformer": transformer,
      "head": {"kernel": read("visual.proj")},
  }


def _text_params(read, text):
  encoder = encoder_params(read, "transformer", text["depth"],
                           text["num_heads"])
  encoder["encoder_norm"] = _norm(read, "ln_final")
  return {
      "Embed_0": {"embedding": read("token_embedding.weight")},
      "pos_embedding": read("positional_embedding")[None],
      "Encoder_0": encoder,
      "head": {"kernel": read("text_projection")},
  }


def _params(state_dict, model_config):
  """big_vl params of an open_clip state dict (all keys must be used)."""
  read = torch_params.StateDictReader(state_dict, "open_clip")
  params = {
      "img": _image_params(read, model_config["image"]),
      "txt": _text_params(read, model_config["text"]),
      "t": read("logit_scale").reshape(()),
  }
  if "logit_bias" in state_dict:
    params["b"] = read("logit_bias").reshape(())
  read.check_all_used()
  return params


def _expected_shapes(model_config, text_len=None):
  """{"a/b/c": shape} of the params `models.get(model_config)` creates."""
  model = models.get(model_config)
  size = model_config["image"]["image_size"]
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  text = jax.ShapeDtypeStruct(
      (1, text_len or model_config["text"]["max_len"]), jnp.int32)
  shapes = jax.eval_shape(
      lambda i, t: model.init(jax.random.key(0), i, t)["params"], image, text)
  return {k: tuple(v.shape) for k, v in flatten(shapes).items()}


def flatten(tree, prefix=""):
  """{"a/b/c": leaf} of a nested mapping."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      out.update(flatten(value, name + "/"))
    else:
      out[name] = value
  return out


def check_params(model_config, params, text_len=None):
  """Raises ValueError unless `params` has exactly the model's tree/shapes.

  Args:
    model_config: a big_vl model config with image.image_size set.
    params: nested dict of arrays.
    text_len: the text length to build the model with (default: the text
      tower's max_len).
  """
  expected = _expected_shapes(model_config, text_len)
  got = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
  problems = [f"{k}: missing" for k in expected if k not in got]
  problems += [f"{k}: not in the model" for k in got if k not in expected]
  problems += [f"{k}: {got[k]} vs model {s}" for k, s in expected.items()
               if k in got and got[k] != s]
  if problems:
    raise ValueError("Params do not fit the model config: "
                     + "; ".join(sorted(problems)[:10]))


def _resample(model_config, params, image_size):
  """Resamples the ViT position embedding to `image_size` (in place)."""
  image = model_config["image"]
  patch = image["patch_size"]
  if image_size % patch:
    raise ValueError(f"image_size {image_size} is not a multiple of the "
                     f"patch size {patch}.")
  old_grid = image["image_size"] // patch
  new_grid = image_size // patch
  pos = params["img"]["pos_embedding"]
  params["img"]["pos_embedding"] = np.asarray(
      vit.resample_posemb(pos, new_grid, old_grid), np.float32)
  image["image_size"] = int(image_size)


def convert(state_dict, arch_or_config=None, *, image_size=None):
  """Converts an open_clip CLIP (ViT) state dict to big_vl params.

  Args:
    state_dict: open_clip parameter name -> array (e.g. what
      `safetensors.numpy.load_file` returns; fp16 is cast to float32).
    arch_or_config: an `ARCHS` name ("ViT-B-32", "ViT-B-16-quickgelu",
      "ViT-L-14-336", ...), an open_clip model-config dict, or None to infer
      the architecture from tensor shapes: widths, depths, MLP widths, patch
      and image size (from the position-embedding grid), context length,
      vocabulary, embed_dim; heads are width // 64 (open_clip's default
      head width) unless the shapes are those of an `ARCHS` entry, whose
      head counts are then used. Shapes cannot tell QuickGELU from GELU:
      inference assumes GELU (LAION models); OpenAI's weights need a
      "-quickgelu" arch (`load` does this for OpenAI archives).
    image_size: if given and different from the checkpoint's, the image
      position embedding is resampled to the new patch grid with big_vl's
      bilinear `vit.resample_posemb` (antialiased when shrinking).
      open_clip's own `resize_pos_embed` uses bicubic interpolation
      (antialias=True, align_corners=False), so a model resized here and
      one resized by open_clip differ slightly.

  Returns:
    (model_config, params): model_config a JSON-serialisable dict for
    `big_vl.models.get` (image.image_size records the input size), params
    a nested dict of float32 numpy arrays.

  Raises:
    ValueError: for unsupported open_clip features (named), or a state dict
      that does not fit the architecture.

  Example:
    >>> sd = safetensors.numpy.load_file("open_clip_model.safetensors")
    >>> model_config, params = convert(sd, "ViT-B-32")
    >>> params["img"]["embedding"]["kernel"].shape
    (32, 32, 3, 768)
  """
  state_dict = {k: v for k, v in state_dict.items()
                if k not in OPENAI_EXTRA_KEYS}
  _check_state_dict_features(state_dict)
  if arch_or_config is None:
    oc_config = _infer_config(state_dict)
  else:
    oc_config = _resolve_arch(arch_or_config)
  model_config = model_config_from_open_clip(oc_config)
  params = _params(state_dict, model_config)
  check_params(model_config, params)
  if image_size and int(image_size) != model_config["image"]["image_size"]:
    _resample(model_config, params, int(image_size))
  return model_config, params


# ---------------------------------------------------------------------------
# Files.


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("Reading .bin / .pt / .pth checkpoints needs PyTorch "
                      "(pip install torch); .safetensors files do not.") from e
  return torch


def _is_torchscript(path):
  """Whether `path` is a TorchScript archive (OpenAI's released .pt)."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as zf:
    return any(n.endswith("constants.pkl") for n in zf.namelist())


def _to_numpy(value):
  """A torch tensor (or array) as numpy; floats (fp16, bf16) as float32."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    value = value.numpy()
  value = np.asarray(value)
  if value.dtype.kind == "f" or value.dtype.name == "bfloat16":
    return value.astype(np.float32)
  return value


def _refuse_torchscript(path):
  raise ValueError(
      f"{path} is a TorchScript archive (it holds constants.pkl, as OpenAI's "
      "released CLIP .pt files do). Loading one runs the TorchScript code "
      "stored in the file (torch.jit.load), so a crafted file can run "
      "arbitrary code on this machine. Only if you trust where the file "
      "came from, pass --allow_torchscript (python -m big_vl.convert) or "
      "allow_torchscript=True (big_vl.convert.load / open_clip.load / "
      "read_state_dict); better, convert a .safetensors copy of it.")


def read_state_dict(path, *, allow_torchscript=False):
  """Reads an open_clip / OpenAI checkpoint file as numpy arrays.

  Args:
    path: a `.safetensors` file (read without torch), a torch `.bin` /
      `.pt` / `.pth` state dict (possibly inside {"state_dict": ...}, keys
      possibly prefixed "module."; read with `weights_only=True`, which
      refuses pickled code), or an OpenAI TorchScript `.pt` archive.
    allow_torchscript: read TorchScript archives too. Off by default:
      `torch.jit.load` runs code stored in the file. The check looks at the
      zip's member names only, before torch is imported.

  Returns:
    (state_dict, is_openai): name -> numpy array, and whether the file was
    an OpenAI TorchScript archive (those models use QuickGELU).

  Raises:
    ValueError: `path` is a TorchScript archive and not `allow_torchscript`.
  """
  if str(path).endswith(".safetensors"):
    return {k: _to_numpy(v) for k, v in st_numpy.load_file(path).items()
            }, False
  is_torchscript = _is_torchscript(path)
  if is_torchscript and not allow_torchscript:
    _refuse_torchscript(path)
  torch = _torch()
  if is_torchscript:
    state_dict = torch.jit.load(path, map_location="cpu").state_dict()
    # TorchScript keeps non-persistent buffers (the causal attn_mask).
    state_dict = {k: v for k, v in state_dict.items()
                  if k.split(".")[-1] != "attn_mask"}
    is_openai = True
  else:
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    is_openai = False
    if isinstance(state_dict, dict) and "state_dict" in state_dict:
      state_dict = state_dict["state_dict"]
  if state_dict and all(k.startswith("module.") for k in state_dict):
    state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
  state_dict = {k: _to_numpy(v) for k, v in state_dict.items()
                if k not in OPENAI_EXTRA_KEYS}
  return state_dict, is_openai


def _sibling_config(path):
  """The open_clip model config stored next to `path`, or None.

  Looks for `open_clip_config.json` (Hugging Face hub layout, {"model_cfg":
  ...}) and for `<stem>.json` (what `big_vl.export` writes).
  """
  folder = os.path.dirname(os.path.abspath(path))
  stem = os.path.splitext(os.path.abspath(path))[0]
  for candidate in (os.path.join(folder, "open_clip_config.json"),
                    stem + ".json"):
    if os.path.exists(candidate):
      with open(candidate) as f:
        config = json.load(f)
      config = config.get("model_cfg", config)
      if "vision_cfg" in config:
        return config
  return None


def is_coca(state_dict, arch=None):
  """Whether a state dict (or the arch named for it) is an open_clip CoCa."""
  if isinstance(arch, str) and arch.startswith("coca_"):
    return True
  if isinstance(arch, dict) and "multimodal_cfg" in arch:
    return True
  return any(k.startswith("text_decoder.") for k in state_dict)


def load(path, arch=None, *, image_size=None, allow_torchscript=False):
  """Reads an open_clip / OpenAI CLIP checkpoint file into big_vl params.

  Args:
    path: checkpoint file, see `read_state_dict`.
    arch: an `ARCHS` name or open_clip model-config dict; None uses a
      sibling open_clip_config.json / <stem>.json if there is one, else
      infers the architecture from the shapes (QuickGELU for OpenAI
      TorchScript archives, GELU otherwise).
    image_size: resample the image position embedding to this size.
    allow_torchscript: read TorchScript archives (OpenAI's .pt), which runs
      code stored in the file; see `read_state_dict`.

  Returns:
    (model_config, params) as `convert` (a CoCa checkpoint, `coca_*` arch
    or with `text_decoder.*` keys: as `open_clip_coca.convert`).
  """
  state_dict, is_openai = read_state_dict(
      path, allow_torchscript=allow_torchscript)
  if arch is None:
    arch = _sibling_config(path)
  if is_coca(state_dict, arch):
    from big_vl.convert import open_clip_coca  # pylint: disable=g-import-not-at-top
    if image_size:
      raise ValueError("image_size: resampling a CoCa checkpoint's position "
                       "embedding is not supported.")
    if arch is None:
      raise ValueError("A CoCa checkpoint needs its architecture: --arch="
                       f"{' or '.join(open_clip_coca.ARCHS)} or an open_clip "
                       "model-config JSON.")
    return open_clip_coca.convert(state_dict, arch)
  if arch is None and is_openai:
    arch = _infer_config(state_dict, quick_gelu=True)
  return convert(state_dict, arch, image_size=image_size)


def preprocessing(model_config, image_size=None):
  """big_vl evaluation preprocessing for a converted open_clip model.

  Args:
    model_config: a model config from `convert` / `load`.
    image_size: the evaluation image size (default: the config's
      image.image_size, else 224).

  Returns:
    A JSON-serialisable dict: "pp_img" `clip_preprocess(S)` (OpenAI's
    bicubic resize of the shorter side, centre crop, CLIP mean / std: the
    evaluation transform of open_clip's ViT models), "pp_txt"
    `tokenize(max_len=L, tokenizer='clip_bpe')`, "tokenizer" the kwargs of
    `big_vl.data.tokenizers.get` ({"name": "clip", "max_len": L}) and
    "image_size" S.

  Example:
    >>> preprocessing(model_config_from_open_clip(ARCHS["ViT-L-14-336"]))
    {'pp_img': 'clip_preprocess(336)', 'pp_txt': "tokenize(max_len=77, \
tokenizer='clip_bpe')", 'tokenizer': {'name': 'clip', 'max_len': 77}, \
'image_size': 336}
  """
  mc = as_plain(model_config)
  size = int(image_size or as_plain(mc["image"]).get("image_size") or 224)
  max_len = int(mc.get("max_len")  # CoCa: the model's caption length
                or as_plain(mc["text"]).get("max_len", CONTEXT_LENGTH))
  return {"pp_img": f"clip_preprocess({size})",
          "pp_txt": f"tokenize(max_len={max_len}, tokenizer='clip_bpe')",
          "tokenizer": {"name": "clip", "max_len": max_len},
          "image_size": size}


# ---------------------------------------------------------------------------
# Export: big_vl params -> open_clip state dict.


def norm_tensors(p, prefix):
  return {f"{prefix}.weight": p["scale"], f"{prefix}.bias": p["bias"]}


def dense_tensors(p, prefix):
  return {f"{prefix}.weight": p["kernel"].T, f"{prefix}.bias": p["bias"]}


def attention_tensors(p, prefix):
  """flax MultiHeadDotProductAttention -> nn.MultiheadAttention tensors."""
  width = p["query"]["kernel"].shape[0]
  names = ("query", "key", "value")
  weight = np.concatenate(
      [p[n]["kernel"].reshape(width, width).T for n in names], axis=0)
  bias = np.concatenate([p[n]["bias"].reshape(width) for n in names])
  return {f"{prefix}.in_proj_weight": weight,
          f"{prefix}.in_proj_bias": bias,
          f"{prefix}.out_proj.weight": p["out"]["kernel"].reshape(
              width, width).T,
          f"{prefix}.out_proj.bias": p["out"]["bias"]}


def encoder_tensors(p, prefix):
  out = {}
  i = 0
  while f"encoderblock_{i}" in p:
    b, q = p[f"encoderblock_{i}"], f"{prefix}.resblocks.{i}"
    out.update(norm_tensors(b["LayerNorm_0"], f"{q}.ln_1"))
    out.update(attention_tensors(b["MultiHeadDotProductAttention_0"],
                            f"{q}.attn"))
    out.update(norm_tensors(b["LayerNorm_1"], f"{q}.ln_2"))
    out.update(dense_tensors(b["MlpBlock_0"]["Dense_0"], f"{q}.mlp.c_fc"))
    out.update(dense_tensors(b["MlpBlock_0"]["Dense_1"], f"{q}.mlp.c_proj"))
    i += 1
  return out


def _head_kernel(head, tower):
  """A projection kernel; a head bias must be zero (open_clip has none)."""
  if "bias" in head and np.any(head["bias"]):
    raise ValueError(f"big_vl {tower} head has a non-zero bias; open_clip's "
                     "projections have none.")
  return head["kernel"]


def _t_image(p):
  if np.any(p["embedding"]["bias"]):
    raise ValueError("big_vl image patch embedding has a non-zero bias; "
                     "open_clip's conv1 has none.")
  pos = p["pos_embedding"][0]
  out = {"visual.conv1.weight": p["embedding"]["kernel"].transpose(3, 2, 0, 1),
         "visual.class_embedding": p["cls"].reshape(-1),
         "visual.positional_embedding": np.concatenate(
             [np.zeros_like(pos[:1]), pos], axis=0)}
  out.update(norm_tensors(p["pre_norm"], "visual.ln_pre"))
  out.update(encoder_tensors(p["Transformer"], "visual.transformer"))
  out.update(norm_tensors(p["Transformer"]["encoder_norm"], "visual.ln_post"))
  out["visual.proj"] = _head_kernel(p["head"], "image")
  return out


def _t_text(p):
  out = {"token_embedding.weight": p["Embed_0"]["embedding"],
         "positional_embedding": p["pos_embedding"][0]}
  out.update(encoder_tensors(p["Encoder_0"], "transformer"))
  out.update(norm_tensors(p["Encoder_0"]["encoder_norm"], "ln_final"))
  out["text_projection"] = _head_kernel(p["head"], "text")
  return out


def _image_size_of(model_config, params):
  """Image side implied by the position embedding grid and the patch."""
  patch = _tower_dims(vit.ViT, as_plain(model_config["image"]))[
      "patch_size"]
  patch = patch if isinstance(patch, int) else patch[0]
  n = np.shape(params["img"]["pos_embedding"])[1]
  grid = int(round(math.sqrt(n)))
  if grid * grid != n:
    raise ValueError(f"Image pos_embedding has {n} positions, not a square "
                     "grid.")
  return grid * patch


def to_state_dict(model_config, params):
  """Exports big_vl CLIP-style params as an open_clip state dict.

  Args:
    model_config: the big_vl model config (from `convert`,
      `big_vl.pretrained.load` or a training run).
    params: its params (nested dict of arrays; scanned layouts allowed).

  Returns:
    (arch_or_config, state_dict): an `ARCHS` name when the model is one of
    them, else an open_clip model-config dict (`open_clip.CLIP(**cfg)` or
    `add_model_config`); state_dict maps open_clip names to float32 numpy
    arrays that `open_clip.create_model(arch).load_state_dict(...,
    strict=True)` accepts. The class token goes to `class_embedding` and
    `positional_embedding[0]` is zero (see the module docstring).

  Raises:
    ValueError: for big_vl settings open_clip cannot represent (MAP / GAP
      pooling, sin-cos posemb, non-zero head or patch-embedding biases,
      pad masking, post-LN, ...), named in the message.
  """
  params = jax.tree.map(lambda x: np.asarray(x, np.float32),
                        common.unstack_block_params(as_plain(params)))
  mc = as_plain(model_config)
  oc_config = open_clip_config(mc, _image_size_of(mc, params))
  if "b" in params:
    oc_config["init_logit_bias"] = float(params["b"])
  else:
    oc_config.pop("init_logit_bias", None)
  state_dict = {**_t_image(params["img"]), **_t_text(params["txt"]),
                "logit_scale": np.asarray(params["t"]).reshape(())}
  if "b" in params:
    state_dict["logit_bias"] = np.asarray(params["b"]).reshape(())
  state_dict = {k: np.ascontiguousarray(v, np.float32)
                for k, v in state_dict.items()}
  return arch_name(oc_config) or oc_config, state_dict
