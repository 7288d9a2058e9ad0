"""Image files -> uint8 arrays a loaded model takes (PIL; no TensorFlow).

`read_image` mirrors the eval view ('identity', semissl/data/augment.py): the
image is converted to the model's channels (gray 'L' or 'RGB'), then a side of at
most 64 pixels (`SMALL_IMAGE_MAX`) is a plain resize to [size, size], a larger one
resizes the shorter side to ceil(size / crop_fraction) and takes the centre crop.
PIL's antialiased bilinear resize is close to, not bit-identical with, TensorFlow's.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SMALL_IMAGE_MAX = 64  # as semissl.data.augment.SMALL_IMAGE_MAX
_MODES = {1: "L", 3: "RGB"}


def find_images(folder: str) -> list[str]:
  """Paths of the png / jpg files under `folder` (any depth), relative, sorted."""
  if not os.path.isdir(folder):
    raise ValueError(f"images folder {folder} does not exist.")
  found = []
  for root, _, files in os.walk(folder):
    for name in files:
      if name.lower().endswith(IMAGE_SUFFIXES):
        found.append(os.path.relpath(os.path.join(root, name), folder))
  if not found:
    raise ValueError(f"images folder {folder} has no .png / .jpg files (at any depth).")
  return sorted(found, key=lambda p: p.replace(os.sep, "/"))


def read_image(path: str, *, image_shape: Sequence[int],
               eval_view: dict | None = None) -> np.ndarray:
  """uint8 [H, W, C] of the file at `path`, converted and resized like the eval view."""
  from PIL import Image  # lazy: only predicting from files needs PIL

  height, width, channels = (int(d) for d in image_shape)
  if channels not in _MODES:
    raise ValueError(f"this model takes {channels}-channel images; image files can be "
                     "converted to 1 (gray) or 3 (RGB) channels only.")
  try:
    with Image.open(path) as image:
      image = image.convert(_MODES[channels])
      image = _resize_like_eval_view(image, height, width, eval_view or {})
  except (OSError, ValueError, Image.DecompressionBombError) as error:
    raise ValueError(f"cannot read image {path} ({type(error).__name__}: "
                     f"{str(error).splitlines()[0] if str(error) else 'unreadable'}).") from None
  array = np.asarray(image, np.uint8)
  return array[..., None] if array.ndim == 2 else array


def _resize_like_eval_view(image, height: int, width: int, eval_view: dict):
  from PIL import Image

  if max(height, width) <= SMALL_IMAGE_MAX:
    if image.size == (width, height):
      return image
    return image.resize((width, height), Image.Resampling.BILINEAR)
  crop_fraction = float(eval_view.get("crop_fraction", 0.875))
  shorter = math.ceil(max(height, width) / crop_fraction)
  scale = shorter / min(image.size)
  resized = image.resize((max(round(image.size[0] * scale), width),
                          max(round(image.size[1] * scale), height)),
                         Image.Resampling.BILINEAR)
  left = (resized.size[0] - width) // 2
  top = (resized.size[1] - height) // 2
  return resized.crop((left, top, left + width, top + height))


def read_images(paths: Sequence[str], *, image_shape: Sequence[int],
                eval_view: dict | None = None) -> np.ndarray:
  """uint8 [N, H, W, C] of `paths` (see `read_image`)."""
  return np.stack([read_image(p, image_shape=image_shape, eval_view=eval_view)
                   for p in paths])
