"""Pieces shared by the image and text towers.

- `VARIANTS` / `parse_variant` / `resolve_dims`: the size table ("B/16" ->
  width 768, depth 12, mlp_dim 3072, 12 heads, patch 16).
- `Encoder`: a pre-LayerNorm transformer encoder (blocks + final LayerNorm),
  optionally rematerialised block by block (`REMAT_POLICIES`) and/or run as
  one `nn.scan` over stacked block params.
- `stack_block_params` / `unstack_block_params`: convert params between the
  unscanned (`encoderblock_{i}`) and scanned (`encoderblock`, leading depth
  axis) layouts.
- `MAPHead`: multi-head attention pooling with a learned probe.
- `posemb_sincos_2d`: fixed 2-D sin-cos position embeddings.

Parameter names follow big_vision (`Transformer/encoderblock_0/...`,
`encoder_norm`, `MAPHead_0/probe`), so its checkpoints map onto ours by name.

Length: the transformer pieces both towers share (blocks, the encoder with scan
/ remat, the MAP head, position embeddings, the size table)."""

from collections.abc import Mapping
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# name -> (width, depth, mlp_dim, num_heads).
# Reference: Table 2 of https://arxiv.org/abs/2106.04560 (+ So400m from
# https://arxiv.org/abs/2305.13035). "mu" is a tiny size for tests and demos.
VARIANTS = {
    "mu": (64, 2, 256, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
}

DIM_NAMES = ("width", "depth", "mlp_dim", "num_heads")


def parse_variant(variant):
  """Decodes a variant string into model dimensions.

  Args:
    variant: "SIZE" or "SIZE/PATCH" with SIZE a key of `VARIANTS`
      (case-sensitive: "S" is small, "So400m" the shape-optimised one), e.g.
      "B/16", "mu/8", "L". None gives {}.

  Returns:
    A dict with "width", "depth", "mlp_dim", "num_heads" and, when the string
    names a patch, "patch_size" (an int). E.g. `parse_variant("B/16")` is
    `{"width": 768, "depth": 12, "mlp_dim": 3072, "num_heads": 12,
    "patch_size": 16}`.

  Raises:
    ValueError: for an unknown size or a malformed patch.
  """
  if variant is None:
    return {}
  size, sep, patch = str(variant).partition("/")
  if size not in VARIANTS:
    raise ValueError(
        f"Unknown model variant size {size!r} in {variant!r}; known sizes: "
        f"{', '.join(VARIANTS)} (write e.g. 'B/16' or 'S/32').")
  dims = dict(zip(DIM_NAMES, VARIANTS[size]))
  if sep:
    try:
      dims["patch_size"] = int(patch)
    except ValueError:
      raise ValueError(
          f"Bad patch size {patch!r} in variant {variant!r}; write e.g. "
          "'B/16'.") from None
    if dims["patch_size"] <= 0:
      raise ValueError(f"Patch size must be positive in variant {variant!r}.")
  return dims


def resolve_dims(module_name, variant, names=DIM_NAMES, **explicit):
  """Merges a variant with explicitly given dimensions (explicit ones win).

  Args:
    module_name: used in error messages.
    variant: a variant string for `parse_variant`, or None.
    names: the dimension names that must end up set.
    **explicit: dimension values; None means "not given".

  Returns:
    A dict with one int per name in `names`.

  Raises:
    ValueError: if a dimension is neither in the variant nor given, or if
      width is not divisible by num_heads.
  """
  dims = parse_variant(variant)
  dims.update({k: v for k, v in explicit.items() if v is not None})
  missing = [n for n in names if dims.get(n) is None]
  if missing:
    raise ValueError(
        f"{module_name}: missing {', '.join(missing)}; give `variant` "
        f"(e.g. 'B/16') or all of {', '.join(names)}.")
  dims = {n: dims[n] for n in names}
  if "num_heads" in dims and dims["width"] % dims["num_heads"]:
    raise ValueError(
        f"{module_name}: width {dims['width']} is not divisible by "
        f"num_heads {dims['num_heads']}.")
  return dims


def as_dict(cfg):
  """A model config block (dict, ConfigDict or None) as a plain dict."""
  if cfg is None:
    return {}
  if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict
    return cfg.to_dict()
  return dict(cfg)


def l2_normalize(x, axis=-1, eps=1e-12):
  """x / ||x|| along `axis`, in float32; a zero row stays zero (no NaN)."""
  x = x.astype(jnp.float32)
  sq = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps))


