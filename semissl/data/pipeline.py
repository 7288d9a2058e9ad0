"""`build_input`: from `config.data` to the train and eval iterators of one process.

Every source (`semissl.data.sources`: in memory, or by random access for TFDS
ArrayRecord datasets too large for memory, see `data.storage`) goes through the
same tf.data stream code (`semissl.data.streams`). All bad input raises a one-line
ValueError here, before any training step and before anything is written.

With `data.validation_size` > 0, that many labelled train images are held out
(`splits.choose_validation_ids`) before the labelled subset is drawn; they are in
neither training stream (nor in the normalisation statistics) and
`Input.validation_iter` evaluates on them. Their ids go to
`<workdir>/validation_ids.txt`, which a later run in the same workdir reuses.

With `data.unlabelled_dataset` (an image folder without classes or a TFDS split;
`semissl.data.unlabelled`) the unlabelled stream reads only that source; the labelled
source's train split then gives the validation split and the labelled subset only
(`labelled_in_unlabelled` does not apply), and `<workdir>/unlabelled_source.json`
records which images it read, so a resume with other images is refused.

With `data.label_noise` = r > 0 (DivideMix's evaluation setting), round(r * n) of
the n labelled examples, seeded by `data.label_noise_seed`, get a label drawn
uniformly from all classes, the true class included (`splits.symmetric_label_noise`,
as DivideMix's code), so about r * (K - 1) / K of the labels are wrong. Everything
that trains or monitors on the labelled set sees the noisy labels (the labelled
stream's 'label', `labelled_labels`, `labelled_eval_iter`); the clean label stays
in the labelled batches as 'true_label' (telemetry only) and the validation, test
and unlabelled-stream labels are never noised. r = 0 changes nothing.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
import dataclasses
import os
from typing import Any

from etils import epath
import ml_collections
import numpy as np
import tensorflow as tf

from semissl.data import augment
from semissl.data import augment_simclr  # noqa: F401  (registers 'simclr')
from semissl.data import augment_strong  # noqa: F401  (registers 'randaugment')
from semissl.data import sources
from semissl.data import splits
from semissl.data import streams
from semissl.data import tf_runtime
from semissl.data import unlabelled

_DEFAULTS = {
    "dataset": "fashion_mnist",
    "data_dir": None,
    "train_split": "train",
    "eval_split": "test",
    # Evaluate on the first N examples of the eval split only (ids unchanged); 0: all.
    # For smoke tests (configs' runlocal), whose cost evaluating 10k images dominates.
    "eval_examples": 0,
    "label_fraction": 0.01,
    "labels_per_class": None,
    "labelled_ids_file": None,
    "split_seed": 0,
    "validation_size": 0,  # train images held out for validation (stratified); 0: off.
    "labelled_in_unlabelled": True,
  # Symmetric label noise: fraction r of the labelled examples relabelled uniformly
  # over all classes (true class included), seeded by label_noise_seed; 0: clean.
  "label_noise": 0.0,
  "label_noise_seed": 0,
    # Unlabelled images from their own source: 'folder:<root>' (no classes, any depth)
    # or '<tfds name>:<split>'; None: the labelled source's train split (see above).
    "unlabelled_dataset": None,
    "image_size": 28,
    "num_channels": None,
    "mean": None,
    "std": None,
    "labelled_views": {"image": {"name": "crop_flip"}},
    "unlabelled_views": {},
    "eval_view": {"name": "identity"},
    "tf_threads": None,  # None: the CPUs this process may use.
    "prefetch": None,  # batches to prefetch; None: AUTOTUNE.
    "stats_sample_size": 10_000,  # images used to compute mean/std when not given.
    # TFDS storage: 'auto' | 'memory' | 'random_access' (ArrayRecord; see sources.ReadOptions).
    "storage": "auto",
    "max_memory_bytes": 4 * 2**30,  # 'auto' streams larger ArrayRecord splits from disk.
    "index_cache_dir": "~/.cache/semissl/tfds_index",  # labels of streamed splits; None: off.
    # With a remote (gs://...) index_cache_dir, processes > 0 wait this long for
    # process 0 to write the index instead of each reading the whole split.
    "index_wait_s": 3 * 3600.0,
    "shuffle_buffer": None,  # unused: streams use exact stateless permutations.
}
# Per-channel statistics of pixel/255 where computing them would be wasteful.
_KNOWN_NORMALISATION = {
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def default_data_config() -> ml_collections.ConfigDict:
  """A `config.data` with every key `build_input` reads, at its default."""
  return ml_collections.ConfigDict(_DEFAULTS)


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the model and the train loop need to know about the data."""
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of views without their own 'size'
  num_train: int  # the labelled source's train split
  num_labelled: int
  num_unlabelled: int  # of the unlabelled stream (data.unlabelled_dataset's, if set)
  num_eval: int
  num_validation: int  # held out of the train split (data.validation_size)
  class_names: tuple[str, ...] | None
  mean: tuple[float, ...]
  std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class _StreamParts:
  """What the tf.data streams are built from (internal to `Input`)."""
  train_labels: np.ndarray  # clean labels of the train split
  # Labels the learner sees for the labelled ids (data.label_noise); is train_labels
  # when there is no noise.
  noisy_train_labels: np.ndarray
  eval_labels: np.ndarray
  train_source: streams.ImageSource
  eval_source: streams.ImageSource
  unlabelled_labels: np.ndarray  # indexed by the unlabelled stream's example ids
  unlabelled_source: streams.ImageSource
  unlabelled_label_key: str | None  # 'true_label', or None: no hidden labels
  labelled_views: dict[str, dict[str, Any]]
  unlabelled_views: dict[str, dict[str, Any]]
  eval_view: dict[str, Any]
  image_size: int
  seed: int
  process_index: int
  process_count: int
  options: tf.data.Options
  prefetch: int


