"""Fixtures for semissl.data tests: tiny IDX datasets and image folders on disk."""
import os

import numpy as np
import pytest

from tests.data import fake_data


@pytest.fixture(scope="session")
def tiny_fashion_dir(tmp_path_factory):
  """A Fashion-MNIST-layout directory with tiny 12x12 splits; returns (dir, arrays)."""
  directory = tmp_path_factory.mktemp("tiny_fashion")
  rng = np.random.default_rng(1234)
  arrays = {}
  for split, prefix, counts in (("train", "train", fake_data.TINY_TRAIN_COUNTS),
                                ("test", "t10k", fake_data.TINY_TEST_COUNTS)):
    images, labels = fake_data.tiny_split(rng, counts)
    fake_data.write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"),
                        images)
    fake_data.write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte"), labels,
                        compress=False)
    arrays[split] = {"image": images[..., None], "label": labels.astype(np.int64)}
  return str(directory), arrays


@pytest.fixture
def image_folder(tmp_path):
  """root/<split>/<class>/ with PNG/JPEG images of several sizes, gray and RGB.

  Returns (root, {split: {relative name: uint8 array as written}}) where PNG
  entries are exact and JPEG entries are lossy.
  """
  rng = np.random.default_rng(7)
  root = tmp_path / "images"
  layout = {
      "train": [("cat", "a.png", (12, 12), "PNG"), ("cat", "b.jpg", (20, 16, 3), "JPEG"),
                ("cat", "c.PNG", (12, 12, 3), "PNG"), ("dog", "d.jpeg", (9, 14), "JPEG"),
                ("dog", "e.png", (30, 12, 3), "PNG"), ("dog", "f.png", (12, 12), "PNG"),
                ("zebra", "g.png", (12, 12, 3), "PNG"), ("zebra", "h.png", (5, 7), "PNG")],
      "test": [("cat", "x.png", (12, 12), "PNG"), ("dog", "y.jpg", (16, 16, 3), "JPEG"),
               ("zebra", "z.png", (12, 12, 3), "PNG")],
  }
  written = {}
  for split, entries in layout.items():
    written[split] = {}
    for class_name, name, shape, fmt in entries:
      array = rng.integers(0, 256, size=shape, dtype=np.uint8)
      fake_data.save_image(str(root / split / class_name / name), array, fmt)
      written[split][f"{class_name}/{name}"] = array
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  return str(root), written