def get_dtype(dtype):
  """Returns a jnp dtype from a name ("float32", "bfloat16") or a dtype."""
  try:
    return jnp.dtype(dtype)
  except TypeError:
    raise ValueError(f"Unknown dtype {dtype!r}; use 'float32' or 'bfloat16'."
                     ) from None


def quick_gelu(x):
  """OpenAI CLIP's sigmoid approximation of GELU."""
  return x * jax.nn.sigmoid(1.702 * x)


_SQRT_HALF = 0.7071067811865476


def gelu_exact(x):
  """GELU with the exact erf, `x / 2 * (1 + erf(x / sqrt(2)))`.

  PyTorch's `nn.GELU()` formula. `jax.nn.gelu(x, approximate=False)` computes
  the same function through `erfc`, which XLA expands into several times more
  work: on a CPU its forward + backward takes about 5x as long as this form's
  (bench/RESULTS.md, train throughput). The two differ by a few float32 ulps
  (at most 5e-7 for |x| < 5).
  """
  return x * 0.5 * (1.0 + jax.lax.erf(x * jnp.asarray(_SQRT_HALF, x.dtype)))


def get_activation(name):
  """Returns the MLP activation called `name`.

  Args:
    name: "gelu" (tanh approximation, flax/big_vision default), "gelu_exact"
      (erf, PyTorch nn.GELU, open_clip LAION models) or "quick_gelu" (OpenAI
      CLIP checkpoints).

  Returns:
    A function on arrays.
  """
  acts = {
      "gelu": lambda x: nn.gelu(x, approximate=True),
      "gelu_exact": gelu_exact,
      "quick_gelu": quick_gelu,
  }
  if name not in acts:
    raise ValueError(f"Unknown activation {name!r}; known: {', '.join(acts)}.")
  return acts[name]


def posemb_sincos_2d(h, w, width, temperature=10_000.0):
  """Fixed 2-D sin-cos position embeddings (MoCo v3 / big_vision layout).

  Args:
    h: grid height (patches).
    w: grid width (patches).
    width: embedding width, a multiple of 4 and at least 8.
    temperature: frequency base.

  Returns:
    A float32 array [1, h * w, width], row-major over the (h, w) grid; the
    channels are [sin(x), cos(x), sin(y), cos(y)] blocks of width // 4.

  Example:
    >>> posemb_sincos_2d(2, 3, 64).shape
    (1, 6, 64)
  """
  if width % 4 or width < 8:
    raise ValueError(
        f"sincos2d posemb needs a width that is a multiple of 4 and >= 8, got "
        f"{width}.")
  quarter = width // 4
  omega = 1.0 / temperature ** (np.arange(quarter) / (quarter - 1))
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  x_ang = xx.reshape(-1)[:, None] * omega[None, :]
  y_ang = yy.reshape(-1)[:, None] * omega[None, :]
  pe = np.concatenate(
      [np.sin(x_ang), np.cos(x_ang), np.sin(y_ang), np.cos(y_ang)], axis=1)
  return jnp.asarray(pe[None], jnp.float32)


def padding_mask_to_attention(mask):
  """Turns a [B, L] bool "key is valid" mask into a [B, 1, 1, L] one."""
  return mask[:, None, None, :]


class MlpBlock(nn.Module):
  """Transformer feed-forward block: Dense -> act -> dropout -> Dense.

  Attributes:
    mlp_dim: hidden width.
    dropout: dropout rate after the activation.
    dtype: compute dtype.
    act: activation name, see `get_activation`.
  """
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  act: str = "gelu"

  @nn.compact
  def __call__(self, x, deterministic=True):
    inits = dict(kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(stddev=1e-6),
                 dtype=self.dtype)
    d = x.shape[-1]
    x = nn.Dense(self.mlp_dim, **inits, name="Dense_0")(x)
    x = get_activation(self.act)(x)
    x = nn.Dropout(rate=self.dropout)(x, deterministic)
    return nn.Dense(d, **inits, name="Dense_1")(x)


