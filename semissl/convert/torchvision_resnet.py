"""torchvision ResNet <-> semissl `models.ResNet` (plain v1 layout).

torchvision's ResNets ("v1.5": the bottleneck's stride is on its 3x3 conv, the
projection shortcut is a strided 1x1 conv + BN) are semissl's `ResNet` with
`sk=None`, `cifar_stem=False`: same stride placement, symmetric padding, a
7x7/2 stem with a 3x3/2 max-pool, BatchNorm epsilon 1e-5. Names:

  conv1 / bn1                        backbone/stem_conv / stem_bn
  layer{s}.{b}.conv{i} / bn{i}       backbone/stage{s}_block{b+1}/conv{i} / bn{i}
  layer{s}.{b}.downsample.0 / .1     backbone/stage{s}_block{b+1}/shortcut_conv / shortcut_bn
  fc                                 head/dense (optional)

BN weight/bias/running_mean/running_var are params scale/bias and batch_stats
mean/var. Any depth of torchvision's family converts (18/34 basic blocks, 50/101/152
bottlenecks; other block counts become `stage_sizes`); the wide / ResNeXt variants
(another bottleneck width, grouped convs) and semissl's selective-kernel, ResNet-D
and CIFAR-stem ResNets have no counterpart and are refused.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from semissl.convert import common
from semissl.models import resnet

SOURCE = "torchvision_resnet50"
WHAT = "torchvision ResNet"
_LAYER = re.compile(r"^layer(\d+)\.(\d+)\.")


def _pairs(*, stage_sizes: tuple[int, ...], bottleneck: bool) -> list[tuple[str, str, str]]:
  """(torch prefix, semissl backbone path, 'conv' | 'bn') of every backbone layer."""
  pairs = [("conv1", "stem_conv", "conv"), ("bn1", "stem_bn", "bn")]
  for stage, num_blocks in enumerate(stage_sizes):
    for block in range(num_blocks):
      torch_block, flax_block = f"layer{stage + 1}.{block}", f"stage{stage + 1}_block{block + 1}"
      for index in range(1, 4 if bottleneck else 3):
        pairs.append((f"{torch_block}.conv{index}", f"{flax_block}/conv{index}", "conv"))
        pairs.append((f"{torch_block}.bn{index}", f"{flax_block}/bn{index}", "bn"))
      if block == 0 and (stage > 0 or bottleneck):  # stride 2, or 64 -> 256 channels
        pairs.append((f"{torch_block}.downsample.0", f"{flax_block}/shortcut_conv", "conv"))
        pairs.append((f"{torch_block}.downsample.1", f"{flax_block}/shortcut_bn", "bn"))
  return pairs


def _model(*, stage_sizes: tuple[int, ...], bottleneck: bool, width: int) -> dict[str, Any]:
  """`config.model` of the semissl ResNet with these blocks and stem width."""
  if width % 64:
    raise ValueError(f"stem width {width} is not a multiple of 64: not a semissl ResNet "
                     "(width_multiplier scales 64).")
  depths = [d for d, sizes in resnet.STAGE_SIZES.items()
            if sizes == stage_sizes and (d >= 50) == bottleneck]
  model: dict[str, Any] = {"name": f"resnet{depths[0] if depths else (50 if bottleneck else 18)}"}
  if not depths:
    model["stage_sizes"] = stage_sizes
  if width != 64:
    model["width_multiplier"] = width // 64
  return model


def to_semissl(state: dict[str, np.ndarray], *, head: bool) -> common.Converted:
  """torchvision ResNet state dict -> semissl variables (+ the fc as 'head/dense')."""
  counts: dict[int, int] = {}
  for key in state:
    match = _LAYER.match(key)
    if match:
      stage, block = int(match.group(1)), int(match.group(2))
      counts[stage] = max(counts.get(stage, 0), block + 1)
  if "conv1.weight" not in state or sorted(counts) != [1, 2, 3, 4]:
    raise ValueError("checkpoint is not a torchvision ResNet state dict (no 'conv1.weight' "
                     "and 'layer1'..'layer4'); for a ViT pass --from=timm_vit.")
  stage_sizes = tuple(counts[s] for s in (1, 2, 3, 4))
  bottleneck = "layer1.0.conv3.weight" in state
  model = _model(stage_sizes=stage_sizes, bottleneck=bottleneck,
                 width=int(np.shape(state["conv1.weight"])[0]))
  used: set[str] = set()
  get = lambda key: common.take(state, key, used=used, what=WHAT)  # noqa: E731
  out: dict[str, np.ndarray] = {}
  for torch_name, flax_name, kind in _pairs(stage_sizes=stage_sizes, bottleneck=bottleneck):
    path = f"{common.BACKBONE}/{flax_name}"
    if kind == "conv":
      out[f"params/{path}/kernel"] = common.conv_to_flax(get(f"{torch_name}.weight"))
    else:
      out[f"params/{path}/scale"] = get(f"{torch_name}.weight")
      out[f"params/{path}/bias"] = get(f"{torch_name}.bias")
      out[f"batch_stats/{path}/mean"] = get(f"{torch_name}.running_mean")
      out[f"batch_stats/{path}/var"] = get(f"{torch_name}.running_var")
  num_classes = None
  if head and "fc.weight" not in state:
    raise ValueError("checkpoint has no classifier 'fc'; drop --head.")
  if head:
    out[f"params/{common.HEAD}/kernel"] = common.dense_to_flax(get("fc.weight"))
    out[f"params/{common.HEAD}/bias"] = get("fc.bias")
    num_classes = int(out[f"params/{common.HEAD}/bias"].shape[0])
  used.update(k for k in state if k.endswith(".num_batches_tracked"))
  common.check_all_used(state, used, ignored=("fc.",) if not head else (), what=WHAT)
  common.check_fits(variables=out, model=model,
                    image_shape=(64, 64, int(np.shape(state["conv1.weight"])[1])))
  return common.Converted(variables=out, model=model, image_size=None, num_classes=num_classes)


def is_semissl_resnet(backbone: dict[str, Any]) -> bool:
  """Whether flat backbone params {'stem_conv/kernel': ...} are a semissl ResNet's."""
  return any(k.startswith("stage1_block1/") for k in backbone)


