"""Pieces every method builds on: the configured backbone and pseudo-label telemetry."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from semissl import models


def build_backbone(model_config: ml_collections.ConfigDict):
  """`config.model.name` from the model registry; the other keys are its kwargs."""
  kwargs = {k: v for k, v in model_config.to_dict().items() if k != "name"}
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
