"""IDX reading: the installed Fashion-MNIST files and hand-written tiny files."""
import gzip
import os

import numpy as np
import pytest

from semissl.data import idx_files
from tests.data import fake_data


@pytest.fixture(scope="module")
def real_fashion_mnist():
  return idx_files.load_fashion_mnist_arrays()


def test_real_fashion_mnist_sizes_shapes_and_labels(real_fashion_mnist):
  train, test = real_fashion_mnist["train"], real_fashion_mnist["test"]
  assert train["image"].shape == (60000, 28, 28, 1)
  assert test["image"].shape == (10000, 28, 28, 1)
  assert train["image"].dtype == np.uint8 and train["label"].dtype == np.int64
  assert train["label"].shape == (60000,) and test["label"].shape == (10000,)
  # Fashion-MNIST is balanced: 6000 / 1000 examples of each of the 10 classes.
  np.testing.assert_array_equal(np.bincount(train["label"]), np.full(10, 6000))
  np.testing.assert_array_equal(np.bincount(test["label"]), np.full(10, 1000))
  assert not train["image"].flags.writeable


def test_real_first_image_matches_raw_bytes(real_fashion_mnist):
  path = os.path.join(idx_files.DEFAULT_FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")
  with gzip.open(path, "rb") as f:
    raw = f.read(16 + 28 * 28)
  expected = np.frombuffer(raw[16:], np.uint8).reshape(28, 28)
  np.testing.assert_array_equal(real_fashion_mnist["test"]["image"][0, :, :, 0], expected)


@pytest.mark.parametrize("compress", [True, False])
def test_tiny_idx_round_trip(tmp_path, compress):
  array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
  path = str(tmp_path / ("a.idx" + (".gz" if compress else "")))
  fake_data.write_idx(path, array, compress=compress)
  np.testing.assert_array_equal(idx_files.read_idx(path, expected_ndim=3), array)


def test_big_endian_int32_payload(tmp_path):
  values = np.array([1, -2, 70000], dtype=">i4")
  path = tmp_path / "ints.idx"
  path.write_bytes(bytes([0, 0, 0x0C, 1]) + (3).to_bytes(4, "big") + values.tobytes())
  np.testing.assert_array_equal(idx_files.read_idx(str(path)), [1, -2, 70000])


def test_corrupted_magic_raises_one_line_error(tmp_path):
  path = tmp_path / "bad.idx"
  path.write_bytes(bytes([0x1F, 0, 0x08, 1]) + (2).to_bytes(4, "big") + b"\x01\x02")
  with pytest.raises(ValueError, match="bad magic number") as info:
    idx_files.read_idx(str(path))
  assert "\n" not in str(info.value)


def test_wrong_ndim_for_images_is_rejected(tmp_path):
  path = str(tmp_path / "labels_as_images.idx")
  fake_data.write_idx(path, np.zeros(4, np.uint8), compress=False)
  with pytest.raises(ValueError, match="expected 0x00000803"):
    idx_files.read_idx(path, expected_ndim=3, expected_dtype_code=0x08)


def test_truncated_payload_is_rejected(tmp_path):
  path = tmp_path / "short.idx"
  path.write_bytes(bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big") + b"\x01\x02")
  with pytest.raises(ValueError, match="needs 5"):
    idx_files.read_idx(str(path))


def test_tiny_fashion_directory_loads(tiny_fashion_dir):
  directory, arrays = tiny_fashion_dir
  loaded = idx_files.load_fashion_mnist_arrays(directory)
  for split in ("train", "test"):
    np.testing.assert_array_equal(loaded[split]["image"], arrays[split]["image"])
    np.testing.assert_array_equal(loaded[split]["label"], arrays[split]["label"])


def test_missing_directory_names_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    idx_files.load_fashion_mnist_arrays(str(tmp_path / "nowhere"))
