"""Records real torchvision / timm outputs for tests/models/test_convert.py.

Not a test: needs torch, torchvision and timm (a CUDA torch build is fine, it runs on
the CPU), not semissl or JAX. From the repository root:

  python tests/models/make_convert_goldens.py   # writes tests/models/data/convert_goldens.npz

Each case of `convert_fixtures.CASES` is built with random weights (no download),
filled with `convert_fixtures.random_state_dict` (strict load: every name and
shape is the model's own), and run in eval mode on `convert_fixtures.images`
(NCHW). Recorded: the names and shapes of its state dict, the pooled features
(timm `forward_head(pre_logits=True)`, torchvision's avgpool output) [B, D] and the
logits [B, K], float32.
"""
import json
import os
import sys

import numpy as np
import timm
import torch
import torchvision
from timm.models import vision_transformer
from torchvision.models import resnet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert_fixtures  # noqa: E402


def _build(name: str) -> torch.nn.Module:
  if name == "resnet50":
    return torchvision.models.resnet50(weights=None)
  if name == "resnet_basic_1111":
    return resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)
  if name == "vit_base_patch16_224":
    return timm.create_model("vit_base_patch16_224", pretrained=False)
  if name == "vit_gap_small":
    return vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, class_token=False,
        global_pool="avg", fc_norm=False, num_classes=10)
  raise KeyError(name)


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
  if isinstance(model, resnet.ResNet):
    trunk = torch.nn.Sequential(*list(model.children())[:-1])  # up to avgpool
    return torch.flatten(trunk(x), 1)
  return model.forward_head(model.forward_features(x), pre_logits=True)


def main() -> None:
  torch.manual_seed(0)
  out = {}
  for name, (what, size, channels, batch) in convert_fixtures.CASES.items():
    model = _build(name).eval()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    weights = convert_fixtures.random_state_dict(shapes)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    x = torch.from_numpy(convert_fixtures.images(size=size, channels=channels,
                                                 batch=batch)).permute(0, 3, 1, 2)
    with torch.no_grad():
      features, logits = _features(model, x), model(x)
    spec = {"what": what, "shapes": shapes, "image_size": size, "channels": channels,
            "batch": batch, "versions": {"torch": torch.__version__,
                                         "torchvision": torchvision.__version__,
                                         "timm": timm.__version__}}
    out[f"{name}/spec"] = np.array(json.dumps(spec))
    out[f"{name}/features"] = features.numpy().astype(np.float32)
    out[f"{name}/logits"] = logits.numpy().astype(np.float32)
    print(name, "features", tuple(features.shape), f"max |.| {features.abs().max():.3g}",
          "logits", tuple(logits.shape), f"max |.| {logits.abs().max():.3g}")
  os.makedirs(os.path.dirname(convert_fixtures.GOLDENS), exist_ok=True)
  np.savez_compressed(convert_fixtures.GOLDENS, **out)
  print("wrote", convert_fixtures.GOLDENS, os.path.getsize(convert_fixtures.GOLDENS), "bytes")


if __name__ == "__main__":
  main()
