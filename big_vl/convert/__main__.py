r"""Converts a released checkpoint into a big_vl checkpoint folder.

    python -m big_vl.convert --from open_clip --src model.safetensors \
        --arch ViT-B-32 --out workdirs/vit_b32
    python -m big_vl.convert --from openai --src ViT-B-32.pt --out ...
    python -m big_vl.convert --from big_vision --src siglip.npz \
        [--tokenizer_model=spm.model] --out ...
    python -m big_vl.convert --from hf_bert --src all-MiniLM-L6-v2/ \
        [--max_len=64] [--pool_type=mean] --out workdirs/minilm

The output folder reads like a training run (see `big_vl.pretrained`):
`python -m big_vl.evaluate --checkpoint=OUT ...` evaluates it and
`config.model_init = "OUT"` starts training from it. Its config.json holds
the model config and the preprocessing (pp strings, tokenizer) the model
expects.
"""

import json
import os

from absl import app
from absl import flags
import jax

from big_vl import pretrained

SOURCES = ("open_clip", "openai", "big_vision", "hf_bert")

_FROM = flags.DEFINE_enum("from", None, SOURCES, "Checkpoint family.")
_SRC = flags.DEFINE_string("src", None, "Source file or folder.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_ARCH = flags.DEFINE_string(
    "arch", None, "open_clip architecture name (e.g. ViT-B-32) or a path to "
    "an open_clip model-config JSON; default: inferred from the weights.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Target image size (position embeddings resampled).")
_MAX_LEN = flags.DEFINE_integer(
    "max_len", None, "hf_bert: text length (position table cut to it).")
_POOL_TYPE = flags.DEFINE_string(
    "pool_type", None, "hf_bert: 'mean' or 'first' (default: the "
    "sentence-transformers pooling config, else mean).")
_TOKENIZER_MODEL = flags.DEFINE_string(
    "tokenizer_model", None, "big_vision: SentencePiece model of the text "
    "tower, recorded in the preprocessing.")


def _arch():
  arch = _ARCH.value
  if arch and arch.endswith(".json") and os.path.exists(arch):
    with open(arch) as f:
      return json.load(f)
  return arch


def convert(source, src, *, arch=None, image_size=None, max_len=None,
            pool_type=None, tokenizer_model=None):
  """Reads a checkpoint of family `source`.

  Args:
    source: one of SOURCES.
    src: file or folder to read.
    arch: open_clip architecture name or model-config dict (open_clip).
    image_size: resample position embeddings to this image size.
    max_len: hf_bert text length.
    pool_type: hf_bert pooling.
    tokenizer_model: big_vision SentencePiece model path.

  Returns:
    (model_config, params, preprocessing).
  """
  # pylint: disable=g-import-not-at-top
  if source in ("open_clip", "openai"):
    from big_vl.convert import open_clip as conv
    model_config, params = conv.load(src, arch, image_size=image_size)
    return model_config, params, conv.preprocessing(model_config)
  if source == "big_vision":
    from big_vl.convert import big_vision as conv
    model_config, params = conv.load(src, image_size=image_size)
    return model_config, params, conv.preprocessing(
        model_config, tokenizer_model=tokenizer_model)
  if source == "hf_bert":
    from big_vl.convert import hf_bert as conv
    model_config, params = conv.load(src, pool_type=pool_type,
                                     max_len=max_len)
    return model_config, params, conv.preprocessing(model_config, src)
  raise ValueError(f"Unknown source {source!r}; known: {SOURCES}.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not (_FROM.value and _SRC.value and _OUT.value):
    raise app.UsageError("--from, --src and --out are required.")
  model_config, params, preprocessing = convert(
      _FROM.value, _SRC.value, arch=_arch(), image_size=_IMAGE_SIZE.value,
      max_len=_MAX_LEN.value, pool_type=_POOL_TYPE.value,
      tokenizer_model=_TOKENIZER_MODEL.value)
  source = {"from": _FROM.value, "src": os.path.abspath(_SRC.value)}
  if _ARCH.value:
    source["arch"] = _ARCH.value
  out = pretrained.save(_OUT.value, model_config, params,
                        preprocessing=preprocessing, source=source)
  n = sum(int(v.size) for v in jax.tree.leaves(params))
  print(f"Wrote {out}: {model_config.get('name', 'two_towers')} with "
        f"{n / 1e6:.2f}M params.\nPreprocessing: "
        f"{json.dumps(preprocessing)}\nEvaluate: python -m big_vl.evaluate "
        f"--config=... --checkpoint={out}\nTrain from it: "
        f"--config.model_init={out}")


if __name__ == "__main__":
  app.run(main)
