"""Model definitions (flax.linen modules used through pure `init`/`apply`).

- `vit.ViT`: Vision Transformer image tower.
- `text_transformer.TextTransformer`: CLIP/SigLIP-style text tower.
- `two_towers.Model`: image + text towers with a shared embedding space,
  registered as model "two_towers" (look it up with
  `big_vl.registry.get("model", "two_towers")`).
- `common`: pieces shared by the towers (size table, transformer encoder,
  MAP head, sin-cos position embeddings).
"""
