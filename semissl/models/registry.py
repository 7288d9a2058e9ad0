"""Backbones by name, e.g. `get_backbone('resnet50', sk='semppl')`.

Every backbone is a flax.linen Module with `__call__(x, *, train) -> [B, D]`
float32 features, BatchNorm statistics (if any) in the 'batch_stats' collection,
and a `dtype` field for the computation dtype.
"""

from collections.abc import Callable
import functools

import flax.linen as nn

from semissl.models import resnet
from semissl.models import tiny_resnet
from semissl.models import vit
from semissl.models import wide_resnet

# ViT sizes (width, depth, heads); MLP width is 4x (Dosovitskiy et al. 2021,
# Table 1; Ti from DeiT).
VIT_SIZES = {
    "ti": (192, 12, 3),
    "s": (384, 12, 6),
    "b": (768, 12, 12),
    "l": (1024, 24, 16),
    "h": (1280, 32, 16),
}

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **{
        f"resnet{depth}": functools.partial(resnet.ResNet, depth=depth)
        for depth in sorted(resnet.STAGE_SIZES)
    },
    "wrn28_2": functools.partial(
        wide_resnet.WideResNet, depth=28, widen_factor=2
    ),
    "wrn28_8": functools.partial(
        wide_resnet.WideResNet, depth=28, widen_factor=8
    ),
    "tiny_resnet": tiny_resnet.TinyResNet,
    **{
        f"vit_{size}": functools.partial(
            vit.ViT,
            width=width,
            depth=depth,
            num_heads=heads,
            mlp_dim=4 * width,
        )
        for size, (width, depth, heads) in VIT_SIZES.items()
    },
}


def get_backbone(name: str, **kwargs) -> nn.Module:
  """Builds backbone `name`; kwargs set its fields (dtype, patch_size, ...)."""
  if name not in BACKBONES:
    raise ValueError(
        f"Unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}."
    )
  return BACKBONES[name](**kwargs)
