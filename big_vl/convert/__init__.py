"""Converters from released checkpoints to big_vl params (and back).

Each converter module maps a source checkpoint to `(model_config, params)`:
`model_config` is a plain dict {"name": "two_towers", **model kwargs} that
`big_vl.models.get` builds, `params` a nested dict of float32 numpy arrays
for it. Modules:

- `open_clip`: open_clip / OpenAI CLIP ViT models (`.safetensors`, `.bin`,
  `.pt`, OpenAI TorchScript archives); `to_state_dict` exports back.
- `big_vision`: big_vision SigLIP `.npz` two-tower checkpoints (and export);
  `big_vision_cappa`: big_vision CapPa captioners (`--from big_vision`
  tells them apart by their `encoder` / `decoder` groups).
- `hf_bert`: HF BERT-family encoders (BERT, MiniLM, sentence-transformers
  folders) as a big_vl text tower, with their WordPiece tokenizer.

Each also has `load(path, ...)` (read files, then `convert`) and
`preprocessing(model_config, ...)` (the pp strings the model expects);
`big_vl.convert.load(source, path, ...)` dispatches to them. The command
line writes a converted checkpoint (see `big_vl.pretrained`):

    python -m big_vl.convert --from open_clip --src open_clip_model.safetensors \
        --arch ViT-B-32 --out workdirs/vit_b32
"""

from etils import epath

SOURCES = ("open_clip", "openai", "big_vision", "hf_bert")


# What `--src` of each family is, for messages.
EXPECTED = {
    "open_clip": "an open_clip .safetensors / .bin / .pt state dict",
    "openai": "an OpenAI CLIP .pt file (TorchScript: --allow_torchscript)",
    "big_vision": "a big_vision .npz checkpoint",
    "hf_bert": ("a sentence-transformers / Hugging Face BERT folder "
                "(config.json + model.safetensors)"),
}
# Advice some readers give on failure that points at unsafe loading.
_UNSAFE_ADVICE = ("allow_pickle", "weights_only", "pickle.load", "unsafe")


class ConvertError(ValueError):
  """`--src` is not a checkpoint of the named family that big_vl can read."""


def load(source, src, *, arch=None, image_size=None, max_len=None,
         pool_type=None, tokenizer_model=None, allow_torchscript=False):
  """Reads a checkpoint of family `source` (see `_load`), with clear errors.

  Raises:
    ValueError: an unknown family.
    FileNotFoundError: `src` does not exist.
    ImportError: a reader needs PyTorch, which is not installed.
    ConvertError: `src` is not a checkpoint of that family (the reader's
      reason is given, unless it advises unsafe loading: a file of pickled
      objects is named as such instead).
  """
  if source not in SOURCES:
    raise ValueError(f"Unknown source {source!r}; known: {SOURCES}.")
  if not epath.Path(src).exists():
    raise FileNotFoundError(
        f"--src {src}: no such file or folder ({source} expects "
        f"{EXPECTED[source]}).")
  try:
    return _load(source, src, arch=arch, image_size=image_size,
                 max_len=max_len, pool_type=pool_type,
                 tokenizer_model=tokenizer_model,
                 allow_torchscript=allow_torchscript)
  except ImportError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    reason = " ".join(str(e).split()) or type(e).__name__
    if any(word in reason for word in _UNSAFE_ADVICE):
      reason = ("its reader would have to unpickle Python objects from it, "
                "which big_vl never does (unpickling can run code)")
    raise ConvertError(
        f"{src} is not {EXPECTED[source]} that big_vl can read: {reason}"
    ) from e


def _load(source, src, *, arch=None, image_size=None, max_len=None,
          pool_type=None, tokenizer_model=None, allow_torchscript=False):
  """Reads a checkpoint of family `source`.

  Args:
    source: one of SOURCES.
    src: file or folder to read.
    arch: open_clip architecture name or model-config dict (open_clip).
    image_size: resample position embeddings to this image size.
    max_len: hf_bert text length.
    pool_type: hf_bert pooling.
    tokenizer_model: big_vision SentencePiece model path.
    allow_torchscript: open_clip/openai: read TorchScript archives (OpenAI's
      released .pt files). Off by default, since `torch.jit.load` runs code
      stored in the file; torch pickles are always read with
      `weights_only=True`.

  Returns:
    (model_config, params, preprocessing).
  """
  # pylint: disable=g-import-not-at-top
  if source in ("open_clip", "openai"):
    from big_vl.convert import open_clip as conv
    model_config, params = conv.load(src, arch, image_size=image_size,
                                     allow_torchscript=allow_torchscript)
    return model_config, params, conv.preprocessing(model_config)
  if source == "big_vision":
    from big_vl.convert import big_vision as conv
    from big_vl.convert import big_vision_cappa
    flat = conv.read_npz(src)
    if big_vision_cappa.is_cappa(flat):  # A captioner, not two towers.
      conv = big_vision_cappa
    model_config, params = conv.convert(flat, image_size=image_size)
    return model_config, params, conv.preprocessing(
        model_config, tokenizer_model, params=params)
  if source == "hf_bert":
    from big_vl.convert import hf_bert as conv
    model_config, params = conv.load(src, pool_type=pool_type,
                                     max_len=max_len)
    return model_config, params, conv.preprocessing(model_config, src)
  raise ValueError(f"Unknown source {source!r}; known: {SOURCES}.")
