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


def class_patterns(num_classes, size=TINY_SIZE):
  """Fixed, distinct, horizontally symmetric 3x3 block patterns [K, size, size] (bool),
  the same for every split: a class is a layout of bright blocks, so a few steps of
  training on a crop / flip of it separate the classes (blocks of size / 3 pixels
  survive a pad-and-crop shift of 2 pixels)."""
  rng = np.random.default_rng(1234)
  seen, patterns = set(), []
  while len(patterns) < num_classes:
    half = rng.random((3, 2)) < 0.5
    grid = np.concatenate([half, half[:, :1]], axis=1)  # columns 0 and 2 equal
    if grid.any() and not grid.all() and grid.tobytes() not in seen:
      seen.add(grid.tobytes())
      patterns.append(np.kron(grid, np.ones((size // 3, size // 3), bool)))
  return np.stack(patterns)


def learnable_split(rng, counts, *, noise=20.0):
  """Like `tiny_split`, but learnable: class c is `class_patterns()[c]` (blocks at 200,
  background at 55) plus Gaussian noise of std `noise`, as uint8."""
  labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
  labels = rng.permutation(labels).astype(np.uint8)
  means = np.where(class_patterns(len(counts))[labels], 200.0, 55.0)
  images = means + noise * rng.standard_normal(means.shape)
  return np.clip(np.round(images), 0, 255).astype(np.uint8), labels


def write_fashion_mnist(directory, *, seed, learnable=False):
  """The tiny train / t10k splits as Fashion-MNIST IDX files in `directory` (a source
  `config.data.dataset='fashion_mnist'` reads from `config.data.data_dir`)."""
  rng = np.random.default_rng(seed)
  split = learnable_split if learnable else tiny_split
  for prefix, counts in (("train", TINY_TRAIN_COUNTS), ("t10k", TINY_TEST_COUNTS)):
    images, labels = split(rng, counts)
    write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images)
    write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)
  return str(directory)