def to_torch(params: dict[str, np.ndarray], batch_stats: dict[str, np.ndarray],
             *, head: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
  """Flat semissl ResNet backbone variables (paths below 'backbone/') -> torchvision
  state dict (num_batches_tracked 0), with `head` {'kernel', 'bias'} as 'fc'."""
  if any("sk_conv" in k for k in params) or "stem_conv1/kernel" in params:
    raise ValueError("this ResNet has selective kernels / ResNet-D (config.model.sk set): "
                     "torchvision has no such layout; only sk=None ResNets export.")
  stem = params.get("stem_conv/kernel")
  if stem is None or stem.shape[:2] != (7, 7):
    raise ValueError("this ResNet has the 3x3 CIFAR stem (config.model.cifar_stem): "
                     "torchvision's ResNets have a 7x7 stem; only cifar_stem=False exports.")
  counts: dict[int, int] = {}
  for key in params:
    match = re.match(r"^stage(\d+)_block(\d+)/", key)
    if match:
      stage, block = int(match.group(1)), int(match.group(2))
      counts[stage] = max(counts.get(stage, 0), block)
  if sorted(counts) != [1, 2, 3, 4]:
    raise ValueError(f"this ResNet has stages {sorted(counts)}; torchvision's have four.")
  stage_sizes = tuple(counts[s] for s in (1, 2, 3, 4))
  bottleneck = "stage1_block1/conv3/kernel" in params
  out: dict[str, np.ndarray] = {}
  pairs = _pairs(stage_sizes=stage_sizes, bottleneck=bottleneck)
  known = {f"{flax_name}/{leaf}" for _, flax_name, kind in pairs
           for leaf in (("kernel",) if kind == "conv" else ("scale", "bias"))}
  extra = sorted(set(params) - known)
  if extra:
    raise ValueError(f"backbone parameter {extra[0]!r} has no torchvision counterpart; only "
                     "plain semissl ResNets (sk=None, cifar_stem=False) export.")
  for torch_name, flax_name, kind in pairs:
    if kind == "conv":
      out[f"{torch_name}.weight"] = common.conv_to_torch(params[f"{flax_name}/kernel"])
    else:
      out[f"{torch_name}.weight"] = params[f"{flax_name}/scale"]
      out[f"{torch_name}.bias"] = params[f"{flax_name}/bias"]
      out[f"{torch_name}.running_mean"] = batch_stats[f"{flax_name}/mean"]
      out[f"{torch_name}.running_var"] = batch_stats[f"{flax_name}/var"]
      out[f"{torch_name}.num_batches_tracked"] = np.zeros((), np.int64)
  if head is not None:
    out["fc.weight"] = common.dense_to_torch(head["kernel"])
    out["fc.bias"] = head["bias"]
  return out
