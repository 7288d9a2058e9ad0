"""`load(workdir)`: a trained run as a `Model` with `predict(images)` and `features(images)`.

Needs only the workdir: `config.json` (the run's config), `model_info.json` (image
shape, classes, normalisation; written by the train loop) and the latest checkpoint,
of which only the chosen weights are read (online `params` / `batch_stats`, or the
EMA target's). The network is the method's own: the logits are `method.eval_logits`
and the features `method.eval_features`, as in the run's evaluation. No TensorFlow,
no data pipeline.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from semissl import methods
from semissl.training import checkpointing, model_info, workdirs

WEIGHTS = ("ema", "online")
# Collections of each choice in the checkpoint's TrainState.
_COLLECTIONS = {"online": ("params", "batch_stats"),
                "ema": ("target_params", "target_batch_stats")}
# (online, EMA) validation metrics the run's headline choice is made on, in order.
_HEADLINE_KEYS = (("val_top1", "val_ema_top1"), ("val_knn_top1", "val_ema_knn_top1"))


def headline_weights(workdir: str) -> str | None:
  """'online' | 'ema': the weights with the higher validation top-1 in the run's
  `results.json` (ties: online), the rule of the results tables; None when the run
  recorded no validation metrics (no `data.validation_size`, or not finished)."""
  path = workdirs.resolve(workdir) / "results.json"
  if not path.exists():
    return None
  metrics = json.loads(path.read_text()).get("metrics", {})
  for online_key, ema_key in _HEADLINE_KEYS:
    online, ema = metrics.get(online_key), metrics.get(ema_key)
    if online is not None and ema is not None:
      return "online" if online >= ema else "ema"
  return None


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the config files use."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config, from its `config.json`."""
  path = workdirs.resolve(workdir) / workdirs.CONFIG_FILENAME
  if not path.exists():
    raise ValueError(f"workdir {os.fspath(workdir)} has no {workdirs.CONFIG_FILENAME}; "
                     "point at the workdir a training run wrote.")
  return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))


def _abstract_batch(config: ml_collections.ConfigDict,
                    info: methods.DatasetInfo) -> dict[str, Any]:
  """A train batch of the config's views as ShapeDtypeStructs: what `method.init`
  reads (views [B, S, S, C] float32 at their own 'size' or the image size)."""
  height, _, channels = info.image_shape
  batch = int(config.batch_size)
  mu = config.get("mu", 0) or 0
  int32 = lambda n: jax.ShapeDtypeStruct((n,), jnp.int32)

  def views(specs, n):
    return {name: jax.ShapeDtypeStruct(
        (n, int(spec.get("size") or height), int(spec.get("size") or height), channels),
        jnp.float32) for name, spec in dict(specs or {}).items()}

  out = {}
  labelled = config.data.get("labelled_views", None)
  if labelled:
    out["labelled"] = {"images": views(labelled, batch), "label": int32(batch),
                       "id": int32(batch), "index": int32(batch)}
  unlabelled = config.data.get("unlabelled_views", None)
  if unlabelled:
    n = int(mu * batch) if mu else batch
    out["unlabelled"] = {"images": views(unlabelled, n), "id": int32(n), "index": int32(n),
                         "true_label": int32(n)}
  return out


def _choose_weights(workdir: str, weights: str | None) -> str:
  if weights in (None, "auto"):
    return headline_weights(workdir) or "ema"
  chosen = str(weights).lower()
  if chosen not in WEIGHTS:
    raise ValueError(f"weights={weights!r}; use 'ema', 'online' or None (the run's "
                     "validation-chosen weights, else EMA).")
  return chosen


def load(workdir: str, *, weights: str | None = None, batch_size: int = 256) -> "Model":
  """The latest checkpoint of a training run's workdir, ready for inference.

  Args:
    workdir: a run's workdir (local or `gs://...`).
    weights: 'ema' (the EMA target), 'online', or None / 'auto': the weights the run
      reports as its headline (higher validation top-1 in results.json), else EMA.
    batch_size: images per forward pass in `predict` / `features`.

  Returns:
    A `Model`. Raises a one-line ValueError when the workdir has no checkpoint,
    misses config.json / model_info.json, or its checkpoint does not fit the config.
  """
  path = workdirs.resolve(workdir)
  if not path.is_dir():
    raise ValueError(f"workdir {os.fspath(workdir)} does not exist; point at a training "
                     "run's workdir.")
  step = checkpointing.latest_step(workdir)
  if step is None:
    raise ValueError(f"workdir {os.fspath(workdir)} has no checkpoint; train it first (a run "
                     "saves every config.checkpoint_every_steps steps and when it ends).")
  record = model_info.read(workdir)
  config = read_config(workdir)
  chosen = _choose_weights(workdir, weights)
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be positive.")
  info = model_info.dataset_info(record)
  method = methods.get_method(config.method.name)(config, info)
  abstract, _ = jax.eval_shape(method.init, jax.random.PRNGKey(0),
                               _abstract_batch(config, info))
  names = _COLLECTIONS[chosen]
  current = {names[0]: abstract["params"], names[1]: abstract.get("batch_stats", {})}
  loaded = checkpointing.load_variables_from(workdir, current, collections=names,
                                             require_all=True, what="workdir")
  variables = {"params": loaded[names[0]], "batch_stats": loaded[names[1]]}
  return Model(method=method, variables=variables, record=record, config=config,
               weights=chosen, step=int(step), workdir=os.fspath(workdir),
               batch_size=int(batch_size))


