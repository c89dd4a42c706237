"""PyTorch state-dict names -> flax params: the pieces converters share.

    read = StateDictReader(state_dict, "timm")
    params = {"LayerNorm_0": norm(read, "blocks.0.norm1"),
              "Dense_0": dense(read, "blocks.0.mlp.w0"),
              "conv": conv(read, "stem.conv1"),
              "MultiHeadDotProductAttention_0": attention(
                  read, "blocks.0.attn.qkv", "blocks.0.attn.proj", heads=6)}
    read.check_all_used()       # every tensor of the checkpoint was used
"""

import numpy as np


class StateDictReader:
  """Takes arrays out of a state dict by name, remembering what was used.

  Args:
    state_dict: name -> array (numpy or anything `np.asarray` takes).
    source: the checkpoint family, for error messages.
  """

  def __init__(self, state_dict, source="checkpoint"):
    self._sd = state_dict
    self._source = source
    self.used = set()

  def __call__(self, key):
    if key not in self._sd:
      raise ValueError(f"{self._source} state dict has no {key!r}.")
    self.used.add(key)
    return np.asarray(self._sd[key], np.float32)

  def has(self, key):
    return key in self._sd

  def unused(self):
    return sorted(set(self._sd) - self.used)

  def check_all_used(self):
    """Raises ValueError naming the tensors no read took (not converted:
    a feature the converter does not know would be lost silently)."""
    unused = self.unused()
    if unused:
      raise ValueError(
          f"{self._source} state dict has {len(unused)} tensors the "
          f"converter does not use (not converted): {unused[:8]}"
          f"{' ...' if len(unused) > 8 else ''}")


def norm(read, prefix):
  """LayerNorm `prefix.{weight,bias}` -> {"scale", "bias"}."""
  return {"scale": read(f"{prefix}.weight"), "bias": read(f"{prefix}.bias")}


def dense(read, prefix):
  """Linear `prefix.{weight [out, in], bias}` -> {"kernel" [in, out], "bias"}."""
  return {"kernel": read(f"{prefix}.weight").T,
          "bias": read(f"{prefix}.bias")}


def conv(read, prefix):
  """Conv2d `prefix.weight [O, I/groups, kh, kw]` -> flax [kh, kw, I/g, O]."""
  return {"kernel": read(f"{prefix}.weight").transpose(2, 3, 1, 0),
          "bias": read(f"{prefix}.bias")}


def attention(read, qkv_weight, qkv_bias, out_prefix, heads):
  """Fused-qkv attention -> flax MultiHeadDotProductAttention params.

  Args:
    read: a `StateDictReader`.
    qkv_weight: name of the [3 * D, D] fused query/key/value weight.
    qkv_bias: name of its [3 * D] bias.
    out_prefix: prefix of the output Linear (`.weight`, `.bias`).
    heads: number of attention heads.

  Returns:
    {"query", "key", "value": {"kernel" [D, H, Dh], "bias" [H, Dh]},
     "out": {"kernel" [H, Dh, D], "bias" [D]}}.
  """
  w, b = read(qkv_weight), read(qkv_bias)
  width = w.shape[1]
  head_dim = width // heads
  out = {}
  for i, name in enumerate(("query", "key", "value")):
    rows = slice(i * width, (i + 1) * width)
    out[name] = {"kernel": w[rows].T.reshape(width, heads, head_dim),
                 "bias": b[rows].reshape(heads, head_dim)}
  out["out"] = {"kernel": read(f"{out_prefix}.weight").T.reshape(
      heads, head_dim, width), "bias": read(f"{out_prefix}.bias")}
  return out