class GeGluMlpBlock(nn.Module):
  """Gated feed-forward block (ViTamin): LN -> act(W0 x) * (W1 x) -> W2.

  Attributes:
    mlp_dim: hidden width (of each of the two input projections).
    dropout: dropout rate after the gate.
    dtype: compute dtype.
    act: activation name of the gate, see `get_activation`.
    norm_eps: epsilon of the block's own LayerNorm.
  """
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  act: str = "gelu_exact"
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, x, deterministic=True):
    inits = dict(kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.zeros, dtype=self.dtype)
    d = x.shape[-1]
    x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype,
                     name="LayerNorm_0")(x)
    gate = get_activation(self.act)(nn.Dense(self.mlp_dim, **inits,
                                             name="Dense_0")(x))
    x = gate * nn.Dense(self.mlp_dim, **inits, name="Dense_1")(x)
    x = nn.Dropout(rate=self.dropout)(x, deterministic)
    return nn.Dense(d, **inits, name="Dense_2")(x)


MLP_TYPES = ("mlp", "geglu")
NORM_POSITIONS = ("pre", "post")


class EncoderBlock(nn.Module):
  """Transformer block, pre-LN (ViT, CLIP) or post-LN (BERT).

  pre:  x + MHSA(LN(x)), then x + MLP(LN(x)).
  post: LN(x + MHSA(x)), then LN(x + MLP(x)).
  The two LayerNorms are `LayerNorm_0` (attention) and `LayerNorm_1` (MLP)
  in both.

  Attributes:
    mlp_dim: MLP hidden width.
    num_heads: attention heads.
    dropout: dropout rate on both residual branches (and inside the MLP).
    dtype: compute dtype.
    act: MLP activation name.
    norm_eps: LayerNorm epsilon (flax / big_vision 1e-6, PyTorch and
      open_clip 1e-5, BERT 1e-12).
    norm_position: "pre" or "post".
    mlp_type: "mlp" (`MlpBlock_0`) or "geglu" (`GeGluMlpBlock_0`, ViTamin).
    decode: keep the self-attention's keys / values in the "cache"
      collection and take one position per call (autoregressive decoding;
      `mask` is then None once the cache exists).
  """
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  act: str = "gelu"
  norm_eps: float = 1e-6
  norm_position: str = "pre"
  mlp_type: str = "mlp"
  decode: bool = False

  @nn.compact
  def __call__(self, x, mask=None, deterministic=True):
    """Applies the block.

    Args:
      x: [B, L, D] tokens.
      mask: None or a bool attention mask broadcastable to [B, H, L, L]
        (True = may attend).
      deterministic: disables dropout when True.

    Returns:
      [B, L, D] tokens.
    """
    if self.norm_position not in NORM_POSITIONS:
      raise ValueError(f"Unknown norm_position {self.norm_position!r}; known: "
                       f"{NORM_POSITIONS}.")
    pre = self.norm_position == "pre"
    norm_attn = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype,
                             name="LayerNorm_0")
    norm_mlp = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype,
                            name="LayerNorm_1")
    y = norm_attn(x) if pre else x
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        force_fp32_for_softmax=True,
        deterministic=True,
        decode=self.decode,
        name="MultiHeadDotProductAttention_0",
    )(y, y, mask=mask)
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    x = x + y if pre else norm_attn(x + y)
    y = norm_mlp(x) if pre else x
    if self.mlp_type == "geglu":
      y = GeGluMlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout,
                        dtype=self.dtype, act=self.act,
                        norm_eps=self.norm_eps, name="GeGluMlpBlock_0")(
                            y, deterministic)
    elif self.mlp_type == "mlp":
      y = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout,
                   dtype=self.dtype, act=self.act, name="MlpBlock_0")(
                       y, deterministic)
    else:
      raise ValueError(f"Unknown mlp_type {self.mlp_type!r}; known: "
                       f"{MLP_TYPES}.")
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    return x + y if pre else norm_mlp(x + y)


