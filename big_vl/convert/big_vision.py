r"""big_vision two-tower (SigLIP, LiT) `.npz` checkpoints in and out of big_vl.

big_vision (google-research/big_vision) saves a checkpoint as one `.npz`
whose keys are the parameter tree flattened with "/" (`utils.npsave` /
`recover_tree`). The released SigLIP files (`gs://big_vision/siglip/*.npz`,
`gs://big_vision/siglip2/*.npz`) hold the params of
`big_vision.models.proj.image_text.two_towers.Model` under `params/`; other
files store the tree without the prefix, full training checkpoints add
optimiser state next to `params/` (ignored here), and old Flax-optimizer ones
keep the params under `opt/target/`. bfloat16 leaves (stored by numpy as
2-byte "void") are recovered, and every leaf is returned as float32.

Tree layout (big_vision names, which big_vl's models share). D: width, M:
mlp_dim, H: heads, Dh = D / H, P: patch size, N = (S / P) ** 2 positions
for images of S x S pixels, V: vocabulary, L: text length, E: out_dim.

    [params/]
      img/                                  big_vision.models.vit
        embedding/kernel          [P, P, 3, D]   patch Conv
        embedding/bias            [D]
        pos_embedding             [1, N, D]      posemb="learn" (absent for
                                                 "sincos2d")
        cls                       [1, 1, D]      only pool_type="tok" (big_vl
                                                 "cls")
        Transformer/
          encoderblock_{i}/                      i < depth; scan=True files
                                                 have one `encoderblock` with
                                                 a leading [depth] axis on
                                                 every leaf
            LayerNorm_0/{scale, bias}            [D]
            MultiHeadDotProductAttention_0/
              {query, key, value}/kernel         [D, H, Dh]
              {query, key, value}/bias           [H, Dh]
              out/kernel                         [H, Dh, D]
              out/bias                           [D]
            LayerNorm_1/{scale, bias}            [D]
            MlpBlock_0/Dense_0/{kernel, bias}    [D, M], [M]
            MlpBlock_0/Dense_1/{kernel, bias}    [M, D], [D]
          encoder_norm/{scale, bias}             [D]
        MAPHead_0/                               only pool_type="map"
          probe                                  [1, 1, D]
          MultiHeadDotProductAttention_0/...     as in a block (query has
                                                 length 1)
          LayerNorm_0/{scale, bias}              [D]
          MlpBlock_0/...                         as in a block (same M)
        head/{kernel, bias}       [D, E], [E]    only with num_classes; the
                                                 released SigLIP image towers
                                                 have none (out_dim = D)
      txt/                                  ...proj.image_text.text_transformer
        Embed_0/embedding         [V, D]         V = 32000 (English SigLIP,
                                                 c4_en SentencePiece) or
                                                 250000 (i18n, mc4)
        pos_embedding             [1, L, D]      L = 64 (16 for So400m/14 224)
        Encoder_0/{encoderblock_{i} | encoderblock, encoder_norm}
                                                 as img/Transformer
        MAPHead_0/...                            only pool_type="map"
        head/{kernel, bias}       [D, E], [E]
      t                           [1]            log temperature
      b                           [1]            logit bias (bias_init given)

How big_vision's modules map onto big_vl's (checked against big_vision's
`models/vit.py`, `models/proj/image_text/{two_towers,text_transformer}.py`):
pre-LN blocks with flax's default LayerNorm epsilon 1e-6 and
`nn.gelu` (tanh approximation: big_vl act "gelu"); no LayerNorm before the
blocks; the text tower is bidirectional and attends to every position,
padding included (big_vl `causal=False`, `mask_pad=False`) and pools the
last position ("last", SigLIP's texts end with a sticky EOS that is also
the padding id 1) or with a MAP head; `t` and `b` are [1] in big_vision and
[] in big_vl. big_vision's ViT pool types "gap" and "0" have no parameters
and both come out as "gap" (a "0"-pooled tower needs its config changed by
hand); the text pool types "first", "mean" and "max" are likewise
indistinguishable from "last" (big_vl has no "max"). An image tower with a
`pre_logits` (rep_size) layer is not supported.

SigLIP 2 NaFlex files (`siglip2/*naflex*.npz`, image tower
`models/proj/image_text/naflex_vit.py`) differ in two image leaves:
`img/embedding/kernel` is a Dense [P * P * 3, D] over flattened patches
(the convolution kernel's numbers, reshaped) and `img/pos_embedding` a
grid [G, G, D]. They convert to a ViT with `posemb_grid=G`, which resizes
the grid to every input as big_vision does (`big_vl.models.naflex`), and
evaluate through the `naflex` pp op (`preprocessing`); export writes the
NaFlex layout back for such models. A NaFlex tower with `patchln_pre` /
`patchln_post` is not supported. Checked against big_vision's own
`naflex_vit` on padded inputs of four aspect ratios
(tests/make_big_vision_naflex_fixture.py).

Legacy layouts big_vision's own loaders repair are repaired here too: a
position embedding stored under `img/Transformer/` (or
`Transformer/posembed_input/`), a ViT position table with a leading class
position (folded into `cls`), a MAP head stored inline (`img/probe`, ...), and
the text `Encoder_0/pos_embedding` that some old checkpoints add on top of
`txt/pos_embedding` (summed).

Example:
  >>> model_config, params = load("webli_en_b16_224_63724782.npz")
  >>> model_config["image"]["patch_size"], model_config["text"]["max_len"]
  (16, 64)
  >>> model = big_vl.models.get(model_config)
  >>> zimg, ztxt, aux = model.apply({"params": params}, images, tokens)
  >>> pp = preprocessing(model_config, "c4_en.model", params=params)
  >>> pp["image"]
  'decode|resize(224)|value_range(-1, 1)'

Length: both directions of the big_vision mapping, with its name table in this
docstring; one module so that they remain each other's inverse."""