class Model:
  """A trained model (see `load`). Images are uint8 [N, H, W, C] pixels (0..255) or
  float [N, H, W, C] in [0, 1], at `image_shape` ([N, H, W] when C is 1); they are
  normalised as the run's eval pipeline did: (pixel / 255 - mean) / std. Runs in
  eval mode (batch-norm running statistics), `batch_size` images at a time, on the
  default device.

  Attributes: `config`, `method` (the run's `methods.Method`), `weights` ('ema' |
  'online'), `step` (of the checkpoint), `num_classes`, `class_names` (list or
  None), `image_shape` (H, W, C), `has_classifier`, `info` (model_info.json).
  """

  def __init__(self, *, method: methods.Method, variables: dict[str, Any],
               record: dict[str, Any], config: ml_collections.ConfigDict, weights: str,
               step: int, workdir: str, batch_size: int):
    self.method = method
    self.variables = variables
    self.info = record
    self.config = config
    self.weights = weights
    self.step = step
    self.workdir = workdir
    self.batch_size = batch_size
    self.num_classes = int(record["num_classes"])
    self.class_names = record.get("class_names")
    self.image_shape = tuple(int(d) for d in record["image_shape"])
    self.has_classifier = bool(record["has_classifier"])
    self._mean = np.asarray(record["mean"], np.float32)
    self._std = np.asarray(record["std"], np.float32)
    self._logits_fn = jax.jit(method.eval_logits) if self.has_classifier else None
    self._features_fn = jax.jit(method.eval_features)

  def __repr__(self) -> str:
    return (f"Model({self.info['method']}, {self.weights} weights at step {self.step}, "
            f"images {list(self.image_shape)}, {self.num_classes} classes)")

  def normalise(self, images: Any) -> np.ndarray:
    """float32 [N, H, W, C] network input of raw `images` (see the class docstring)."""
    images = np.asarray(images)
    height, width, channels = self.image_shape
    if images.ndim == 3 and channels == 1:
      images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != self.image_shape:
      raise ValueError(f"images have shape {list(images.shape)}; this model takes [N, {height}, "
                       f"{width}, {channels}] (resize and convert them first, as "
                       "experiments/predict.py does).")
    if images.dtype == np.uint8:
      # As tf.image.convert_image_dtype: cast, then times float32(1 / 255).
      images = images.astype(np.float32) * np.float32(1.0 / 255.0)
    elif np.issubdtype(images.dtype, np.floating):
      images = images.astype(np.float32)
    else:
      raise ValueError(f"images have dtype {images.dtype}; give uint8 pixels (0..255) or "
                       "floats in [0, 1].")
    return (images - self._mean) / self._std

  def _batched(self, fn, images: Any) -> np.ndarray:
    """`fn(variables, x)` over batches of normalised `images`, concatenated. The last
    batch is padded to the batch size, so one shape is compiled per call size."""
    inputs = self.normalise(images)
    count = len(inputs)
    if not count:
      raise ValueError("images is empty; give at least one image.")
    size = min(self.batch_size, count)
    outputs = []
    for start in range(0, count, size):
      chunk = inputs[start:start + size]
      if len(chunk) < size:
        chunk = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:],
                                                chunk.dtype)])
      outputs.append(np.asarray(jax.device_get(fn(self.variables, chunk))))
    return np.concatenate(outputs)[:count]

  def check_classifier(self) -> None:
    """One-line ValueError for a model without a classifier (SimCLR / SemPPL
    pretraining): it has `features` only."""
    if not self.has_classifier:
      raise ValueError(
          f"method {self.info['method']!r} has no classifier (a pretraining stage): use "
          "features(images), or fine-tune it (config.init_from=<this workdir>) to predict "
          "classes.")

  def logits(self, images: Any) -> np.ndarray:
    """float32 [N, K] classifier logits (`method.eval_logits`)."""
    self.check_classifier()
    return self._batched(self._logits_fn, images).astype(np.float32)

  def predict(self, images: Any) -> np.ndarray:
    """float32 [N, K] class probabilities: softmax of `logits(images)`."""
    logits = self.logits(images)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)

  def features(self, images: Any) -> np.ndarray:
    """float32 [N, D] encoder features (`method.eval_features`: what the k-NN monitor
    and linear evaluation read)."""
    if type(self.method).eval_features is methods.Method.eval_features:
      raise ValueError(f"method {self.info['method']!r} defines no eval_features; it has "
                       "predict(images) only.")
    return self._batched(self._features_fn, images).astype(np.float32)
