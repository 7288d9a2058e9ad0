"""ICT, Interpolation Consistency Training (Verma et al. 2019, Algorithm 1; survey).

The unlabelled batch u is mixed with a permutation of itself, u_mix = lambda u +
(1 - lambda) u[pi], one lambda ~ Beta(alpha, alpha) per batch and pi a random
permutation of the (global) batch. The student's prediction on u_mix is pulled
towards the same mix of the EMA teacher's predictions:
L = CE(labelled) + w(t) 1/C ||softmax(f_theta(u_mix)) - (lambda p' + (1 - lambda) p'[pi])||^2
with p' = softmax(f_theta'(u)) under sg (`losses.interpolation_consistency_loss`),
theta' the engine's EMA of the parameters (`config.ema`) and w(t) the sigmoid
ramp-up. The labelled and mixed images go through one train-mode student pass;
the teacher runs in train mode on the unmixed batch and its batch statistics are
dropped, as in Mean Teacher (methods/mean_teacher.py). Paper values on CIFAR-10:
alpha = 1, w_max = 100, EMA 0.999. Telemetry 'pl_*': teacher argmax on u.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from semissl import losses
from semissl.methods import base
from semissl.methods import semi_supervised_classifier as ssc


def ict_draws(rng: jax.Array, num_examples: int, alpha: float) -> tuple[jax.Array, jax.Array]:
  """(permutation [N] int32, lambda scalar ~ Beta(alpha, alpha)) of one ICT step."""
  perm_rng, ratio_rng = jax.random.split(rng)
  permutation = jax.random.permutation(perm_rng, num_examples).astype(jnp.int32)
  return permutation, jax.random.beta(ratio_rng, alpha, alpha)


@base.register
class ICT(ssc.SemiSupervisedClassifier):
  """Mixup consistency of unlabelled pairs against the mixed EMA-teacher predictions."""

  name = "ict"
  labelled_view_names = ("image",)
  unlabelled_view_names = ("image",)
  defaults = {**ssc.SemiSupervisedClassifier.defaults, "mixup_alpha": 1.0}

  def validate(self):
    super().validate()
    self.check_positive("mixup_alpha")

  def loss_fn(self, params, batch, *, state, rng):
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    num_labelled = labelled["label"].shape[0]
    images = unlabelled["images"]["image"]
    mix_rng, student_rng, teacher_rng = jax.random.split(rng, 3)
    permutation, ratio = ict_draws(mix_rng, images.shape[0], self.option("mixup_alpha"))
    mixed = ratio * images + (1.0 - ratio) * images[permutation]
    student_logits, batch_stats = self.apply_train(
        params, state.batch_stats, self.concat_examples([labelled["images"]["image"], mixed]),
        rng=student_rng)
    labelled_logits, mixed_logits = self.split_examples(student_logits,
                                                        (num_labelled, mixed.shape[0]))
    teacher_logits, _ = self.apply_train(state.target_params, state.target_batch_stats,
                                         images, rng=teacher_rng)
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    unsupervised = losses.interpolation_consistency_loss(
        mixed_logits=mixed_logits, teacher_logits=teacher_logits,
        permutation=permutation, mix_ratio=ratio)
    metrics = ssc.target_telemetry(targets=teacher_logits,
                                   true_labels=unlabelled.get("true_label"))
    metrics["mix_ratio"] = ratio
    return self.combine(state=state, batch_stats=batch_stats,
                        labelled_logits=labelled_logits,
                        labels=labelled["label"], unsupervised_loss=unsupervised,
                        metrics=metrics)
