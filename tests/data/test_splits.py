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


# Validation split: stratified, seeded, held out of the labelled and unlabelled ids.

_VALIDATION_COUNTS = (50, 7, 120, 33, 9)


@pytest.fixture(scope="module")
def val_labels():
  rng = np.random.default_rng(1)
  return rng.permutation(
      np.concatenate([np.full(n, c) for c, n in enumerate(_VALIDATION_COUNTS)]))


@pytest.mark.parametrize("size, per_class", [
    (0, [0, 0, 0, 0, 0]), (3, [1, 1, 1, 0, 0]), (10, [2, 2, 2, 2, 2]),
    (13, [3, 3, 3, 2, 2]), (35, [7, 7, 7, 7, 7])])
def test_validation_is_stratified_remainder_to_first_classes(val_labels, size, per_class):
  ids = splits.choose_validation_ids(labels=val_labels, validation_size=size, seed=0)
  assert ids.dtype == np.int64 and len(ids) == size and np.all(np.diff(ids) > 0)
  np.testing.assert_array_equal(np.bincount(val_labels[ids], minlength=5), per_class)


def test_validation_same_seed_same_ids_other_seed_other_ids(val_labels):
  a = splits.choose_validation_ids(labels=val_labels, validation_size=20, seed=5)
  b = splits.choose_validation_ids(labels=val_labels, validation_size=20, seed=5)
  c = splits.choose_validation_ids(labels=val_labels, validation_size=20, seed=6)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # Not the labelled draw of the same seed: the generators are independent.
  labelled = splits.choose_labelled_ids(labels=val_labels, seed=5, labels_per_class=4)
  assert not np.array_equal(a, labelled)


def test_labelled_subset_avoids_validation_and_keeps_its_size(val_labels):
  validation = splits.choose_validation_ids(labels=val_labels, validation_size=20, seed=2)
  for kwargs in ({"label_fraction": 0.1}, {"labels_per_class": 2}):
    without = splits.choose_labelled_ids(labels=val_labels, seed=2, **kwargs)
    with_val = splits.choose_labelled_ids(labels=val_labels, seed=2, held_out=validation,
                                          **kwargs)
    assert not np.isin(with_val, validation).any()
    np.testing.assert_array_equal(np.bincount(val_labels[with_val], minlength=5),
                                  np.bincount(val_labels[without], minlength=5))
    # Labelled ids outside the validation split stay labelled.
    assert np.isin(np.setdiff1d(without, validation), with_val).all()


def test_validation_never_draws_excluded_ids(val_labels):
  given = np.flatnonzero(val_labels == 1)[:6]  # 6 of class 1's 7 examples
  ids = splits.choose_validation_ids(labels=val_labels, validation_size=5, seed=0,
                                     exclude=given)
  assert not np.isin(ids, given).any()
  assert np.sum(val_labels[ids] == 1) == 1
  with pytest.raises(ValueError, match="takes 2 examples of class 1, which has only 1 "
                     "outside data.labelled_ids_file"):
    splits.choose_validation_ids(labels=val_labels, validation_size=10, seed=0,
                                 exclude=given)


def test_unlabelled_ids_never_held_out():
  labelled, held_out = np.array([1, 4], np.int64), np.array([0, 4, 5], np.int64)
  np.testing.assert_array_equal(
      splits.unlabelled_ids(num_examples=7, labelled_ids=labelled, include_labelled=True,
                            held_out=held_out), [1, 2, 3, 6])
  np.testing.assert_array_equal(
      splits.unlabelled_ids(num_examples=7, labelled_ids=labelled, include_labelled=False,
                            held_out=held_out), [2, 3, 6])


def test_validation_errors(val_labels):
  with pytest.raises(ValueError, match=r"validation_size=-1 must be >= 0"):
    splits.choose_validation_ids(labels=val_labels, validation_size=-1, seed=0)
  # 50 -> 10 per class; class 1 has 7 examples.
  with pytest.raises(ValueError, match="takes 10 examples of class 1, which has only 7;"):
    splits.choose_validation_ids(labels=val_labels, validation_size=50, seed=0)
  # 30 -> 6 per class leaves class 1 one example, fewer than its 2 labelled ones.
  validation = splits.choose_validation_ids(labels=val_labels, validation_size=30, seed=0)
  with pytest.raises(ValueError, match="Class 1 keeps only 1 examples outside the "
                     "validation split, fewer than its 2 labelled ones") as info:
    splits.choose_labelled_ids(labels=val_labels, seed=0, labels_per_class=2,
                               held_out=validation)
  assert "\n" not in str(info.value)


def test_full_fraction_labels_everything_not_held_out(val_labels):
  validation = splits.choose_validation_ids(labels=val_labels, validation_size=10, seed=0)
  labelled = splits.choose_labelled_ids(labels=val_labels, seed=0, label_fraction=1.0,
                                        held_out=validation)
  expected = np.setdiff1d(np.arange(len(val_labels)), validation)
  np.testing.assert_array_equal(labelled, expected)
