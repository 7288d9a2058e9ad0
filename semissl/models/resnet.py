"""ResNet v1 backbones (He et al. 2016), with the SimCLRv2 / SemPPL options.

* Depths 18/34 use basic blocks; 50/101/152/200 bottleneck blocks with the
  stride on the 3x3 conv (torchvision "v1.5").
* `width_multiplier` scales every width (SimCLRv2 §3.2, SemPPL "1x to 4x").
* `cifar_stem`: a 3x3 stride-1 stem conv and no max-pool (SimCLR's CIFAR
  variant).
* `sk='semppl'`: SKNet-50 style blocks (SemPPL App. A.1): the bottleneck middle
  width is doubled as in ResNeXt-50 32x4d and its 3x3 conv becomes a
  `SemPPLSelectiveKernel`; no ResNet-D. R50 with a 1000-way linear head: 27.48M
  parameters (SemPPL: 27.5M).
* `sk='simclrv2'`: the 3x3 conv becomes a `SimCLRv2SelectiveKernel` and the
  ResNet-D modifications (He et al. 2019) are switched on with it, as in
  SimCLRv2 §3.2: a stem of three 3x3 convs and avg-pool-then-1x1 projection
  shortcuts. R50 (1x+SK) up to the final average pooling: 35.22M parameters
  (SimCLRv2 Table 1: 35M; the other rows match too: R101 SK 64.7M vs 65M, R50 2x
  SK 140.3M vs 140M, R152 3x SK 794.7M vs 795M).

Convolutions have no bias and He-normal (fan-out) initialisation; padding is
symmetric (as in torchvision and the SimCLR code's fixed padding). The output is
the globally average-pooled feature vector, [B, 512 w] for basic blocks and
[B, 2048 w] for bottlenecks, as float32.
"""

from collections.abc import Callable, Sequence
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from semissl.models import precision, selective_kernel

ModuleDef = Callable[..., nn.Module]

STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
SK_FLAVOURS = ("semppl", "simclrv2")
CONV_KERNEL_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def drop_path(y: jax.Array, *, rate: float, deterministic: bool) -> jax.Array:
  """Stochastic depth (Huang et al. 2016) on a residual branch y [B, H, W, C]: the
  whole branch of each example is zeroed with probability `rate` and the kept ones
  scaled by 1 / (1 - rate) (the expectation of eval mode's identity, as ViT's
  drop_path). Draws from the 'dropout' rng; identity when deterministic or rate 0."""
  if rate == 0.0 or deterministic:
    return y
  return nn.Dropout(rate, broadcast_dims=tuple(range(1, y.ndim)),
                    deterministic=False, name="drop_path")(y)


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
  """Huang et al.'s linear decay of survival with depth: block l of L (1-based) is
  dropped with probability rate * l / L, the last with `rate`."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"drop_path_rate={rate} must be in [0, 1).")
  return [rate * (index + 1) / num_blocks for index in range(num_blocks)]


def _projection_shortcut(
    x: jax.Array,
    *,
    features: int,
    strides: int,
    avg_pool: bool,
    conv: ModuleDef,
    norm: ModuleDef,
) -> jax.Array:
  """1x1 conv + BN shortcut; ResNet-D (`avg_pool`) avg-pools before the conv."""
  if avg_pool and strides > 1:
    x = nn.avg_pool(
        x,
        (strides, strides),
        strides=(strides, strides),
        padding="SAME",
        count_include_pad=False,
    )
    strides = 1
  x = conv(features, (1, 1), strides=strides, name="shortcut_conv")(x)
  return norm(name="shortcut_bn")(x)


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual connection (ResNet-18/34).

  Attributes:
    filters: output channels.
    conv: conv module factory (no bias).
    norm: BatchNorm factory with `use_running_average` bound.
    strides: stride of the first conv and of the projection shortcut.
    zero_init_last_bn: initialise the last BN scale at zero (block starts as
      identity).
    avg_pool_shortcut: ResNet-D projection shortcut.
    drop_path_rate: stochastic depth: probability of dropping the residual
      branch, per example (`drop_path`).
    deterministic: no drop (eval mode); a field, not a call argument, so that
      `nn.remat` blocks still take only x.
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_last_bn: bool = True
  avg_pool_shortcut: bool = False
  drop_path_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv(
        self.filters, (3, 3), strides=self.strides, padding=1, name="conv1"
    )(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), padding=1, name="conv2")(y)
    last_scale_init = (
        nn.initializers.zeros
        if self.zero_init_last_bn
        else nn.initializers.ones
    )
    y = self.norm(scale_init=last_scale_init, name="bn2")(y)
    shortcut = x
    if x.shape[-1] != self.filters or self.strides != 1:
      shortcut = _projection_shortcut(
          x,
          features=self.filters,
          strides=self.strides,
          avg_pool=self.avg_pool_shortcut,
          conv=self.conv,
          norm=self.norm,
      )
    y = drop_path(y, rate=self.drop_path_rate, deterministic=self.deterministic)
    return nn.relu(y + shortcut)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (strided, or selective kernel) -> 1x1 (4x filters) bottleneck.

  Attributes:
    filters: bottleneck width before expansion; the output has 4 * filters
      channels.
    conv: conv module factory (no bias).
    norm: BatchNorm factory with `use_running_average` bound.
    strides: stride of the 3x3 conv and of the projection shortcut.
    zero_init_last_bn: initialise the last BN scale at zero.
    sk: None, 'semppl' or 'simclrv2' (see module docstring).
    sk_ratio: SimCLRv2 SK fuse ratio.
    sk_groups: SemPPL SK convolution groups.
    avg_pool_shortcut: ResNet-D projection shortcut.
    drop_path_rate: stochastic depth: probability of dropping the residual
      branch, per example (`drop_path`).
    deterministic: no drop (eval mode); a field, so `nn.remat` blocks take only x.
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_last_bn: bool = True
  sk: str | None = None
  sk_ratio: float = 0.0625
  sk_groups: int = 32
  avg_pool_shortcut: bool = False
  dtype: Any = jnp.float32
  drop_path_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_features = 4 * self.filters
    # SKNet-50 keeps ResNeXt-50 32x4d widths: twice the ResNet bottleneck width.
    mid_features = 2 * self.filters if self.sk == "semppl" else self.filters
    y = self.conv(mid_features, (1, 1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    if self.sk == "semppl":
      y = selective_kernel.SemPPLSelectiveKernel(
          mid_features,
          conv=self.conv,
          norm=self.norm,
          strides=self.strides,
          groups=self.sk_groups,
          dtype=self.dtype,
          name="sk_conv",
      )(y)
    elif self.sk == "simclrv2":
      y = selective_kernel.SimCLRv2SelectiveKernel(
          mid_features,
          conv=self.conv,
          norm=self.norm,
          strides=self.strides,
          sk_ratio=self.sk_ratio,
          dtype=self.dtype,
          name="sk_conv",
      )(y)
    else:
      y = self.conv(
          mid_features, (3, 3), strides=self.strides, padding=1, name="conv2"
      )(y)
      y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(out_features, (1, 1), name="conv3")(y)
    last_scale_init = (
        nn.initializers.zeros
        if self.zero_init_last_bn
        else nn.initializers.ones
    )
    y = self.norm(scale_init=last_scale_init, name="bn3")(y)
    shortcut = x
    if x.shape[-1] != out_features or self.strides != 1:
      shortcut = _projection_shortcut(
          x,
          features=out_features,
          strides=self.strides,
          avg_pool=self.avg_pool_shortcut,
          conv=self.conv,
          norm=self.norm,
      )
    y = drop_path(y, rate=self.drop_path_rate, deterministic=self.deterministic)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet v1 backbone returning pooled features [B, D] (float32).

  Attributes:
    depth: 18, 34, 50, 101, 152 or 200.
    width_multiplier: channel multiplier (1x-4x in SimCLRv2 / SemPPL).
    cifar_stem: 3x3 stride-1 stem conv without max-pool (small images).
    sk: None, 'semppl' or 'simclrv2' selective kernels (bottleneck depths only).
    sk_ratio: SimCLRv2 SK fuse ratio.
    sk_groups: SemPPL SK convolution groups.
    zero_init_last_bn: zero-initialise the last BN scale of every block (as
      SimCLR and the flax ImageNet example do).
    stage_sizes: blocks per stage, overriding the depth's (small test models).
    bn_momentum: BatchNorm running-average momentum (flax convention).
    bn_epsilon: BatchNorm epsilon.
    dtype: computation dtype; parameters stay float32.
    remat: rematerialise each block in the backward pass (`nn.remat`): only the
      blocks' inputs are kept for the gradient, the rest is recomputed (about a
      third more FLOPs per step for a fraction of the activation memory).
    drop_path_rate: stochastic depth of the last block; block l of L drops its
      residual branch with rate * l / L per example (`drop_path_rates`). Needs
      the 'dropout' rng when train=True and the rate is > 0.
  """

  depth: int = 50
  width_multiplier: int = 1
  cifar_stem: bool = False
  sk: str | None = None
  sk_ratio: float = 0.0625
  sk_groups: int = 32
  zero_init_last_bn: bool = True
  stage_sizes: Sequence[int] | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  remat: bool = False
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.depth not in STAGE_SIZES:
      raise ValueError(
          f"ResNet depth must be one of {sorted(STAGE_SIZES)}, got"
          f" {self.depth}."
      )
    bottleneck = self.depth >= 50
    if self.sk is not None and (self.sk not in SK_FLAVOURS or not bottleneck):
      raise ValueError(
          f"sk must be None or one of {SK_FLAVOURS} with a bottleneck depth"
          " (50-200); "
          f"got sk={self.sk!r}, depth={self.depth}."
      )
    resnet_d = self.sk == "simclrv2"
    conv = functools.partial(
        nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=CONV_KERNEL_INIT
    )
    norm = functools.partial(
        precision.norm_layer(nn.BatchNorm, self.dtype),
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
    )
    width = 64 * self.width_multiplier

    x = x.astype(self.dtype)
    if self.cifar_stem:
      x = conv(width, (3, 3), padding=1, name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    else:
      if resnet_d:
        stem_widths = (width // 2, width // 2, width)
        for index, stem_width in enumerate(stem_widths):
          x = conv(
              stem_width,
              (3, 3),
              strides=2 if index == 0 else 1,
              padding=1,
              name=f"stem_conv{index + 1}",
          )(x)
          x = nn.relu(norm(name=f"stem_bn{index + 1}")(x))
      else:
        x = conv(width, (7, 7), strides=2, padding=3, name="stem_conv")(x)
        x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    stage_sizes = self.stage_sizes or STAGE_SIZES[self.depth]
    bottleneck_block, basic_block = BottleneckBlock, BasicBlock
    if self.remat:  # the blocks take only x: `train` is bound in `norm` and a field
      bottleneck_block, basic_block = nn.remat(BottleneckBlock), nn.remat(BasicBlock)
    rates = iter(drop_path_rates(self.drop_path_rate, sum(stage_sizes)))
    for stage, num_blocks in enumerate(stage_sizes):
      for block in range(num_blocks):
        noise = dict(drop_path_rate=next(rates), deterministic=not train)
        strides = 2 if stage > 0 and block == 0 else 1
        name = f"stage{stage + 1}_block{block + 1}"
        filters = width * 2**stage
        if bottleneck:
          x = bottleneck_block(
              filters,
              conv=conv,
              norm=norm,
              strides=strides,
              zero_init_last_bn=self.zero_init_last_bn,
              sk=self.sk,
              sk_ratio=self.sk_ratio,
              sk_groups=self.sk_groups,
              avg_pool_shortcut=resnet_d,
              dtype=self.dtype,
              name=name,
              **noise,
          )(x)
        else:
          x = basic_block(
              filters,
              conv=conv,
              norm=norm,
              strides=strides,
              zero_init_last_bn=self.zero_init_last_bn,
              avg_pool_shortcut=resnet_d,
              name=name,
              **noise,
          )(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
