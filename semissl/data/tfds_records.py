"""Random access to TFDS datasets stored as ArrayRecord (streaming large datasets).

A dataset too large for host memory (full `imagenet2012`: ~1.28M JPEGs, ~140 GB)
is not loaded: only its labels (and file names) are, and the streams fetch the
records of the example ids they need, a batch at a time, through
`tfds.data_source` (ArrayRecord random access). Example id = record index, as for
every other source, so the index-based streams (exact per-epoch permutations,
process slices, exact resume) work unchanged.

Reading the labels of a large split means reading every record once; the result
is cached in `<index_cache_dir>/<dataset>/<version>/<split>.npz`, so later runs
(and the other processes of a run on the same host) start in seconds.
"""
from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import os
import re
import time
import zipfile

from etils import epath
import numpy as np
import tensorflow as tf

_INDEX_READ_BATCH = 4096
_CACHE_POLL_S = 10.0


@dataclasses.dataclass(frozen=True)
class RecordReader:
  """Serialized records of one TFDS split by example id (ArrayRecord random access).

  `read` is a NumPy function (ids -> serialized records); `tf_read` wraps it for
  tf.data (one Python call per batch of ids; ArrayRecord reads them in parallel);
  `tf_image_bytes` parses one record and returns its encoded image.
  """
  data_source: Sequence[bytes]
  features: object  # tfds.features.FeaturesDict
  image_key: str

  def __len__(self) -> int:
    return len(self.data_source)

  def read(self, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, np.int64).reshape(-1)
    records = self.data_source.__getitems__([int(i) for i in ids]) if len(ids) else []
    return np.asarray(records, dtype=object).reshape(-1)

  def tf_read(self, ids: tf.Tensor) -> tf.Tensor:
    """int64 [n] ids -> string [n] serialized records."""
    records = tf.numpy_function(self.read, [ids], tf.string, stateful=False)
    return tf.ensure_shape(records, ids.shape)

  def tf_parse(self, record: tf.Tensor) -> dict[str, tf.Tensor]:
    """One serialized record -> its features, the image left encoded."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    return self.features.deserialize_example(
        record, decoders={self.image_key: tfds.decode.SkipDecoding()})

  def tf_image_bytes(self, record: tf.Tensor) -> tf.Tensor:
    return self.tf_parse(record)[self.image_key]


def open_reader(builder, *, split: str, image_key: str) -> RecordReader:
  """A `RecordReader` over `builder`'s prepared ArrayRecord files of `split`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = builder.as_data_source(
      split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  return RecordReader(data_source=source, features=builder.info.features,
                      image_key=image_key)


def read_index(reader: RecordReader, *, label_key: str, name_key: str | None,
               cache_path: str | None, wait_for_cache_s: float = 0.0,
               ) -> tuple[np.ndarray, tuple[str, ...] | None]:
  """Labels (int64 [N]) and file names of every record, from the cache or one pass.

  With `wait_for_cache_s` > 0 (the other processes of a run sharing a remote
  cache, which process 0 writes) this waits for a valid cache to appear instead of
  reading the whole split again; a ValueError after that long says what to do.
  """
  def cached():
    return _read_cache(cache_path, num_records=len(reader), need_names=bool(name_key))
  index = cached()
  deadline = time.monotonic() + wait_for_cache_s
  while index is None and cache_path and time.monotonic() < deadline:
    time.sleep(min(_CACHE_POLL_S, max(deadline - time.monotonic(), 0.0)))
    index = cached()
  if index is not None:
    return index
  if wait_for_cache_s > 0:
    raise ValueError(f"Waited {wait_for_cache_s:g}s for process 0 to write the index "
                     f"{cache_path}; check process 0's log, or use a per-host "
                     "data.index_cache_dir.")

  keys = [label_key] + ([name_key] if name_key else [])

  def parse(record):
    example = reader.tf_parse(record)
    return {k: example[k] for k in keys}
  chunks = {k: [] for k in keys}
  for batch in _every_record(reader, parse):
    for k in keys:
      chunks[k].append(batch[k])
  labels = np.concatenate(chunks[label_key]).astype(np.int64)
  names = None
  if name_key:
    names = tuple(n.decode() if isinstance(n, bytes) else str(n)
                  for n in np.concatenate(chunks[name_key]))
  if cache_path:
    _write_index(cache_path, labels=labels, names=names)
  return labels, names


def _read_cache(cache_path: str | None, *, num_records: int, need_names: bool
                ) -> tuple[np.ndarray, tuple[str, ...] | None] | None:
  """The cached index if present, readable and of this split (length, names)."""
  if not cache_path or not epath.Path(cache_path).exists():
    return None
  try:
    with epath.Path(cache_path).open("rb") as f:
      cached = np.load(f, allow_pickle=False)
      labels = cached["labels"]
      names = tuple(str(n) for n in cached["names"]) if "names" in cached else None
  except (OSError, ValueError, KeyError, zipfile.BadZipFile):
    return None  # unreadable (e.g. another version's half-copied file): rebuilt
  if len(labels) != num_records or (need_names and names is None):
    return None
  return labels.astype(np.int64), names


def read_all_images(reader: RecordReader) -> np.ndarray:
  """Encoded image bytes of every record (object [N]), for in-memory storage."""
  chunks = list(_every_record(reader, reader.tf_image_bytes))
  return np.concatenate(chunks).astype(object) if chunks else np.empty(0, object)


def _every_record(reader: RecordReader, parse):
  """NumPy batches of `parse(record)` over every record, in order (one sequential pass)."""
  dataset = tf.data.Dataset.range(len(reader)).batch(_INDEX_READ_BATCH)
  dataset = dataset.map(reader.tf_read).unbatch()
  dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset.batch(_INDEX_READ_BATCH).as_numpy_iterator()


def index_cache_path(cache_dir: str | None, *, full_name: str, split: str) -> str | None:
  """`<cache_dir>/<dataset/config/version>/<split>.npz`, or None without a cache dir."""
  if not cache_dir:
    return None
  safe_split = re.sub(r"[^A-Za-z0-9_.+-]", "_", split)
  return os.path.join(os.path.expanduser(cache_dir), full_name, f"{safe_split}.npz")


def _write_index(path: str, *, labels: np.ndarray, names: tuple[str, ...] | None) -> None:
  """Writes the index atomically (temp file + rename): readers never see half a file."""
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  temporary = target.parent / f".{target.name}.tmp-{os.getpid()}"
  arrays = {"labels": labels}
  if names is not None:
    arrays["names"] = np.asarray(names, dtype=str)
  with temporary.open("wb") as f:
    np.savez(f, **arrays)
  temporary.replace(target)
