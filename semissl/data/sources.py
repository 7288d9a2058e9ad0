"""Image sources by name: built-in Fashion-MNIST, image folders, and any TFDS dataset.

A source is a `SourceData`: per split, the labels (example id = row index) and the
images, either in memory (fixed-size uint8 pixels or encoded PNG/JPEG bytes) or,
for TFDS datasets too large for host memory, a `RecordReader` that fetches them by
id from ArrayRecord files (`semissl.data.tfds_records`). All sources then go
through the same tf.data stream code (`semissl.data.streams`), which looks examples
up by id; that makes shuffling, process sharding and exact resume index
arithmetic, independent of the source.
"""
from __future__ import annotations

from collections.abc import Callable
import dataclasses
import os

import numpy as np
import tensorflow as tf

from semissl.data import idx_files
from semissl.data import tfds_records

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_TFDS_READ_BATCH = 1024
STORAGE_MODES = ("auto", "memory", "random_access")


@dataclasses.dataclass(frozen=True)
class ReadOptions:
  """How TFDS splits are held (`config.data.storage` and friends).

  storage: 'memory' reads a split into host memory; 'random_access' keeps only
    labels in memory and reads images by id from ArrayRecord files; 'auto' picks
    'random_access' for ArrayRecord splits larger than `max_memory_bytes`.
  max_memory_bytes: largest split 'auto' holds in memory; a larger TFRecord split
    (no random access) is an error that says how to convert it.
  index_cache_dir: where the labels of random-access splits are cached (None: off).
  index_wait_s: > 0: wait that long for another process to write the cache
    instead of reading the split (processes > 0 sharing a remote cache).
  """
  storage: str = "auto"
  max_memory_bytes: int = 4 * 2**30
  index_cache_dir: str | None = None
  index_wait_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class SplitExamples:
  """One split in memory; the id of an example is its row index.

  Attributes:
    labels: int64 [N].
    pixels: uint8 [N, H, W, C] for fixed-size sources, else None.
    encoded: object [N] of PNG/JPEG bytes for variable-size sources, else None.
    names: per-example names (relative file names) used by id files, or None.
    reader: random access to the records of a split too large for memory, or None.
  """
  labels: np.ndarray
  pixels: np.ndarray | None = None
  encoded: np.ndarray | None = None
  names: tuple[str, ...] | None = None
  reader: tfds_records.RecordReader | None = None

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class SourceData:
  """A loaded source: train and eval splits plus what is known about them."""
  train: SplitExamples
  eval: SplitExamples
  num_classes: int
  channels: int  # native channels of the stored images (1 or 3)
  class_names: tuple[str, ...] | None = None


SourceLoader = Callable[..., SourceData]
_SOURCES: dict[str, SourceLoader] = {}


def register_source(name: str) -> Callable[[SourceLoader], SourceLoader]:
  """Registers `loader(*, argument, data_dir, train_split, eval_split, read_options)`.

  The loader returns a `SourceData`;

  `data.dataset = '<name>'` or `'<name>:<argument>'` selects it.
  """
  def decorator(loader: SourceLoader) -> SourceLoader:
    _SOURCES[name] = loader
    return loader
  return decorator


def known_sources() -> tuple[str, ...]:
  return tuple(sorted(_SOURCES))


def load_source(dataset: str, *, data_dir: str | None, train_split: str,
                eval_split: str, read_options: ReadOptions = ReadOptions()) -> SourceData:
  """Loads `dataset`: a registered name, `name:argument`, or any TFDS name."""
  if read_options.storage not in STORAGE_MODES:
    raise ValueError(f"data.storage={read_options.storage!r}; use one of {STORAGE_MODES}.")
  name, sep, argument = dataset.partition(":")
  if name in _SOURCES:
    return _SOURCES[name](argument=argument if sep else None, data_dir=data_dir,
                          train_split=train_split, eval_split=eval_split,
                          read_options=read_options)
  return load_tfds(dataset, data_dir=data_dir, train_split=train_split,
                   eval_split=eval_split, read_options=read_options)


def _memory_only(name: str, read_options: ReadOptions) -> None:
  if read_options.storage == "random_access":
    raise ValueError(f"data.storage='random_access' is for TFDS ArrayRecord datasets; "
                     f"{name} is read into memory: set data.storage='auto'.")


