"""TFDS sources in ArrayRecord: random-access streaming == in-memory, index cache, errors."""
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from semissl.data import build_input
from semissl.data import sources
from semissl.data import tfds_records

NUM_CLASSES = 3
TRAIN_COUNT, TEST_COUNT = 36, 9


def _image(seed, index):
  rng = np.random.default_rng([seed, index])
  return rng.integers(0, 256, (10 + index % 4, 12 - index % 3, 3), dtype=np.uint8)


class SemisslTinyRecords(tfds.core.GeneratorBasedBuilder):
  """Variable-size RGB images with file names: a miniature imagenet2012 layout."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
          builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
            "file_name": tfds.features.Text()}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(TRAIN_COUNT, 0),
            "test": self._generate_examples(TEST_COUNT, 1)}

  def _generate_examples(self, count, seed):
    for i in range(count):
      yield i, {"image": _image(seed, i), "label": i % NUM_CLASSES,
                "file_name": f"s{seed}_{i:03d}.png"}


NAME = "semissl_tiny_records"


@pytest.fixture(scope="module")
def record_dirs(tmp_path_factory):
  """The same tiny dataset prepared as ArrayRecord and as TFRecord."""
  dirs = {}
  for file_format in ("array_record", "tfrecord"):
    directory = str(tmp_path_factory.mktemp(file_format))
    SemisslTinyRecords(data_dir=directory, file_format=file_format).download_and_prepare()
    dirs[file_format] = directory
  return dirs


def _config(data_dir, **overrides):
  cfg = {
      "dataset": NAME, "data_dir": data_dir, "image_size": 8, "label_fraction": None,
      "labels_per_class": 3, "mean": 0.5, "std": 0.25,
      "labelled_views": {"image": {"name": "crop_flip", "mode": "resized_crop"}},
      "unlabelled_views": {"weak": {"name": "crop_flip", "mode": "resized_crop"},
                           "strong": {"name": "crop_flip"}},
      "eval_view": {"name": "identity"},
      "index_cache_dir": None,
  }
  cfg.update(overrides)
  return cfg


def _build(data_dir, **kwargs):
  overrides = kwargs.pop("overrides", {})
  return build_input(_config(data_dir, **overrides), batch_size=kwargs.pop("batch_size", 4),
                     mu=2, eval_batch_size=4, seed=0, **kwargs)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_trees_equal(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def _load(data_dir, **options):
  return sources.load_source(NAME, data_dir=data_dir, train_split="train",
                             eval_split="test", read_options=sources.ReadOptions(**options))


def test_random_access_holds_only_labels_and_reads_records_by_id(record_dirs):
  source = _load(record_dirs["array_record"], storage="random_access")
  train = source.train
  assert train.pixels is None and train.encoded is None and train.reader is not None
  assert len(train) == TRAIN_COUNT and source.num_classes == NUM_CLASSES
  assert source.class_names == ("a", "b", "c") and source.channels == 3
  # Record id -> (label, file name, image) agree with each other and the generator.
  ids = np.array([5, 0, 17, 5])
  records = train.reader.read(ids)
  for example_id, record in zip(ids, records):
    parsed = train.reader.tf_parse(tf.constant(record))
    name = parsed["file_name"].numpy().decode()
    assert train.names[example_id] == name
    index = int(name[3:6])
    assert train.labels[example_id] == parsed["label"].numpy() == index % NUM_CLASSES
    image = tf.io.decode_image(parsed["image"]).numpy()
    np.testing.assert_array_equal(image, _image(0, index))


@pytest.mark.parametrize("storage,max_memory_bytes,expect_reader", [
    ("memory", 0, False), ("auto", 2**40, False), ("auto", 0, True),
    ("random_access", 2**40, True)])
def test_storage_choice(record_dirs, storage, max_memory_bytes, expect_reader):
  source = _load(record_dirs["array_record"], storage=storage,
                 max_memory_bytes=max_memory_bytes)
  assert (source.train.reader is not None) == expect_reader
  assert (source.train.encoded is None) == expect_reader


def test_streamed_batches_equal_in_memory_batches(record_dirs):
  """Random access, ArrayRecord in memory and TFRecord in memory: the same batches."""
  builds = {
      "streamed": _build(record_dirs["array_record"],
                         overrides={"storage": "random_access"}),
      "array_record_memory": _build(record_dirs["array_record"],
                                    overrides={"storage": "memory"}),
      "tfrecord_memory": _build(record_dirs["tfrecord"]),
  }
  streamed = builds.pop("streamed")
  reference_train = _take(streamed.train_iter(start_step=2), 3)
  reference_eval = list(streamed.eval_iter())
  reference_labelled = list(streamed.labelled_eval_iter())
  assert len(reference_eval) == -(-TEST_COUNT // 4)
  assert reference_eval[-1]["mask"].sum() == TEST_COUNT % 4
  for name, other in builds.items():
    np.testing.assert_array_equal(other.labelled_ids, streamed.labelled_ids, err_msg=name)
    assert other.info == streamed.info, name
    _assert_trees_equal(_take(other.train_iter(start_step=2), 3), reference_train)
    _assert_trees_equal(list(other.eval_iter()), reference_eval)
    _assert_trees_equal(list(other.labelled_eval_iter()), reference_labelled)


def test_streamed_process_slices_join_to_the_global_batch(record_dirs):
  directory = record_dirs["array_record"]
  overrides = {"storage": "random_access"}
  reference = _take(_build(directory, batch_size=4, overrides=overrides).train_iter(), 2)
  shares = [_take(_build(directory, batch_size=4, process_index=i, process_count=2,
                         overrides=overrides).train_iter(), 2) for i in range(2)]
  for step in range(2):
    joined = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs),
                                    *[share[step] for share in shares])
    _assert_trees_equal(joined, reference[step])


def test_labelled_ids_file_by_file_name(record_dirs, tmp_path):
  id_file = tmp_path / "subset.txt"
  id_file.write_text("s0_004.png\ns0_011.png\ns0_030.png\n")
  source = _load(record_dirs["array_record"], storage="random_access")
  wanted = sorted(source.train.names.index(n) for n in
                  ("s0_004.png", "s0_011.png", "s0_030.png"))
  inp = _build(record_dirs["array_record"], overrides={
      "storage": "random_access", "labels_per_class": None,
      "labelled_ids_file": str(id_file)})
  np.testing.assert_array_equal(inp.labelled_ids, wanted)
  batch = next(inp.train_iter())["labelled"]
  np.testing.assert_array_equal(batch["label"], source.train.labels[batch["id"]])


def test_index_cache_is_written_once_and_reused(record_dirs, tmp_path, monkeypatch):
  cache_dir = str(tmp_path / "cache")
  first = _load(record_dirs["array_record"], storage="random_access",
                index_cache_dir=cache_dir)
  cached = tfds_records.index_cache_path(
      cache_dir, full_name=f"{NAME}/1.0.0", split="train")
  assert os.path.exists(cached)
  assert not [f for f in os.listdir(os.path.dirname(cached)) if ".tmp-" in f]

  def no_full_pass(*args, **kwargs):
    raise AssertionError("the index was re-read instead of taken from the cache")
  monkeypatch.setattr(tfds_records.tf.data.Dataset, "range", no_full_pass)
  second = _load(record_dirs["array_record"], storage="random_access",
                 index_cache_dir=cache_dir)
  np.testing.assert_array_equal(second.train.labels, first.train.labels)
  assert second.train.names == first.train.names
  monkeypatch.undo()

  # A cache of the wrong length (another version of the data) or an unreadable
  # one is rebuilt.
  np.savez(cached, labels=np.zeros(3, np.int64), names=np.array(["x", "y", "z"]))
  third = _load(record_dirs["array_record"], storage="random_access",
                index_cache_dir=cache_dir)
  np.testing.assert_array_equal(third.train.labels, first.train.labels)
  with open(cached, "wb") as f:
    f.write(b"PK\x03\x04 truncated")
  fourth = _load(record_dirs["array_record"], storage="random_access",
                 index_cache_dir=cache_dir)
  np.testing.assert_array_equal(fourth.train.labels, first.train.labels)
  assert fourth.train.names == first.train.names


def test_large_tfrecord_split_fails_with_conversion_hint(record_dirs):
  with pytest.raises(ValueError, match=r"array_record.*raise data.max_memory_bytes") as e:
    _load(record_dirs["tfrecord"], storage="auto", max_memory_bytes=0)
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="needs ArrayRecord files") as e:
    _load(record_dirs["tfrecord"], storage="random_access")
  assert "\n" not in str(e.value)


def test_random_access_for_in_memory_sources_fails(tiny_fashion_dir):
  directory, _ = tiny_fashion_dir
  with pytest.raises(ValueError, match="is for TFDS ArrayRecord datasets"):
    sources.load_source("fashion_mnist", data_dir=directory, train_split="train",
                        eval_split="test",
                        read_options=sources.ReadOptions(storage="random_access"))


@pytest.mark.parametrize("overrides,match", [
    ({"storage": "disk"}, r"data.storage='disk'; use one of"),
    ({"max_memory_bytes": -1}, r"data.max_memory_bytes=-1 must be an int >= 0"),
])
def test_bad_storage_settings_fail_before_loading(overrides, match):
  with pytest.raises(ValueError, match=match):
    _build("/nonexistent/dir", overrides=overrides)


def test_other_processes_wait_for_the_shared_index(record_dirs, tmp_path, monkeypatch):
  """Processes > 0 of a run with a shared cache wait for process 0's index."""
  import threading
  monkeypatch.setattr(tfds_records, "_CACHE_POLL_S", 0.05)
  cache_dir = str(tmp_path / "shared")
  directory = record_dirs["array_record"]
  # Nobody writes it: a one-line error after the wait, no full pass.
  with pytest.raises(ValueError, match=r"Waited 0.2s for process 0 to write the index"):
    _load(directory, storage="random_access", index_cache_dir=cache_dir, index_wait_s=0.2)
  cached = tfds_records.index_cache_path(cache_dir, full_name=f"{NAME}/1.0.0",
                                         split="train")
  assert not os.path.exists(cached)

  results = {}
  waiter = threading.Thread(target=lambda: results.update(
      waiter=_load(directory, storage="random_access", index_cache_dir=cache_dir,
                   index_wait_s=60.0)))
  waiter.start()
  writer = _load(directory, storage="random_access", index_cache_dir=cache_dir)  # process 0
  waiter.join(timeout=60)
  assert not waiter.is_alive()
  np.testing.assert_array_equal(results["waiter"].train.labels, writer.train.labels)
  assert results["waiter"].train.names == writer.train.names


@pytest.mark.parametrize("cache_dir,process_index,waits", [
    ("gs://bucket/index", 1, True), ("gs://bucket/index", 0, False),
    ("/local/cache", 1, False)])
def test_only_other_processes_with_a_remote_cache_wait(monkeypatch, cache_dir,
                                                        process_index, waits):
  seen = {}

  def capture(*args, read_options, **kwargs):
    seen["options"] = read_options
    raise RuntimeError("stop after the read options")
  monkeypatch.setattr(sources, "load_source", capture)
  with pytest.raises(RuntimeError, match="stop after"):
    _build("/unused", overrides={"index_cache_dir": cache_dir},
           process_index=process_index, process_count=2)
  assert (seen["options"].index_wait_s > 0) == waits
