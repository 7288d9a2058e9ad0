"""Selective-kernel (SK) convolutions: the SemPPL and SimCLRv2 flavours.

Both replace the strided 3x3 convolution of a ResNet bottleneck. An SK unit
(Li et al. 2019, "Selective Kernel Networks") computes M=2 branches, fuses them
by global average pooling and a reducing fully connected layer, and mixes the
branches with a softmax over branches per channel.

* `SemPPLSelectiveKernel` (SemPPL App. A.1): two grouped (32 groups) 3x3
  branches, the second with dilation 2 (standing in for a 5x5 kernel), each with
  its own BN and ReLU; fuse width max(C/16, 32). Used with ResNeXt-50 32x4d
  bottleneck widths this is SKNet-50: 27.5M parameters with a 1000-way
  classifier.
* `SimCLRv2SelectiveKernel` (SimCLRv2 §3.2 and its released code): a single
  ungrouped 3x3 conv with 2C outputs split into the two branches (one shared
  BN + ReLU); fuse width max(C * sk_ratio, 32); mixing logits from a 1x1 conv to
  2C.

`conv` and `norm` are module factories (as in the flax ImageNet example): `norm`
must already have `use_running_average` bound by the caller.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Callable[..., nn.Module]


def _mix_branches(*, branches: jax.Array, logits: jax.Array) -> jax.Array:
  """Softmax over the branch axis, then the weighted sum of the branches.

  Args:
    branches: [M, B, H, W, C] branch outputs.
    logits: [B, M, C] mixing logits.

  Returns:
    [B, H, W, C] mixed output.
  """
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=1)
  weights = jnp.transpose(weights, (1, 0, 2))[:, :, None, None, :]
  return jnp.sum(weights.astype(branches.dtype) * branches, axis=0)


class SemPPLSelectiveKernel(nn.Module):
  """SKNet unit of SemPPL (App. A.1): grouped 3x3 and dilated 3x3 branches.

  Attributes:
    features: output channels C (also the width of each branch).
    conv: conv module factory (no bias).
    norm: BatchNorm module factory with `use_running_average` bound.
    strides: spatial stride of both branch convolutions.
    groups: number of convolution groups (SemPPL: 32).
    reduction: fuse reduction ratio r, fuse width max(C / r, min_dim).
    min_dim: the minimum fuse width L (SKNet: 32).
  """

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  groups: int = 32
  reduction: int = 16
  min_dim: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.features % self.groups:
      raise ValueError(
          f"SK features={self.features} must be divisible by"
          f" groups={self.groups}."
      )
    branches = []
    for index, dilation in enumerate((1, 2)):
      y = self.conv(
          self.features,
          (3, 3),
          strides=self.strides,
          padding=dilation,
          kernel_dilation=dilation,
          feature_group_count=self.groups,
          name=f"branch{index}_conv",
      )(x)
      y = self.norm(name=f"branch{index}_bn")(y)
      branches.append(nn.relu(y))
    branches = jnp.stack(branches)
    pooled = jnp.mean(jnp.sum(branches, axis=0), axis=(1, 2))
    fuse_dim = max(self.features // self.reduction, self.min_dim)
    z = nn.Dense(fuse_dim, use_bias=False, dtype=self.dtype, name="fuse_dense")(
        pooled
    )
    z = nn.relu(self.norm(name="fuse_bn")(z))
    logits = nn.Dense(
        2 * self.features, use_bias=False, dtype=self.dtype, name="select_dense"
    )(z)
    logits = logits.reshape(logits.shape[0], 2, self.features)
    return _mix_branches(branches=branches, logits=logits)


class SimCLRv2SelectiveKernel(nn.Module):
  """SimCLRv2 SK conv (§3.2): one 3x3 conv to 2C channels, split in 2 branches.

  Attributes:
    features: output channels C.
    conv: conv module factory (no bias).
    norm: BatchNorm module factory with `use_running_average` bound.
    strides: spatial stride of the 3x3 conv.
    sk_ratio: fuse width is max(C * sk_ratio, min_dim) (SimCLRv2 code: 0.0625).
    min_dim: the minimum fuse width (SimCLRv2 code: 32).
  """

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  sk_ratio: float = 0.0625
  min_dim: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv(
        2 * self.features, (3, 3), strides=self.strides, padding=1, name="conv"
    )(x)
    y = nn.relu(self.norm(name="bn")(y))
    branches = jnp.stack(jnp.split(y, 2, axis=-1))
    pooled = jnp.mean(jnp.sum(branches, axis=0), axis=(1, 2))
    fuse_dim = max(int(self.features * self.sk_ratio), self.min_dim)
    z = nn.Dense(fuse_dim, use_bias=False, dtype=self.dtype, name="fuse_dense")(
        pooled
    )
    z = nn.relu(self.norm(name="fuse_bn")(z))
    logits = nn.Dense(
        2 * self.features, use_bias=False, dtype=self.dtype, name="select_dense"
    )(z)
    logits = logits.reshape(logits.shape[0], 2, self.features)
    return _mix_branches(branches=branches, logits=logits)
