"""Pieces every method builds on: the configured backbone and pseudo-label telemetry."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

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