# remat_policy name -> jax checkpoint policy (None = save nothing, i.e.
# recompute the whole block in the backward pass).
REMAT_POLICIES = {
    "none": None,
    "full": None,
    # Keep the outputs of weight matmuls (Dense / DenseGeneral: dot_generals
    # without batch dimensions); recompute the rest, including the attention
    # score and weighted-sum einsums, whose [B, H, L, L] intermediates are
    # what takes memory.
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_with_no_batch_dims_saveable":
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def resolve_remat_policy(remat_policy="none", remat=None,
                         module_name="Encoder"):
  """Validates a remat policy name, honouring the legacy boolean `remat`.

  Args:
    remat_policy: a key of `REMAT_POLICIES`.
    remat: legacy flag; True is an alias for "full" (an error if
      `remat_policy` names a different policy), False/None changes nothing.
    module_name: used in error messages.

  Returns:
    The effective policy name, a key of `REMAT_POLICIES`.

  Raises:
    ValueError: for an unknown name or a conflicting `remat=True`.
  """
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(
        f"{module_name}: unknown remat_policy {remat_policy!r}; known: "
        f"{', '.join(REMAT_POLICIES)}.")
  if remat:
    if remat_policy not in ("none", "full"):
      raise ValueError(
          f"{module_name}: remat=True (an alias for remat_policy='full') "
          f"conflicts with remat_policy={remat_policy!r}; drop `remat`.")
    return "full"
  return remat_policy


def remat_block(block_cls, remat_policy, num_args=2, prevent_cse=True):
  """`block_cls` rematerialised under a policy (itself for "none").

  Args:
    block_cls: a block module class called as `block(x, *args,
      deterministic)` with `num_args` inputs before the Python bool
      `deterministic` (static).
    remat_policy: a key of `REMAT_POLICIES`.
    num_args: inputs before `deterministic` (x included).
    prevent_cse: as `nn.remat` (not needed inside a scan).

  Returns:
    The module class to instantiate.
  """
  policy_name = resolve_remat_policy(remat_policy)
  if policy_name == "none":
    return block_cls
  # Argument 0 is the module itself.
  return nn.remat(block_cls, static_argnums=(num_args + 1,),
                  policy=REMAT_POLICIES[policy_name], prevent_cse=prevent_cse)


def run_blocks(block_cls, block_kw, x, args, deterministic, *, depth, name,
               scan=False, remat_policy="none", variable_axes=("params",)):
  """`depth` blocks applied in turn: `x = block(x, *args, deterministic)`.

  Called inside a parent's compact method (the blocks become its
  submodules). Unscanned, the blocks are `{name}_{i}`; with `scan` one
  `nn.scan` runs a `{name}` block whose params (and the other
  `variable_axes` collections, e.g. a decoder's "cache") are stacked on a
  leading [depth] axis. With a remat policy each block is rematerialised.

  Args:
    block_cls: the block module class.
    block_kw: its attributes.
    x: the carried states [B, L, D].
    args: further positional inputs, the same for every block (e.g. the
      mask, or the memory and the mask).
    deterministic: a Python bool (static).
    depth: number of blocks.
    name: the blocks' name stem.
    scan: one `nn.scan` over the blocks.
    remat_policy: a key of `REMAT_POLICIES`.
    variable_axes: collections stacked per block when scanned.

  Returns:
    The states after the last block.
  """
  # Inside a scan the loop already keeps XLA from merging the recomputed
  # forward with the original one, so CSE prevention is not needed.
  block_cls = remat_block(block_cls, remat_policy, num_args=len(args) + 1,
                          prevent_cse=not scan)
  if scan:
    def body(block, carry, *args):
      return block(carry, *args, deterministic), None

    # `args` are the same for every block (broadcast); params and dropout
    # rngs get one slice per block.
    scanned = nn.scan(
        body, variable_axes={c: 0 for c in variable_axes},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(args), length=depth)
    x, _ = scanned(block_cls(**block_kw, name=name), x, *args)
    return x
  for i in range(depth):
    x = block_cls(**block_kw, name=f"{name}_{i}")(x, *args, deterministic)
  return x


class Encoder(nn.Module):
  """Stack of `depth` blocks; pre-LN stacks end with a final LayerNorm.

  Unscanned, blocks are named `encoderblock_{i}`; with `scan=True` one
  `encoderblock` holds every block's params stacked on a leading [depth]
  axis (e.g. `encoderblock/MlpBlock_0/Dense_0/kernel` is [depth, D, mlp]).
  Both compute the same function; `stack_block_params` and
  `unstack_block_params` convert between the layouts. The final norm is
  `encoder_norm` in both.

  Attributes:
    depth: number of blocks.
    mlp_dim: MLP hidden width.
    num_heads: attention heads.
    dropout: dropout rate.
    dtype: compute dtype.
    remat_policy: a key of `REMAT_POLICIES`: "none"; "full" (recompute each
      block in the backward pass, keeping only its input); "dots_saveable"
      (keep the weight-matmul outputs, recompute the rest).
    scan: run the blocks as one `nn.scan` (compiles one block instead of
      `depth`; params stacked, see above).
    act: MLP activation name.
    norm_eps: LayerNorm epsilon.
    norm_position: "pre" (blocks then `encoder_norm`) or "post" (BERT-style
      blocks, no final norm).
    mlp_type: "mlp" or "geglu" (see `EncoderBlock`).
    final_norm: whether a pre-LN stack ends with `encoder_norm` (False:
      the caller normalises, e.g. after pooling as ViTamin does).
    decode: blocks with KV caches (see `EncoderBlock`; not with scan).
  """
  depth: int
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat_policy: str = "none"
  scan: bool = False
  act: str = "gelu"
  norm_eps: float = 1e-6
  norm_position: str = "pre"
  mlp_type: str = "mlp"
  final_norm: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x, mask=None, deterministic=True):
    """Encodes `x` [B, L, D] (optionally under `mask`) to [B, L, D]."""
    if self.decode and self.scan:
      raise ValueError("Encoder: decode=True does not work with scan=True "
                       "(build the decoding model unscanned).")
    block_kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                    dropout=self.dropout, dtype=self.dtype, act=self.act,
                    norm_eps=self.norm_eps, norm_position=self.norm_position,
                    mlp_type=self.mlp_type, decode=self.decode)
    x = run_blocks(EncoderBlock, block_kw, x, (mask,), deterministic,
                   depth=self.depth, name="encoderblock", scan=self.scan,
                   remat_policy=self.remat_policy)
    if self.norm_position == "post" or not self.final_norm:
      return x
    return nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype,
                        name="encoder_norm")(x)


