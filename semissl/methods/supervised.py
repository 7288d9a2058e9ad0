"""Supervised baseline: cross-entropy on the labelled subset only.

The baseline every semi-supervised method is compared against, and the first
implementation of the method interface.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from semissl import losses
from semissl import models
from semissl.methods import base, networks


def build_classifier(config, num_classes: int, *, model_config=None,
                     dropout_rate: float = 0.0):
  """Backbone from `config.model` (name + kwargs; or `model_config`) with a linear
  classifier, `dropout_rate` on its input in train mode."""
  return models.Classifier(backbone=networks.build_backbone(model_config or config.model),
                           num_classes=num_classes, dropout_rate=dropout_rate)


def classification_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
  return {"train_top1": jnp.mean(jnp.argmax(logits, -1) == labels)}


@base.register
class Supervised(base.Method):
  """Labelled cross-entropy with optional label smoothing."""

  name = "supervised"
  defaults = {"label_smoothing": 0.0}

  def __init__(self, config, info, **kwargs):
    super().__init__(config, info, **kwargs)
    self.model = build_classifier(config, info.num_classes)

  def validate(self):
    smoothing = self.option("label_smoothing")
    if not 0.0 <= smoothing < 1.0:
      raise ValueError(f"method.label_smoothing={smoothing} must be in [0, 1).")

  def init(self, rng, example_batch):
    images = example_batch["labelled"]["images"]["image"]
    variables = self.model.init({"params": rng, "dropout": rng}, images, train=False)
    return dict(variables), {}

  def loss_fn(self, params, batch, *, state, rng):
    labelled = batch["labelled"]
    logits, batch_stats = networks.apply_train(
        self.model, params, state.batch_stats, labelled["images"]["image"], rng=rng)
    loss = losses.softmax_cross_entropy(
        logits=logits, labels=labelled["label"],
        label_smoothing=self.option("label_smoothing"))
    metrics = classification_metrics(logits, labelled["label"])
    return loss, base.StepAux(batch_stats, state.method_state, metrics)

  def eval_logits(self, variables, images):
    return self.model.apply(variables, images, train=False)

  def eval_features(self, variables, images):
    """The backbone's pooled features [B, D] (eval mode)."""
    backbone = lambda module, x, train: module.backbone(x, train=train)
    return self.model.apply(variables, images, train=False, method=backbone)
