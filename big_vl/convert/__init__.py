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
`preprocessing(model_config, ...)` (the pp strings the model expects). The
command line writes a converted checkpoint (see `big_vl.pretrained`):

    python -m big_vl.convert --from open_clip --src open_clip_model.safetensors \
        --arch ViT-B-32 --out workdirs/vit_b32
"""
