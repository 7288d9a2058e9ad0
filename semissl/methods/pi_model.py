"""Pi-model (Laine & Aila 2017; survey L_u^Pi).

Two stochastic views ('first', 'second': independent augmentations and dropout
masks) of every labelled and unlabelled image go through the network in one
train-mode batch (BN sees both). L = CE(first labelled view) + mu(t) L_u^Pi with
L_u^Pi the softmax MSE between the two passes (`losses.pi_model_loss`; the second
pass is the stop-gradient target), over labelled and unlabelled images, and
mu(t) the sigmoid ramp-up exp(-5 (1 - t)^2) of `semissl.methods.rampup`.
Telemetry 'pl_*': argmax of the target pass on the unlabelled images.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from semissl import losses
from semissl.methods import base
from semissl.methods import semi_supervised_classifier as ssc


@base.register
class PiModel(ssc.SemiSupervisedClassifier):
  """Softmax-MSE consistency between two stochastic passes."""

  name = "pi_model"
  labelled_view_names = ("first", "second")
  unlabelled_view_names = ("first", "second")

  def loss_fn(self, params, batch, *, state, rng):
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    num_labelled = labelled["label"].shape[0]
    parts = [labelled["images"]["first"], unlabelled["images"]["first"],
             labelled["images"]["second"], unlabelled["images"]["second"]]
    logits, batch_stats = self.apply_train(params, state.batch_stats,
                                           self.concat_examples(parts), rng=rng)
    parts = self.split_examples(logits, [part.shape[0] for part in parts])
    first_logits, second_logits = (jnp.concatenate(parts[:2]), jnp.concatenate(parts[2:]))
    unsupervised = losses.pi_model_loss(logits=first_logits,
                                        other_logits=second_logits)
    target_unlabelled = jax.lax.stop_gradient(second_logits[num_labelled:])
    metrics = ssc.target_telemetry(targets=target_unlabelled,
                                   true_labels=unlabelled.get("true_label"))
    return self.combine(state=state, batch_stats=batch_stats,
                        labelled_logits=first_logits[:num_labelled],
                        labels=labelled["label"], unsupervised_loss=unsupervised,
                        metrics=metrics)
