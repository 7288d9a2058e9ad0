"""build_input's validation split (data.validation_size): held out of both training
streams, stratified, seeded, evaluated like the eval split, kept across resumes."""
import numpy as np
import pytest

from semissl.data import build_input
from semissl.data import splits
from tests.data import fake_data

NUM_CLASSES = len(fake_data.TINY_TRAIN_COUNTS)


def _build(data_dir, *, eval_batch_size=8, **kwargs):
  overrides = kwargs.pop("overrides", {})
  overrides.setdefault("validation_size", 23)
  return build_input(fake_data.tiny_config(data_dir, **overrides), batch_size=4, mu=2,
                     eval_batch_size=eval_batch_size, seed=0, **kwargs)


def _stream_ids(iterator, part, num_ids, batch):
  """The example ids of the first epoch of `part` (each id once)."""
  ids = np.concatenate([next(iterator)[part]["id"] for _ in range(-(-num_ids // batch))])
  return ids[:num_ids]


def test_held_out_of_both_streams_and_stratified(tiny_fashion_dir):
  directory, arrays = tiny_fashion_dir
  train_labels = arrays["train"]["label"]
  num_train = len(train_labels)
  inp = _build(directory)
  validation = inp.validation_ids
  assert inp.info.num_validation == len(validation) == 23
  assert len(np.unique(validation)) == 23
  # 23 = 2 per class + 1 more for the first 3 classes.
  np.testing.assert_array_equal(np.bincount(train_labels[validation], minlength=10),
                                [3, 3, 3, 2, 2, 2, 2, 2, 2, 2])
  # The labelled subset keeps its size (labels_per_class=2) and avoids the split.
  assert inp.info.num_labelled == 20
  np.testing.assert_array_equal(np.bincount(train_labels[inp.labelled_ids]), [2] * 10)
  assert not np.isin(inp.labelled_ids, validation).any()
  np.testing.assert_array_equal(inp.unlabelled_ids, np.setdiff1d(np.arange(num_train),
                                                                 validation))
  assert inp.info.num_unlabelled == num_train - 23
  # What the streams actually show over one epoch.
  iterator = inp.train_iter()
  unlabelled = _stream_ids(iterator, "unlabelled", num_train - 23, 8)
  np.testing.assert_array_equal(np.sort(unlabelled), inp.unlabelled_ids)
  labelled = _stream_ids(inp.train_iter(), "labelled", 20, 4)
  np.testing.assert_array_equal(np.sort(labelled), inp.labelled_ids)


def test_without_labelled_in_unlabelled(tiny_fashion_dir):
  directory, arrays = tiny_fashion_dir
  inp = _build(directory, overrides={"labelled_in_unlabelled": False})
  expected = np.setdiff1d(np.arange(len(arrays["train"]["label"])),
                          np.concatenate([inp.validation_ids, inp.labelled_ids]))
  np.testing.assert_array_equal(inp.unlabelled_ids, expected)


def test_seeded_and_independent_of_the_label_settings(tiny_fashion_dir):
  directory, _ = tiny_fashion_dir
  base = _build(directory).validation_ids
  np.testing.assert_array_equal(_build(directory).validation_ids, base)
  other_labels = _build(directory, overrides={"labels_per_class": None,
                                              "label_fraction": 0.25})
  np.testing.assert_array_equal(other_labels.validation_ids, base)
  other_seed = _build(directory, overrides={"split_seed": 1}).validation_ids
  assert len(other_seed) == 23 and not np.array_equal(other_seed, base)


def test_off_by_default(tiny_fashion_dir, tmp_path):
  directory, _ = tiny_fashion_dir
  inp = _build(directory, overrides={"validation_size": 0}, workdir=str(tmp_path))
  assert inp.info.num_validation == 0 and inp.num_validation_batches == 0
  assert len(inp.unlabelled_ids) == inp.info.num_train
  assert not (tmp_path / splits.VALIDATION_IDS_FILENAME).exists()
  with pytest.raises(ValueError, match="set data.validation_size > 0"):
    inp.validation_iter()


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_validation_iter_yields_exactly_the_validation_images(tiny_fashion_dir,
                                                             process_count):
  directory, arrays = tiny_fashion_dir
  positions, labels, images, shapes = [], [], [], set()
  for index in range(process_count):
    inp = _build(directory, process_index=index, process_count=process_count)
    batches = list(inp.validation_iter())
    # Padded like eval_iter: ceil(23 / 8) global batches on every process.
    assert len(batches) == inp.num_validation_batches == 3
    for batch in batches:
      assert set(batch) == {"images", "label", "id", "mask"}
      shapes.add(batch["images"]["image"].shape)
      real = batch["mask"] == 1.0
      assert (batch["id"][~real] == -1).all() and (batch["label"][~real] == -1).all()
      positions.append(batch["id"][real])
      labels.append(batch["label"][real])
      images.append(batch["images"]["image"][real])
  assert shapes == {(8 // process_count, 12, 12, 1)}
  positions = np.concatenate(positions)
  np.testing.assert_array_equal(np.sort(positions), np.arange(23))
  ids = inp.validation_ids[positions]
  np.testing.assert_array_equal(np.concatenate(labels), arrays["train"]["label"][ids])
  expected = (arrays["train"]["image"][ids] / 255.0 - 0.5) / 0.25  # identity eval view
  np.testing.assert_allclose(np.concatenate(images), expected, atol=1e-5)


def test_normalisation_statistics_exclude_the_validation_images(tiny_fashion_dir):
  directory, arrays = tiny_fashion_dir
  inp = _build(directory, overrides={"mean": None, "std": None})
  kept = np.setdiff1d(np.arange(len(arrays["train"]["label"])), inp.validation_ids)
  pixels = arrays["train"]["image"][kept].astype(np.float64) / 255.0  # all < 10000
  np.testing.assert_allclose(inp.info.mean, [pixels.mean()], rtol=1e-9)
  np.testing.assert_allclose(inp.info.std, [pixels.std()], rtol=1e-9)


def test_ids_file_written_by_process_zero_and_reused(tiny_fashion_dir, tmp_path):
  directory, arrays = tiny_fashion_dir
  _build(directory, workdir=str(tmp_path / "p1"), process_index=1, process_count=2)
  assert not (tmp_path / "p1" / splits.VALIDATION_IDS_FILENAME).exists()
  workdir = tmp_path / "run"
  first = _build(directory, workdir=str(workdir))
  path = workdir / splits.VALIDATION_IDS_FILENAME
  np.testing.assert_array_equal(np.loadtxt(path, dtype=np.int64), first.validation_ids)
  # labelled_ids.txt is written once: another draw in the same workdir is refused.
  labelled_path = workdir / splits.LABELLED_IDS_FILENAME
  written = labelled_path.read_text()
  with pytest.raises(ValueError, match="ids of an earlier run"):
    _build(directory, workdir=str(workdir), overrides={"split_seed": 7})
  assert labelled_path.read_text() == written
  # A later run in the workdir keeps the written validation split, even if the draw
  # would differ (here: another split seed, and a hand-edited file; the labelled file
  # is removed so that the labelled subset may be drawn again around it).
  edited = np.sort(np.setdiff1d(np.arange(len(arrays["train"]["label"])),
                                first.validation_ids)[:23])
  path.write_text("".join(f"{i}\n" for i in edited))
  labelled_path.unlink()
  resumed = _build(directory, workdir=str(workdir), overrides={"split_seed": 7})
  np.testing.assert_array_equal(resumed.validation_ids, edited)
  assert not np.isin(resumed.labelled_ids, edited).any()
  assert not np.isin(resumed.unlabelled_ids, edited).any()
  assert len(resumed.labelled_ids) == 20
  with pytest.raises(ValueError, match=r"holds 23 validation ids of an earlier run but "
                     r"data.validation_size=0; set it to 23 or use a new workdir") as info:
    _build(directory, workdir=str(workdir), overrides={"validation_size": 0})
  assert "\n" not in str(info.value)


def test_labelled_ids_file_is_never_drawn_for_validation(tiny_fashion_dir, tmp_path):
  directory, arrays = tiny_fashion_dir
  train_labels = arrays["train"]["label"]
  given = np.concatenate([np.flatnonzero(train_labels == c)[:5] for c in range(10)])
  ids_file = tmp_path / "ids.txt"
  ids_file.write_text("".join(f"{i}\n" for i in given))
  overrides = {"labels_per_class": None, "labelled_ids_file": str(ids_file)}
  inp = _build(directory, overrides=overrides, workdir=str(tmp_path / "run"))
  np.testing.assert_array_equal(inp.labelled_ids, np.sort(given))
  assert len(inp.validation_ids) == 23 and not np.isin(inp.validation_ids, given).any()
  # A workdir whose validation file overlaps the id file.
  (tmp_path / "run" / splits.VALIDATION_IDS_FILENAME).write_text(
      "".join(f"{i}\n" for i in given[:23]))
  with pytest.raises(ValueError, match="labelled_ids_file lists 23 ids held out for "
                     "validation"):
    _build(directory, overrides=overrides, workdir=str(tmp_path / "run"))


@pytest.mark.parametrize("overrides, match", [
    ({"validation_size": -1}, r"validation_size=-1 must be an int >= 0"),
    ({"validation_size": 2.5}, r"validation_size=2.5 must be an int >= 0"),
    # 90 -> 9 per class; class 0 has 8 train examples.
    ({"validation_size": 90}, "validation_size=90 takes 9 examples of class 0, which has "
     "only 8; lower data.validation_size"),
    # 70 -> 7 per class leaves class 0 one example for its 2 labelled ones.
    ({"validation_size": 70}, "Class 0 keeps only 1 examples outside the validation "
     "split, fewer than its 2 labelled ones"),
])
def test_bad_validation_size_fails_before_writing(tiny_fashion_dir, tmp_path, overrides,
                                                  match):
  with pytest.raises(ValueError, match=match) as info:
    _build(tiny_fashion_dir[0], overrides=overrides, workdir=str(tmp_path))
  assert "\n" not in str(info.value)
  assert not list(tmp_path.iterdir())