from collections.abc import Mapping
import inspect
import os
import re

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from big_vl import models
from big_vl.models import common
from big_vl.models import text_transformer
from big_vl.models import vit

# What a converted config sets for the init-only scalars: the values SigLIP
# was trained with (big_vision's SigLIP configs). A checkpoint only holds the
# trained `t` and `b`, not their initial values.
SIGLIP_TEMPERATURE_INIT = 10.0
SIGLIP_BIAS_INIT = -10.0
# SigLIP's tokenisation (`tokenize(..., eos="sticky", pad_value=1)` in
# big_vision's SigLIP demo): rows end with EOS and are padded with id 1.
SIGLIP_PAD_ID = 1
SIGLIP_EOS = "sticky"
# Vocabulary size -> big_vision's name of the SentencePiece model used.
VOCABULARIES = {32_000: "c4_en", 250_000: "mc4"}

NORM_EPS = 1e-6
_ENCODERS = {"img": "Transformer", "txt": "Encoder_0"}
_BLOCK_RE = re.compile(r"encoderblock_\d+")


def pair(size):
  """(h, w) ints of an int or a pair."""
  if isinstance(size, (int, np.integer)):
    return (int(size), int(size))
  h, w = size
  return (int(h), int(w))


def _plain(cfg):
  """A (possibly ConfigDict) model config as a plain dict of plain dicts."""
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  cfg = dict(cfg or {})
  for tower in ("image", "text"):
    if cfg.get(tower) is not None:
      cfg[tower] = dict(cfg[tower].to_dict() if hasattr(cfg[tower], "to_dict")
                        else cfg[tower])
  return cfg


def _leaf_to_float32(name, value):
  """A checkpoint leaf as a float32 numpy array (bfloat16 "void" recovered)."""
  value = np.asarray(value)
  if value.dtype.type is np.void:
    if value.dtype.itemsize != 2:
      raise ValueError(f"{name}: unknown {value.dtype.itemsize}-byte void "
                       "dtype (only bfloat16, stored as V2, is known).")
    value = value.view(jnp.bfloat16)
  if not (np.issubdtype(value.dtype, np.floating) or
          value.dtype == jnp.bfloat16):
    raise ValueError(f"{name}: expected a floating-point array, got dtype "
                     f"{value.dtype}.")
  return np.asarray(value, np.float32)


def _unflatten(flat):
  """{"a/b/c": x} -> {"a": {"b": {"c": x}}}, with clear errors on clashes."""
  tree = {}
  for key in sorted(flat, key=str):
    parts = str(key).split("/")
    node = tree
    for i, part in enumerate(parts[:-1]):
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise ValueError(f"Checkpoint key {key!r} nests under the array "
                         f"{'/'.join(parts[:i + 1])!r}.")
    if parts[-1] in node:
      raise ValueError(f"Checkpoint key {key!r} is both an array and a "
                       "group of arrays.")
    node[parts[-1]] = flat[key]
  return tree


def to_tree(flat_or_tree):
  """Nested dict of float32 arrays: the params part of a checkpoint."""
  if not isinstance(flat_or_tree, Mapping) and not hasattr(
      flat_or_tree, "items"):
    raise TypeError(f"Expected a mapping (np.load's result or a params tree),"
                    f" got {type(flat_or_tree).__name__}.")
  items = dict(flat_or_tree.items())
  if any("/" in str(k) for k in items):
    tree = _unflatten(items)
  else:
    tree = dict(items)
  if isinstance(tree.get("params"), Mapping):
    tree = tree["params"]
  elif isinstance(tree.get("opt"), Mapping) and isinstance(
      tree["opt"].get("target"), Mapping):
    tree = tree["opt"]["target"]

  def convert_leaves(node, path):
    if isinstance(node, Mapping):
      return {str(k): convert_leaves(v, f"{path}/{k}" if path else str(k))
              for k, v in node.items()}
    return _leaf_to_float32(path, node)

  return convert_leaves(tree, "")