@register_source("fashion_mnist")
def load_fashion_mnist(*, argument: str | None, data_dir: str | None,
                       train_split: str, eval_split: str,
                       read_options: ReadOptions) -> SourceData:
  """Fashion-MNIST: IDX files in data_dir, then the default dir, then TFDS."""
  del argument
  if data_dir and not os.path.isdir(data_dir):
    raise ValueError(f"data.data_dir={data_dir} does not exist; create it or set "
                     "data.data_dir=None to use the installed dataset.")
  for directory in (data_dir, idx_files.DEFAULT_FASHION_MNIST_DIR):
    if idx_files.has_fashion_mnist_files(directory):
      _memory_only("Fashion-MNIST (IDX files)", read_options)
      arrays = idx_files.load_fashion_mnist_arrays(directory)
      splits = {}
      for role, split in (("train", train_split), ("eval", eval_split)):
        if split not in arrays:
          raise ValueError(f"Fashion-MNIST (IDX files) has splits {sorted(arrays)}, "
                           f"not {split!r}; fix data.{role}_split.")
        splits[role] = SplitExamples(labels=arrays[split]["label"],
                                     pixels=arrays[split]["image"])
      return SourceData(train=splits["train"], eval=splits["eval"], num_classes=10,
                        channels=1, class_names=idx_files.FASHION_MNIST_CLASS_NAMES)
  try:
    return load_tfds("fashion_mnist", data_dir=data_dir, train_split=train_split,
                     eval_split=eval_split, read_options=read_options)
  except ValueError as error:
    where = f"{data_dir} or " if data_dir else ""
    raise ValueError(
        f"Fashion-MNIST not found (no IDX files in {where}"
        f"{idx_files.DEFAULT_FASHION_MNIST_DIR}, no prepared TFDS copy): run "
        "`apt-get install dataset-fashion-mnist` or set data.data_dir.") from error


@register_source("folder")
def load_folder(*, argument: str | None, data_dir: str | None, train_split: str,
                eval_split: str, read_options: ReadOptions) -> SourceData:
  """Image folders `root/<split>/<class>/*.png|jpg|jpeg` (any size, gray or RGB).

  Class names are the sorted class directories of the train split (label = rank);
  example ids index the split's files sorted by `<class>/<file>`. Every image is
  decoded once here so that an unreadable file fails before training.
  """
  del data_dir
  _memory_only("an image folder", read_options)
  root = argument
  if not root:
    raise ValueError("data.dataset='folder:' needs a root: 'folder:/path/to/root'.")
  if not os.path.isdir(root):
    raise ValueError(f"Image folder root {root} does not exist; fix data.dataset.")
  train_dir = _split_dir(root, train_split, role="train")
  class_names = tuple(sorted(
      d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d))))
  if not class_names:
    raise ValueError(f"{train_dir} has no class directories; lay images out as "
                     f"{train_dir}/<class>/<image>.png.")
  splits = {"train": _read_folder_split(train_dir, class_names, every_class=True)}
  splits["eval"] = _read_folder_split(_split_dir(root, eval_split, role="eval"),
                                      class_names)
  channels = max(check_decodable(splits["train"], train_dir),
                 check_decodable(splits["eval"], os.path.join(root, eval_split)))
  return SourceData(train=splits["train"], eval=splits["eval"],
                    num_classes=len(class_names), channels=channels,
                    class_names=class_names)


def _split_dir(root: str, split: str, *, role: str) -> str:
  path = os.path.join(root, split)
  if not os.path.isdir(path):
    available = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    raise ValueError(f"Split directory {path} does not exist (found {available}); "
                     f"fix data.{role}_split.")
  return path


def _read_folder_split(split_dir: str, class_names: tuple[str, ...], *,
                       every_class: bool = False) -> SplitExamples:
  """Reads the bytes of every image of one split directory; `every_class`: each
  class directory must hold an image (the train split defines the classes)."""
  unknown = sorted(set(
      d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d))
  ) - set(class_names))
  if unknown:
    raise ValueError(f"{split_dir} has class directories {unknown} that the train "
                     "split lacks; add them to the train split or remove them.")
  names = []
  for class_name in class_names:
    class_dir = os.path.join(split_dir, class_name)
    if os.path.isdir(class_dir):
      names.extend(
          f"{class_name}/{f}" for f in os.listdir(class_dir)
          if f.lower().endswith(IMAGE_EXTENSIONS)
          and os.path.isfile(os.path.join(class_dir, f)))
  names.sort()
  if not names:
    raise ValueError(f"{split_dir} holds no .png/.jpg/.jpeg images.")
  if every_class:
    empty = sorted(set(class_names) - {n.split("/", 1)[0] for n in names})
    if empty:
      raise ValueError(f"{split_dir} has class directories without images {empty}: each "
                       "would be a class with no example; add images or remove them.")
  label_of = {name: i for i, name in enumerate(class_names)}
  labels = np.array([label_of[n.split("/", 1)[0]] for n in names], np.int64)
  encoded = np.empty(len(names), dtype=object)
  for i, name in enumerate(names):
    with open(os.path.join(split_dir, name), "rb") as f:
      encoded[i] = f.read()
  return SplitExamples(labels=labels, encoded=encoded, names=tuple(names))


