"""tf.data streams: index arithmetic -> image fetch -> augmented views -> batches.

A stream is a sequence of global positions p = 0, 1, 2, ...; global step s covers
positions [s*B, (s+1)*B) and process i of P takes its contiguous slice
[s*B + i*b, s*B + (i+1)*b), b = B/P, so the global batches do not depend on P.
Position p shows example `ids[index_shuffle(p mod n, seed(stream, epoch = p div n))]`,
a fresh stateless permutation per epoch, and its views are augmented with seeds
folded from (seed, stream, p, view name). Resuming at step k therefore only starts
the position counter at k*b: nothing before it is decoded or augmented.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import zlib

import numpy as np
import tensorflow as tf

from semissl.data import augment
from semissl.data import augment_simclr  # noqa: F401  (registers 'simclr')
from semissl.data import augment_strong  # noqa: F401  (registers 'randaugment')
from semissl.data import sources

LABELLED_STREAM, UNLABELLED_STREAM = 1, 2
_PERMUTATION, _AUGMENTATION = 0, 1

ViewsFn = Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class ImageSource:
  """The images of one split by example id.

  `fetch` maps int64 ids [n] to records [n, ...] (uint8 pixels or encoded bytes or
  serialized TFDS records) and `decode` turns one record into a uint8 [h, w, C]
  image. With `fetch_per_batch` (random access from disk), streams fetch the
  records of a whole batch of ids in one call, then decode them in parallel.
  """
  fetch: Callable[[tf.Tensor], tf.Tensor]
  decode: Callable[[tf.Tensor], tf.Tensor]
  fetch_per_batch: bool = False

  def lookup(self, example_id: tf.Tensor) -> tf.Tensor:
    """The decoded image of one example id."""
    return self.decode(self.fetch(tf.reshape(example_id, [1]))[0])


def make_image_source(split: sources.SplitExamples, *, source_channels: int,
                      channels: int) -> ImageSource:
  """The `ImageSource` of a split: in-memory pixels or bytes, or a record reader."""
  def to_channels(image):
    return augment.convert_channels(image, channels=channels)

  def decode_bytes(encoded):
    image = tf.io.decode_image(encoded, channels=source_channels, expand_animations=False)
    return to_channels(tf.ensure_shape(image, [None, None, source_channels]))

  if split.reader is not None:
    reader = split.reader
    return ImageSource(fetch=reader.tf_read,
                       decode=lambda record: decode_bytes(reader.tf_image_bytes(record)),
                       fetch_per_batch=True)
  if split.pixels is not None:
    pixels = tf.constant(split.pixels)
    return ImageSource(fetch=lambda ids: tf.gather(pixels, ids), decode=to_channels)
  encoded = tf.constant(split.encoded, dtype=tf.string)
  return ImageSource(fetch=lambda ids: tf.gather(encoded, ids), decode=decode_bytes)


def _with_images(dataset: tf.data.Dataset, source: ImageSource, *, fetch_batch: int,
                 make_element: Callable[[dict[str, tf.Tensor], tf.Tensor], dict],
                 ) -> tf.data.Dataset:
  """Maps elements `{'example_id', ...}` to `make_element(element, image)`.

  In-memory sources look the image up inside the parallel map; per-batch sources
  first fetch the records of `fetch_batch` consecutive elements in one call (order
  kept), so random access costs one Python call per batch, not per image.
  """
  if source.fetch_per_batch:
    def fetch(batch):
      return dict(batch, record=source.fetch(batch["example_id"]))
    dataset = dataset.batch(fetch_batch).map(
        fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()

    def element(example):
      record = example.pop("record")
      return make_element(example, source.decode(record))
  else:
    def element(example):
      return make_element(example, source.lookup(example["example_id"]))
  return dataset.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def view_name_key(name: str) -> int:
  """Stable integer folded into the seed of view `name` (crc32)."""
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def make_views_fn(views: Mapping[str, Mapping], *, image_size: int,
                  mean: Sequence[float], std: Sequence[float]) -> ViewsFn:
  """Returns `fn(image, seed) -> {view: normalised float32 [S, S, C]}`."""
  def views_fn(image, seed):
    out = {}
    for name, spec in views.items():
      view_seed = tf.random.experimental.stateless_fold_in(seed, view_name_key(name))
      view = augment.apply_view(image, spec=spec, seed=view_seed, image_size=image_size)
      out[name] = augment.normalise(view, mean=mean, std=std)
    return out
  return views_fn


def global_position(local_index: tf.Tensor, *, local_batch: int, global_batch: int,
                    process_index: int) -> tf.Tensor:
  """Global stream position of this process's `local_index`-th example."""
  step = local_index // local_batch
  return step * global_batch + process_index * local_batch + local_index % local_batch


