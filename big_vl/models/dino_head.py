"""DINO's projection head (Caron et al. 2021), the self-distillation head
of SILC and SigLIP 2.

An MLP to a bottleneck, L2-normalised, then a weight-normalised linear
layer onto `prototypes` outputs (each prototype a unit vector, DINO's
`weight_norm` with its gain fixed at 1), so the outputs are cosines in
[-1, 1] that the loss (`big_vl/losses/self_distillation.py`) sharpens with
its temperatures.

Example:
  >>> head = DINOHead(prototypes=64, hidden_dim=32, bottleneck_dim=16)
  >>> x = jnp.ones([4, 8])
  >>> params = head.init(jax.random.key(0), x)["params"]
  >>> sorted(params), head.apply({"params": params}, x).shape
  (['mlp_0', 'mlp_1', 'mlp_2', 'prototypes'], (4, 64))
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vl.models import common


class DINOHead(nn.Module):
  """MLP -> L2-normalised bottleneck -> cosine with unit prototypes.

  Attributes:
    prototypes: output width K (DINO and SILC: 65,536).
    hidden_dim: width of the hidden layers (DINO: 2048).
    bottleneck_dim: width before the prototypes (DINO: 256).
    depth: number of Dense layers before the prototypes (DINO: 3; 1 is a
      single linear map to the bottleneck).
    dtype: compute dtype of the MLP; the normalisation and the prototype
      layer run in float32.
  """
  prototypes: int = 65536
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  depth: int = 3
  dtype: Any = "float32"

  @nn.compact
  def __call__(self, x):
    """[..., D] features -> float32 [..., prototypes] cosines."""
    if self.depth < 1 or self.prototypes < 1:
      raise ValueError(f"DINOHead: depth={self.depth} and prototypes="
                       f"{self.prototypes} must be >= 1.")
    dtype = common.get_dtype(self.dtype)
    for i in range(self.depth - 1):
      x = nn.gelu(nn.Dense(self.hidden_dim, dtype=dtype,
                           name=f"mlp_{i}")(x), approximate=False)
    x = nn.Dense(self.bottleneck_dim, dtype=dtype,
                 name=f"mlp_{self.depth - 1}")(x)
    x = common.l2_normalize(x)
    v = self.param("prototypes", nn.initializers.normal(0.02),
                   (self.bottleneck_dim, self.prototypes), jnp.float32)
    return x @ common.l2_normalize(v, axis=0)
