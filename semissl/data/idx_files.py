"""IDX files (the MNIST / Fashion-MNIST format) read with NumPy only.

Format: a 4-byte magic number `0x00 0x00 <dtype code> <ndim>`, then `ndim` big-endian
uint32 dimension sizes, then the values in row-major order. Files may be gzipped.
"""
from __future__ import annotations

import functools
import gzip
import os
import struct

import numpy as np

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# split -> (images file stem, labels file stem); '.gz' or uncompressed.
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_UBYTE_CODE = 0x08


def read_idx(path: str, *, expected_ndim: int | None = None,
             expected_dtype_code: int | None = None) -> np.ndarray:
  """Reads one IDX file (optionally gzipped) into a read-only NumPy array.

  Args:
    path: file path; a name ending in '.gz' is decompressed.
    expected_ndim: if given, the magic number must announce this many dims.
    expected_dtype_code: if given, the magic number must announce this type
      (0x08 = unsigned byte).

  Returns:
    The array, in native byte order.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: bad magic number or a payload of the wrong length.
  """
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  magic = data[:4]
  if (len(magic) < 4 or magic[0] != 0 or magic[1] != 0
      or magic[2] not in _IDX_DTYPES
      or (expected_dtype_code is not None and magic[2] != expected_dtype_code)
      or (expected_ndim is not None and magic[3] != expected_ndim)):
    want = ""
    if expected_dtype_code is not None and expected_ndim is not None:
      want = f" (expected 0x0000{expected_dtype_code:02x}{expected_ndim:02x})"
    raise ValueError(
        f"{path} is not a valid IDX file: bad magic number 0x{magic.hex()}"
        f"{want}; replace the file with an uncorrupted copy.")
  dtype, ndim = _IDX_DTYPES[magic[2]], magic[3]
  header_len = 4 + 4 * ndim
  if len(data) < header_len:
    raise ValueError(f"{path} is truncated: header shorter than {header_len} bytes.")
  dims = struct.unpack(f">{ndim}I", data[4:header_len])
  payload = data[header_len:]
  expected_bytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(payload) != expected_bytes:
    raise ValueError(
        f"{path} has {len(payload)} data bytes but its header {dims} needs "
        f"{expected_bytes}; replace the file with an uncorrupted copy.")
  array = np.frombuffer(payload, dtype=dtype).reshape(dims)
  array = array.astype(dtype.newbyteorder("="), copy=False)
  array.flags.writeable = False
  return array


def find_idx_file(data_dir: str, stem: str) -> str | None:
  """Returns `<data_dir>/<stem>.gz` or `<data_dir>/<stem>` if present."""
  for name in (stem + ".gz", stem):
    path = os.path.join(data_dir, name)
    if os.path.isfile(path):
      return path
  return None


def has_fashion_mnist_files(data_dir: str | None) -> bool:
  """Whether `data_dir` holds all four Fashion-MNIST IDX files."""
  if not data_dir or not os.path.isdir(data_dir):
    return False
  stems = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair]
  return all(find_idx_file(data_dir, stem) is not None for stem in stems)


def load_fashion_mnist_arrays(data_dir: str | None = None) -> dict[str, dict[str, np.ndarray]]:
  """Loads Fashion-MNIST from its four IDX files.

  Args:
    data_dir: directory with the IDX files (gzipped or not); default
      `/usr/share/datasets/fashion-mnist` (Debian package dataset-fashion-mnist).

  Returns:
    `{'train': {'image': uint8 [60000, 28, 28, 1], 'label': int64 [60000]},
      'test': {'image': uint8 [10000, 28, 28, 1], 'label': int64 [10000]}}`
    (read-only arrays; sizes as found in the files).
  """
  return _load_fashion_mnist_cached(os.path.abspath(data_dir or DEFAULT_FASHION_MNIST_DIR))


@functools.lru_cache(maxsize=2)
def _load_fashion_mnist_cached(data_dir: str) -> dict[str, dict[str, np.ndarray]]:
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(
        f"Fashion-MNIST directory {data_dir} does not exist; "
        "run `apt-get install dataset-fashion-mnist` or set data.data_dir.")
  arrays = {}
  for split, (image_stem, label_stem) in FASHION_MNIST_FILES.items():
    image_path = find_idx_file(data_dir, image_stem)
    label_path = find_idx_file(data_dir, label_stem)
    if image_path is None or label_path is None:
      missing = image_stem if image_path is None else label_stem
      raise FileNotFoundError(
          f"{missing}(.gz) not found in {data_dir}; "
          "run `apt-get install dataset-fashion-mnist` or set data.data_dir.")
    images = read_idx(image_path, expected_ndim=3, expected_dtype_code=_UBYTE_CODE)
    labels = read_idx(label_path, expected_ndim=1, expected_dtype_code=_UBYTE_CODE)
    if images.shape[0] != labels.shape[0]:
      raise ValueError(
          f"{image_path} has {images.shape[0]} images but {label_path} has "
          f"{labels.shape[0]} labels; the files do not belong together.")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASS_NAMES):
      raise ValueError(f"{label_path} has label {labels.max()} outside [0, 10).")
    image_array = images[..., None]
    image_array.flags.writeable = False
    label_array = labels.astype(np.int64)
    label_array.flags.writeable = False
    arrays[split] = {"image": image_array, "label": label_array}
  return arrays