def example_stream(*, ids: np.ndarray, labels: np.ndarray, source: ImageSource,
                   views_fn: ViewsFn, global_batch: int, local_batch: int,
                   process_index: int, seed: int, stream_id: int, start_step: int,
                   label_key: str | None,
                   true_labels: np.ndarray | None = None) -> tf.data.Dataset:
  """Infinite stream of this process's batches `{'images', label_key, 'id', 'index'}`.

  Args:
    ids: int64 example ids the stream cycles through (one permutation per epoch).
    labels: int64 labels of the whole split, indexed by example id.
    source: the split's images by example id.
    views_fn: (image, seed) -> named normalised views.
    global_batch: B (all processes).
    local_batch: b = B / process_count.
    process_index: which contiguous slice of each global batch to take.
    seed: experiment seed.
    stream_id: LABELLED_STREAM or UNLABELLED_STREAM (independent randomness).
    start_step: first global step to produce.
    label_key: 'label' (labelled), 'true_label' (hidden, unlabelled stream) or None
      (no label in the batches: an unlabelled source without known labels).
    true_labels: if given (labels under `data.label_noise`), the clean labels of the
      whole split, indexed by example id, added as 'true_label' (telemetry only).
  """
  num_ids = len(ids)
  ids_tensor = tf.constant(ids, tf.int64)
  labels_tensor = tf.constant(labels, tf.int64)
  true_labels_tensor = None if true_labels is None else tf.constant(true_labels, tf.int64)
  base_seed = tf.constant([int(seed) % 2**63, stream_id], tf.int64)
  fold_in = tf.random.experimental.stateless_fold_in
  permutation_seed = fold_in(base_seed, _PERMUTATION)
  augmentation_seed = fold_in(base_seed, _AUGMENTATION)

  def choose(local_index):
    position = global_position(local_index, local_batch=local_batch,
                               global_batch=global_batch, process_index=process_index)
    epoch_seed = fold_in(permutation_seed, position // num_ids)
    slot = tf.random.experimental.index_shuffle(
        position % num_ids, epoch_seed, tf.constant(num_ids - 1, tf.int64))
    return {"position": position, "slot": slot, "example_id": tf.gather(ids_tensor, slot)}

  def make_element(example, image):
    example_id = example["example_id"]
    element = {
        "images": views_fn(image, fold_in(augmentation_seed, example["position"])),
        "id": example_id,
        # Position of the example in `ids` (labelled stream: its memory-bank slot).
        "index": tf.cast(example["slot"], tf.int32),
    }
    if label_key is not None:
      element[label_key] = tf.cast(tf.gather(labels_tensor, example_id), tf.int32)
    if true_labels_tensor is not None:
      element["true_label"] = tf.cast(tf.gather(true_labels_tensor, example_id), tf.int32)
    return element

  dataset = tf.data.Dataset.counter(start=start_step * local_batch, dtype=tf.int64)
  dataset = _with_images(dataset.map(choose), source, fetch_batch=local_batch,
                         make_element=make_element)
  return dataset.batch(local_batch, drop_remainder=True)


def eval_stream(*, labels: np.ndarray, source: ImageSource, views_fn: ViewsFn,
                global_batch: int, local_batch: int, process_index: int,
                ids: np.ndarray | None = None) -> tf.data.Dataset:
  """Finite eval batches `{'images', 'label', 'id', 'mask'}`, padded to full size.

  Position p shows example `ids[p]` (default: example p) with label `labels[p]`;
  'id' is p. Every process yields ceil(N / global_batch) batches; positions past
  the end are padding with mask 0, label -1 and id -1 (their images repeat the
  last example).
  """
  num_examples = len(labels)
  num_batches = -(-num_examples // global_batch)
  labels_tensor = tf.constant(labels, tf.int64)
  ids_tensor = tf.constant(np.arange(num_examples) if ids is None else ids, tf.int64)
  unused_seed = tf.constant([0, 0], tf.int64)

  def choose(local_index):
    position = global_position(local_index, local_batch=local_batch,
                               global_batch=global_batch, process_index=process_index)
    valid = position < num_examples
    clipped = tf.minimum(position, num_examples - 1)
    return {"valid": valid, "position": clipped,
            "example_id": tf.gather(ids_tensor, clipped)}

  def make_element(example, image):
    valid = example["valid"]
    return {
        "images": views_fn(image, unused_seed),
        "label": tf.where(
            valid, tf.cast(tf.gather(labels_tensor, example["position"]), tf.int32), -1),
        "id": tf.where(valid, example["position"], tf.constant(-1, tf.int64)),
        "mask": tf.cast(valid, tf.float32),
    }

  dataset = tf.data.Dataset.range(num_batches * local_batch).map(choose)
  dataset = _with_images(dataset, source, fetch_batch=local_batch,
                         make_element=make_element)
  return dataset.batch(local_batch, drop_remainder=True)


def channel_statistics(*, source: ImageSource, ids: np.ndarray,
                       options: tf.data.Options) -> tuple[tuple[float, ...], ...]:
  """Per-channel mean and std of pixel values / 255 over the images `ids` (float64)."""
  def moments(unused_example, image):
    image = tf.cast(image, tf.float64) / 255.0
    flat = tf.reshape(image, [-1, tf.shape(image)[-1]])
    return (tf.reduce_sum(flat, 0), tf.reduce_sum(tf.square(flat), 0),
            tf.cast(tf.shape(flat)[0], tf.float64))
  dataset = tf.data.Dataset.from_tensor_slices(
      {"example_id": np.asarray(ids, np.int64)})
  dataset = _with_images(dataset, source, fetch_batch=256, make_element=moments)
  total, total_sq, count = 0.0, 0.0, 0.0
  for sums, sums_sq, n in dataset.with_options(options).batch(256).as_numpy_iterator():
    total, total_sq, count = total + sums.sum(0), total_sq + sums_sq.sum(0), count + n.sum()
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)