def check_decodable(split: SplitExamples, split_dir: str) -> int:
  """Decodes every image (tf.data, parallel); returns 3 if any has colour, else 1."""
  def decode(index, data):
    image = tf.io.decode_image(data, expand_animations=False)
    return index, tf.shape(image)[-1]
  dataset = tf.data.Dataset.from_tensor_slices(
      (np.arange(len(split), dtype=np.int64), tf.constant(split.encoded, tf.string)))
  dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
  decoded = dict(dataset.as_numpy_iterator())
  if len(decoded) != len(split):
    bad = next(i for i in range(len(split)) if i not in decoded)
    raise ValueError(f"Cannot decode image {os.path.join(split_dir, split.names[bad])}; "
                     "replace or delete it.")
  return 3 if max(decoded.values()) >= 3 else 1


def load_tfds(name: str, *, data_dir: str | None, train_split: str, eval_split: str,
              read_options: ReadOptions = ReadOptions()) -> SourceData:
  """Any prepared TFDS image classification dataset (id = record order).

  TFRecord splits are read into memory, unshuffled: images of a fixed-shape feature
  as pixels, variable-size images encoded. ArrayRecord splits are read by index,
  into memory or, when `read_options` says so (large splits), not at all: the
  streams then fetch records by id (`tfds_records.RecordReader`).
  """
  dataset = open_tfds(name, data_dir=data_dir)
  if dataset.label_key is None:
    raise ValueError(f"TFDS dataset {name!r} has no label feature; only image "
                     "classification datasets are supported as data.dataset.")
  splits = {role: dataset.read_split(split, config_key=f"{role}_split",
                                     read_options=read_options)
            for role, split in (("train", train_split), ("eval", eval_split))}
  num_classes = dataset.num_classes or int(splits["train"].labels.max() + 1)
  return SourceData(train=splits["train"], eval=splits["eval"],
                    num_classes=num_classes, channels=dataset.channels,
                    class_names=dataset.class_names)


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
  """A prepared TFDS image dataset: its builder and which features to read.

  label_key is None for datasets without a label feature (unlabelled images).
  """
  name: str
  builder: object  # tfds.core.DatasetBuilder
  image_key: str
  label_key: str | None
  name_key: str | None
  image_shape: tuple[int | None, ...]
  class_names: tuple[str, ...] | None
  num_classes: int | None

  @property
  def channels(self) -> int:
    return self.image_shape[-1] or 3

  def read_split(self, split: str, *, config_key: str, read_options: ReadOptions,
                 with_labels: bool = True) -> SplitExamples:
    """One split (memory or random access, see `ReadOptions`); labels -1 when the
    dataset has none or `with_labels` is False (no pass over a streamed split)."""
    label_key = self.label_key if with_labels else None
    storage = _split_storage(self.builder, name=self.name, split=split,
                             read_options=read_options)
    if storage == "tfrecord":
      return _read_tfds_split(
          self.builder, name=self.name, split=split, config_key=config_key,
          image_key=self.image_key, label_key=label_key,
          fixed_size=all(d is not None for d in self.image_shape),
          name_key=self.name_key)
    return _read_array_record_split(
        self.builder, name=self.name, split=split, config_key=config_key,
        image_key=self.image_key, label_key=label_key, name_key=self.name_key,
        in_memory=storage == "memory", index_cache_dir=read_options.index_cache_dir,
        index_wait_s=read_options.index_wait_s)