@dataclasses.dataclass(frozen=True)
class Input:
  """Train and eval data of one process (see `build_input`)."""
  info: DataInfo
  labelled_ids: np.ndarray
  unlabelled_ids: np.ndarray
  validation_ids: np.ndarray  # sorted train ids held out of both streams; may be empty
  local_batch_size: int
  local_unlabelled_batch_size: int
  local_eval_batch_size: int
  num_eval_batches: int
  num_validation_batches: int
  start_step: int
  _parts: _StreamParts = dataclasses.field(repr=False)

  @property
  def labelled_labels(self) -> np.ndarray:
    """int32 label of each labelled example, in `labelled_ids` order (= 'index'); the
    noisy label under `data.label_noise`."""
    return np.asarray(self._parts.noisy_train_labels, np.int32)[self.labelled_ids]

  @property
  def labelled_true_labels(self) -> np.ndarray:
    """int32 clean label of each labelled example (telemetry only), as `labelled_labels`."""
    return np.asarray(self._parts.train_labels, np.int32)[self.labelled_ids]

  def train_dataset(self, start_step: int | None = None) -> tf.data.Dataset:
    """Infinite tf.data stream of this process's share of each global batch."""
    p = self._parts
    start = self.start_step if start_step is None else int(start_step)
    common = dict(process_index=p.process_index, seed=p.seed, start_step=start)
    parts = {}
    if p.labelled_views:
      parts["labelled"] = streams.example_stream(
          ids=self.labelled_ids, labels=p.noisy_train_labels, source=p.train_source,
          views_fn=self._views_fn(p.labelled_views),
          global_batch=self.local_batch_size * p.process_count,
          local_batch=self.local_batch_size, stream_id=streams.LABELLED_STREAM,
          label_key="label",
          true_labels=(None if p.noisy_train_labels is p.train_labels
                       else p.train_labels), **common)
    if p.unlabelled_views:
      parts["unlabelled"] = streams.example_stream(
          ids=self.unlabelled_ids, labels=p.unlabelled_labels,
          source=p.unlabelled_source, views_fn=self._views_fn(p.unlabelled_views),
          global_batch=self.local_unlabelled_batch_size * p.process_count,
          local_batch=self.local_unlabelled_batch_size,
          stream_id=streams.UNLABELLED_STREAM, label_key=p.unlabelled_label_key,
          **common)
    dataset = tf.data.Dataset.zip(parts)
    return dataset.with_options(p.options).prefetch(p.prefetch)

  def train_iter(self, start_step: int | None = None) -> Iterator[dict[str, Any]]:
    """Infinite NumPy batches of this process, from `start_step` (default: the build's).

    Each batch is `{'labelled': {'images': {view: float32 [b, H, W, C]},
    'label': int32 [b], 'id': int64 [b], 'index': int32 [b]}, 'unlabelled':
    {'images': {view: ...}, 'id': int64 [mu*b], 'index': int32 [mu*b],
    'true_label': int32 [mu*b]}}`; a part is absent when its views are empty.
    Under `data.label_noise` > 0 the labelled 'label' is the noisy one and the
    labelled part also has the clean 'true_label' (int32 [b]).
    'index' is the example's position in `labelled_ids` / `unlabelled_ids` (for
    the labelled stream: its memory-bank slot; with `data.unlabelled_dataset` the
    unlabelled 'id' and 'index' are both the example's id in that source, 0..N-1).
    'true_label' is for telemetry only, never for training; it is absent when the
    unlabelled source has no labels in the labelled source's classes.
    """
    return self.train_dataset(start_step).as_numpy_iterator()

  def eval_dataset(self) -> tf.data.Dataset:
    """Finite, padded eval batches `{'images': {'image'}, 'label', 'id', 'mask'}`."""
    p = self._parts
    dataset = streams.eval_stream(
        labels=p.eval_labels, source=p.eval_source,
        views_fn=self._views_fn({"image": p.eval_view}),
        global_batch=self.local_eval_batch_size * p.process_count,
        local_batch=self.local_eval_batch_size, process_index=p.process_index)
    return dataset.with_options(p.options).prefetch(p.prefetch)

  def eval_iter(self) -> Iterator[dict[str, Any]]:
    """One pass over the eval split as NumPy batches (mask 0 marks padding)."""
    return self.eval_dataset().as_numpy_iterator()

  def labelled_eval_iter(self) -> Iterator[dict[str, Any]]:
    """One pass over the labelled train images with the eval view, batched like
    `eval_iter` (the k-NN monitor's bank, linear evaluation's train set); 'id' is
    the position in `labelled_ids`; 'label' is the noisy one under `data.label_noise`."""
    return self._train_eval_iter(self.labelled_ids, labels=self._parts.noisy_train_labels)

  def unlabelled_eval_iter(self) -> Iterator[dict[str, Any]]:
    """One pass over the unlabelled stream's images in slot order (`unlabelled_ids`)
    with the eval view (no augmentation), batched, process-sharded and padded like
    `eval_iter`; 'id' is the slot (the train batches' unlabelled 'index'), 'label'
    the hidden label if known (telemetry only). For methods with an epoch pass
    (training/epoch_pass.py)."""
    p = self._parts
    dataset = streams.eval_stream(
        labels=p.unlabelled_labels[self.unlabelled_ids], ids=self.unlabelled_ids,
        source=p.unlabelled_source, views_fn=self._views_fn({"image": p.eval_view}),
        global_batch=self.local_eval_batch_size * p.process_count,
        local_batch=self.local_eval_batch_size, process_index=p.process_index)
    return dataset.with_options(p.options).prefetch(p.prefetch).as_numpy_iterator()

  @property
  def labelled_unlabelled_slots(self) -> np.ndarray:
    """int64 [num_labelled]: each labelled example's slot in the unlabelled stream
    (`labelled_in_unlabelled`), -1 where it is not there (or the unlabelled stream
    has its own source)."""
    slots = np.full(len(self.labelled_ids), -1, np.int64)
    p = self._parts
    if p.unlabelled_source is not p.train_source or not len(self.unlabelled_ids):
      return slots
    where = np.searchsorted(self.unlabelled_ids, self.labelled_ids)
    where = np.minimum(where, len(self.unlabelled_ids) - 1)
    found = self.unlabelled_ids[where] == self.labelled_ids
    slots[found] = where[found]
    return slots

  def validation_iter(self) -> Iterator[dict[str, Any]]:
    """One pass over the held-out validation images (`validation_ids`) with the eval
    view, batched, process-sharded and padded exactly like `eval_iter`
    (`num_validation_batches` batches, mask 0 marks padding); 'id' is the position
    in `validation_ids`."""
    if not len(self.validation_ids):
      raise ValueError("There is no validation split; set data.validation_size > 0.")
    return self._train_eval_iter(self.validation_ids, labels=self._parts.train_labels)

  def _train_eval_iter(self, ids: np.ndarray, *,
                       labels: np.ndarray) -> Iterator[dict[str, Any]]:
    """Eval-view batches of the train images `ids` (as `eval_stream`), 'label' from
    `labels` (indexed by train id)."""
    p = self._parts
    dataset = streams.eval_stream(
        labels=labels[ids], ids=ids, source=p.train_source,
        views_fn=self._views_fn({"image": p.eval_view}),
        global_batch=self.local_eval_batch_size * p.process_count,
        local_batch=self.local_eval_batch_size, process_index=p.process_index)
    return dataset.with_options(p.options).prefetch(p.prefetch).as_numpy_iterator()

  def _views_fn(self, views: Mapping[str, Mapping]) -> streams.ViewsFn:
    return streams.make_views_fn(views, image_size=self._parts.image_size,
                                 mean=self.info.mean, std=self.info.std)


