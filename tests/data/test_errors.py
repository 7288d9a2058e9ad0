"""Every bad input fails in build_input, before training, with a one-line ValueError."""
import pytest

from semissl.data import build_input
from tests.data import fake_data

_BATCHES = {"batch_size": 4, "mu": 2, "eval_batch_size": 8}


@pytest.mark.parametrize("overrides, batches, match", [
    ({"labelled_views": {"image": {"name": "randaugmnet"}}}, {},
     r"labelled_views\['image'\]: unknown augmentation 'randaugmnet'; known: \[.*'identity'"),
    ({"unlabelled_views": {"weak": {"name": "crop_flip", "pad_size": 2}}}, {},
     r"no parameters \['pad_size'\]"),
    ({"unlabelled_views": {"weak": {"name": "crop_flip", "mode": "zoom"}}}, {},
     r"unlabelled_views\['weak'\].*mode='zoom'"),
    ({"label_fraction": 0.0, "labels_per_class": None}, {}, r"label_fraction=0.0 .*\(0, 1\]"),
    ({"label_fraction": 1.5, "labels_per_class": None}, {}, r"label_fraction=1.5 .*\(0, 1\]"),
    ({"labels_per_class": 9}, {}, r"labels_per_class=9 must be in \[1, 8\]"),
    ({"label_fraction": 0.1}, {}, "exactly one of .*'label_fraction', 'labels_per_class'"),
    ({"labels_per_class": None}, {}, "exactly one of .*none"),
    ({}, {"batch_size": 6}, "batch_size=6 must be a positive multiple of the process count 4"),
    ({}, {"mu": 1.5}, r"mu \* batch_size=6 must be a positive multiple"),
    ({}, {"eval_batch_size": 10}, "eval_batch_size=10 must be a positive multiple"),
    ({}, {"mu": 0.3}, "is not an integer"),
    ({}, {"mu": 0}, "set mu > 0"),
    ({"mean": (0.1, 0.2, 0.3)}, {}, "data.mean=.*one per channel"),
    ({"std": 0.0}, {}, "data.std=.*positive"),
    ({"num_channels": 2}, {}, "num_channels=2; use None, 1 or 3"),
    ({"labelled_views": {}, "unlabelled_views": {}}, {}, "both empty"),
    ({"label_fractoin": 0.1}, {}, r"Unknown config.data keys \['label_fractoin'\]"),
])
def test_bad_config(tiny_fashion_dir, overrides, batches, match):
  cfg = fake_data.tiny_config(tiny_fashion_dir[0], **overrides)
  with pytest.raises(ValueError, match=match) as info:
    build_input(cfg, **{**_BATCHES, **batches}, seed=0, process_count=4)
  assert "\n" not in str(info.value)


def test_labelled_ids_file_with_unknown_ids(tiny_fashion_dir, tmp_path):
  ids_file = tmp_path / "ids.txt"
  ids_file.write_text("1\n2\n100000\n")
  cfg = fake_data.tiny_config(tiny_fashion_dir[0], labels_per_class=None,
                              labelled_ids_file=str(ids_file))
  with pytest.raises(ValueError, match=r"1 unknown ids \(e.g. \['100000'\]\)") as info:
    build_input(cfg, **_BATCHES, seed=0)
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("dataset_key", ["data_dir", "folder"])
def test_missing_data_directory(tmp_path, dataset_key):
  missing = str(tmp_path / "missing")
  cfg = ({"data_dir": missing} if dataset_key == "data_dir"
         else {"dataset": f"folder:{missing}"})
  with pytest.raises(ValueError, match="does not exist") as info:
    build_input(cfg, **_BATCHES, seed=0)
  assert "\n" not in str(info.value)


def test_all_labelled_without_labelled_in_unlabelled(tiny_fashion_dir):
  cfg = fake_data.tiny_config(tiny_fashion_dir[0], labels_per_class=None,
                              label_fraction=1.0, labelled_in_unlabelled=False)
  with pytest.raises(ValueError, match="unlabelled stream is empty"):
    build_input(cfg, **_BATCHES, seed=0)
