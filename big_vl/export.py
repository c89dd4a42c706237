r"""Exports a big_vl checkpoint to another framework's format.

    python -m big_vl.export --to open_clip --checkpoint workdirs/demo \
        --out demo.safetensors

`--checkpoint` is a training workdir (its latest step) or a converted
checkpoint folder (see `big_vl.pretrained`). For `--to open_clip` the model
must be a CLIP-style two-tower model open_clip can build (ViT with a class
token and ln_pre, causal text transformer with end-of-text pooling, no
projection biases) or a CoCa (model "coca", open_clip's `coca_*` layout);
writes:

  FILE.safetensors   the open_clip state dict (float32)
  FILE.json          its open_clip model config ({"embed_dim",
                     "vision_cfg", "text_cfg", ...}); the file name's stem
                     is the model name after `open_clip.add_model_config`

and prints how to load them in PyTorch.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging

from big_vl import cli
from big_vl import config as config_lib

TARGETS = ("open_clip",)

_TO = flags.DEFINE_enum("to", "open_clip", TARGETS, "Target format.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "big_vl training workdir or converted checkpoint.")
_OUT = flags.DEFINE_string("out", None, "Output .safetensors file.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: "
                             "latest).")


def config_path(out_path):
  """FILE.json for FILE.safetensors."""
  return os.path.splitext(out_path)[0] + ".json"


def export_open_clip(model_config, params, out_path):
  """Writes big_vl params as an open_clip safetensors file + config JSON.

  Args:
    model_config: the big_vl model config ({"name": "two_towers", ...} or
      {"name": "coca", ...}).
    params: its params (nested dict of arrays).
    out_path: the .safetensors file to write (its folder is created);
      the model config goes to the same path with a .json suffix.

  Returns:
    (arch, oc_config, paths): the open_clip architecture name (None when
    the model is not one of `big_vl.convert.open_clip.ARCHS`), the open_clip
    model config and the written [safetensors, json] paths.

  Raises:
    ValueError: if open_clip cannot represent the model (see
      `big_vl.convert.open_clip.to_state_dict`).
  """
  # pylint: disable=g-import-not-at-top
  from safetensors import numpy as st_numpy
  from big_vl.convert import open_clip
  from big_vl.convert import open_clip_coca
  # pylint: enable=g-import-not-at-top
  converter = (open_clip_coca if dict(model_config).get("name") == "coca"
               else open_clip)
  arch_or_config, state_dict = converter.to_state_dict(model_config, params)
  if isinstance(arch_or_config, str):
    arch, oc_config = arch_or_config, converter.ARCHS[arch_or_config]
  else:
    arch, oc_config = None, arch_or_config
  out_path = os.path.abspath(out_path)
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  st_numpy.save_file(state_dict, out_path)
  json_path = config_path(out_path)
  with open(json_path, "w") as f:
    json.dump(oc_config, f, indent=1)
  return arch, oc_config, [out_path, json_path]


def open_clip_instructions(arch, out_path):
  """Python lines that load an exported file in PyTorch with open_clip."""
  weights = os.path.abspath(out_path)
  if arch:
    create = f"model = open_clip.create_model({arch!r})"
    setup = ""
  else:
    json_path = config_path(weights)
    name = os.path.splitext(os.path.basename(weights))[0]
    setup = f"open_clip.add_model_config({json_path!r})\n"
    create = f"model = open_clip.create_model({name!r})"
  return ("import open_clip, safetensors.torch\n" + setup + create + "\n"
          f"model.load_state_dict(safetensors.torch.load_file({weights!r}))"
          "\nmodel.eval()\n")


def export(checkpoint, out, to="open_clip", step=None):
  """Reads a big_vl checkpoint and writes it in format `to`.

  Args:
    checkpoint: training workdir or converted checkpoint folder.
    out: output file.
    to: target format, one of TARGETS.
    step: checkpoint step (None: latest).

  Returns:
    The text to print: written files and how to load them.
  """
  from big_vl import pretrained  # pylint: disable=g-import-not-at-top
  if to not in TARGETS:
    raise ValueError(f"Unknown export target {to!r}; known: {TARGETS}.")
  model_config, params = pretrained.load(checkpoint, step=step)
  arch, _, paths = export_open_clip(model_config, params, out)
  what = f"open_clip architecture {arch}" if arch else (
      "a custom open_clip architecture")
  return (f"Wrote {paths[0]} and {paths[1]} ({what}). Load in PyTorch:\n\n"
          + open_clip_instructions(arch, paths[0]))


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not (_CHECKPOINT.value and _OUT.value):
    raise app.UsageError("--checkpoint and --out are required.")
  config_lib.setup_cli_runtime(logging.ERROR)
  print(export(_CHECKPOINT.value, _OUT.value, _TO.value, _STEP.value),
        flush=True)


if __name__ == "__main__":
  app.run(main)