# The block stems `stack_block_params` / `unstack_block_params` convert
# (`Encoder`'s and `decoder.TextDecoder`'s).
BLOCK_NAMES = ("encoderblock", "decoderblock")
_BLOCK_RE = re.compile(r"(encoderblock|decoderblock)_(\d+)")


def stack_block_params(tree, depth=None):
  """Converts unscanned block params to the scanned (stacked) layout.

  Every mapping in `tree` (searched recursively) that holds keys
  `encoderblock_0` .. `encoderblock_{n-1}` gets them replaced by one
  `encoderblock` whose leaves are the blocks' leaves stacked on a new leading
  axis, in block order; `decoderblock_{i}` (a `decoder.TextDecoder`'s) the
  same. Other keys are kept as they are, so this works on an `Encoder`'s
  subtree, a whole tower, a two-tower or captioner params tree or an
  optimiser state that mirrors one.

  Args:
    tree: a nested mapping of arrays.
    depth: if given, the number of blocks every converted stack must have.

  Returns:
    A new nested dict (leaves are new stacked arrays or the input leaves).

  Raises:
    ValueError: if block indices are not 0..n-1, blocks differ in structure,
      or a stack's block count differs from `depth`.
  """
  if not isinstance(tree, Mapping):
    return tree
  out = {k: stack_block_params(v, depth) for k, v in tree.items()
         if not _BLOCK_RE.fullmatch(str(k))}
  for stem in BLOCK_NAMES:
    blocks = {}
    for k, v in tree.items():
      m = _BLOCK_RE.fullmatch(str(k))
      if m and m.group(1) == stem:
        blocks[int(m.group(2))] = v
    if not blocks:
      continue
    n = len(blocks)
    if sorted(blocks) != list(range(n)):
      raise ValueError(f"stack_block_params: block indices {sorted(blocks)} "
                       f"are not 0..{n - 1}.")
    if depth is not None and n != depth:
      raise ValueError(f"stack_block_params: found {n} {stem}s, expected "
                       f"depth {depth}.")
    if stem in out:
      raise ValueError(f"stack_block_params: both `{stem}` and "
                       f"`{stem}_{{i}}` keys found.")
    items = [blocks[i] for i in range(n)]
    if len({jax.tree.structure(b) for b in items}) != 1:
      raise ValueError(f"stack_block_params: {stem}s differ in structure.")
    out[stem] = jax.tree.map(lambda *xs: jnp.stack(xs), *items)
  return out


