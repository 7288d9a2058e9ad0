"""Temporal Ensembling (Laine & Aila 2017, Algorithm 2; survey L_u^TE).

One stochastic pass ('image' view, with dropout) of the labelled and unlabelled
images in a single train-mode batch. Each unlabelled example i has a slot (batch
'index': its position in the unlabelled split) in the method state: Z_i, the EMA
of its softmax predictions, and t_i, the number of times it was updated. The
target is the start-up bias corrected z~_i = Z_i / (1 - alpha^t_i) (sg), and
L = CE(labelled) + mu(t) 1/|U'| sum_{i in U'} 1/C ||softmax(z_i) - z~_i||^2 over the
unlabelled examples U' that already have a target (t_i >= 1); then
Z_i <- alpha Z_i + (1 - alpha) softmax(z_i) and t_i <- t_i + 1.
Z moves per example when it is drawn, not once per epoch (paper values and this
choice: docs/DESIGN_CHOICES.md ("Temporal Ensembling")). The store ([N, C] and [N]) is
sharded over `data` like SimMatch's bank and checkpointed with the state, so a resume
continues it exactly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from semissl import losses
from semissl.methods import base, networks
from semissl.methods import semi_supervised_classifier as ssc


@base.register
class TemporalEnsembling(ssc.SemiSupervisedClassifier):
  """Consistency with each example's bias-corrected EMA of past predictions."""

  name = "temporal_ensembling"
  labelled_view_names = ("image",)
  unlabelled_view_names = ("image",)
  defaults = {**ssc.SemiSupervisedClassifier.defaults, "alpha": 0.6}

  def validate(self):
    super().validate()
    alpha = self.option("alpha")
    if not 0.0 <= alpha < 1.0:
      raise ValueError(f"method.alpha={alpha} must be in [0, 1).")
    if self.info.num_unlabelled < 1:
      raise ValueError("temporal_ensembling needs an unlabelled split (num_unlabelled > 0).")

  def init(self, rng, example_batch):
    variables, _ = super().init(rng, example_batch)
    n, c = int(self.info.num_unlabelled), int(self.info.num_classes)
    return variables, {"ensemble": jnp.zeros((n, c), jnp.float32),
                       "updates": jnp.zeros((n,), jnp.int32)}

  def state_sharding_rules(self):
    return networks.rows_over_data(
        self, num_rows=self.info.num_unlabelled, what="Temporal ensemble",
        paths=(r"method_state/ensemble", r"method_state/updates"))

  def loss_fn(self, params, batch, *, state, rng):
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    (labelled_logits, unlabelled_logits), batch_stats = self.apply_train_parts(
        params, state.batch_stats,
        [labelled["images"]["image"], unlabelled["images"]["image"]], rng=rng)

    store, alpha = state.method_state, self.option("alpha")
    slots = unlabelled["index"].astype(jnp.int32)
    accumulated = store["ensemble"].at[slots].get(mode="fill", fill_value=0)
    updates = store["updates"].at[slots].get(mode="fill", fill_value=0)
    target, valid = losses.temporal_ensemble_target(
        accumulated=accumulated, num_updates=updates, alpha=alpha)
    probs = jax.nn.softmax(unlabelled_logits, axis=-1)
    per_example = jnp.mean(jnp.square(probs - jax.lax.stop_gradient(target)), axis=-1)
    unsupervised = jnp.sum(per_example * valid) / jnp.maximum(jnp.sum(valid), 1.0)

    new_accumulated, _ = losses.temporal_ensemble_update(
        accumulated=accumulated, predictions=probs, alpha=alpha, num_updates=updates + 1)
    new_store = {"ensemble": store["ensemble"].at[slots].set(new_accumulated, mode="drop"),
                 "updates": store["updates"].at[slots].add(1, mode="drop")}

    metrics = ssc.target_telemetry(targets=jnp.where(valid[:, None] > 0, target, probs),
                                   true_labels=unlabelled.get("true_label"), mask=valid)
    metrics["ensemble_coverage"] = jnp.mean((new_store["updates"] > 0).astype(jnp.float32))
    loss, aux = self.combine(state=state, batch_stats=batch_stats,
                             labelled_logits=labelled_logits, labels=labelled["label"],
                             unsupervised_loss=unsupervised, metrics=metrics)
    return loss, aux._replace(method_state=new_store)
