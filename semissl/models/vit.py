"""Vision Transformer backbone (Dosovitskiy et al. 2021), as used by Semi-ViT.

Patch embedding (a p x p stride-p conv) -> position embedding ('learn': a
trainable [1, N, D] table; 'sincos2d': fixed 2-D sine-cosine) -> optional class
token ('tok' pooling) -> pre-LN transformer blocks (MHSA + MLP with GELU, 4x
width, stochastic depth) -> final LayerNorm -> 'tok' (class token) or 'gap'
(mean over patch tokens) pooling: features [B, D]. LayerNorm epsilon 1e-6. The
position embedding is added to the patch tokens only (the class token has none),
so ViT-B/16 at 224 has 86.57M parameters with a 1000-way head.

Parameter names, used by `vit_layer_id` for layer-wise lr decay (Semi-ViT §4):
'embedding', 'pos_embedding', 'cls' (layer 0); 'encoderblock_{i}' (layer i + 1);
'encoder_norm' and anything else, e.g. a head (layer depth + 1).
"""

from collections.abc import Sequence
import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from semissl.models import precision

EMBEDDING_PARAM_NAMES = ("embedding", "pos_embedding", "cls")
_BLOCK_NAME = re.compile(r"^encoderblock_(\d+)$")


def sincos_2d_position_embedding(
    *, height: int, width: int, dim: int, temperature: float = 10_000.0
) -> np.ndarray:
  """Fixed 2-D sine-cosine position table [1, height * width, dim], row-major.

  A quarter of the channels each hold sin(x w), cos(x w), sin(y w), cos(y w)
  with frequencies w_j = temperature^(-j / (dim/4 - 1)), j = 0 .. dim/4 - 1.
  """
  if dim % 4:
    raise ValueError(
        f"sincos2d position embedding needs a width divisible by 4, got {dim}."
    )
  quarter = dim // 4
  omega = 1.0 / temperature ** (np.arange(quarter) / max(quarter - 1, 1))
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  x_angles = cols.reshape(-1, 1) * omega[None, :]
  y_angles = rows.reshape(-1, 1) * omega[None, :]
  table = np.concatenate(
      [np.sin(x_angles), np.cos(x_angles), np.sin(y_angles), np.cos(y_angles)],
      axis=1,
  )
  return table[None].astype(np.float32)


def vit_layer_id(param_path: Sequence[Any], num_layers: int) -> int:
  """Layer index of a ViT parameter for layer-wise lr decay (Semi-ViT §4).

  Args:
    param_path: the parameter's path, e.g. ('params', 'backbone',
      'encoderblock_3', 'mlp', 'Dense_0', 'kernel'); entries may be strings or
      jax tree-path keys (DictKey / GetAttrKey).
    num_layers: the number of transformer blocks.

  Returns:
    0 for the patch / position embeddings and class token, i + 1 for block i,
    num_layers + 1 for everything else (final norm, heads).
  """
  for entry in param_path:
    name = str(getattr(entry, "key", getattr(entry, "name", entry)))
    match = _BLOCK_NAME.match(name)
    if match:
      return int(match.group(1)) + 1
    if name in EMBEDDING_PARAM_NAMES:
      return 0
  return num_layers + 1


class MlpBlock(nn.Module):
  """Transformer MLP: Dense(mlp_dim) -> GELU -> Dense(input width)."""

  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(
        nn.Dense,
        dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6),
    )
    y = nn.gelu(dense(self.mlp_dim)(x), approximate=False)
    return dense(x.shape[-1])(y)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block with stochastic depth on both residual branches.

  Attributes:
    num_heads: attention heads.
    mlp_dim: MLP hidden width.
    drop_path_rate: probability of dropping each residual branch per example.
    dtype: computation dtype.
  """

  num_heads: int
  mlp_dim: int
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    # `train` is positional so that `nn.remat` can mark it static (ViT.remat).
    # Dropout broadcast over tokens and channels drops whole examples.
    drop_path = nn.Dropout(
        self.drop_path_rate, broadcast_dims=(1, 2), deterministic=not train
    )
    y = precision.norm_layer(nn.LayerNorm, self.dtype)(epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        deterministic=True,
        name="attention",
    )(y)
    x = x + drop_path(y)
    y = precision.norm_layer(nn.LayerNorm, self.dtype)(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
    y = MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(y)
    return x + drop_path(y)


class ViT(nn.Module):
  """Vision Transformer backbone returning pooled features [B, width] (float32).

  Attributes:
    width: token width D.
    depth: number of transformer blocks.
    num_heads: attention heads.
    mlp_dim: MLP hidden width (None: 4 * width).
    patch_size: square patch side p; image sides must be multiples of p.
    posemb: 'learn' or 'sincos2d'.
    pool: 'tok' (class token) or 'gap' (mean of patch tokens, no class token).
    drop_path_rate: stochastic-depth rate of the last block; block i uses
      rate * i / (depth - 1). Needs the 'dropout' rng when train=True and
      rate > 0.
    dtype: computation dtype; parameters stay float32.
    remat: rematerialise each encoder block in the backward pass (`nn.remat`):
      only the blocks' inputs are kept for the gradient.
  """

  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int | None = None
  patch_size: int = 16
  posemb: str = "learn"
  pool: str = "tok"
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.posemb not in ("learn", "sincos2d"):
      raise ValueError(
          f"posemb must be 'learn' or 'sincos2d', got {self.posemb!r}."
      )
    if self.pool not in ("tok", "gap"):
      raise ValueError(f"pool must be 'tok' or 'gap', got {self.pool!r}.")
    _, image_height, image_width, _ = x.shape
    p = self.patch_size
    if image_height % p or image_width % p:
      raise ValueError(
          f"Image size {image_height}x{image_width} is not divisible by"
          f" patch_size={p}: resize or crop the images to a multiple of"
          f" {p}, or pick a patch_size dividing both sides."
      )

    x = nn.Conv(
        self.width,
        (p, p),
        strides=(p, p),
        padding="VALID",
        dtype=self.dtype,
        name="embedding",
    )(x.astype(self.dtype))
    batch, grid_h, grid_w, _ = x.shape
    x = x.reshape(batch, grid_h * grid_w, self.width)
    if self.posemb == "learn":
      table = self.param(
          "pos_embedding",
          nn.initializers.normal(stddev=self.width**-0.5),
          (1, grid_h * grid_w, self.width),
      )
    else:
      table = sincos_2d_position_embedding(
          height=grid_h, width=grid_w, dim=self.width
      )
    x = x + jnp.asarray(table, self.dtype)
    if self.pool == "tok":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width))
      x = jnp.concatenate(
          [jnp.tile(cls.astype(self.dtype), (batch, 1, 1)), x], axis=1
      )

    mlp_dim = self.mlp_dim or 4 * self.width
    block = nn.remat(EncoderBlock, static_argnums=(2,)) if self.remat else EncoderBlock
    for index in range(self.depth):
      rate = self.drop_path_rate * index / max(self.depth - 1, 1)
      x = block(
          self.num_heads,
          mlp_dim,
          drop_path_rate=rate,
          dtype=self.dtype,
          name=f"encoderblock_{index}",
      )(x, train)
    x = precision.norm_layer(nn.LayerNorm, self.dtype)(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")(x)
    x = x.astype(jnp.float32)
    return x[:, 0] if self.pool == "tok" else jnp.mean(x, axis=1)