def unstack_block_params(tree, depth=None):
  """Converts scanned block params back to the unscanned layout.

  The inverse of `stack_block_params`: every `encoderblock` (or
  `decoderblock`) entry, searched recursively, is split along its leading
  axis into `encoderblock_{i}` (`decoderblock_{i}`).

  Args:
    tree: a nested mapping of arrays.
    depth: if given, the leading-axis size every stacked entry must have.

  Returns:
    A new nested dict.

  Raises:
    ValueError: if a stacked leaf's leading axis is not the block count.
  """
  if not isinstance(tree, Mapping):
    return tree
  out = {}
  for k, v in tree.items():
    if k not in BLOCK_NAMES:
      out[k] = unstack_block_params(v, depth)
      continue
    leaves = jax.tree.leaves(v)
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
      raise ValueError(f"unstack_block_params: `{k}` leaves have "
                       f"leading sizes {sorted(map(str, sizes))}; expected "
                       "one shared depth axis.")
    n = sizes.pop()
    if depth is not None and n != depth:
      raise ValueError(f"unstack_block_params: stacked depth {n}, expected "
                       f"{depth}.")
    for i in range(n):
      out[f"{k}_{i}"] = jax.tree.map(lambda x, i=i: x[i], v)
  return out


class MAPHead(nn.Module):
  """Multihead attention pooling: one learned probe attends to all tokens.

  Attributes:
    mlp_dim: MLP hidden width.
    num_heads: attention heads.
    dtype: compute dtype.
    act: MLP activation name.
    norm_eps: LayerNorm epsilon.
  """
  mlp_dim: int
  num_heads: int
  dtype: Any = jnp.float32
  act: str = "gelu"
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, x, mask=None):
    """Pools tokens.

    Args:
      x: [B, L, D] tokens.
      mask: None or bool [B, L]; False tokens are not attended to.

    Returns:
      [B, D] pooled features.
    """
    n, _, d = x.shape
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d),
                       jnp.float32)
    probe = jnp.tile(probe, [n, 1, 1]).astype(self.dtype)
    attn_mask = None if mask is None else padding_mask_to_attention(mask)
    x = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        force_fp32_for_softmax=True,
        deterministic=True,
        name="MultiHeadDotProductAttention_0",
    )(probe, x, mask=attn_mask)
    y = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype,
                     name="LayerNorm_0")(x)
    x = x + MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype, act=self.act,
                     name="MlpBlock_0")(y)
    return x[:, 0]


def head_init(width):
  """Kernel init of projection heads: normal(width ** -0.5), as CLIP's proj.

  Not zero: the two-tower outputs are L2-normalised, so an all-zero head would
  give all-zero (NaN-prone) embeddings at step 0.
  """
  return nn.initializers.normal(stddev=width ** -0.5)
