r"""big_vision CapPa `.npz` checkpoints as big_vl captioners.

CapPa (Tschannen et al. 2023) is trained in big_vision by
`big_vision.models.proj.cappa.cappa.Model`: a ViT encoder and a transformer
decoder with cross-attention, as wide as the encoder. A checkpoint is the
param tree flattened with "/" (optionally under `params/`, see
`big_vision.py` for the file conventions, which are the same). Layout (D:
width, M: mlp_dim, H: heads, Dh = D / H, V: vocabulary, S: `seq_len`):

    encoder/                       big_vision.models.vit, as the SigLIP image
                                   tower (`big_vision.py`): embedding,
                                   pos_embedding, Transformer/encoderblock_{i}
                                   (scanned: `encoderblock`, layer axis 0),
                                   encoder_norm; no head, pool "gap"
    pos_embedding_decoder          [1, S, D]
    decoder/
      EmbedTargets/embedding       [V, D], or [V + 1, D] when the model was
                                   trained with masked (parallel) prediction:
                                   row V is the mask token
      EncDecBlock{i}/              i < decoder depth; scanned files have one
                                   `EncDecBlock` whose leaves carry the layer
                                   axis at position 1 (big_vision scans the
                                   decoder with param axis 1)
        LayerNorm1/{scale, bias}   [D]  (no bias with decoder_bias=False,
                                   the paper's setting)
        SelfAttn/{query, key, value}/kernel  [D, H, Dh]  (no biases)
        SelfAttn/out/kernel        [H, Dh, D]
        LayerNorm2/..., CrossAttn/...        as LayerNorm1 / SelfAttn
        LayerNorm3/...
        MLP/Dense_0/{kernel, bias} [D, M], [M]  (no bias with
        MLP/Dense_1/{kernel, bias} [M, D], [D]   decoder_bias=False)
      LayerNorm/{scale, bias}      [D]
      LogitsDense/{kernel, bias}   [D, V]

How it maps onto big_vl's `Captioner` (checked against big_vision's code by
tests/test_convert_big_vision_cappa.py, whose fixture big_vision computed):
the encoder is big_vl's ViT (`img`); the image tokens go to the decoder as
they are (`project_memory=False`); decoder blocks are `decoderblock_{i}`
(LayerNorm1-3 -> LayerNorm_0-2, SelfAttn -> SelfAttention, CrossAttn ->
CrossAttention, MLP -> MlpBlock_0) with zeros for the biases big_vision
does not have; `LogitsDense` is `head`; `null_memory` (caption dropout,
not in CapPa) is zeros. big_vision's decoder reads `shift_right(targets)`:
a 0 (the padding id) before the caption's tokens; in big_vl's convention
that 0 is the start token of `text` [B, S + 1], so `max_len = S + 1`,
`start_id = 0` and, with big_vision's SentencePiece vocabularies (c4_en:
EOS = 1, sticky), `end_id = 1`. A mask-token row makes `mask_token = V`
and `parallel_fraction` the paper's 0.75 (a training setting only: the
file does not record it).

Example:
  >>> model_config, params = load("cappa_b16.npz")
  >>> model = big_vl.models.get(model_config)
  >>> tokens = big_vl.decode.greedy(model, params, images, start_id=0,
  ...                               end_id=1)
"""

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from big_vl.convert import big_vision as bv
from big_vl.models import common
from big_vl.models import vit

PAPER_PARALLEL_FRACTION = 0.75
START_ID = 0  # big_vision's shift_right pads with 0.
EOS_ID = 1  # big_vision's SentencePiece vocabularies (c4_en, mc4).
_BLOCK = "EncDecBlock"
_LAYER_NORMS = {"LayerNorm1": "LayerNorm_0", "LayerNorm2": "LayerNorm_1",
                "LayerNorm3": "LayerNorm_2"}
_ATTENTION = {"SelfAttn": "SelfAttention", "CrossAttn": "CrossAttention"}


def is_cappa(flat_or_tree):
  """Whether a checkpoint (flat "/" names or nested, with or without
  `params/`) has CapPa's top-level groups `encoder` and `decoder`."""
  names = set()
  for key, value in flat_or_tree.items():
    parts = str(key).split("/")
    if parts[0] == "params" and len(parts) > 1:
      names.add(parts[1])
    elif parts[0] == "params" and isinstance(value, Mapping):
      names.update(value)
    else:
      names.add(parts[0])
  return {"encoder", "decoder"} <= names


def _get(tree, path, where="decoder"):
  """tree["a"]["b"] for path "a/b"; ValueError naming the missing key."""
  node = tree
  for part in path.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      raise ValueError(f"Not a big_vision CapPa checkpoint: missing "
                       f"{where}/{path}.")
    node = node[part]
  return node


