"""MixMatch (Berthelot et al. 2019; survey "MixMatch").

1. Label guessing: K augmentations ('augment0' .. 'augment{K-1}' unlabelled
   views) go through a train-mode pass whose batch statistics are dropped;
   y_hat = Sharpen(1/K sum_k p(y|u^(k)), T) under stop-gradient
   (`losses.mixmatch_guess_labels`).
2. MixUp: W = shuffle(X ++ U^(1..K)); X' = MixUp(X, W[:B]), U' = MixUp(U, W[B:])
   with lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha) per
   example (`losses.mixmatch_mix`).
3. One train-mode pass over [X'; U'] (BN sees the whole mixed batch, which is
   what the reference code's interleaving achieves); L = L_s + mu(t) L_u with
   L_s the soft-target CE on X' and L_u = 1/(L |U'|) sum ||y_hat' - p(u')||^2
   (`losses.mixmatch_loss`), mu(t) = lambda_u x a linear ramp-up.
Telemetry 'pl_*': argmax of the guessed labels on the unlabelled images;
'guess_confidence': their mean max; 'train_top1' is on the mixed labelled batch
(lambda' >= 0.5 keeps the original label dominant).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from semissl import losses
from semissl.methods import base
from semissl.methods import semi_supervised_classifier as ssc


def augmentation_view_names(num_augmentations: int) -> tuple[str, ...]:
  """The unlabelled view names MixMatch reads: 'augment0' .. 'augment{K-1}'."""
  return tuple(f"augment{k}" for k in range(num_augmentations))


@base.register
class MixMatch(ssc.SemiSupervisedClassifier):
  """Label guessing + sharpening + MixUp over labelled and unlabelled data."""

  name = "mixmatch"
  labelled_view_names = ("image",)
  defaults = {**ssc.SemiSupervisedClassifier.defaults, "rampup": "linear",
              "num_augmentations": 2, "temperature": 0.5, "mixup_alpha": 0.75}

  @property
  def num_augmentations(self) -> int:
    return self.option("num_augmentations")

  @property
  def unlabelled_view_names(self) -> tuple[str, ...]:
    return augmentation_view_names(max(self.num_augmentations, 1))

  def validate(self):
    num_augmentations = self.num_augmentations
    if not isinstance(num_augmentations, int) or num_augmentations < 1:
      raise ValueError(f"method.num_augmentations={num_augmentations!r} (K) must be "
                       "an integer >= 1.")
    super().validate()
    self.check_positive("temperature")
    self.check_positive("mixup_alpha")

  def loss_fn(self, params, batch, *, state, rng):
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    guess_rng, permutation_rng, ratio_rng, train_rng = jax.random.split(rng, 4)
    labelled_images = labelled["images"]["image"]
    num_labelled = labelled_images.shape[0]
    num_unlabelled = unlabelled["images"][self.unlabelled_view_names[0]].shape[0]
    unlabelled_images = jnp.concatenate(
        [unlabelled["images"][name] for name in self.unlabelled_view_names])

    # Guessed labels are constants (sg): the guessing pass needs no params gradient.
    guess_logits, _ = self.apply_train(jax.lax.stop_gradient(params), state.batch_stats,
                                       unlabelled_images, rng=guess_rng)
    guesses = losses.mixmatch_guess_labels(
        logits_per_augmentation=guess_logits.reshape(
            self.num_augmentations, num_unlabelled, -1),
        temperature=self.option("temperature"))

    total = num_labelled + unlabelled_images.shape[0]
    mixed_labelled, labelled_targets, mixed_unlabelled, unlabelled_targets = (
        losses.mixmatch_mix(
            labelled_images=labelled_images,
            labelled_targets=jax.nn.one_hot(labelled["label"], self.info.num_classes),
            unlabelled_images=unlabelled_images,
            unlabelled_targets=jnp.tile(guesses, (self.num_augmentations, 1)),
            permutation=jax.random.permutation(permutation_rng, total),
            mix_ratio=losses.mixmatch_mix_ratio(
                rng=ratio_rng, alpha=self.option("mixup_alpha"),
                shape=(total,))))
    logits, batch_stats = self.apply_train(
        params, state.batch_stats,
        self.concat_examples([mixed_labelled, mixed_unlabelled]), rng=train_rng)
    labelled_logits, unlabelled_logits = self.split_examples(
        logits, [num_labelled, total - num_labelled])

    weight = self.unlabelled_weight(state.step)
    loss, extras = losses.mixmatch_loss(
        labelled_logits=labelled_logits, labelled_targets=labelled_targets,
        unlabelled_logits=unlabelled_logits, unlabelled_targets=unlabelled_targets,
        unlabelled_weight=weight)
    metrics = ssc.target_telemetry(targets=guesses,
                                   true_labels=unlabelled.get("true_label"))
    metrics.update(
        supervised_loss=extras["supervised_loss"],
        unsupervised_loss=extras["unsupervised_loss"], unsupervised_weight=weight,
        guess_confidence=jnp.mean(jnp.max(guesses, axis=-1)),
        train_top1=jnp.mean(jnp.argmax(labelled_logits, -1) == labelled["label"]))
    metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
    return loss, base.StepAux(batch_stats, state.method_state, metrics)
