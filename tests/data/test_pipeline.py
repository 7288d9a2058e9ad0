"""build_input streams: structure, determinism, exact resume, process sharding, eval."""
import subprocess
import sys

import jax
import numpy as np
import pytest

from semissl.data import build_input
from semissl.data import default_data_config
from semissl.data import load_fashion_mnist_arrays
from semissl.data import splits
from tests.data import fake_data


def _build(data_dir, *, batch_size=4, mu=2, eval_batch_size=8, seed=0, **kwargs):
  overrides = kwargs.pop("overrides", {})
  return build_input(fake_data.tiny_config(data_dir, **overrides), batch_size=batch_size,
                     mu=mu, eval_batch_size=eval_batch_size, seed=seed, **kwargs)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_trees_equal(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_batch_structure_and_labels(tiny_fashion_dir):
  directory, arrays = tiny_fashion_dir
  inp = _build(directory)
  info = inp.info
  assert (info.num_classes, info.image_shape, info.num_train, info.num_labelled,
          info.num_unlabelled, info.num_eval) == (
              10, (12, 12, 1), sum(fake_data.TINY_TRAIN_COUNTS), 20,
              sum(fake_data.TINY_TRAIN_COUNTS), sum(fake_data.TINY_TEST_COUNTS))
  batch = next(inp.train_iter())
  labelled, unlabelled = batch["labelled"], batch["unlabelled"]
  assert labelled["images"]["image"].shape == (4, 12, 12, 1)
  assert labelled["images"]["image"].dtype == np.float32
  assert labelled["label"].dtype == np.int32 and labelled["id"].dtype == np.int64
  assert set(unlabelled["images"]) == {"weak", "strong"}
  assert unlabelled["images"]["weak"].shape == (8, 12, 12, 1)
  assert np.isin(labelled["id"], inp.labelled_ids).all()
  train_labels = arrays["train"]["label"]
  np.testing.assert_array_equal(labelled["label"], train_labels[labelled["id"]])
  np.testing.assert_array_equal(unlabelled["true_label"], train_labels[unlabelled["id"]])
  # 'index' is the position in the stream's id list (the labelled bank slot).
  np.testing.assert_array_equal(inp.labelled_ids[labelled["index"]], labelled["id"])
  np.testing.assert_array_equal(inp.unlabelled_ids[unlabelled["index"]], unlabelled["id"])
  # The two unlabelled views of an example are augmented independently.
  assert not np.array_equal(unlabelled["images"]["weak"], unlabelled["images"]["strong"])


def test_same_seed_same_batches_other_seed_other_batches(tiny_fashion_dir):
  directory, _ = tiny_fashion_dir
  first = _take(_build(directory, seed=3).train_iter(), 3)
  _assert_trees_equal(first, _take(_build(directory, seed=3).train_iter(), 3))
  other = _take(_build(directory, seed=4).train_iter(), 3)
  assert not np.array_equal(first[0]["unlabelled"]["id"], other[0]["unlabelled"]["id"])


def test_start_step_resumes_exactly(tiny_fashion_dir):
  directory, _ = tiny_fashion_dir
  fresh = _take(_build(directory).train_iter(), 6)
  resumed = _build(directory, start_step=4)
  _assert_trees_equal(_take(resumed.train_iter(), 2), fresh[4:6])
  _assert_trees_equal(next(resumed.train_iter(start_step=1)), fresh[1])


def test_global_batches_do_not_depend_on_process_count(tiny_fashion_dir):
  directory, _ = tiny_fashion_dir
  reference = _take(_build(directory, batch_size=8).train_iter(), 3)
  for count in (2, 4):
    shares = [_take(_build(directory, batch_size=8, process_index=i,
                           process_count=count).train_iter(), 3) for i in range(count)]
    for step in range(3):
      joined = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs),
                                      *[s[step] for s in shares])
      _assert_trees_equal(joined, reference[step])


