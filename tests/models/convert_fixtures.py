"""Deterministic torch-layout weights and images for the converter tests (NumPy only).

`make_convert_goldens.py` fills real torchvision / timm models with these weights
and records their outputs; the tests rebuild the same weights from the recorded
names and shapes, so they compare semissl against the real torch models without
torchvision or timm installed. Legacy `np.random.RandomState` streams are fixed
across NumPy versions.
"""
import json
import os
import zlib

import numpy as np

GOLDENS = os.path.join(os.path.dirname(__file__), "data", "convert_goldens.npz")

# name -> (what the generator builds, image side, channels, batch).
CASES = {
    # torchvision.models.resnet50(weights=None): the full-size R50.
    "resnet50": ("torchvision.models.resnet50()", 224, 3, 2),
    # torchvision ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10): basic blocks and
    # block counts that are no registry depth (semissl stage_sizes).
    "resnet_basic_1111": ("torchvision ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)",
                          64, 3, 2),
    # timm.create_model('vit_base_patch16_224'): the ViT-B/16 of MAE, class token.
    "vit_base_patch16_224": ("timm.create_model('vit_base_patch16_224')", 224, 3, 2),
    # timm VisionTransformer(class_token=False, global_pool='avg', fc_norm=False): semissl's
    # 'gap' ViT, small (width 64, 2 blocks, 4 heads, patch 8, 32x32, 10 classes).
    "vit_gap_small": ("timm VisionTransformer(img_size=32, patch_size=8, embed_dim=64, "
                      "depth=2, num_heads=4, class_token=False, global_pool='avg', "
                      "fc_norm=False, num_classes=10)", 32, 3, 2),
}


def random_state_dict(shapes: dict[str, tuple[int, ...]], *, seed: int = 0
                      ) -> dict[str, np.ndarray]:
  """Torch-layout weights for `shapes`, each from its own name-seeded stream.

  Weights with >= 2 dims ~ N(0, 1 / fan_in); 1-D '.weight' (BN / LayerNorm scales)
  ~ U(0.5, 1.5); biases ~ N(0, 0.1^2); BN running means ~ N(0, 0.1^2) and variances
  ~ U(0.5, 1.5), so eval-mode BN is not the identity; tokens and position tables
  ~ N(0, 0.1^2); num_batches_tracked 0. float32 (int64 for the counters).
  """
  out = {}
  for name, shape in shapes.items():
    shape = tuple(shape)
    rng = np.random.RandomState((seed + zlib.crc32(name.encode())) % 2**32)
    if name.endswith("num_batches_tracked"):
      out[name] = np.zeros(shape, np.int64)
      continue
    if name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
      value = rng.uniform(0.5, 1.5, size=shape)
    elif len(shape) >= 2 and name.endswith(".weight"):
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    else:
      value = 0.1 * rng.standard_normal(shape)
    out[name] = value.astype(np.float32)
  return out


def images(*, size: int, channels: int, batch: int, seed: int = 0) -> np.ndarray:
  """float32 [B, size, size, C] ~ N(0, 1) (normalised images, channels last)."""
  rng = np.random.RandomState(seed)
  return rng.standard_normal((batch, size, size, channels)).astype(np.float32)


def load_goldens(name: str) -> tuple[dict, np.ndarray, np.ndarray]:
  """(spec {'shapes': {torch name: shape}, ...}, features [B, D], logits [B, K]) of a
  case, as `make_convert_goldens.py` recorded them from the real torch model."""
  with np.load(GOLDENS) as goldens:
    spec = json.loads(str(goldens[f"{name}/spec"]))
    return spec, goldens[f"{name}/features"], goldens[f"{name}/logits"]
