"""Few-shot adaptation of a frozen two-tower model (`python -m big_vl.adapt`).

- `backbone`: the frozen model: cached image features, zero-shot weights,
  the text tower on learned token embeddings.
- `protocol`: shots, a validation split from training data, hidden test
  labels, base-to-new splits.
- `adapters`: zero-shot, linear probe, CLIP-Adapter, Tip-Adapter(-F).
- `prompt`: CoOp and CoCoOp.
- `fit`: the shared training loop (steps chosen on validation).
- `run`: every method x shots x seed, JSON per run, tables and a plot.

Full fine-tuning and WiSE-FT are the trainer's (`configs/finetune.py`) and
`big_vl.interpolate`'s.
"""
