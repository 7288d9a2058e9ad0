"""data.unlabelled_dataset: unlabelled images from a class-less folder or a TFDS split."""
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from semissl.data import build_input
from semissl.data import unlabelled
from tests.data import fake_data

# Sorted relative names = example ids; hidden files / directories and non-images skipped.
_UNLABELLED = [("a.png", (12, 12), "PNG"), ("other/e.PNG", (8, 9), "PNG"),
               ("sub/b.jpg", (16, 20, 3), "JPEG"),
               ("sub/deeper/c.JPEG", (10, 10, 3), "JPEG"),
               ("sub/deeper/d.png", (12, 12, 3), "PNG")]
_IDENTITY = {"name": "identity"}


@pytest.fixture
def unlabelled_folder(tmp_path):
  """root/ with PNG / JPEG images at several depths, plus files that are skipped."""
  rng = np.random.default_rng(3)
  root = tmp_path / "unlabelled"
  written = {}
  for name, shape, fmt in _UNLABELLED + [(".hidden/x.png", (12, 12), "PNG"),
                                         ("sub/.y.png", (12, 12), "PNG")]:
    array = rng.integers(0, 256, size=shape, dtype=np.uint8)
    fake_data.save_image(str(root / name), array, fmt)
    written[name] = array
  (root / "sub" / "notes.txt").write_text("not an image")
  return str(root), written


def _config(labelled_root, unlabelled_spec, **overrides):
  cfg = {"dataset": f"folder:{labelled_root}", "unlabelled_dataset": unlabelled_spec,
         "image_size": 12, "mean": 0.0, "std": 1.0, "label_fraction": None,
         "labels_per_class": 1, "labelled_views": {"image": {"name": "crop_flip"}},
         "unlabelled_views": {"weak": _IDENTITY, "strong": {"name": "crop_flip"}}}
  cfg.update(overrides)
  return cfg


def _build(cfg, *, batch_size=1, mu=5, **kwargs):
  return build_input(cfg, batch_size=batch_size, mu=mu, eval_batch_size=6, seed=0,
                     **kwargs)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_folder_without_classes_feeds_the_unlabelled_stream(image_folder,
                                                            unlabelled_folder):
  root, _ = image_folder
  unlabelled_root, written = unlabelled_folder
  inp = _build(_config(root, f"folder:{unlabelled_root}", validation_size=3))
  assert inp.info.num_train == 8 and inp.info.num_labelled == 3
  assert inp.info.num_unlabelled == 5 and inp.info.num_validation == 3
  np.testing.assert_array_equal(inp.unlabelled_ids, np.arange(5))
  assert not np.isin(inp.labelled_ids, inp.validation_ids).any()
  for batch in _take(inp.train_iter(), 3):  # mu*B = N: each step is one epoch
    part = batch["unlabelled"]
    assert "true_label" not in part and "label" in batch["labelled"]
    np.testing.assert_array_equal(np.sort(part["index"]), np.arange(5))  # unique slots
    np.testing.assert_array_equal(part["id"], part["index"])
    for position, example_id in enumerate(part["id"]):
      name = [n for n, _, _ in _UNLABELLED][example_id]
      image = part["images"]["weak"][position]
      assert image.shape == (12, 12, 3)  # labelled source is RGB: gray converted
      if name in ("a.png", "sub/deeper/d.png"):  # 12x12 PNGs: exact
        expected = written[name] if written[name].ndim == 3 else np.repeat(
            written[name][..., None], 3, -1)
        np.testing.assert_allclose(image, expected / 255.0, atol=1e-6)
  assert len(list(inp.validation_iter())) == 1


def test_channels_follow_the_model(image_folder, unlabelled_folder):
  root, _ = image_folder
  inp = _build(_config(root, f"folder:{unlabelled_folder[0]}", num_channels=1))
  batch = next(inp.train_iter())
  assert batch["unlabelled"]["images"]["strong"].shape == (5, 12, 12, 1)
  assert batch["labelled"]["images"]["image"].shape == (1, 12, 12, 1)


def test_resume_and_process_shards(image_folder, unlabelled_folder):
  root, _ = image_folder
  cfg = _config(root, f"folder:{unlabelled_folder[0]}")
  straight = _take(_build(cfg, batch_size=2, mu=2).train_iter(), 5)
  resumed = _take(_build(cfg, batch_size=2, mu=2, start_step=3).train_iter(), 2)
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed, straight[3:])
  shares = [_take(_build(cfg, batch_size=2, mu=2, process_index=i,
                         process_count=2).train_iter(), 3) for i in range(2)]
  for step in range(3):
    joined = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs),
                                    *[share[step] for share in shares])
    jax.tree_util.tree_map(np.testing.assert_array_equal, joined, straight[step])
    assert shares[0][step]["unlabelled"]["id"].shape == (2,)


def test_workdir_records_the_images_and_refuses_others(image_folder, unlabelled_folder,
                                                       tmp_path):
  root, _ = image_folder
  unlabelled_root, _ = unlabelled_folder
  cfg = _config(root, f"folder:{unlabelled_root}")
  workdir = str(tmp_path / "run")
  _build(cfg, workdir=workdir)
  assert os.path.exists(os.path.join(workdir, unlabelled.RECORD_FILENAME))
  _build(cfg, workdir=workdir)  # same images: resumes
  fake_data.save_image(os.path.join(unlabelled_root, "new.png"),
                       np.zeros((12, 12), np.uint8), "PNG")
  with pytest.raises(ValueError, match="read 5 unlabelled images .* now there are 6"):
    _build(cfg, workdir=workdir)