def build_input(data_config: Mapping | ml_collections.ConfigDict, *, batch_size: int,
                mu: float, eval_batch_size: int, seed: int,
                workdir: str | None = None, process_index: int = 0,
                process_count: int = 1, start_step: int = 0) -> Input:
  """Loads the data of `config.data` and prepares this process's streams.

  Args:
    data_config: `config.data` (keys and defaults: `default_data_config()`).
    batch_size: global labelled batch B.
    mu: unlabelled / labelled ratio; the global unlabelled batch is mu * B.
    eval_batch_size: global eval batch.
    seed: experiment seed (stream order and augmentations).
    workdir: if given, process 0 writes `<workdir>/labelled_ids.txt` (and, with a
      validation split, `validation_ids.txt`; an existing one is reused).
    process_index: this process, in [0, process_count).
    process_count: number of processes; each gets a contiguous 1/P of every batch.
    start_step: the first global step `train_iter()` yields (exact resume).

  Returns:
    The `Input` of this process.

  Raises:
    ValueError: (one line, saying what to change) for any bad setting or data.
  """
  cfg = _merged_config(data_config)
  unlabelled_batch = _validate_config(
      cfg, batch_size=batch_size, mu=mu, eval_batch_size=eval_batch_size,
      process_index=process_index, process_count=process_count, start_step=start_step)
  num_threads = int(cfg["tf_threads"] or tf_runtime.default_num_threads())
  tf_runtime.configure_tensorflow(num_threads=num_threads)
  options = tf_runtime.dataset_options(num_threads=num_threads)

  shared_cache = "://" in str(cfg["index_cache_dir"] or "")
  read_options = sources.ReadOptions(
      storage=cfg["storage"], max_memory_bytes=int(cfg["max_memory_bytes"]),
      index_cache_dir=cfg["index_cache_dir"] or None,
      index_wait_s=float(cfg["index_wait_s"]) if shared_cache and process_index > 0 else 0.0)
  source = sources.load_source(cfg["dataset"], data_dir=cfg["data_dir"],
                               train_split=cfg["train_split"],
                               eval_split=cfg["eval_split"], read_options=read_options)
  if cfg["eval_examples"]:
    source = dataclasses.replace(source, eval=_first_examples(source.eval,
                                                              int(cfg["eval_examples"])))
  validation_ids, labelled_ids = _split_ids(cfg, source.train, workdir=workdir)
  channels = int(cfg["num_channels"] or source.channels)
  train_source = streams.make_image_source(source.train, source_channels=source.channels,
                                           channels=channels)
  eval_source = streams.make_image_source(source.eval, source_channels=source.channels,
                                          channels=channels)
  extra = None  # the unlabelled source of data.unlabelled_dataset, if it is used
  if unlabelled.parse_spec(cfg["unlabelled_dataset"]) and cfg["unlabelled_views"]:
    extra = unlabelled.load(cfg["unlabelled_dataset"], labelled=source,
                            labelled_dataset=cfg["dataset"], eval_split=cfg["eval_split"],
                            data_dir=cfg["data_dir"], read_options=read_options)
    unlabelled_ids = np.arange(len(extra.examples), dtype=np.int64)
    unlabelled_source = streams.make_image_source(
        extra.examples, source_channels=extra.channels, channels=channels)
  else:
    unlabelled_ids = splits.unlabelled_ids(
        num_examples=len(source.train), labelled_ids=labelled_ids,
        include_labelled=bool(cfg["labelled_in_unlabelled"]), held_out=validation_ids)
    if cfg["unlabelled_views"] and not len(unlabelled_ids):
      raise ValueError("Every training example is labelled, so the unlabelled stream is "
                       "empty; set data.labelled_in_unlabelled=True or label fewer.")
    unlabelled_source = train_source
  train_ids = splits.unlabelled_ids(num_examples=len(source.train),
                                    labelled_ids=labelled_ids, include_labelled=True,
                                    held_out=validation_ids)
  mean, std = _normalisation(cfg, channels=channels, source=train_source,
                             train_ids=train_ids, options=options)
  image_size = int(cfg["image_size"])
  _dry_run_views(cfg, source=train_source, unlabelled_source=unlabelled_source,
                 image_size=image_size)

  if workdir is not None and process_index == 0:
    record_unlabelled = extra is not None and unlabelled.check_record(workdir, extra)
    splits.write_labelled_ids(os.path.join(workdir, splits.LABELLED_IDS_FILENAME),
                              labelled_ids)
    if len(validation_ids):
      splits.write_labelled_ids(os.path.join(workdir, splits.VALIDATION_IDS_FILENAME),
                                validation_ids)
    if record_unlabelled:
      unlabelled.write_record(workdir, extra)
  info = DataInfo(
      num_classes=source.num_classes, image_shape=(image_size, image_size, channels),
      num_train=len(source.train), num_labelled=len(labelled_ids),
      num_unlabelled=len(unlabelled_ids),
      num_eval=len(source.eval), num_validation=len(validation_ids),
      class_names=source.class_names, mean=mean, std=std)
  noisy_train_labels = source.train.labels
  if float(cfg["label_noise"]) > 0:
    noisy_train_labels = splits.symmetric_label_noise(
        labels=source.train.labels, ids=labelled_ids, fraction=float(cfg["label_noise"]),
        seed=int(cfg["label_noise_seed"]), num_classes=source.num_classes)
  parts = _StreamParts(
      train_labels=source.train.labels, noisy_train_labels=noisy_train_labels,
      eval_labels=source.eval.labels,
      train_source=train_source, eval_source=eval_source,
      unlabelled_labels=source.train.labels if extra is None else extra.examples.labels,
      unlabelled_source=unlabelled_source,
      unlabelled_label_key=(
          "true_label" if extra is None or extra.has_true_labels else None),
      labelled_views=cfg["labelled_views"], unlabelled_views=cfg["unlabelled_views"],
      eval_view=cfg["eval_view"], image_size=image_size, seed=int(seed),
      process_index=process_index, process_count=process_count, options=options,
      prefetch=int(cfg["prefetch"]) if cfg["prefetch"] else tf.data.AUTOTUNE)
  return Input(
      info=info, labelled_ids=labelled_ids, unlabelled_ids=unlabelled_ids,
      validation_ids=validation_ids,
      local_batch_size=batch_size // process_count,
      local_unlabelled_batch_size=unlabelled_batch // process_count,
      local_eval_batch_size=eval_batch_size // process_count,
      num_eval_batches=-(-len(source.eval) // eval_batch_size),
      num_validation_batches=-(-len(validation_ids) // eval_batch_size),
      start_step=int(start_step), _parts=parts)


def _as_dict(value: Any) -> Any:
  return value.to_dict() if hasattr(value, "to_dict") else value


def _first_examples(split: sources.SplitExamples, count: int) -> sources.SplitExamples:
  """The first `count` examples of `split` (all of them if it has no more); ids are
  row indices, so they stay the same."""
  if count >= len(split):
    return split
  first = lambda values: None if values is None else values[:count]
  return dataclasses.replace(split, labels=split.labels[:count], pixels=first(split.pixels),
                             encoded=first(split.encoded), names=first(split.names))


def _merged_config(data_config: Mapping | ml_collections.ConfigDict) -> dict[str, Any]:
  """Config as plain dicts, missing keys filled from the defaults."""
  given = dict(_as_dict(data_config))
  unknown = sorted(set(given) - set(_DEFAULTS))
  if unknown:
    raise ValueError(f"Unknown config.data keys {unknown}; known keys: "
                     f"{sorted(_DEFAULTS)}.")
  cfg = dict(_DEFAULTS)
  cfg.update(given)
  for key in ("labelled_views", "unlabelled_views"):
    cfg[key] = {name: dict(_as_dict(spec)) for name, spec in (cfg[key] or {}).items()}
  cfg["eval_view"] = dict(_as_dict(cfg["eval_view"]))
  return cfg


def _validate_config(cfg: dict[str, Any], *, batch_size: int, mu: float,
                     eval_batch_size: int, process_index: int, process_count: int,
                     start_step: int) -> int:
  """Checks everything knowable before loading data; returns the global mu*B."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count="
                     f"{process_count}).")
  unlabelled_batch = mu * batch_size if cfg["unlabelled_views"] else 0
  if unlabelled_batch != int(unlabelled_batch):
    raise ValueError(f"mu * batch_size = {mu} * {batch_size} is not an integer; "
                     "change mu or batch_size.")
  unlabelled_batch = int(unlabelled_batch)
  if cfg["unlabelled_views"] and unlabelled_batch < 1:
    raise ValueError(f"data.unlabelled_views is set but mu={mu}; set mu > 0 or "
                     "remove the unlabelled views.")
  for name, value in (("batch_size", batch_size), ("mu * batch_size", unlabelled_batch),
                      ("eval_batch_size", eval_batch_size)):
    if value % process_count or (value < 1 and name != "mu * batch_size"):
      raise ValueError(f"{name}={value} must be a positive multiple of the process "
                       f"count {process_count}; change it.")
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0.")
  unlabelled.parse_spec(cfg["unlabelled_dataset"])  # a malformed value fails here
  count = cfg["eval_examples"]
  if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
    raise ValueError(f"data.eval_examples={count!r} must be an int >= 0 (0: the whole "
                     "eval split).")
  size = cfg["validation_size"]
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
    raise ValueError(f"data.validation_size={size!r} must be an int >= 0 (0: no "
                     "validation split).")
  chosen = [k for k in ("label_fraction", "labels_per_class", "labelled_ids_file")
            if cfg[k] is not None]
  if len(chosen) != 1:
    raise ValueError(
        f"Set exactly one of data.label_fraction, data.labels_per_class and "
        f"data.labelled_ids_file (set: {chosen or 'none'}); set the others to None.")
  noise = cfg["label_noise"]
  if (isinstance(noise, bool) or not isinstance(noise, (int, float))
      or not 0.0 <= noise <= 1.0):
    raise ValueError(f"data.label_noise={noise!r} must be a fraction in [0, 1] "
                     "(0: clean labels).")
  if isinstance(cfg["label_noise_seed"], bool) or not isinstance(
      cfg["label_noise_seed"], (int, np.integer)):
    raise ValueError(f"data.label_noise_seed={cfg['label_noise_seed']!r} must be an int.")
  fraction = cfg["label_fraction"]
  if fraction is not None and not 0.0 < fraction <= 1.0:
    raise ValueError(f"data.label_fraction={fraction} is outside (0, 1]; use e.g. "
                     "0.01 for 1% labels.")
  if not cfg["labelled_views"] and not cfg["unlabelled_views"]:
    raise ValueError("data.labelled_views and data.unlabelled_views are both empty; "
                     "name at least one view, e.g. {'image': {'name': 'crop_flip'}}.")
  if cfg["storage"] not in sources.STORAGE_MODES:
    raise ValueError(f"data.storage={cfg['storage']!r}; use one of {sources.STORAGE_MODES}.")
  if not isinstance(cfg["max_memory_bytes"], int) or cfg["max_memory_bytes"] < 0:
    raise ValueError(f"data.max_memory_bytes={cfg['max_memory_bytes']!r} must be an "
                     "int >= 0 (bytes).")
  if not isinstance(cfg["image_size"], int) or cfg["image_size"] < 1:
    raise ValueError(f"data.image_size={cfg['image_size']!r} must be a positive int.")
  if cfg["num_channels"] not in (None, 1, 3):
    raise ValueError(f"data.num_channels={cfg['num_channels']!r}; use None, 1 or 3.")
  for key in ("labelled_views", "unlabelled_views"):
    for name, spec in cfg[key].items():
      augment.check_view_spec(spec, where=f"data.{key}[{name!r}]")
  augment.check_view_spec(cfg["eval_view"], where="data.eval_view")
  return unlabelled_batch


def _split_ids(cfg: dict[str, Any], train: sources.SplitExamples, *,
               workdir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """(validation ids, labelled ids) of the train split.

  The validation ids are those of `<workdir>/validation_ids.txt` when an earlier run
  wrote it (a resumed run keeps its split), else drawn by
  `splits.choose_validation_ids` (avoiding the ids of a `labelled_ids_file`). The
  labelled subset is the id file's, or drawn from the ids not held out.
  """
  size, seed = int(cfg["validation_size"]), int(cfg["split_seed"])
  given = None
  if cfg["labelled_ids_file"] is not None:
    given = splits.read_labelled_ids(cfg["labelled_ids_file"], num_examples=len(train),
                                     names=train.names)
  path = os.path.join(workdir, splits.VALIDATION_IDS_FILENAME) if workdir else None
  if path is not None and epath.Path(path).exists():
    validation = splits.read_labelled_ids(path, num_examples=len(train))
    if len(validation) != size:
      raise ValueError(
          f"{path} holds {len(validation)} validation ids of an earlier run but "
          f"data.validation_size={size}; set it to {len(validation)} or use a new workdir.")
  else:
    validation = splits.choose_validation_ids(labels=train.labels, validation_size=size,
                                              seed=seed, exclude=given)
  if given is not None:
    overlap = np.intersect1d(given, validation)
    if len(overlap):
      raise ValueError(
          f"data.labelled_ids_file lists {len(overlap)} ids held out for validation in "
          f"{path} (e.g. {overlap[:3].tolist()}); use a new workdir for this subset.")
    return validation, given
  return validation, splits.choose_labelled_ids(
      labels=train.labels, seed=seed, label_fraction=cfg["label_fraction"],
      labels_per_class=cfg["labels_per_class"], held_out=validation)


def _normalisation(cfg: dict[str, Any], *, channels: int, source: streams.ImageSource,
                   train_ids: np.ndarray, options: tf.data.Options
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel (mean, std): given, known for the dataset, or computed over evenly
  spaced `train_ids` (the train split less any validation ids)."""
  given = {}
  for key in ("mean", "std"):
    value = cfg[key]
    if value is None:
      continue
    value = tuple(float(v) for v in np.atleast_1d(np.asarray(value, np.float64)))
    if len(value) == 1:
      value *= channels
    if len(value) != channels or (key == "std" and min(value) <= 0):
      raise ValueError(f"data.{key}={cfg[key]!r} must be one value or {channels} "
                       f"(positive for std) values, one per channel.")
    given[key] = value
  if len(given) < 2:
    known = _KNOWN_NORMALISATION.get(cfg["dataset"].split("/")[0].split(":")[0]
                                     .removesuffix("_subset"))
    if known and channels == 3:
      mean, std = known
    else:
      num_train = len(train_ids)
      sample = train_ids[np.unique(
          np.linspace(0, num_train - 1, min(num_train, int(cfg["stats_sample_size"])))
          .round().astype(np.int64))]
      mean, std = streams.channel_statistics(source=source, ids=sample, options=options)
      std = tuple(s if s > 1e-6 else 1.0 for s in std)  # constant images
    given.setdefault("mean", tuple(mean))
    given.setdefault("std", tuple(std))
  return given["mean"], given["std"]


def _dry_run_views(cfg: dict[str, Any], *, source: streams.ImageSource,
                   unlabelled_source: streams.ImageSource, image_size: int) -> None:
  """Runs every view once on example 0 of its stream's source so bad parameters fail
  before training."""
  image = source.lookup(tf.constant(0, tf.int64))
  unlabelled_image = (image if unlabelled_source is source
                      else unlabelled_source.lookup(tf.constant(0, tf.int64)))
  seed = tf.constant([0, 0], tf.int64)
  named = [(f"data.{key}[{name!r}]", spec, unlabelled_image if key == "unlabelled_views"
            else image) for key in ("labelled_views", "unlabelled_views")
           for name, spec in cfg[key].items()]
  named.append(("data.eval_view", cfg["eval_view"], image))
  for where, spec, example in named:
    try:
      augment.apply_view(example, spec=spec, seed=seed, image_size=image_size)
    except (ValueError, TypeError, tf.errors.OpError) as error:
      message = (str(error).strip().splitlines() or [type(error).__name__])[0]
      raise ValueError(f"{where}={spec}: {message}") from error
