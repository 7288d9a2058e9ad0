"""Pieces every method builds on: the configured backbone, the train-mode forward,
device-local concatenation of example batches and pseudo-label telemetry."""
from __future__ import annotations

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from semissl import models
from semissl.models import precision


def build_backbone(model_config: ml_collections.ConfigDict):
  """`config.model.name` from the model registry; the other keys are its kwargs.

  `config.model.dtype` ('float32' | 'bfloat16'; default float32) is the compute dtype
  of the backbone (models/precision.py); its features, and so every head, classifier
  and loss after it, are float32.
  """
  kwargs = {k: v for k, v in model_config.to_dict().items() if k != "name"}
  kwargs["dtype"] = precision.compute_dtype(kwargs.get("dtype") or "float32")
  return models.get_backbone(model_config.name, **kwargs)


def apply_train(model, params, batch_stats, images, *, rng=None, method=None):
  """Train-mode forward with mutable batch statistics: BN normalises with the
  statistics of `images` (dropout, if any, draws from `rng`).

  Returns (outputs, updated batch_stats) (`batch_stats` itself when the model has
  none to update); callers that must not move the running averages (teachers,
  VAT's perturbed passes, label guessing) drop the latter.
  """
  outputs, updates = model.apply(
      {"params": params, "batch_stats": batch_stats}, images, train=True,
      mutable=["batch_stats"], rngs=None if rng is None else {"dropout": rng},
      method=method)
  return outputs, updates.get("batch_stats", batch_stats)


def rows_over_data(method, *, num_rows: int, paths: tuple[str, ...],
                   what: str) -> tuple[tuple[str, P], ...]:
  """Sharding rules that split the leading (row) axis of the method-state leaves at
  `paths` over `data` (a per-example store: SimMatch's bank, the temporal
  ensemble), or none (replicated) when `num_rows` does not divide over the
  method's data devices (`Method.data_devices`)."""
  devices = method.data_devices
  if num_rows % devices:
    logging.info("%s of %d rows does not divide over %d devices: replicated.", what,
                 num_rows, devices)
    return ()
  return tuple((path, P("data")) for path in paths)


def _local_devices(mesh, sizes) -> int:
  """Devices on `mesh`'s 'data' axis when every size divides over them, else 1."""
  devices = 1 if mesh is None else int(dict(mesh.shape).get("data", 1))
  return devices if all(n % devices == 0 for n in sizes) else 1


def concat_examples(arrays, *, mesh) -> jax.Array:
  """Concatenates batches [n_i, ...] along the example axis without moving examples
  between devices: each device's block of the result holds its own rows of every
  array in turn (a_0, a_1, ...), so with the batch sharded over 'data' no device
  gathers another's images (a plain concatenate re-spreads the rows: an all-gather
  of the whole image batch). Row order therefore differs from jnp.concatenate's
  unless the mesh has one data device; `split_examples` is the exact inverse, and
  per-example outputs and batch statistics do not depend on the order.
  """
  sizes = [a.shape[0] for a in arrays]
  devices = _local_devices(mesh, sizes)
  if devices == 1:
    return jnp.concatenate(arrays, axis=0)
  spec = NamedSharding(mesh, P("data"))
  blocks = [jax.lax.with_sharding_constraint(
      a.reshape(devices, a.shape[0] // devices, *a.shape[1:]), spec) for a in arrays]
  out = jnp.concatenate(blocks, axis=1)
  return jax.lax.with_sharding_constraint(out.reshape(-1, *out.shape[2:]), spec)


def split_examples(x: jax.Array, sizes, *, mesh) -> list[jax.Array]:
  """The inverse of `concat_examples`: arrays of `sizes` rows, in their own order."""
  sizes = [int(n) for n in sizes]
  devices = _local_devices(mesh, sizes)
  if devices == 1:
    return list(jnp.split(x, np.cumsum(sizes)[:-1], axis=0))
  spec = NamedSharding(mesh, P("data"))
  blocks = jax.lax.with_sharding_constraint(x.reshape(devices, -1, *x.shape[1:]), spec)
  out, start = [], 0
  for n in sizes:
    part = blocks[:, start:start + n // devices]
    out.append(jax.lax.with_sharding_constraint(part.reshape(n, *x.shape[1:]), spec))
    start += n // devices
  return out


def labelled_class_prior(info) -> jax.Array:
  """p(y): the class frequencies of the labelled split (`DatasetInfo.labelled_labels`;
  uniform when unknown), the target of ReMixMatch's distribution alignment."""
  num_classes = info.num_classes
  labels = info.labelled_labels
  if labels is None or not len(labels):
    return jnp.full((num_classes,), 1.0 / num_classes)
  counts = np.bincount(np.asarray(labels), minlength=num_classes)[:num_classes]
  return jnp.asarray(counts / counts.sum(), jnp.float32)


def pseudo_label_telemetry(*, pseudo_labels: jax.Array, true_labels: jax.Array,
                           mask: jax.Array | None = None, prefix: str = "pl_") -> dict:
  """Accuracy of pseudo-labels against the hidden true labels (telemetry only).

  `mask` marks the pseudo-labels the loss uses (e.g. confidence above the
  threshold): reports mask rate, accuracy of all and of the masked ones.
  """
  correct = (pseudo_labels == true_labels).astype(jnp.float32)
  out = {prefix + "accuracy": jnp.mean(correct)}
  if mask is not None:
    mask = mask.astype(jnp.float32)
    out[prefix + "mask_rate"] = jnp.mean(mask)
    out[prefix + "masked_accuracy"] = jnp.sum(correct * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  return jax.lax.stop_gradient(out)
