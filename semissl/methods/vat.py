"""VAT, Virtual Adversarial Training (Miyato et al. 2018; survey L_u^VAT), and
VAT + EntMin.

One clean train-mode pass over [labelled; unlabelled] gives the labelled CE and
the VAT target p(y|u) (stop-gradient). r_vadv comes from power iteration
(`losses.vat_loss` / `vat_adversarial_direction`; xi, epsilon,
`num_power_iterations`) and L_u = KL(p(y|u) || p(y|u + r_vadv)).
L = CE(labelled) + mu(t) L_u + `entropy_weight` H(p(y|u)), mu(t) the sigmoid ramp-up.
Batch norm and dropout of the perturbed passes, and the power iteration's float
resolution: docs/DESIGN_CHOICES.md ("VAT").
Telemetry 'pl_*': argmax of the clean unlabelled predictions.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from semissl import losses
from semissl.methods import base
from semissl.methods import semi_supervised_classifier as ssc


@base.register
class VAT(ssc.SemiSupervisedClassifier):
  """Virtual adversarial consistency (+ optional entropy minimisation)."""

  name = "vat"
  labelled_view_names = ("image",)
  unlabelled_view_names = ("image",)

  defaults = {**ssc.SemiSupervisedClassifier.defaults, "epsilon": 2.0, "xi": 1e-6,
              "num_power_iterations": 1, "entropy_weight": 0.0,
              "power_iteration": "finite_difference"}

  def validate(self):
    super().validate()
    self.check_positive("epsilon")
    self.check_positive("xi")
    self.check_non_negative("entropy_weight")
    if self.option("power_iteration") not in losses.VAT_POWER_ITERATIONS:
      raise ValueError(f"method.power_iteration={self.option('power_iteration')!r}; use "
                       f"one of {losses.VAT_POWER_ITERATIONS}.")
    iterations = self.option("num_power_iterations")
    if not isinstance(iterations, int) or iterations < 1:
      raise ValueError(f"method.num_power_iterations={iterations!r} must be an "
                       "integer >= 1.")

  def loss_fn(self, params, batch, *, state, rng):
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    num_labelled = labelled["label"].shape[0]
    labelled_images = labelled["images"]["image"]
    unlabelled_images = unlabelled["images"]["image"]
    dropout_rng, direction_rng = jax.random.split(rng)
    logits, batch_stats = self.apply_train(
        params, state.batch_stats,
        self.concat_examples([labelled_images, unlabelled_images]), rng=dropout_rng)
    labelled_logits, unlabelled_logits = self.split_examples(
        logits, [num_labelled, logits.shape[0] - num_labelled])

    def perturbed_logits(variables, perturbed_unlabelled):
      # Same batch composition as the clean pass; the new statistics are dropped.
      perturbed, _ = self.apply_train(
          variables, state.batch_stats,
          self.concat_examples([labelled_images, perturbed_unlabelled]), rng=dropout_rng)
      return self.split_examples(perturbed, (num_labelled, perturbed_unlabelled.shape[0]))[1]

    # The power iteration sees sg(params): r_vadv is a constant of the step, so
    # the params gradient need not trace the derivative of the power iteration.
    unsupervised, extras = losses.vat_loss(
        apply_fn=functools.partial(perturbed_logits, params),
        direction_apply_fn=functools.partial(perturbed_logits,
                                             jax.lax.stop_gradient(params)),
        x=unlabelled_images, logits=unlabelled_logits,
        rng=direction_rng, xi=self.option("xi"), epsilon=self.option("epsilon"),
        num_power_iterations=self.option("num_power_iterations"),
        power_iteration=self.option("power_iteration"))
    entropy = losses.entropy_minimization(logits=unlabelled_logits)
    metrics = ssc.target_telemetry(targets=unlabelled_logits,
                                   true_labels=unlabelled.get("true_label"))
    perturbation = extras["perturbation"]
    metrics.update(entropy=entropy, perturbation_norm=jnp.mean(jnp.sqrt(
        jnp.sum(jnp.square(perturbation), axis=tuple(range(1, perturbation.ndim))))))
    return self.combine(state=state, batch_stats=batch_stats,
                        labelled_logits=labelled_logits, labels=labelled["label"],
                        unsupervised_loss=unsupervised,
                        extra_loss=self.option("entropy_weight") * entropy,
                        metrics=metrics)
