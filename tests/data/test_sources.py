"""Sources: image folders, TFDS (mocked), Fashion-MNIST look-up order and errors."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from semissl.data import build_input
from semissl.data import idx_files
from semissl.data import sources

_FOLDER_VIEWS = {"labelled_views": {"image": {"name": "identity"}},
                 "unlabelled_views": {}}


def _load_folder(root):
  return sources.load_source(f"folder:{root}", data_dir=None, train_split="train",
                             eval_split="test")


def test_folder_classes_labels_ids_and_channels(image_folder):
  root, written = image_folder
  data = _load_folder(root)
  assert data.class_names == ("cat", "dog", "zebra") and data.num_classes == 3
  assert data.channels == 3  # some images are RGB
  expected_names = sorted(written["train"])  # ids = rank in the sorted file list
  assert data.train.names == tuple(expected_names)
  np.testing.assert_array_equal(
      data.train.labels, [("cat", "dog", "zebra").index(n.split("/")[0])
                          for n in expected_names])
  assert data.eval.names == ("cat/x.png", "dog/y.jpg", "zebra/z.png")
  np.testing.assert_array_equal(data.eval.labels, [0, 1, 2])


def test_folder_images_decode_exactly(image_folder):
  root, written = image_folder
  cfg = dict(dataset=f"folder:{root}", image_size=12, mean=0.0, std=1.0,
             label_fraction=1.0, **_FOLDER_VIEWS)
  inp = build_input(cfg, batch_size=2, mu=0, eval_batch_size=3, seed=0)
  assert inp.info.image_shape == (12, 12, 3) and inp.info.num_eval == 3
  batch = next(inp.eval_iter())
  gray = written["test"]["cat/x.png"]  # 12x12 gray PNG -> replicated to RGB
  np.testing.assert_allclose(batch["images"]["image"][0],
                             np.repeat(gray[..., None], 3, -1) / 255.0, atol=1e-6)
  np.testing.assert_allclose(batch["images"]["image"][2],
                             written["test"]["zebra/z.png"] / 255.0, atol=1e-6)
  assert batch["images"]["image"][1].shape == (12, 12, 3)  # 16x16 JPEG, resized


def test_folder_grayscale_output(image_folder):
  root, _ = image_folder
  cfg = dict(dataset=f"folder:{root}", image_size=10, num_channels=1,
             labels_per_class=1, label_fraction=None, **_FOLDER_VIEWS)
  inp = build_input(cfg, batch_size=3, mu=0, eval_batch_size=3, seed=0)
  batch = next(inp.train_iter())
  assert batch["labelled"]["images"]["image"].shape == (3, 10, 10, 1)
  assert np.isfinite(batch["labelled"]["images"]["image"]).all()
  np.testing.assert_array_equal(np.sort(batch["labelled"]["label"]), [0, 1, 2])


def test_folder_unreadable_image_names_the_file(image_folder):
  root, _ = image_folder
  bad = os.path.join(root, "train", "dog", "broken.png")
  with open(bad, "wb") as f:
    f.write(b"\x89PNG this is not really a png")
  with pytest.raises(ValueError, match="Cannot decode image .*broken.png") as info:
    build_input({"dataset": f"folder:{root}", "image_size": 12},
                batch_size=2, mu=0, eval_batch_size=2, seed=0)
  assert "\n" not in str(info.value)


def test_folder_missing_root_and_split(tmp_path, image_folder):
  with pytest.raises(ValueError, match="does not exist"):
    _load_folder(str(tmp_path / "no_such_root"))
  root, _ = image_folder
  with pytest.raises(ValueError, match=r"found \['test', 'train'\].*eval_split"):
    sources.load_source(f"folder:{root}", data_dir=None, train_split="train",
                        eval_split="validation")


def test_folder_empty_class_directory_is_an_error(tmp_path, image_folder):
  import shutil
  root, _ = image_folder
  copy = tmp_path / "copy"
  shutil.copytree(root, copy)
  os.makedirs(copy / "train" / "zz_empty")
  with pytest.raises(ValueError, match=r"class directories without images \['zz_empty'\]"):
    _load_folder(str(copy))


def test_tfds_source_via_mock_data():
  cfg = {"dataset": "cifar10", "image_size": 32, "label_fraction": 0.5,
         "unlabelled_views": {"weak": {"name": "crop_flip"}}}
  with tfds.testing.mock_data(num_examples=24):
    inp = build_input(cfg, batch_size=4, mu=2, eval_batch_size=10, seed=0)
  info = inp.info
  assert (info.num_classes, info.image_shape, info.num_train, info.num_eval) == (
      10, (32, 32, 3), 24, 24)
  batch = next(inp.train_iter())
  assert batch["labelled"]["images"]["image"].shape == (4, 32, 32, 3)
  assert batch["unlabelled"]["images"]["weak"].shape == (8, 32, 32, 3)
  eval_batches = list(inp.eval_iter())
  assert len(eval_batches) == 3 and sum(b["mask"].sum() for b in eval_batches) == 24


def test_tfds_variable_size_images_are_decoded_in_the_stream():
  cfg = {"dataset": "imagenet2012", "image_size": 72, "label_fraction": 1.0,
         "labelled_views": {"large": {"name": "crop_flip"},
                            "small": {"name": "crop_flip", "size": 24}}}
  with tfds.testing.mock_data(num_examples=6):
    inp = build_input(cfg, batch_size=2, mu=0, eval_batch_size=2, seed=0)
  assert inp.info.mean == (0.485, 0.456, 0.406)  # known ImageNet constants
  images = next(inp.train_iter())["labelled"]["images"]
  assert images["large"].shape == (2, 72, 72, 3) and images["small"].shape == (2, 24, 24, 3)
  assert next(inp.eval_iter())["images"]["image"].shape == (2, 72, 72, 3)


def test_unknown_dataset_lists_known_sources():
  with pytest.raises(ValueError, match=r"Unknown dataset 'no_such_set'.*fashion_mnist"
                     ) as info:
    build_input({"dataset": "no_such_set"}, batch_size=2, mu=0, eval_batch_size=2,
                seed=0)
  assert "\n" not in str(info.value)


def test_fashion_mnist_prefers_config_dir(tiny_fashion_dir):
  directory, arrays = tiny_fashion_dir
  data = sources.load_source("fashion_mnist", data_dir=directory, train_split="train",
                             eval_split="test")
  np.testing.assert_array_equal(data.train.pixels, arrays["train"]["image"])
  assert data.class_names == idx_files.FASHION_MNIST_CLASS_NAMES


def test_fashion_mnist_not_found_says_how_to_install(tmp_path, monkeypatch):
  monkeypatch.setattr(idx_files, "DEFAULT_FASHION_MNIST_DIR", str(tmp_path / "none"))
  with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist") as info:
    sources.load_source("fashion_mnist", data_dir=str(tmp_path), train_split="train",
                        eval_split="test")
  assert "\n" not in str(info.value)


def test_fashion_mnist_missing_data_dir(tmp_path):
  with pytest.raises(ValueError, match="data.data_dir=.*does not exist"):
    sources.load_source("fashion_mnist", data_dir=str(tmp_path / "missing"),
                        train_split="train", eval_split="test")


def test_fashion_mnist_unknown_split(tiny_fashion_dir):
  with pytest.raises(ValueError, match="not 'validation'; fix data.eval_split"):
    sources.load_source("fashion_mnist", data_dir=tiny_fashion_dir[0],
                        train_split="train", eval_split="validation")


def test_folder_id_file_by_file_names(image_folder, tmp_path):
  root, written = image_folder
  ids_file = tmp_path / "subset.txt"
  ids_file.write_text("cat/b.jpg\ng.png\n")
  cfg = dict(dataset=f"folder:{root}", image_size=12, label_fraction=None,
             labelled_ids_file=str(ids_file), **_FOLDER_VIEWS)
  inp = build_input(cfg, batch_size=2, mu=0, eval_batch_size=3, seed=0)
  names = sorted(written["train"])
  np.testing.assert_array_equal(inp.labelled_ids,
                                [names.index("cat/b.jpg"), names.index("zebra/g.png")])
