"""Pieces every method builds on: the configured backbone and pseudo-label telemetry."""
from __future__ import annotations

import math

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec as P

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


def data_axis_size(config) -> int:
  """Devices on the 'data' mesh axis that `config.mesh` gives on this machine."""
  mesh = dict(config.get("mesh", None) or {"data": -1})
  others = math.prod(int(v) for k, v in mesh.items() if k != "data" and int(v) != -1)
  size = int(mesh["data"])
  return size if size != -1 else max(jax.device_count() // max(others, 1), 1)


def rows_over_data(config, *, num_rows: int, paths: tuple[str, ...],
                   what: str) -> tuple[tuple[str, P], ...]:
  """Sharding rules that split the leading (row) axis of the method-state leaves at
  `paths` over `data` (a per-example store: SimMatch's bank, the temporal
  ensemble), or none (replicated) when `num_rows` does not divide over the devices."""
  devices = data_axis_size(config)
  if num_rows % devices:
    logging.info("%s of %d rows does not divide over %d devices: replicated.", what,
                 num_rows, devices)
    return ()
  return tuple((path, P("data")) for path in paths)


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
