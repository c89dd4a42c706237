r"""Converts a released checkpoint into a big_vl checkpoint folder.

    python -m big_vl.convert --from open_clip --src model.safetensors \
        --arch ViT-B-32 --out workdirs/vit_b32
    python -m big_vl.convert --from open_clip --src coca.safetensors \
        --arch coca_ViT-B-32 --out workdirs/coca_b32
    python -m big_vl.convert --from openai --src ViT-B-32.pt \
        --allow_torchscript --out ...
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

from big_vl import cli
from big_vl import convert as convert_lib
from big_vl import pretrained

_FROM = flags.DEFINE_enum("from", None, convert_lib.SOURCES,
                          "Checkpoint family.")
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
_ALLOW_TORCHSCRIPT = flags.DEFINE_bool(
    "allow_torchscript", False, "open_clip/openai: read a TorchScript "
    "archive (OpenAI's released .pt files). Off by default: torch.jit.load "
    "runs code stored in the file, so pass it only for files you trust.")


def _arch():
  arch = _ARCH.value
  if arch and arch.endswith(".json") and os.path.exists(arch):
    with open(arch) as f:
      return json.load(f)
  return arch


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not (_FROM.value and _SRC.value and _OUT.value):
    raise app.UsageError("--from, --src and --out are required.")
  # A missing or wrong --src is a sentence, not a traceback (cli.py).
  model_config, params, preprocessing = convert_lib.load(
      _FROM.value, _SRC.value, arch=_arch(), image_size=_IMAGE_SIZE.value,
      max_len=_MAX_LEN.value, pool_type=_POOL_TYPE.value,
      tokenizer_model=_TOKENIZER_MODEL.value,
      allow_torchscript=_ALLOW_TORCHSCRIPT.value)
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