def fix_legacy(img, txt):
  """Repairs old big_vision layouts in place (see the module docstring)."""
  enc = img.get("Transformer", {})
  if "posembed_input" in enc:
    img["pos_embedding"] = enc.pop("posembed_input")["pos_embedding"]
  if "pos_embedding" in enc:
    img["pos_embedding"] = enc.pop("pos_embedding")
  pe = img.get("pos_embedding")
  if pe is not None and pe.ndim == 3:
    side = int(np.sqrt(pe.shape[1]))
    if side * side + 1 == pe.shape[1]:
      img["pos_embedding"] = pe[:, 1:]
      if "cls" in img:
        img["cls"] = img["cls"] + pe[:, :1]
  if "probe" in img:
    img["MAPHead_0"] = {k: img.pop(k) for k in (
        "probe", "MlpBlock_0", "MultiHeadDotProductAttention_0",
        "LayerNorm_0") if k in img}
  extra = txt.get("Encoder_0", {}).pop("pos_embedding", None)
  if extra is not None and "pos_embedding" in txt:
    txt["pos_embedding"] = txt["pos_embedding"] + extra


def get(tree, path):
  """tree["a"]["b"] for path "a/b"; ValueError naming the missing key."""
  node = tree
  for part in path.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      raise ValueError(
          f"Not a big_vision two-tower checkpoint: missing required key "
          f"{path!r} (flat name 'params/{path}' or '{path}').")
    node = node[part]
  return node


def _shape(tree, path, ndim):
  """The shape of the array at `path`, checked to have `ndim` dimensions."""
  value = get(tree, path)
  if not isinstance(value, np.ndarray) or value.ndim != ndim:
    shape = getattr(value, "shape", "a group of arrays")
    raise ValueError(f"{path}: expected a {ndim}-D array, got {shape}.")
  return value.shape


def _encoder_dims(tree, tower):
  """{"width", "depth", "mlp_dim", "num_heads"} of a tower's encoder."""
  enc = f"{tower}/{_ENCODERS[tower]}"
  blocks = get(tree, enc)
  depth = sum(1 for k in blocks if _BLOCK_RE.fullmatch(str(k)))
  if not depth:
    raise ValueError(f"Not a big_vision two-tower checkpoint: no "
                     f"{enc}/encoderblock_0 (or scanned "
                     f"{enc}/encoderblock).")
  block = f"{enc}/encoderblock_0"
  width, heads, head_dim = _shape(
      tree, f"{block}/MultiHeadDotProductAttention_0/query/kernel", 3)
  if heads * head_dim != width:
    raise ValueError(f"{block}/MultiHeadDotProductAttention_0/query/kernel: "
                     f"shape {(width, heads, head_dim)} is not [D, H, D/H].")
  _, mlp_dim = _shape(tree, f"{block}/MlpBlock_0/Dense_0/kernel", 2)
  return {"width": int(width), "depth": depth, "mlp_dim": int(mlp_dim),
          "num_heads": int(heads)}


def _head_dim(tree, tower):
  """(out width or None, has bias) of a tower's projection `head`."""
  head = tree[tower].get("head")
  if head is None:
    return None, True
  _, out = _shape(tree, f"{tower}/head/kernel", 2)
  return int(out), "bias" in head


def image_config(tree):
  """(image tower kwargs, head width or None, grid or None, head bias)."""
  img = tree["img"]
  if "pre_logits" in img:
    raise ValueError("img/pre_logits: big_vision ViTs with a `rep_size` "
                     "(pre_logits + tanh) layer are not supported by "
                     "big_vl's ViT.")
  ph, pw, _, width = _shape(tree, "img/embedding/kernel", 4)
  cfg = _encoder_dims(tree, "img")
  if width != cfg["width"]:
    raise ValueError(f"img/embedding/kernel: width {width} differs from the "
                     f"encoder width {cfg['width']}.")
  cfg["patch_size"] = int(ph) if ph == pw else [int(ph), int(pw)]
  if "MAPHead_0" in img:
    cfg["pool_type"] = "map"
  elif "cls" in img:
    cfg["pool_type"] = "cls"
  else:
    cfg["pool_type"] = "gap"
  grid = None
  if "pos_embedding" in img:
    cfg["posemb"] = "learn"
    _, n, _ = _shape(tree, "img/pos_embedding", 3)
    side = int(round(np.sqrt(n)))
    if side * side != n:
      raise ValueError(f"img/pos_embedding: {n} positions are not a square "
                       "grid; only square position grids are supported.")
    grid = side
  else:
    cfg["posemb"] = "sincos2d"
  cfg.update(act="gelu", norm_eps=NORM_EPS)
  out, bias = _head_dim(tree, "img")
  return cfg, out, grid, bias


