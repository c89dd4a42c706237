"""big_vl: scalable image-text models (CLIP, SigLIP, ...) in JAX/Flax."""

__version__ = "0.1.0"
