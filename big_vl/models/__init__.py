"""Model definitions (flax.linen modules used through pure `init`/`apply`).

- `vit.ViT`: Vision Transformer image tower.
- `text_transformer.TextTransformer`: CLIP/SigLIP/BERT-style text tower.
- `two_towers.Model`: image + text towers with a shared embedding space,
  registered as model "two_towers".
- `decoder.TextDecoder`, `captioner.Captioner`: a captioner (CapPa), model
  "captioner".
- `coca.CoCa`: a contrastive captioner (dual encoder + decoder), model
  "coca".
- `common`: pieces shared by the towers (size table, transformer encoder,
  MAP head, sin-cos position embeddings).

`make_predict_fn(model, name)` is what evaluators call:
`(params, image=None, text=None) -> (zimg, ztxt, outputs)`; `image` is an
image batch or a NaFlex {"patches", "pos"} dict (`naflex.image_input`).

`outputs_fn(name)` is the model kind's `outputs(model, variables, batch, *,
train, rngs) -> dict`, the one way the trainer, GradCache, growth and the
evaluators call a model (two_towers: "zimg", "ztxt", "t", "b"?, tower
entries).

`get(model_config)` builds a registered model from one self-describing dict,
the form converters (`big_vl.convert`) return and converted checkpoints
store:

    model = get({"name": "two_towers", "out_dim": 512,
                 "image": {"variant": "B/32", "pool_type": "cls"},
                 "text": {"variant": "B", "causal": True}})
    zimg, ztxt, aux = model.apply({"params": params}, image, text)
"""

from big_vl import config as config_lib
from big_vl import registry
from big_vl.models import naflex

# Dataclass fields of every flax linen module that are not config keys.
_MODULE_SKIP = ("parent", "name")


def get(model_config):
  """Builds the model a model config describes.

  Args:
    model_config: a mapping (dict or ConfigDict) of the model's constructor
      arguments plus an optional "name", the registered model name (default
      "two_towers").

  Returns:
    The flax module, e.g. a `two_towers.Model` whose
    `apply({"params": params}, image, text)` gives `(zimg, ztxt, aux)` for
    image float32 [B, H, W, 3] (after the model's preprocessing) and text
    int [B, L] token ids.
  """
  kwargs = dict(model_config.to_dict() if hasattr(model_config, "to_dict")
                else model_config)
  name = kwargs.pop("name", "two_towers")
  return registry.get("model", name)(**kwargs)


def outputs_fn(model_name="two_towers"):
  """The `outputs(model, variables, batch, *, train, rngs)` of a model kind.

  Args:
    model_name: the registered model name (`config.model_name`).

  Returns:
    The function giving the model's outputs dict for a batch dict.
  """
  return registry.get("outputs", model_name)


def check_config(model_name, model_config, where="config.model"):
  """Checks a model config's keys against the model's fields, at any depth.

  The top level is checked against the registered model class's fields;
  blocks the class names in its `sub_configs(model_config)` (two_towers:
  `image` against `vit.ViT` or `vitamin.ViTamin` by `arch`, `text` against
  `text_transformer.TextTransformer`) against their modules' fields.

  Args:
    model_name: the registered model name (`config.model_name`).
    model_config: the model's mapping of constructor arguments.
    where: the dotted path of `model_config` in messages.

  Raises:
    ValueError: naming `where.KEY` (or `where.BLOCK.KEY`) for an unknown
      key, with the closest known ones, or an unknown model name.
  """
  try:
    cls = registry.get("model", model_name)
  except KeyError as e:
    raise ValueError(f"config.model_name: {e.args[0]}") from None
  config_lib.check_signature(model_config, cls, where, skip=_MODULE_SKIP)
  for key, module, extra in getattr(cls, "sub_configs", lambda _: [])(
      model_config or {}):
    block = (model_config or {}).get(key)
    if block is not None:
      config_lib.check_signature(block, module, f"{where}.{key}",
                                 skip=_MODULE_SKIP, extra=extra)


def make_predict_fn(model, model_name="two_towers"):
  """`(params, image=None, text=None) -> (zimg, ztxt, outputs)` for
  evaluators, through the model kind's outputs function."""
  model_outputs = outputs_fn(model_name)

  def predict_fn(params, image=None, text=None):
    batch = {k: v for k, v in (("image", image), ("text", text))
             if v is not None}
    if naflex.is_naflex(image):
      batch["image"], batch["image" + naflex.POS_SUFFIX] = (image["patches"],
                                                             image["pos"])
    out = model_outputs(model, {"params": params}, batch, train=False)
    return out.get("zimg"), out.get("ztxt"), out
  return predict_fn