def test_each_epoch_is_a_permutation_of_the_labelled_set(tiny_fashion_dir):
  directory, _ = tiny_fashion_dir
  inp = _build(directory, overrides={"unlabelled_views": {}})
  steps_per_epoch = len(inp.labelled_ids) // 4
  batches = _take(inp.train_iter(), 2 * steps_per_epoch)
  assert "unlabelled" not in batches[0]
  epochs = [np.concatenate([b["labelled"]["id"] for b in batches[e * steps_per_epoch:
                                                                   (e + 1) * steps_per_epoch]])
            for e in range(2)]
  for ids in epochs:
    np.testing.assert_array_equal(np.sort(ids), inp.labelled_ids)
  assert not np.array_equal(epochs[0], epochs[1])


def test_labelled_excluded_from_unlabelled(tiny_fashion_dir):
  directory, _ = tiny_fashion_dir
  inp = _build(directory, overrides={"labelled_in_unlabelled": False})
  assert inp.info.num_unlabelled == inp.info.num_train - inp.info.num_labelled
  assert not np.isin(inp.unlabelled_ids, inp.labelled_ids).any()
  unlabelled = np.concatenate([b["unlabelled"]["id"] for b in _take(inp.train_iter(), 4)])
  assert not np.isin(unlabelled, inp.labelled_ids).any()


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_padding_covers_every_example_once(tiny_fashion_dir, process_count):
  directory, arrays = tiny_fashion_dir
  num_eval = len(arrays["test"]["label"])
  ids, labels, images, shapes = [], [], [], set()
  for index in range(process_count):
    inp = _build(directory, eval_batch_size=8, process_index=index,
                 process_count=process_count)
    batches = list(inp.eval_iter())
    assert len(batches) == inp.num_eval_batches == -(-num_eval // 8)
    for batch in batches:
      shapes.add(batch["images"]["image"].shape)
      real = batch["mask"] == 1.0
      assert batch["mask"].dtype == np.float32 and set(batch["mask"]) <= {0.0, 1.0}
      assert (batch["id"][~real] == -1).all() and (batch["label"][~real] == -1).all()
      ids.append(batch["id"][real])
      labels.append(batch["label"][real])
      images.append(batch["images"]["image"][real])
  assert shapes == {(8 // process_count, 12, 12, 1)}
  ids = np.concatenate(ids)
  np.testing.assert_array_equal(np.sort(ids), np.arange(num_eval))
  np.testing.assert_array_equal(np.concatenate(labels), arrays["test"]["label"][ids])
  expected = (arrays["test"]["image"][ids] / 255.0 - 0.5) / 0.25  # identity view
  np.testing.assert_allclose(np.concatenate(images), expected, atol=1e-5)


def test_eval_examples_keeps_the_first_n_of_the_eval_split(tiny_fashion_dir):
  directory, arrays = tiny_fashion_dir
  num_eval = len(arrays["test"]["label"])
  count = num_eval // 2 + 1  # not a multiple of the eval batch: a padded last batch
  inp = _build(directory, eval_batch_size=8, overrides={"eval_examples": count})
  assert inp.info.num_eval == count and inp.num_eval_batches == -(-count // 8)
  batches = list(inp.eval_iter())
  real = np.concatenate([b["mask"] for b in batches]) == 1.0
  ids = np.concatenate([b["id"] for b in batches])[real]
  np.testing.assert_array_equal(np.sort(ids), np.arange(count))
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[real],
                                arrays["test"]["label"][ids])
  images = np.concatenate([b["images"]["image"] for b in batches])[real]
  np.testing.assert_allclose(images, (arrays["test"]["image"][ids] / 255.0 - 0.5) / 0.25,
                             atol=1e-5)
  # The train side is untouched; more than the split holds is the whole split.
  full = _build(directory, eval_batch_size=8)
  assert inp.info.num_train == full.info.num_train
  np.testing.assert_array_equal(inp.labelled_ids, full.labelled_ids)
  assert _build(directory, overrides={"eval_examples": num_eval + 5}).info.num_eval == num_eval
  for bad in (-1, 2.5, True):
    with pytest.raises(ValueError, match=r"data.eval_examples=.* must be an int >= 0"):
      _build(directory, overrides={"eval_examples": bad})


@pytest.mark.parametrize("labelled_in_unlabelled", [True, False])
def test_unlabelled_eval_iter_is_the_unlabelled_stream_in_slot_order(tiny_fashion_dir,
                                                                     labelled_in_unlabelled):
  """Every unlabelled slot once, 'id' = slot, the identity view of image
  unlabelled_ids[slot]; `labelled_unlabelled_slots` maps labelled ids to their slots."""
  directory, arrays = tiny_fashion_dir
  inp = _build(directory, eval_batch_size=8,
               overrides={"labelled_in_unlabelled": labelled_in_unlabelled})
  ids, images = [], []
  for batch in inp.unlabelled_eval_iter():
    real = batch["mask"] == 1.0
    ids.append(batch["id"][real])
    images.append(batch["images"]["image"][real])
  ids = np.concatenate(ids)
  np.testing.assert_array_equal(np.sort(ids), np.arange(inp.info.num_unlabelled))
  expected = (arrays["train"]["image"][inp.unlabelled_ids[ids]] / 255.0 - 0.5) / 0.25
  np.testing.assert_allclose(np.concatenate(images), expected, atol=1e-5)
  slots = inp.labelled_unlabelled_slots
  if labelled_in_unlabelled:
    np.testing.assert_array_equal(inp.unlabelled_ids[slots], inp.labelled_ids)
  else:
    assert (slots == -1).all()


def test_labelled_ids_written_by_process_zero_only(tiny_fashion_dir, tmp_path):
  directory, _ = tiny_fashion_dir
  _build(directory, workdir=str(tmp_path / "p1"), process_index=1, process_count=2)
  assert not (tmp_path / "p1" / splits.LABELLED_IDS_FILENAME).exists()
  inp = _build(directory, workdir=str(tmp_path / "p0"), process_index=0, process_count=2)
  written = splits.read_labelled_ids(str(tmp_path / "p0" / splits.LABELLED_IDS_FILENAME),
                                     num_examples=inp.info.num_train)
  np.testing.assert_array_equal(written, inp.labelled_ids)
  reread = _build(directory, overrides={
      "labels_per_class": None,
      "labelled_ids_file": str(tmp_path / "p0" / splits.LABELLED_IDS_FILENAME)})
  np.testing.assert_array_equal(reread.labelled_ids, inp.labelled_ids)


def test_real_fashion_mnist_defaults():
  inp = build_input(default_data_config(), batch_size=8, mu=1, eval_batch_size=1000,
                    seed=0)
  info = inp.info
  assert (info.num_train, info.num_eval, info.num_labelled) == (60000, 10000, 600)
  assert info.class_names[0] == "T-shirt/top"
  # Mean/std: float64 moments of pixel/255 over the evenly spaced 10000-image sample.
  images = load_fashion_mnist_arrays()["train"]["image"]
  sample = np.unique(np.linspace(0, 59999, 10000).round().astype(np.int64))
  pixels = images[sample].astype(np.float64) / 255.0
  np.testing.assert_allclose(info.mean, [pixels.mean()], rtol=1e-9)
  np.testing.assert_allclose(info.std, [pixels.std()], rtol=1e-9)
  batch = next(inp.train_iter())
  assert batch["labelled"]["images"]["image"].shape == (8, 28, 28, 1)
  assert "unlabelled" not in batch


def test_import_semissl_data_does_not_import_tensorflow():
  code = ("import sys, semissl, semissl.data; "
          "assert 'tensorflow' not in sys.modules, 'TF imported'")
  subprocess.run([sys.executable, "-c", code], check=True)
