"""Model definitions (flax.linen modules used through pure `init`/`apply`).

- `vit.ViT`: Vision Transformer image tower.
- `text_transformer.TextTransformer`: CLIP/SigLIP/BERT-style text tower.
- `two_towers.Model`: image + text towers with a shared embedding space,
  registered as model "two_towers".
- `common`: pieces shared by the towers (size table, transformer encoder,
  MAP head, sin-cos position embeddings).

`get(model_config)` builds a registered model from one self-describing dict,
the form converters (`big_vl.convert`) return and converted checkpoints
store:

    model = get({"name": "two_towers", "out_dim": 512,
                 "image": {"variant": "B/32", "pool_type": "cls"},
                 "text": {"variant": "B", "causal": True}})
    zimg, ztxt, aux = model.apply({"params": params}, image, text)
"""

from big_vl import registry


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
