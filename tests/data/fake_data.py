"""Tiny on-disk datasets for semissl.data tests (IDX files, image folders)."""
import gzip
import os
import struct

import numpy as np
from PIL import Image

TINY_SIZE = 12
# Per-class example counts of the tiny train / test splits (unbalanced on purpose).
TINY_TRAIN_COUNTS = (8, 9, 10, 11, 12, 13, 14, 15, 16, 17)
TINY_TEST_COUNTS = (3, 4, 3, 4, 3, 4, 3, 4, 3, 6)


def write_idx(path, array, *, compress=True):
  """Writes a uint8 array as an IDX file (magic 0x0000 08 <ndim>, big-endian dims)."""
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  data = header + array.tobytes()
  with (gzip.open if compress else open)(path, "wb") as f:
    f.write(data)


def tiny_split(rng, counts):
  """Random 12x12 images with `counts[c]` examples of class c, in shuffled order."""
  labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
  labels = rng.permutation(labels).astype(np.uint8)
  images = rng.integers(0, 256, size=(len(labels), TINY_SIZE, TINY_SIZE), dtype=np.uint8)
  return images, labels


def tiny_config(data_dir, **overrides):
  """A config.data for the tiny IDX dataset."""
  cfg = {
      "dataset": "fashion_mnist", "data_dir": data_dir, "image_size": TINY_SIZE,
      "label_fraction": None, "labels_per_class": 2, "mean": 0.5, "std": 0.25,
      "labelled_views": {"image": {"name": "crop_flip"}},
      "unlabelled_views": {"weak": {"name": "crop_flip"},
                           "strong": {"name": "crop_flip", "pad": 2}},
  }
  cfg.update(overrides)
  return cfg


def save_image(path, array, fmt):
  """Writes uint8 [h, w] or [h, w, 3] as PNG or JPEG."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path, format=fmt)