def _image_config(img):
  """big_vision.image_config of the encoder, its messages naming `encoder/`
  (the image tower's group in CapPa files; `img/` in two-tower ones)."""
  try:
    return bv.image_config({"img": img})
  except ValueError as e:
    raise ValueError(str(e).replace("two-tower", "CapPa").replace(
        "'img/", "'encoder/").replace("params/img/", "params/encoder/").replace(
            "img/", "encoder/")) from e


def _unscan_decoder(dec):
  """`EncDecBlock` with the layer axis at position 1 -> EncDecBlock{i}."""
  if _BLOCK not in dec:
    return dec
  stacked = dec.pop(_BLOCK)
  depths = {np.shape(v)[1] for v in _leaves(stacked)}
  if len(depths) != 1:
    raise ValueError(f"decoder/{_BLOCK}: leaves disagree on the layer axis "
                     f"(axis 1) sizes {sorted(depths)}.")
  for i in range(depths.pop()):
    dec[f"{_BLOCK}{i}"] = _map_leaves(stacked, lambda v, i=i: v[:, i])
  return dec


def _leaves(tree):
  for v in tree.values():
    if isinstance(v, Mapping):
      yield from _leaves(v)
    else:
      yield v


def _map_leaves(tree, fn):
  return {k: _map_leaves(v, fn) if isinstance(v, Mapping) else fn(v)
          for k, v in tree.items()}


def _dense(node, path, out_shape):
  """{"kernel", "bias"} with a zero bias of `out_shape` where absent."""
  bias = node.get("bias")
  return {"kernel": node["kernel"],
          "bias": np.zeros(out_shape, np.float32) if bias is None else bias}


def _norm(node, path):
  """{"scale", "bias"} with a zero bias where absent."""
  scale = _get(node, "scale", path)
  return {"scale": scale, "bias": node.get("bias", np.zeros_like(scale))}


def _block(block, path):
  """One EncDecBlock{i} as big_vl's decoderblock_{i}."""
  out = {}
  for name, ours in _LAYER_NORMS.items():
    out[ours] = _norm(_get(block, name, path), f"{path}/{name}")
  for name, ours in _ATTENTION.items():
    attention = _get(block, name, path)
    node = {}
    for proj in ("query", "key", "value"):
      kernel = _get(attention, f"{proj}/kernel", f"{path}/{name}")
      node[proj] = _dense(attention[proj], f"{path}/{name}/{proj}",
                          kernel.shape[1:])
    width = _get(attention, "out/kernel", f"{path}/{name}").shape[-1]
    node["out"] = _dense(attention["out"], f"{path}/{name}/out", (width,))
    out[ours] = node
  mlp = _get(block, "MLP", path)
  out["MlpBlock_0"] = {
      d: _dense(_get(mlp, d, f"{path}/MLP"), f"{path}/MLP/{d}",
                _get(mlp, f"{d}/kernel", f"{path}/MLP").shape[-1:])
      for d in ("Dense_0", "Dense_1")}
  return out


