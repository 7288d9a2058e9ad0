"""semissl.data: sources, label splits, augmentations and tf.data streams.

The only semissl package that uses TensorFlow. `import semissl.data` stays TF-free:
TensorFlow is imported on first use of a TF-backed name (`build_input`, ...).
"""
import importlib

from semissl.data.idx_files import load_fashion_mnist_arrays
from semissl.data.idx_files import read_idx
from semissl.data.splits import choose_labelled_ids
from semissl.data.splits import choose_validation_ids
from semissl.data.splits import read_labelled_ids
from semissl.data.splits import write_labelled_ids

# Name -> module that defines it; these modules import TensorFlow.
_LAZY = {
    "build_input": "pipeline",
    "default_data_config": "pipeline",
    "DataInfo": "pipeline",
    "Input": "pipeline",
    "register_source": "sources",
    "known_sources": "sources",
    "register_augmentation": "augment",
    "known_augmentations": "augment",
    "semppl_view_spec": "augment_simclr",
}

__all__ = [
    "load_fashion_mnist_arrays", "read_idx", "choose_labelled_ids",
    "choose_validation_ids", "read_labelled_ids", "write_labelled_ids", *_LAZY,
]


def __getattr__(name):
  if name in _LAZY:
    importlib.import_module("semissl.data.pipeline")  # every augmentation registered
    module = importlib.import_module(f"semissl.data.{_LAZY[name]}")
    return getattr(module, name)
  raise AttributeError(f"module 'semissl.data' has no attribute {name!r}")
