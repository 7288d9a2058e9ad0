"""The shared base of the classic family: one classifier, L = L_s + mu(t) L_u (survey).

A subclass names the views it reads (`labelled_view_names`,
`unlabelled_view_names`) and writes `loss_fn`; this base builds the backbone +
linear classifier of `config.model`, checks the views and the ramp-up config,
and provides the train-mode forward, the ramped weight mu(t) =
`method.unlabelled_weight` x ramp(t) (`semissl.methods.rampup`), the labelled
cross-entropy and the common metrics.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp

from semissl import losses
from semissl.methods import base, networks, rampup, supervised


class SemiSupervisedClassifier(base.Method):
  """Backbone + linear classifier trained with a labelled CE and an unlabelled term."""

  labelled_view_names: tuple[str, ...] = ("image",)
  unlabelled_view_names: tuple[str, ...] = ()
  defaults = {"unlabelled_weight": 1.0, "rampup": "sigmoid", "rampup_steps": 0,
              "rampup_start_step": 0, "label_smoothing": 0.0}

  def __init__(self, config, info, **kwargs):
    super().__init__(config, info, **kwargs)
    self.model = supervised.build_classifier(config, info.num_classes)

  def validate(self):
    """Views present, mu > 0, ramp-up well formed, weights and smoothing in range."""
    for stream, names in (("labelled", self.labelled_view_names),
                          ("unlabelled", self.unlabelled_view_names)):
      configured = set(self.config.data.get(f"{stream}_views", {}) or {})
      missing = [name for name in names if name not in configured]
      if missing:
        raise ValueError(f"method {self.name!r} needs config.data.{stream}_views "
                         f"{list(names)}; missing {missing}.")
    if self.unlabelled_view_names and not self.config.get("mu", 0):
      raise ValueError(f"method {self.name!r} needs unlabelled data: set config.mu > 0.")
    shape = self.option("rampup")
    if shape not in rampup.RAMPUP_SHAPES:
      raise ValueError(f"method.rampup={shape!r}; known: "
                       f"{', '.join(rampup.RAMPUP_SHAPES)}.")
    for key in ("rampup_steps", "rampup_start_step"):
      value = self.option(key)
      if not isinstance(value, int) or value < 0:
        raise ValueError(f"method.{key}={value!r} must be a non-negative integer.")
    self.check_non_negative("unlabelled_weight")
    smoothing = self.option("label_smoothing")
    if not 0.0 <= smoothing < 1.0:
      raise ValueError(f"method.label_smoothing={smoothing} must be in [0, 1).")

  def check_probability(self, key: str) -> None:
    """One-line error unless `method.<key>` is in [0, 1]."""
    if not 0.0 <= self.option(key) <= 1.0:
      raise ValueError(f"method.{key}={self.option(key)} must be in [0, 1].")

  def check_positive(self, key: str) -> None:
    """One-line error unless `method.<key>` is > 0."""
    if not self.option(key) > 0:
      raise ValueError(f"method.{key}={self.option(key)} must be positive.")

  def check_non_negative(self, key: str) -> None:
    """One-line error unless `method.<key>` is >= 0."""
    if self.option(key) < 0:
      raise ValueError(f"method.{key}={self.option(key)} must be non-negative.")

  def init(self, rng, example_batch):
    images = example_batch["labelled"]["images"][self.labelled_view_names[0]]
    variables = self.model.init({"params": rng, "dropout": rng}, images, train=False)
    return dict(variables), {}

  def apply_train(self, params, batch_stats, images, *, rng):
    """`networks.apply_train` of this method's classifier: (logits, updated
    batch_stats)."""
    return networks.apply_train(self.model, params, batch_stats, images, rng=rng)

  def apply_train_parts(self, params, batch_stats, parts, *, rng):
    """One train-mode pass over the image batches `parts` (concatenated per device):
    ([logits of each part], updated batch_stats)."""
    logits, batch_stats = self.apply_train(params, batch_stats,
                                           self.concat_examples(parts), rng=rng)
    return self.split_examples(logits, [part.shape[0] for part in parts]), batch_stats

  def unlabelled_weight(self, step) -> jax.Array:
    """mu(t) = method.unlabelled_weight * ramp(t)."""
    ramp = rampup.rampup_weight(step=step, rampup_steps=self.option("rampup_steps"),
                                shape=self.option("rampup"),
                                start_step=self.option("rampup_start_step"))
    return self.option("unlabelled_weight") * ramp

  def supervised_loss(self, logits, labels) -> jax.Array:
    """L_s: cross-entropy on the labelled batch (SimMatch Eq. 1)."""
    return losses.softmax_cross_entropy(
        logits=logits, labels=labels,
        label_smoothing=self.option("label_smoothing"))

  def combine(self, *, state, batch_stats, labelled_logits, labels,
              unsupervised_loss, extra_loss=0.0, metrics=None, supervised_loss=None):
    """L = L_s + mu(t) L_u (+ extra_loss), with the metrics every method reports;
    L_s is `supervised_loss` when given (e.g. UDA's annealed one), else the CE."""
    if supervised_loss is None:
      supervised_loss = self.supervised_loss(labelled_logits, labels)
    weight = self.unlabelled_weight(state.step)
    loss = supervised_loss + weight * unsupervised_loss + extra_loss
    metrics = dict(metrics or {})
    metrics.update(supervised.classification_metrics(labelled_logits, labels))
    metrics.update(supervised_loss=supervised_loss,
                   unsupervised_loss=unsupervised_loss,
                   unsupervised_weight=weight)
    metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
    return loss, base.StepAux(batch_stats, state.method_state, metrics)

  def eval_logits(self, variables, images):
    return self.model.apply(variables, images, train=False)

  def eval_features(self, variables, images):
    backbone = lambda module, x, train: module.backbone(x, train=train)
    return self.model.apply(variables, images, train=False, method=backbone)


def target_telemetry(*, targets, true_labels, mask=None, prefix="pl_") -> dict:
  """`pseudo_label_telemetry` of argmax(targets) (logits or probabilities) against
  the hidden true labels, keys `prefix`*; nothing when the batch has none
  (`true_labels` None)."""
  if true_labels is None:
    return {}
  return networks.pseudo_label_telemetry(
      pseudo_labels=jnp.argmax(targets, axis=-1), true_labels=true_labels,
      mask=mask, prefix=prefix)
