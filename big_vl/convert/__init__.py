"""Converters from released checkpoints to big_vl params (and back).

Each converter module maps a source checkpoint to `(model_config, params)`:
`model_config` is a plain dict {"name": "two_towers", **model kwargs} that
`big_vl.models.get` builds, `params` a nested dict of float32 numpy arrays
for it. Modules:

- `open_clip`: open_clip / OpenAI CLIP ViT models (`.safetensors`, `.bin`,
  `.pt`, OpenAI TorchScript archives); `to_state_dict` exports back.
- `big_vision`: big_vision SigLIP `.npz` two-tower checkpoints (and export).
- `hf_bert`: HF BERT-family encoders (BERT, MiniLM, sentence-transformers
  folders) as a big_vl text tower, with their WordPiece tokenizer.

Each also has `load(path, ...)` (read files, then `convert`) and
`preprocessing(model_config, ...)` (the pp strings the model expects);
`big_vl.convert.load(source, path, ...)` dispatches to them. The command
line writes a converted checkpoint (see `big_vl.pretrained`):

    python -m big_vl.convert --from open_clip --src open_clip_model.safetensors \
        --arch ViT-B-32 --out workdirs/vit_b32
"""

SOURCES = ("open_clip", "openai", "big_vision", "hf_bert")


def load(source, src, *, arch=None, image_size=None, max_len=None,
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
    model_config, params = conv.load(src, image_size=image_size)
    return model_config, params, conv.preprocessing(
        model_config, tokenizer_model, params=params)
  if source == "hf_bert":
    from big_vl.convert import hf_bert as conv
    model_config, params = conv.load(src, pool_type=pool_type,
                                     max_len=max_len)
    return model_config, params, conv.preprocessing(model_config, src)
  raise ValueError(f"Unknown source {source!r}; known: {SOURCES}.")
