"""UDA, Unsupervised Data Augmentation (Xie et al. 2020; survey L_u^UDA).

Labelled, weak unlabelled ('weak': the "original" example) and strong
unlabelled ('strong': RandAugment) images go through one train-mode batch, as
UDA's code does. The weak logits are the fixed target (stop-gradient, same
params): 1[max p(weak) > tau] KL(softmax(z_weak / T) || p(strong))
(`losses.uda_loss`; UDA's image settings tau = 0.8, T = 0.4, lambda = 1).
L = CE(labelled) + mu(t) L_u with no ramp-up by default (`method.rampup='none'`).
Training Signal Annealing (TSA) of the labelled loss is not implemented.
Telemetry 'pl_*': argmax of the weak view, its mask rate and masked accuracy.
"""
from __future__ import annotations

import jax.numpy as jnp

from semissl import losses
from semissl.methods import base
from semissl.methods import semi_supervised_classifier as ssc


@base.register
class UDA(ssc.SemiSupervisedClassifier):
  """Confidence-masked, sharpened weak-to-strong KL consistency."""

  name = "uda"
  labelled_view_names = ("image",)
  unlabelled_view_names = ("weak", "strong")
  defaults = {**ssc.SemiSupervisedClassifier.defaults, "rampup": "none",
              "threshold": 0.8, "temperature": 0.4}

  def validate(self):
    super().validate()
    self.check_probability("threshold")
    self.check_positive("temperature")

  def loss_fn(self, params, batch, *, state, rng):
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    num_labelled = labelled["label"].shape[0]
    num_unlabelled = unlabelled["images"]["weak"].shape[0]
    logits, batch_stats = self.apply_train(
        params, state.batch_stats,
        jnp.concatenate([labelled["images"]["image"], unlabelled["images"]["weak"],
                         unlabelled["images"]["strong"]]), rng=rng)
    labelled_logits, weak_logits, strong_logits = ssc.split_rows(
        logits, [num_labelled, num_unlabelled, num_unlabelled])
    unsupervised, extras = losses.uda_loss(
        teacher_logits=weak_logits, student_logits=strong_logits,
        threshold=self.option("threshold"), temperature=self.option("temperature"))
    metrics = ssc.target_telemetry(targets=weak_logits,
                                   true_labels=unlabelled.get("true_label"),
                                   mask=extras["mask"])
    return self.combine(state=state, batch_stats=batch_stats,
                        labelled_logits=labelled_logits, labels=labelled["label"],
                        unsupervised_loss=unsupervised, metrics=metrics)