def _text_config(tree):
  """(text tower kwargs, head width or None, head bias)."""
  vocab, width = _shape(tree, "txt/Embed_0/embedding", 2)
  _, max_len, _ = _shape(tree, "txt/pos_embedding", 3)
  cfg = _encoder_dims(tree, "txt")
  if width != cfg["width"]:
    raise ValueError(f"txt/Embed_0/embedding: width {width} differs from the "
                     f"encoder width {cfg['width']}.")
  cfg.update(vocab_size=int(vocab), max_len=int(max_len), causal=False,
             pool_type="map" if "MAPHead_0" in tree["txt"] else "last",
             mask_pad=False, pad_id=SIGLIP_PAD_ID, act="gelu",
             norm_eps=NORM_EPS)
  out, bias = _head_dim(tree, "txt")
  return cfg, out, bias


def _out_dim(image, img_out, text, txt_out):
  """The shared embedding width; sets num_classes=0 on head-less towers."""
  outs = {o for o in (img_out, txt_out) if o is not None}
  if len(outs) > 1:
    raise ValueError(f"img/head gives {img_out} features but txt/head gives "
                     f"{txt_out}; big_vl's two_towers needs one out_dim.")
  out_dim = outs.pop() if outs else image["width"]
  for name, cfg, out in (("img", image, img_out), ("txt", text, txt_out)):
    if out is None:
      if cfg["width"] != out_dim:
        raise ValueError(
            f"{name} has no head and width {cfg['width']}, but the other "
            f"tower gives {out_dim} features; big_vl's two_towers needs one "
            "out_dim.")
      cfg["num_classes"] = 0
  return out_dim


def image_shape(image_cfg, grid, channels=3):
  """An input image shape [1, H, W, C] matching a learned posemb grid."""
  patch = pair(image_cfg["patch_size"])
  grid = pair(grid or 1)
  return (1, grid[0] * patch[0], grid[1] * patch[1], channels)