def convert(flat_or_tree, *, image_size=None):
  """Converts a big_vision CapPa checkpoint to a big_vl captioner.

  Args:
    flat_or_tree: `np.load(path)` of the `.npz` (or any mapping of
      "/"-joined names, with or without `params/`) or the nested tree;
      scanned or unscanned encoder and decoder.
    image_size: optional image size to resample the learned position
      embedding to (as `big_vision.convert`).

  Returns:
    (model_config, params): {"name": "captioner", "image": ViT kwargs,
    "decoder": {width, depth, mlp_dim, num_heads, act, norm_eps},
    "vocab_size": V, "max_len": S + 1, "mask_token", "parallel_fraction",
    "project_memory": False} and a nested dict of float32 arrays; e.g. for
    the paper's B/16: params["decoder"]["decoderblock_5"]["SelfAttention"]
    ["query"]["kernel"].shape == (768, 12, 64).

  Raises:
    ValueError: naming what is missing or does not fit.
  """
  tree = bv.to_tree(flat_or_tree)
  missing = [k for k in ("encoder", "decoder", "pos_embedding_decoder")
             if k not in tree]
  if missing:
    raise ValueError(f"Not a big_vision CapPa checkpoint: missing {missing}"
                     f"; top-level keys found: {sorted(tree)}.")
  img = dict(tree["encoder"])
  if isinstance(img.get("Transformer"), Mapping):
    img["Transformer"] = common.unstack_block_params(img["Transformer"])
  bv.fix_legacy(img, {})
  image, head, grid, _ = _image_config(img)
  if head is not None:
    raise ValueError("encoder/head: a CapPa encoder has no head.")
  dec = _unscan_decoder(dict(tree["decoder"]))
  depth = sum(1 for k in dec if k.startswith(_BLOCK)
              and k[len(_BLOCK):].isdigit())
  if not depth:
    raise ValueError(f"Not a big_vision CapPa checkpoint: no decoder/"
                     f"{_BLOCK}0 (or scanned decoder/{_BLOCK}).")
  embedding = _get(dec, "EmbedTargets/embedding")
  width, vocab = _get(dec, "LogitsDense/kernel").shape
  rows = embedding.shape[0]
  if rows not in (vocab, vocab + 1) or embedding.shape[1] != width:
    raise ValueError(f"decoder/EmbedTargets/embedding: shape "
                     f"{embedding.shape} does not fit LogitsDense's "
                     f"{(width, vocab)} ([V, D] or [V + 1, D]).")
  if width != image["width"]:
    raise ValueError(f"The decoder's width {width} is not the encoder's "
                     f"{image['width']} (big_vision's decoder_emb_dim); "
                     "big_vl's converted captioner feeds the image tokens "
                     "as they are.")
  pos = tree["pos_embedding_decoder"]
  if pos.ndim != 3 or pos.shape[2] != width:
    raise ValueError(f"pos_embedding_decoder: shape {pos.shape} is not "
                     f"[1, S, {width}].")
  first = dec[f"{_BLOCK}0"]
  _, heads, _ = _get(first, "SelfAttn/query/kernel", f"decoder/{_BLOCK}0").shape
  _, mlp_dim = _get(first, "MLP/Dense_0/kernel", f"decoder/{_BLOCK}0").shape
  blocks = {f"decoderblock_{i}": _block(_get(dec, f"{_BLOCK}{i}"),
                                        f"decoder/{_BLOCK}{i}")
            for i in range(depth)}
  masked = rows == vocab + 1
  model_config = {
      "name": "captioner", "image": image,
      "decoder": {"width": int(width), "depth": depth,
                  "mlp_dim": int(mlp_dim), "num_heads": int(heads),
                  "act": "gelu", "norm_eps": bv.NORM_EPS},
      "vocab_size": int(vocab), "max_len": int(pos.shape[1]) + 1,
      "mask_token": int(vocab) if masked else 0,
      "parallel_fraction": PAPER_PARALLEL_FRACTION if masked else 0.0,
      "project_memory": False}
  params = {
      "img": img,
      "decoder": {"Embed_0": {"embedding": embedding},
                  "pos_embedding": pos, **blocks,
                  "LayerNorm_0": _norm(_get(dec, "LayerNorm"),
                                       "decoder/LayerNorm"),
                  "head": _dense(dec["LogitsDense"], "decoder/LogitsDense",
                                 (vocab,))},
      "null_memory": np.zeros((1, 1, width), np.float32)}
  channels = img["embedding"]["kernel"].shape[2]
  bv.check_fits(params, model_config, bv.image_shape(image, grid, channels),
                "The CapPa checkpoint")
  if image_size is not None and grid is not None:
    new_grid = bv.grid_for(image_size, image["patch_size"])
    params["img"]["pos_embedding"] = np.asarray(vit.resample_posemb(
        jnp.asarray(img["pos_embedding"]), new_grid, grid), np.float32)
  size = image_size if image_size is not None else (
      None if grid is None else grid * bv.pair(image["patch_size"])[0])
  if isinstance(size, int):
    image["image_size"] = size
  return model_config, params


def load(path, *, image_size=None):
  """Reads a big_vision CapPa `.npz` and converts it (see `convert`)."""
  return convert(bv.read_npz(path), image_size=image_size)


def preprocessing(model_config, tokenizer_model=None, *, image_size=None,
                  params=None):
  """What a converted CapPa expects: big_vision's image pp and the caption
  options of `big_vl.predict.Predictor`.

  Args:
    model_config: as `convert` returns it.
    tokenizer_model: the SentencePiece `.model` of its vocabulary (c4_en for
      V = 32000), or None.
    image_size, params: as `big_vision.preprocessing`.

  Returns:
    {"pp_img": "decode|resize(S)|value_range(-1, 1)", "pp_txt": None,
    "tokenizer": {"name": "sentencepiece", "model", "max_len", "eos":
    "sticky", "pad_id": 1}, "vocabulary", "image_size", "caption":
    {"tokenizer": the same dict, "start_id": 0, "end_id": 1}}.
  """
  text = {"vocab_size": model_config["vocab_size"],
          "max_len": model_config["max_len"] - 1, "pad_id": EOS_ID}
  out = bv.preprocessing({"image": model_config["image"], "text": text},
                         tokenizer_model, image_size=image_size,
                         params=params)
  out["pp_txt"] = None
  out["caption"] = {"tokenizer": out["tokenizer"], "start_id": START_ID,
                    "end_id": EOS_ID}
  return out
