"""WideResNet (Zagoruyko & Komodakis 2016) as used in the FixMatch protocol.

WRN-d-k: a 3x3 stem conv with 16 channels, three groups of (d - 4) / 6
pre-activation blocks at 16k, 32k and 64k channels (strides 1, 2, 2), a final
BN + leaky ReLU and global average pooling: features [B, 64 k]. FixMatch's
choices: leaky ReLU slope 0.1, BN momentum 0.999 (flax convention; PyTorch's
0.001), and in the first block the shortcut takes the pre-activated input
("activate_before_residual"). WRN-28-2 with a 10-way linear head has 1.47M
parameters; WRN-28-8 with the 100-way CIFAR-100 head 23.40M (23.35M with 10).
"""

from collections.abc import Callable
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from semissl.models import precision, resnet

ModuleDef = Callable[..., nn.Module]


class WideResNetBlock(nn.Module):
  """Pre-activation block: BN-act-conv3x3-BN-act-conv3x3 plus shortcut.

  Attributes:
    features: output channels.
    conv: conv module factory (no bias).
    norm: BatchNorm factory with `use_running_average` bound.
    strides: stride of the first conv and of the projection shortcut.
    activate_before_residual: feed the pre-activated input to the shortcut.
    leaky_relu_slope: negative slope of the activations.
    drop_path_rate: stochastic depth: probability of dropping the residual
      branch, per example (`resnet.drop_path`).
    deterministic: no drop (eval mode).
  """

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  activate_before_residual: bool = False
  leaky_relu_slope: float = 0.1
  drop_path_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = functools.partial(nn.leaky_relu, negative_slope=self.leaky_relu_slope)
    preact = act(self.norm(name="bn1")(x))
    shortcut = preact if self.activate_before_residual else x
    y = self.conv(
        self.features, (3, 3), strides=self.strides, padding=1, name="conv1"
    )(preact)
    y = act(self.norm(name="bn2")(y))
    y = self.conv(self.features, (3, 3), padding=1, name="conv2")(y)
    y = resnet.drop_path(y, rate=self.drop_path_rate, deterministic=self.deterministic)
    if shortcut.shape[-1] != self.features or self.strides != 1:
      shortcut = self.conv(
          self.features, (1, 1), strides=self.strides, name="shortcut_conv"
      )(shortcut)
    return shortcut + y


class WideResNet(nn.Module):
  """WRN-depth-k backbone returning pooled features [B, 64 k] (float32).

  Attributes:
    depth: total depth d, with (d - 4) divisible by 6.
    widen_factor: width multiplier k.
    leaky_relu_slope: negative slope of the activations.
    bn_momentum: BatchNorm running-average momentum (flax convention).
    bn_epsilon: BatchNorm epsilon.
    dtype: computation dtype; parameters stay float32.
    drop_path_rate: stochastic depth of the last block; block l of L drops its
      residual branch with rate * l / L per example (`resnet.drop_path_rates`).
      Needs the 'dropout' rng when train=True and the rate is > 0.
  """

  depth: int = 28
  widen_factor: int = 2
  leaky_relu_slope: float = 0.1
  bn_momentum: float = 0.999
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if (self.depth - 4) % 6:
      raise ValueError(
          f"WideResNet depth must be 6n + 4 (e.g. 28), got {self.depth}."
      )
    blocks_per_group = (self.depth - 4) // 6
    conv = functools.partial(
        nn.Conv,
        use_bias=False,
        dtype=self.dtype,
        kernel_init=resnet.CONV_KERNEL_INIT,
    )
    norm = functools.partial(
        precision.norm_layer(nn.BatchNorm, self.dtype),
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
    )
    x = conv(16, (3, 3), padding=1, name="stem_conv")(x.astype(self.dtype))
    rates = iter(resnet.drop_path_rates(self.drop_path_rate, 3 * blocks_per_group))
    for group, multiple in enumerate((16, 32, 64)):
      for block in range(blocks_per_group):
        x = WideResNetBlock(
            multiple * self.widen_factor,
            conv=conv,
            norm=norm,
            strides=2 if group > 0 and block == 0 else 1,
            activate_before_residual=group == 0 and block == 0,
            leaky_relu_slope=self.leaky_relu_slope,
            drop_path_rate=next(rates),
            deterministic=not train,
            name=f"group{group + 1}_block{block + 1}",
        )(x)
    x = nn.leaky_relu(
        norm(name="final_bn")(x), negative_slope=self.leaky_relu_slope
    )
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