def _expected_shapes(model_config, image_shape):
  """{"a/b": shape} of the params `model_config` builds (unscanned)."""
  cfg = _plain(model_config)
  captioner = cfg.get("name") == "captioner"
  for tower in ("image", "decoder") if captioner else ("image", "text"):
    cfg[tower] = {**(cfg.get(tower) or {}), "scan": False}
  model = models.get(cfg)
  text_shape = (1, cfg["max_len"] if captioner else
                cfg["text"].get("max_len", 77))
  abstract = jax.eval_shape(
      model.init, jax.random.key(0),
      jax.ShapeDtypeStruct(image_shape, jnp.float32),
      jax.ShapeDtypeStruct(text_shape, jnp.int32))["params"]
  flat = traverse_util.flatten_dict(abstract, sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def check_fits(params, model_config, image_shape, what):
  """Raises ValueError listing keys/shapes of `params` the model lacks."""
  expected = _expected_shapes(model_config, image_shape)
  got = {k: tuple(np.shape(v)) for k, v in
         traverse_util.flatten_dict(params, sep="/").items()}
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  wrong = [f"{k}: {got[k]}, expected {expected[k]}" for k in sorted(expected)
           if k in got and got[k] != expected[k]]
  problems = []
  for title, names in (("missing keys", missing),
                       ("unexpected keys", unexpected),
                       ("inconsistent shapes", wrong)):
    if names:
      more = f" (and {len(names) - 10} more)" if len(names) > 10 else ""
      problems.append(f"{title}: {'; '.join(names[:10])}{more}")
  if problems:
    raise ValueError(f"{what} does not fit the inferred model config "
                     f"{model_config}: " + " | ".join(problems))


def _posemb_grid(params, image_cfg):
  """The (square) learned posemb grid side of `params`, or None."""
  if image_cfg.get("posemb", "learn") != "learn":
    return None
  pe = params.get("img", {}).get("pos_embedding")
  if pe is None:
    return None
  side = int(round(np.sqrt(np.shape(pe)[1])))
  return side if side * side == np.shape(pe)[1] else None


def grid_for(image_size, patch_size):
  """Patch grid (h, w) of an image size; ValueError if not divisible."""
  size = pair(image_size)
  patch = pair(patch_size)
  if size[0] % patch[0] or size[1] % patch[1] or min(size) <= 0:
    raise ValueError(f"image_size {image_size} is not a positive multiple of "
                     f"the patch size {patch_size}.")
  return (size[0] // patch[0], size[1] // patch[1])


def _naflex_to_fixres(img):
  """Rewrites a SigLIP 2 NaFlex image tower (`naflex_vit`) in place into the
  fixed-resolution layout big_vl's ViT holds; returns its position grid
  side G, or None for a fixed-resolution tower.

  NaFlex files differ in two leaves: `embedding/kernel` is a Dense over
  flattened patches [P * P * C, D] (big_vision's `patchify` order: row,
  column, channel), the same numbers as the stride-P convolution's kernel
  [P, P, C, D]; and `pos_embedding` is a grid [G, G, D], big_vl's [1, G *
  G, D] row-major. The ViT then runs with `posemb_grid=G`, resizing the
  grid to each input.
  """
  kernel = img.get("embedding", {}).get("kernel")
  if kernel is None or np.ndim(kernel) != 2:
    return None
  for name in ("patchln_pre", "patchln_post"):
    if name in img:
      raise ValueError(f"img/{name}: NaFlex towers with a LayerNorm on the "
                       "patches are not supported by big_vl's ViT.")
  k, width = kernel.shape
  channels = 3
  patch = int(round(np.sqrt(k / channels)))
  if patch * patch * channels != k:
    raise ValueError(f"img/embedding/kernel {kernel.shape}: not a Dense "
                     f"over square RGB patches (P * P * 3 rows).")
  pe = img.get("pos_embedding")
  if pe is None or np.ndim(pe) != 3 or pe.shape[0] != pe.shape[1]:
    raise ValueError("img/pos_embedding: a NaFlex tower needs a square "
                     f"[G, G, D] grid, got {getattr(pe, 'shape', None)}.")
  img["embedding"] = {**img["embedding"],
                      "kernel": np.reshape(kernel, (patch, patch, channels,
                                                    width))}
  img["pos_embedding"] = np.reshape(pe, (1, -1, pe.shape[-1]))
  return int(pe.shape[0])


def _fixres_to_naflex(img, grid):
  """The inverse of `_naflex_to_fixres` (for export), on a copy."""
  img = dict(img)
  kernel = img["embedding"]["kernel"]
  img["embedding"] = {**img["embedding"],
                      "kernel": np.reshape(kernel, (-1, kernel.shape[-1]))}
  pe = img["pos_embedding"]
  img["pos_embedding"] = np.reshape(pe, (grid, grid, pe.shape[-1]))
  return img


def convert(flat_or_tree, *, image_size=None):
  """Converts a big_vision two-tower checkpoint to a big_vl model + params.

  The model config is inferred from the shapes alone (see the module
  docstring for the layout): the image tower's width, depth, mlp_dim,
  num_heads (from the query kernel [D, H, D/H]), patch size (embedding
  kernel), pooling ("map" with `MAPHead_0`, "cls" with `cls`, else "gap"),
  learned or sincos2d posemb and head; the text tower's vocabulary, max_len,
  dimensions and pooling ("map" with `MAPHead_0`, else "last"); out_dim from
  the heads (or the width where neither tower has one); `bias_init` iff the
  checkpoint has `b`. Then every leaf is checked against the model the
  config builds.

  Args:
    flat_or_tree: `np.load(path)` of a big_vision `.npz` (or any mapping of
      "/"-joined names, with or without the `params/` prefix) or the nested
      params tree; unscanned or scanned encoder layouts.
    image_size: optional int or (h, w) to run the image tower at: the
      learned position embedding is resampled (bilinear,
      `big_vl.models.vit.resample_posemb`) to its patch grid. Not for
      NaFlex checkpoints (SigLIP 2 `*naflex*` files: a Dense patch
      embedding and a [G, G, D] position grid), which convert to a ViT
      with `posemb_grid=G` that resizes the grid to every input.

  Returns:
    (model_config, params): model_config is a JSON-serialisable dict
    {"name": "two_towers", "out_dim", "image": {...}, "text": {...},
    "temperature_init": 10.0[, "bias_init": -10.0]} (SigLIP's init values;
    the trained ones are in params) for `big_vl.models.get`; params a
    nested dict of float32 numpy arrays in the unscanned layout
    (`encoderblock_{i}`), with `t` and `b` of shape []. E.g. for SigLIP
    B/16 224: params["img"]["pos_embedding"].shape == (1, 196, 768) and
    model_config["out_dim"] == 768.

  Raises:
    ValueError: naming missing required keys, keys the model does not have,
      or shapes that do not fit together.
  """
  tree = to_tree(flat_or_tree)
  missing = [k for k in ("img", "txt", "t") if k not in tree]
  if missing:
    raise ValueError(
        f"Not a big_vision two-tower checkpoint: missing required keys "
        f"{missing} (flat names 'params/<key>/...' or '<key>/...'); "
        f"top-level keys found: {sorted(tree)}.")
  tree = {k: v for k, v in tree.items()}
  tree["img"], tree["txt"] = dict(tree["img"]), dict(tree["txt"])
  for tower, enc in _ENCODERS.items():
    if isinstance(tree[tower].get(enc), Mapping):
      tree[tower][enc] = common.unstack_block_params(tree[tower][enc])
  fix_legacy(tree["img"], tree["txt"])
  for name in ("t", "b"):
    if name in tree:
      value = tree[name]
      if not isinstance(value, np.ndarray) or value.size != 1 or \
          value.ndim > 1:
        raise ValueError(f"{name}: expected shape [] or [1], got "
                         f"{getattr(value, 'shape', 'a group of arrays')}.")
      tree[name] = value.reshape(())

  naflex_grid = _naflex_to_fixres(tree["img"])
  if naflex_grid is not None and image_size is not None:
    raise ValueError("A NaFlex checkpoint resizes its position embedding "
                     "to every input; convert it without image_size (pick "
                     "the sequence budget in the `naflex` pp op).")
  image, img_out, grid, img_bias = image_config(tree)
  if naflex_grid is not None:
    image["posemb_grid"] = naflex_grid
  text, txt_out, txt_bias = _text_config(tree)
  if not img_bias:
    image["head_bias"] = False
  if not txt_bias:
    text["head_bias"] = False
  out_dim = _out_dim(image, img_out, text, txt_out)
  model_config = {"name": "two_towers", "out_dim": out_dim, "image": image,
                  "text": text, "temperature_init": SIGLIP_TEMPERATURE_INIT}
  if "b" in tree:
    model_config["bias_init"] = SIGLIP_BIAS_INIT
  channels = tree["img"]["embedding"]["kernel"].shape[2]
  check_fits(tree, model_config, image_shape(image, grid, channels),
             "The checkpoint")

  if image_size is not None:
    new_grid = grid_for(image_size, image["patch_size"])
    if grid is not None and new_grid != (grid, grid):
      tree["img"]["pos_embedding"] = np.asarray(vit.resample_posemb(
          jnp.asarray(tree["img"]["pos_embedding"]), new_grid, grid),
                                                np.float32)
  # Record the input size (informational ViT field, as open_clip's
  # converter does) so preprocessing follows from the model config alone.
  size = image_size if image_size is not None else (
      None if grid is None or naflex_grid is not None
      else grid * pair(image["patch_size"])[0])
  if isinstance(size, int) and \
      len(set(pair(image["patch_size"]))) == 1:
    image["image_size"] = size
  return model_config, tree


def read_npz(path):
  """{flat name: array} of a big_vision `.npz` (never unpickling)."""
  with np.load(os.fspath(path), allow_pickle=False) as npz:
    return {k: npz[k] for k in npz.files}


def load(path, *, image_size=None):
  """Reads a big_vision `.npz` checkpoint and converts it (see `convert`).

  Args:
    path: the `.npz` file.
    image_size: optional image size to resample the position embedding to.

  Returns:
    (model_config, params) as `convert` returns them.
  """
  return convert(read_npz(path), image_size=image_size)


def _tokenize_kwargs():
  """The keyword names big_vl's pp op `tokenize` takes (None: any)."""
  from big_vl import registry  # pylint: disable=g-import-not-at-top
  sig = inspect.signature(registry.get("pp", "tokenize"))
  if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
    return None
  return set(sig.parameters)


def preprocessing(model_config, tokenizer_model=None, *, image_size=None,
                  params=None, max_patches=None):
  """pp strings to evaluate a converted model the way big_vision does.

  big_vision evaluates SigLIP with `resize(S)|value_range(-1, 1)` on the
  image (bilinear; big_vision's TF resize does not antialias, big_vl's PIL
  resize does when downsampling, so numbers can differ slightly) and, for
  text, `tokenize(max_len=L, model="c4_en" or "mc4", eos="sticky",
  pad_value=1)`: a lower-cased SentencePiece encoding with a sticky EOS,
  padded with id 1. The image size is not part of the model config; it
  comes from `image_size`, the config's `image.image_size` (set by
  `convert`), or the learned position embedding in `params` (grid x patch).

  The text pp string needs big_vl's pp op `tokenize` to take the
  SentencePiece model (a `model=` argument or `**kwargs` passed on to
  `big_vl.data.tokenizers.get`). Where it does, "pp_txt" is
  `tokenize(max_len=L, tokenizer='sentencepiece', model='PATH',
  eos='sticky', pad_id=1)` (only the arguments the op accepts); otherwise,
  or without `tokenizer_model`, "pp_txt" is None and the "tokenizer" entry
  still gives the tokenizer: `big_vl.data.tokenizers.get(**tokenizer)`.

  Args:
    model_config: as `convert` returns it.
    tokenizer_model: path of the SentencePiece `.model` file (big_vision's
      "c4_en" for 32000-token vocabularies, "mc4" for 250000), or None.
    image_size: the evaluation image size (int); overrides `params`.
    params: the converted params, to read the image size from.
    max_patches: for a NaFlex model (`image.posemb_grid` G), the sequence
      budget of its `naflex` pp op; default G * G (SigLIP 2 NaFlex: 256).
      pp_img is then `decode|naflex(N, P)|value_range(-1, 1)` and
      "image_size" None.

  Returns:
    {"pp_img": "decode|resize(S)|value_range(-1, 1)" (`decode` passes
    already decoded images through), "pp_txt": pp string or None,
    "tokenizer": {"name": "sentencepiece", "model": tokenizer_model,
    "max_len": L, "eos": "sticky", "pad_id": 1}, "vocabulary": "c4_en",
    "mc4" or None, "image_size": S}; JSON-serialisable.

  Raises:
    ValueError: if the image size is neither given nor in `params`.
  """
  model_config = _plain(model_config)
  image_cfg, text_cfg = model_config["image"], model_config["text"]
  patch = vit.ViT(**image_cfg).dims()["patch_size"]
  image_cfg = {**image_cfg, "patch_size": patch}
  pp_img = None
  if image_cfg.get("posemb_grid"):
    side = pair(image_cfg["posemb_grid"])
    max_patches = int(max_patches or side[0] * side[1])
    p = pair(patch)
    pp_img = (f"decode|naflex({max_patches}, "
              f"{p[0] if p[0] == p[1] else list(p)})|value_range(-1, 1)")
    image_size = "naflex"
  if image_size is None:
    image_size = image_cfg.get("image_size")
  if image_size is None and params is not None:
    grid = _posemb_grid(params, image_cfg)
    if grid is not None:
      ph, pw = pair(image_cfg["patch_size"])
      image_size = grid * ph if ph == pw else [grid * ph, grid * pw]
  if image_size is None:
    raise ValueError("preprocessing: give image_size (the model config does "
                     "not hold it) or params with a learned pos_embedding.")
  if image_size == "naflex":
    image_size = None
  elif not isinstance(image_size, int):
    image_size = [int(s) for s in image_size]
  if pp_img is None:
    pp_img = f"decode|resize({image_size})|value_range(-1, 1)"
  max_len = int(text_cfg["max_len"])
  tokenizer = {"name": "sentencepiece",
               "model": None if tokenizer_model is None
                        else os.fspath(tokenizer_model),
               "max_len": max_len, "eos": SIGLIP_EOS,
               "pad_id": int(text_cfg.get("pad_id", SIGLIP_PAD_ID))}
  text = None
  accepted = _tokenize_kwargs()
  if tokenizer["model"] is not None and (accepted is None or
                                         "model" in accepted):
    args = [f"max_len={max_len}", "tokenizer='sentencepiece'"]
    for key in ("model", "eos", "pad_id"):
      if accepted is None or key in accepted:
        args.append(f"{key}={tokenizer[key]!r}")
    text = f"tokenize({', '.join(args)})"
  return {"pp_img": pp_img, "pp_txt": text, "tokenizer": tokenizer,
          "vocabulary": VOCABULARIES.get(text_cfg.get("vocab_size")),
          "image_size": image_size}


def _export_problems(model_config):
  """Settings of `model_config` big_vision's two_towers cannot reproduce."""
  problems = []
  if model_config.get("name", "two_towers") != "two_towers":
    problems.append(f"model {model_config['name']!r} is not two_towers")
  image = vit.ViT(**(model_config.get("image") or {}))
  text = text_transformer.TextTransformer(**(model_config.get("text") or {}))
  for name, tower in (("image", image), ("text", text)):
    if tower.act != "gelu":
      problems.append(f"{name}.act={tower.act!r} (big_vision: tanh 'gelu')")
    if tower.norm_eps != NORM_EPS:
      problems.append(f"{name}.norm_eps={tower.norm_eps} (big_vision: 1e-6)")
    if not tower.head_bias:
      problems.append(f"{name}.head_bias=False (big_vision heads have one)")
  if image.pre_norm:
    problems.append("image.pre_norm=True (big_vision ViTs have none)")
  if text.causal:
    problems.append("text.causal=True (big_vision's text tower is "
                    "bidirectional)")
  if text.mask_pad:
    problems.append("text.mask_pad=True (big_vision attends to padding)")
  if text.pool_type == "eot":
    problems.append("text.pool_type='eot' (big_vision has no such pooling)")
  if text.norm_position != "pre" or text.embed_norm or text.type_vocab_size:
    problems.append("a BERT-style text tower (norm_position / embed_norm / "
                    "type_vocab_size)")
  return problems


# A SigLIP 2 model's training-time parts (`two_towers.Model` with a
# decoder or a self-distillation head): the decoder's config keys and
# params, the patch-token heads of its masked prediction and the
# self-distillation head.
_DECODER_CONFIG = ("decoder", "vocab_size", "max_len", "parallel_fraction",
                   "uncond_prob", "mask_token", "project_memory", "decode",
                   "token_features", "token_keep", "ssl_head")
_DECODER_PARAMS = ("decoder", "memory_proj", "null_memory", "img_token_head",
                   "txt_token_head", "ssl_head")


def encoder_only(model_config, params):
  """(model_config, params) without a two-tower model's training-time
  heads (SigLIP 2's LocCa decoder, its masked-prediction token heads and
  mask token, its self-distillation head): the encoder that is exported
  and evaluated; other models are returned as they are."""
  if model_config.get("decoder") is None and \
      model_config.get("ssl_head") is None:
    return model_config, params
  config = {k: v for k, v in model_config.items()
            if k not in _DECODER_CONFIG}
  params = {k: v for k, v in dict(params).items()
            if k not in _DECODER_PARAMS}
  image = dict(config.get("image") or {})
  if image.pop("mask_ratio", None):  # Masking is training-time too.
    config["image"] = image
    params["img"] = {k: v for k, v in dict(params["img"]).items()
                     if k != "mask_token"}
  return config, params


def to_npz_dict(model_config, params, *, scan=False, prefix="params/",
                strict=True):
  """Flattens big_vl two-tower params into big_vision's `.npz` layout.

  Args:
    model_config: the model's config (as `convert` returns, or any
      two_towers config).
    params: its params, unscanned or scanned.
    scan: write each encoder as one `encoderblock` with a leading [depth]
      axis (big_vision's `scan=True` models) instead of `encoderblock_{i}`.
      A two-tower model with a decoder (SigLIP 2) is written without it
      (`encoder_only`). A model with `image.posemb_grid` (NaFlex) is
      written in the layout
      of big_vision's `naflex_vit`: a Dense patch embedding [P * P * 3, D]
      and a [G, G, D] position grid.
    prefix: prepended to every key: "params/" (big_vision's training
      checkpoints and the released SigLIP files) or "" (bare params).
    strict: raise if the model uses a setting big_vision's two_towers cannot
      express (causal or pad-masked text, "eot" pooling, another activation
      or LayerNorm epsilon, ...); False writes the weights anyway.

  Returns:
    {"params/img/embedding/kernel": float32 array, ...}; `t` and `b` are
    written with big_vision's shape [1], so `np.savez(path, **d)` gives a
    file big_vision's `two_towers.load` reads with its shape checks.
    Load it in big_vision with the same tower sizes, image
    `pool_type="map"` (or "tok" for big_vl "cls"), `out_dim` and
    `bias_init`.

  Raises:
    ValueError: if params do not fit `model_config`, `prefix` is not "" and
      does not end with "/", or (strict) for settings listed above.
  """
  if prefix and not prefix.endswith("/"):
    raise ValueError(f"prefix must be '' or end with '/', got {prefix!r}.")
  model_config, params = encoder_only(_plain(model_config), params)
  if strict:
    problems = _export_problems(model_config)
    if problems:
      raise ValueError("big_vision cannot express this model: "
                       + "; ".join(problems) + " (pass strict=False to "
                       "write the weights anyway).")
  tree = common.unstack_block_params(jax.tree.map(np.asarray, dict(params)))
  image_cfg = model_config.get("image") or {}
  patch = vit.ViT(**image_cfg).dims()["patch_size"]
  grid = _posemb_grid(tree, {**image_cfg, "patch_size": patch})
  channels = np.shape(tree.get("img", {}).get("embedding", {}).get(
      "kernel", np.zeros((1, 1, 3, 1))))[2]
  check_fits(tree, model_config,
             image_shape({"patch_size": patch}, grid, channels), "params")
  for name in ("t", "b"):
    if name in tree:
      tree[name] = np.reshape(tree[name], (1,))
  if image_cfg.get("posemb_grid"):
    naflex_grid = pair(image_cfg["posemb_grid"])
    if naflex_grid[0] != naflex_grid[1] or grid != naflex_grid[0]:
      raise ValueError(f"image.posemb_grid={image_cfg['posemb_grid']}: "
                       "big_vision's NaFlex towers hold a square grid.")
    tree["img"] = _fixres_to_naflex(tree["img"], grid)
  if scan:
    tree = common.stack_block_params(tree)
  flat = traverse_util.flatten_dict(tree, sep="/")
  return {prefix + k: np.asarray(v, np.float32) for k, v in flat.items()}


def save(path, model_config, params, **kw):
  """Writes params as a big_vision `.npz` checkpoint (see `to_npz_dict`).

  Args:
    path: the output file, written as given (no suffix is added).
    model_config: the model's config.
    params: its params.
    **kw: `scan`, `prefix`, `strict` for `to_npz_dict`.

  Returns:
    The path written.
  """
  arrays = to_npz_dict(model_config, params, **kw)
  path = os.fspath(path)
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)
  return path