def open_tfds(name: str, *, data_dir: str | None) -> TfdsDataset:
  """The builder of a prepared TFDS dataset and its image / label / file name keys."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if data_dir and not os.path.isdir(data_dir):
    raise ValueError(f"data.data_dir={data_dir} does not exist; fix it or set None.")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except (ValueError, AssertionError) as error:  # DatasetNotFoundError, bad names
    detail = "" if isinstance(error, tfds.core.registered.DatasetNotFoundError) else (
        f" ({_first_line(error)})")
    raise ValueError(
        f"Unknown dataset {name!r}{detail}: use one of {list(known_sources())} "
        "(folder:<root>) or a TFDS name such as 'cifar10'.") from error
  features = builder.info.features
  keys = builder.info.supervised_keys
  image_key, label_key = keys if isinstance(keys, tuple) and len(keys) == 2 else (
      "image", "label")
  if image_key not in features:
    raise ValueError(f"TFDS dataset {name!r} has no {image_key!r} feature; only image "
                     "datasets are supported.")
  label_feature = features[label_key] if label_key in features else None
  class_names = tuple(getattr(label_feature, "names", None) or ()) or None
  return TfdsDataset(
      name=name, builder=builder, image_key=image_key,
      label_key=label_key if label_feature is not None else None,
      name_key="file_name" if "file_name" in features else None,
      image_shape=tuple(features[image_key].shape), class_names=class_names,
      num_classes=getattr(label_feature, "num_classes", None))


def _split_storage(builder, *, name: str, split: str, read_options: ReadOptions) -> str:
  """'tfrecord' (read into memory), 'memory' or 'random_access' (ArrayRecord)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  array_record = builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  try:
    num_bytes = int(builder.info.splits[split].num_bytes or 0)
  except (KeyError, ValueError, AssertionError):
    num_bytes = 0  # unknown or unprepared: reading it says what is wrong
  convert = (f"convert it once to ArrayRecord (`tfds build {name} "
             "--file_format=array_record`, or `tfds convert_format --dataset_dir=<its "
             "dir> --out_file_format=array_record`)")
  if read_options.storage == "random_access" and not array_record:
    raise ValueError(f"data.storage='random_access' needs ArrayRecord files but TFDS "
                     f"{name} is stored as {builder.info.file_format}: {convert}.")
  if read_options.storage == "auto" and num_bytes > read_options.max_memory_bytes:
    if not array_record:
      raise ValueError(
          f"TFDS {name}[{split}] is {num_bytes / 2**30:.1f} GiB of TFRecords, more than "
          f"data.max_memory_bytes={read_options.max_memory_bytes}, and TFRecords have no "
          f"random access: {convert}, or raise data.max_memory_bytes.")
    return "random_access"
  if not array_record:
    return "tfrecord"
  return "memory" if read_options.storage in ("auto", "memory") else "random_access"


def _read_array_record_split(builder, *, name: str, split: str, config_key: str,
                             image_key: str, label_key: str | None, name_key: str | None,
                             in_memory: bool,
                             index_cache_dir: str | None,
                             index_wait_s: float = 0.0) -> SplitExamples:
  """An ArrayRecord split: labels (cached index) plus images in memory or by id.
  Without `label_key` the labels are -1 and no pass over the split is made."""
  try:
    reader = tfds_records.open_reader(builder, split=split, image_key=image_key)
  except (AssertionError, ValueError, KeyError, FileNotFoundError) as error:
    raise ValueError(f"Cannot read TFDS {name}[{split}] (fix data.{config_key} or "
                     f"prepare it with `tfds build {name} --file_format=array_record`): "
                     f"{_first_line(error)}") from error
  if not len(reader):
    raise ValueError(f"TFDS {name}[{split}] is empty; fix data.{config_key}.")
  if label_key is None:
    labels, names = np.full(len(reader), -1, np.int64), None
  else:
    cache_path = tfds_records.index_cache_path(
        index_cache_dir, full_name=builder.info.full_name, split=split)
    labels, names = tfds_records.read_index(
        reader, label_key=label_key, name_key=name_key, cache_path=cache_path,
        wait_for_cache_s=index_wait_s if cache_path else 0)
  if in_memory:
    return SplitExamples(labels=labels, encoded=tfds_records.read_all_images(reader),
                         names=names)
  return SplitExamples(labels=labels, names=names, reader=reader)


def _read_tfds_split(builder, *, name: str, split: str, config_key: str, image_key: str,
                     label_key: str | None, fixed_size: bool,
                     name_key: str | None) -> SplitExamples:
  """Reads a TFDS split in its deterministic unshuffled order (labels -1 without
  `label_key`)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  decoders = None if fixed_size else {image_key: tfds.decode.SkipDecoding()}
  try:
    dataset = builder.as_dataset(
        split=split, shuffle_files=False, decoders=decoders,
        read_config=tfds.ReadConfig(interleave_cycle_length=1))
  except (AssertionError, ValueError, KeyError) as error:
    raise ValueError(f"Cannot read TFDS {name}[{split}] (fix data.{config_key} or "
                     f"prepare it with `tfds build {name}`): {_first_line(error)}"
                     ) from error
  keys = [image_key] + [k for k in (label_key, name_key) if k]
  dataset = dataset.map(lambda ex: {k: ex[k] for k in keys}).batch(_TFDS_READ_BATCH)
  chunks = {k: [] for k in keys}
  for batch in dataset.as_numpy_iterator():
    for k in keys:
      chunks[k].append(batch[k])
  if not chunks[image_key]:
    raise ValueError(f"TFDS {name}[{split}] is empty; fix data.{config_key}.")
  arrays = {k: np.concatenate(v) for k, v in chunks.items()}
  names = None
  if name_key:
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in arrays[name_key])
  images = arrays[image_key]
  labels = (arrays[label_key].astype(np.int64) if label_key
            else np.full(len(images), -1, np.int64))
  return SplitExamples(
      labels=labels,
      pixels=images if fixed_size else None,
      encoded=None if fixed_size else images.astype(object),
      names=names)


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__
