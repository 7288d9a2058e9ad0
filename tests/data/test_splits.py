"""Labelled splits: stratified, seeded, and id files."""
import math

import numpy as np
import pytest

from semissl.data import splits


@pytest.fixture(scope="module")
def labels():
  rng = np.random.default_rng(0)
  counts = [50, 7, 120, 33, 1]
  return rng.permutation(np.concatenate([np.full(n, c) for c, n in enumerate(counts)]))


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_fraction_is_stratified_round_half_up_at_least_one(labels, fraction):
  ids = splits.choose_labelled_ids(labels=labels, seed=3, label_fraction=fraction)
  assert ids.dtype == np.int64 and np.all(np.diff(ids) > 0)
  for c, n in enumerate(np.bincount(labels)):
    expected = min(n, max(1, math.floor(fraction * n + 0.5)))
    assert np.sum(labels[ids] == c) == expected


def test_labels_per_class(labels):
  ids = splits.choose_labelled_ids(labels=labels, seed=0, labels_per_class=1)
  np.testing.assert_array_equal(np.bincount(labels[ids]), np.ones(5))


def test_same_seed_same_split_other_seed_other_split(labels):
  a = splits.choose_labelled_ids(labels=labels, seed=5, label_fraction=0.2)
  b = splits.choose_labelled_ids(labels=labels, seed=5, label_fraction=0.2)
  c = splits.choose_labelled_ids(labels=labels, seed=6, label_fraction=0.2)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_labels_per_class_larger_than_smallest_class(labels):
  with pytest.raises(ValueError, match=r"labels_per_class=2 must be in \[1, 1\]"):
    splits.choose_labelled_ids(labels=labels, seed=0, labels_per_class=2)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_outside_unit_interval(labels, fraction):
  with pytest.raises(ValueError, match="outside"):
    splits.choose_labelled_ids(labels=labels, seed=0, label_fraction=fraction)


def test_unlabelled_ids_with_and_without_labelled():
  labelled = np.array([1, 4], np.int64)
  np.testing.assert_array_equal(
      splits.unlabelled_ids(num_examples=6, labelled_ids=labelled, include_labelled=True),
      np.arange(6))
  np.testing.assert_array_equal(
      splits.unlabelled_ids(num_examples=6, labelled_ids=labelled,
                            include_labelled=False), [0, 2, 3, 5])


def test_id_file_round_trip(tmp_path, labels):
  ids = splits.choose_labelled_ids(labels=labels, seed=1, label_fraction=0.1)
  path = str(tmp_path / "sub" / splits.LABELLED_IDS_FILENAME)
  splits.write_labelled_ids(path, ids)
  np.testing.assert_array_equal(
      splits.read_labelled_ids(path, num_examples=len(labels)), ids)


def test_id_file_with_file_names_and_comments():
  names = ("a/n01_1.JPEG", "a/n01_2.JPEG", "b/n02_7.JPEG")
  lines = ["# SimCLR style", "n02_7.JPEG", "", "a/n01_1.JPEG", "n02_7.JPEG"]
  np.testing.assert_array_equal(
      splits.parse_labelled_ids(lines, num_examples=3, names=names), [0, 2])


def test_id_file_with_unknown_ids(tmp_path):
  path = tmp_path / "ids.txt"
  path.write_text("0\n3\n17\nmissing.png\n")
  with pytest.raises(ValueError, match="2 unknown ids") as info:
    splits.read_labelled_ids(str(path), num_examples=10)
  assert "\n" not in str(info.value)


def test_missing_id_file(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    splits.read_labelled_ids(str(tmp_path / "nope.txt"), num_examples=3)