def test_ignored_without_unlabelled_views(image_folder, tmp_path):
  root, _ = image_folder
  cfg = _config(root, f"folder:{tmp_path / 'missing'}", unlabelled_views={})
  assert "unlabelled" not in next(_build(cfg, mu=0).train_iter())


@pytest.mark.parametrize("spec,match", [
    ("folder:", "needs a root"),
    ("stl10", "names no split; use 'folder:<root>' or '<tfds name>:<split>'"),
    (5, "must be a string"),
    ("folder:{tmp}/missing", "missing does not exist or is not a directory"),
    ("folder:{tmp}/empty", "holds no .png/.jpg/.jpeg images .*add images"),
    ("folder:{tmp}/broken", "Cannot decode image .*bad.png"),
    ("folder:{labelled}", "holds the eval images of .*test; point it at a folder"),
    ("folder:{labelled}/test/cat", "holds the eval images"),
    ("no_such_tfds_dataset:train", "data.unlabelled_dataset='no_such_tfds_dataset:train'"
                                   ": Unknown dataset"),
])
def test_bad_sources_fail_before_writing(image_folder, tmp_path, spec, match):
  root, _ = image_folder
  (tmp_path / "empty" / ".hidden").mkdir(parents=True)
  (tmp_path / "empty" / "notes.txt").write_text("no images")
  fake_data.save_image(str(tmp_path / "empty" / ".hidden" / "x.png"),
                       np.zeros((4, 4), np.uint8), "PNG")
  (tmp_path / "broken" / "deep").mkdir(parents=True)
  (tmp_path / "broken" / "deep" / "bad.png").write_bytes(b"\x89PNG not really")
  if isinstance(spec, str):
    spec = spec.format(tmp=tmp_path, labelled=root)
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=match) as info:
    _build(_config(root, spec), workdir=str(workdir))
  assert "\n" not in str(info.value)
  assert not workdir.exists()


# A TFDS dataset with a labelled train / test pair and an 'unlabelled' split whose
# labels are -1 (the stl10 layout), prepared as ArrayRecord (memory or random access).
TFDS_NAME = "semissl_tiny_unlabelled"


class SemisslTinyUnlabelled(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"])}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(12, 0, labelled=True),
            "test": self._generate_examples(6, 1, labelled=True),
            "unlabelled": self._generate_examples(10, 2, labelled=False)}

  def _generate_examples(self, count, seed, *, labelled):
    for i in range(count):
      rng = np.random.default_rng([seed, i])
      image = rng.integers(0, 256, (8 + i % 3, 9, 3), dtype=np.uint8)
      yield i, {"image": image, "label": i % 3 if labelled else -1}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tfds_unlabelled"))
  builder = SemisslTinyUnlabelled(data_dir=directory, file_format="array_record")
  builder.download_and_prepare()
  return directory


def _tfds_config(data_dir, unlabelled_spec, **overrides):
  return {"dataset": TFDS_NAME, "data_dir": data_dir, "unlabelled_dataset": unlabelled_spec,
          "image_size": 8, "mean": 0.5, "std": 0.25, "label_fraction": None,
          "labels_per_class": 2, "index_cache_dir": None,
          "unlabelled_views": {"weak": {"name": "crop_flip"}}, **overrides}


def test_tfds_split_streamed_equals_in_memory(tfds_dir):
  spec = f"{TFDS_NAME}:unlabelled"
  builds = [_build(_tfds_config(tfds_dir, spec, storage=storage), batch_size=2, mu=5)
            for storage in ("memory", "random_access")]
  assert [b.info.num_unlabelled for b in builds] == [10, 10]
  first = _take(builds[0].train_iter(start_step=1), 2)
  jax.tree_util.tree_map(np.testing.assert_array_equal, first,
                         _take(builds[1].train_iter(start_step=1), 2))
  part = first[0]["unlabelled"]
  assert "true_label" not in part  # the split's labels are -1
  np.testing.assert_array_equal(np.sort(part["index"]), np.arange(10))


def test_tfds_split_with_the_same_classes_keeps_hidden_labels(tfds_dir):
  inp = _build(_tfds_config(tfds_dir, f"{TFDS_NAME}:train[:9]"), batch_size=3, mu=3)
  part = next(inp.train_iter())["unlabelled"]
  train_labels = inp._parts.train_labels  # pylint: disable=protected-access
  assert inp.info.num_unlabelled == 9 and len(train_labels) == 12
  np.testing.assert_array_equal(part["true_label"], train_labels[part["id"]])
  with pytest.raises(ValueError, match="is the eval split of data.dataset"):
    _build(_tfds_config(tfds_dir, f"{TFDS_NAME}:test"))
  with pytest.raises(ValueError, match=r"Cannot read TFDS .*\[nope\] \(fix "
                                       "data.unlabelled_dataset"):
    _build(_tfds_config(tfds_dir, f"{TFDS_NAME}:nope"))
