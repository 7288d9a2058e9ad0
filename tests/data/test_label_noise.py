"""Symmetric label noise (data.label_noise): rate, seeding, and what it never touches."""
import jax
import numpy as np
import pytest

from semissl.data import build_input
from semissl.data import splits
from tests.data import fake_data

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def clean():
  return np.random.default_rng(5).integers(0, NUM_CLASSES, size=20_000).astype(np.int64)


@pytest.mark.parametrize("rate", [0.2, 0.5, 1.0])
def test_changed_fraction_is_r_times_k_minus_1_over_k(clean, rate):
  ids = np.arange(len(clean))
  noisy = splits.symmetric_label_noise(labels=clean, ids=ids, fraction=rate, seed=0,
                                       num_classes=NUM_CLASSES)
  assert noisy.dtype == clean.dtype and noisy.shape == clean.shape
  changed = noisy != clean
  # round(r n) examples are relabelled uniformly over all K classes (true one
  # included): each changes with probability (K-1)/K, independently.
  count = int(np.floor(rate * len(ids) + 0.5))
  p = (NUM_CLASSES - 1) / NUM_CLASSES
  sigma = np.sqrt(count * p * (1 - p))
  assert abs(changed.sum() - count * p) < 5 * sigma
  # Relabelled examples get each class equally often (multinomial, 5 sigma per class).
  expected = changed.sum() / NUM_CLASSES
  per_class = np.bincount(noisy[changed], minlength=NUM_CLASSES)
  assert np.all(np.abs(per_class - expected) < 5 * np.sqrt(expected))


def test_same_seed_same_noise_other_seed_other_noise(clean):
  kwargs = dict(labels=clean, ids=np.arange(len(clean)), fraction=0.5,
                num_classes=NUM_CLASSES)
  first = splits.symmetric_label_noise(seed=3, **kwargs)
  np.testing.assert_array_equal(first, splits.symmetric_label_noise(seed=3, **kwargs))
  assert not np.array_equal(first, splits.symmetric_label_noise(seed=4, **kwargs))


def test_only_the_given_ids_change_and_input_is_not_modified(clean):
  original = clean.copy()
  ids = np.arange(0, len(clean), 3)
  noisy = splits.symmetric_label_noise(labels=clean, ids=ids, fraction=1.0, seed=0,
                                       num_classes=NUM_CLASSES)
  np.testing.assert_array_equal(clean, original)
  outside = np.setdiff1d(np.arange(len(clean)), ids)
  np.testing.assert_array_equal(noisy[outside], clean[outside])
  assert (noisy[ids] != clean[ids]).any()


def test_zero_rate_is_an_unchanged_copy(clean):
  noisy = splits.symmetric_label_noise(labels=clean, ids=np.arange(len(clean)),
                                       fraction=0.0, seed=0, num_classes=NUM_CLASSES)
  np.testing.assert_array_equal(noisy, clean)


@pytest.mark.parametrize("bad", [-0.1, 1.5, True])
def test_bad_rate_is_refused(clean, bad):
  with pytest.raises(ValueError, match="data.label_noise"):
    splits.symmetric_label_noise(labels=clean, ids=np.arange(3), fraction=bad, seed=0,
                                 num_classes=NUM_CLASSES)


def _build(directory, **overrides):
  cfg = fake_data.tiny_config(directory, label_fraction=1.0, labels_per_class=None,
                              validation_size=20, **overrides)
  return build_input(cfg, batch_size=5, mu=1, eval_batch_size=8, seed=0)


def test_pipeline_trains_on_noisy_labels_and_keeps_clean_ones_elsewhere(tiny_fashion_dir):
  directory, arrays = tiny_fashion_dir
  clean_train = arrays["train"]["label"]
  inp = _build(directory, label_noise=0.5, label_noise_seed=7)
  ids = inp.labelled_ids
  np.testing.assert_array_equal(inp.labelled_true_labels, clean_train[ids])
  noisy = inp.labelled_labels
  changed = noisy != clean_train[ids]
  # Exactly round(0.5 n) relabelled; about 9/10 of those change.
  assert 0 < changed.sum() <= int(np.floor(0.5 * len(ids) + 0.5))
  assert np.isin(noisy, np.arange(NUM_CLASSES)).all()
  steps = -(-len(ids) // 5)
  seen_changed = False
  train = inp.train_iter()
  for batch in [next(train) for _ in range(steps)]:
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    slots = labelled["index"]
    np.testing.assert_array_equal(labelled["label"], noisy[slots])
    np.testing.assert_array_equal(labelled["true_label"], clean_train[labelled["id"]])
    np.testing.assert_array_equal(unlabelled["true_label"], clean_train[unlabelled["id"]])
    seen_changed |= bool((labelled["label"] != labelled["true_label"]).any())
  assert seen_changed
  # The labelled eval pass (k-NN bank, epoch pass) gives the labels training sees.
  for batch in inp.labelled_eval_iter():
    keep = batch["mask"] > 0
    np.testing.assert_array_equal(batch["label"][keep], noisy[batch["id"][keep]])
  for batch in inp.validation_iter():
    keep = batch["mask"] > 0
    np.testing.assert_array_equal(batch["label"][keep],
                                  clean_train[inp.validation_ids[batch["id"][keep]]])
  for batch in inp.eval_iter():
    keep = batch["mask"] > 0
    np.testing.assert_array_equal(batch["label"][keep],
                                  arrays["test"]["label"][batch["id"][keep]])


def test_pipeline_noise_is_reproducible_per_seed(tiny_fashion_dir):
  directory, _ = tiny_fashion_dir
  first = _build(directory, label_noise=0.5, label_noise_seed=1).labelled_labels
  np.testing.assert_array_equal(
      first, _build(directory, label_noise=0.5, label_noise_seed=1).labelled_labels)
  assert not np.array_equal(
      first, _build(directory, label_noise=0.5, label_noise_seed=2).labelled_labels)


def test_zero_noise_is_identical_to_no_noise_option(tiny_fashion_dir):
  directory, _ = tiny_fashion_dir
  base, zero = _build(directory), _build(directory, label_noise=0.0, label_noise_seed=9)
  np.testing.assert_array_equal(zero.labelled_labels, base.labelled_labels)
  a, b = next(base.train_iter()), next(zero.train_iter())
  assert "true_label" not in b["labelled"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("key, value", [("label_noise", 2.0), ("label_noise", "0.2"),
                                        ("label_noise_seed", 0.5)])
def test_bad_noise_options_are_refused(tiny_fashion_dir, key, value):
  directory, _ = tiny_fashion_dir
  with pytest.raises(ValueError, match=f"data.{key}"):
    _build(directory, **{key: value})
