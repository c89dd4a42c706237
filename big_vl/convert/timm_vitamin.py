"""timm ViTamin image towers -> big_vl `models.vitamin.ViTamin` params.

    tower_config, params = convert(timm_model.state_dict())
    tower = ViTamin(**tower_config)     # same features as the timm model
    out, aux = tower.apply({"params": params}, images_nhwc)

timm's `vitamin_{small,base,large,xlarge}_*` models (timm ships with
open_clip) are converted by name: stem, MBConv stages, strided pooling
conv, position embedding, GeGLU transformer blocks (fused qkv split into
query/key/value), `fc_norm` and the optional `head`. The variant is read
from the tensor shapes; every tensor must be used.
"""

import re

from big_vl.convert import torch_params
from big_vl.models import vitamin

_BACKBONE = "patch_embed.backbone"


def variant_of(state_dict):
  """The ViTamin variant ("S", "B", "L", "XL") a state dict's shapes give.

  Raises:
    ValueError: if no variant has these widths and depths.
  """
  width = state_dict[f"{_BACKBONE}.pool.proj.weight"].shape[0]
  depth = 1 + max(int(m.group(1)) for k in state_dict
                  if (m := re.match(r"blocks\.(\d+)\.", k)))
  for name, cfg in vitamin.VARIANTS.items():
    if cfg["width"] == width and cfg["depth"] == depth:
      return name
  raise ValueError(f"No ViTamin variant has transformer width {width} and "
                   f"depth {depth}; known: {vitamin.VARIANTS}.")


def convert(state_dict):
  """Converts a timm ViTamin state dict.

  Args:
    state_dict: name -> array (torch tensors converted with `.numpy()`).

  Returns:
    (tower_config, params): `ViTamin(**tower_config)` kwargs ("variant",
    "num_classes": the head's width or 0) and its params.

  Raises:
    ValueError: for a missing or unused tensor, or an unknown variant.
  """
  variant = variant_of(state_dict)
  cfg = vitamin.VARIANTS[variant]
  read = torch_params.StateDictReader(state_dict, "timm ViTamin")
  stem = f"{_BACKBONE}.stem"
  params = {
      "stem_conv1": torch_params.conv(read, f"{stem}.conv1"),
      "stem_norm": torch_params.norm(read, f"{stem}.norm1"),
      "stem_conv2": torch_params.conv(read, f"{stem}.conv2"),
  }
  for s, depth in enumerate(cfg["conv_depths"]):
    for d in range(depth):
      p = f"{_BACKBONE}.stages.{s}.{d}"
      block = {
          "pre_norm": torch_params.norm(read, f"{p}.pre_norm"),
          "conv1": torch_params.conv(read, f"{p}.conv1_1x1"),
          "conv2": torch_params.conv(read, f"{p}.conv2_kxk"),
          "conv3": torch_params.conv(read, f"{p}.conv3_1x1"),
      }
      for shortcut in (f"{p}.shortcut.expand", f"{p}.shortcut"):
        if read.has(f"{shortcut}.weight"):
          block["shortcut"] = torch_params.conv(read, shortcut)
          break
      params[f"stage{s}_block{d}"] = block
  params["pool_norm"] = torch_params.norm(read, f"{_BACKBONE}.pool.norm")
  params["pool_conv"] = torch_params.conv(read, f"{_BACKBONE}.pool.proj")
  if cfg["pos_embed"]:
    params["pos_embedding"] = read("pos_embed")
  blocks = {}
  for i in range(cfg["depth"]):
    p = f"blocks.{i}"
    blocks[f"encoderblock_{i}"] = {
        "LayerNorm_0": torch_params.norm(read, f"{p}.norm1"),
        "MultiHeadDotProductAttention_0": torch_params.attention(
            read, f"{p}.attn.qkv.weight", f"{p}.attn.qkv.bias",
            f"{p}.attn.proj", cfg["num_heads"]),
        "LayerNorm_1": torch_params.norm(read, f"{p}.norm2"),
        "GeGluMlpBlock_0": {
            "LayerNorm_0": torch_params.norm(read, f"{p}.mlp.norm"),
            "Dense_0": torch_params.dense(read, f"{p}.mlp.w0"),
            "Dense_1": torch_params.dense(read, f"{p}.mlp.w1"),
            "Dense_2": torch_params.dense(read, f"{p}.mlp.w2"),
        },
    }
  params["Transformer"] = blocks
  params["fc_norm"] = torch_params.norm(read, "fc_norm")
  num_classes = 0
  if read.has("head.weight"):
    params["head"] = torch_params.dense(read, "head")
    num_classes = params["head"]["kernel"].shape[1]
  read.check_all_used()
  return {"variant": variant, "num_classes": num_classes}, params
