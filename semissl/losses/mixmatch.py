"""MixMatch (Berthelot et al. 2019; survey).

MixMatch: guess labels y_hat = Sharpen(1/K sum_k p(y | u^(k)), T) (stop-gradient),
mix the concatenated labelled + unlabelled batch with lambda' = max(lambda, 1 - lambda),
then L_s = CE on the mixed labelled part, L_u = 1/(L |U|) sum ||y_hat - p||^2.
ReMixMatch's distribution alignment is `distribution_alignment.push_and_align`.
"""
from typing import Any

import jax
import jax.numpy as jnp

from semissl.losses import common
from semissl.losses import consistency
from semissl.losses import mixing


def mixmatch_guess_labels(*, logits_per_augmentation: jax.Array,
                          temperature: float) -> jax.Array:
  """MixMatch label guessing: Sharpen(mean_k softmax(logits_k), T) under stop-gradient.

  Args:
    logits_per_augmentation: [K, B, C] logits of K augmentations of each example.
    temperature: T (MixMatch uses 0.5).

  Returns:
    [B, C] guessed labels.
  """
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits_per_augmentation), axis=-1)
  return jax.lax.stop_gradient(
      consistency.sharpen(probs=jnp.mean(probs, axis=0), temperature=temperature))


def mixmatch_mix_ratio(*, rng: jax.Array, alpha: float,
                       shape: tuple[int, ...] = ()) -> jax.Array:
  """lambda' = max(lambda, 1 - lambda), lambda ~ Beta(alpha, alpha) (MixMatch)."""
  mix_ratio = mixing.sample_mix_ratio(rng=rng, alpha=alpha, shape=shape)
  return jnp.maximum(mix_ratio, 1.0 - mix_ratio)


def mixmatch_mix(
    *, labelled_images: jax.Array, labelled_targets: jax.Array,
    unlabelled_images: jax.Array, unlabelled_targets: jax.Array,
    permutation: jax.Array, mix_ratio: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """MixMatch's MixUp step: W = shuffle(X ++ U); X' = MixUp(X, W[:|X|]),
  U' = MixUp(U, W[|X|:]), with lambda' = max(lambda, 1 - lambda).

  Args:
    labelled_images: [B, ...] augmented labelled images.
    labelled_targets: [B, C] one-hot labels.
    unlabelled_images: [N, ...] augmented unlabelled images (K views, flattened).
    unlabelled_targets: [N, C] guessed labels (repeated over the K views).
    permutation: [B + N] shuffle of the concatenated batch.
    mix_ratio: lambda (scalar or [B + N]); max(lambda, 1 - lambda) is applied here.

  Returns:
    (mixed labelled images, their targets, mixed unlabelled images, their targets).
  """
  num_labelled = labelled_images.shape[0]
  mix_ratio = jnp.maximum(mix_ratio, 1.0 - mix_ratio)
  images = jnp.concatenate([labelled_images, unlabelled_images], axis=0)
  targets = jnp.concatenate([labelled_targets, unlabelled_targets], axis=0)
  mixed_images, mixed_targets = mixing.mixup(
      images=images, targets=targets, permutation=permutation,
      mix_ratio=mix_ratio)
  return (mixed_images[:num_labelled], mixed_targets[:num_labelled],
          mixed_images[num_labelled:], mixed_targets[num_labelled:])


def mixmatch_labelled_loss(*, logits: jax.Array, targets: jax.Array,
                           reduction: str = "mean") -> jax.Array:
  """MixMatch L_s: 1/|X'| sum H(y', p(y | x')) with soft (mixed) targets."""
  per_example = common.cross_entropy_with_probs(
      logits=logits, target_probs=jax.lax.stop_gradient(targets))
  return common.reduce_loss(per_example=per_example, reduction=reduction)


def mixmatch_unlabelled_loss(*, logits: jax.Array, targets: jax.Array,
                             reduction: str = "mean") -> jax.Array:
  """MixMatch L_u: 1/(L |U'|) sum ||y_hat' - p(y | u')||^2 (per example: mean over L)."""
  per_example = jnp.mean(jnp.square(jax.lax.stop_gradient(targets)
                                    - jax.nn.softmax(logits, axis=-1)), axis=-1)
  return common.reduce_loss(per_example=per_example, reduction=reduction)


def mixmatch_loss(
    *, labelled_logits: jax.Array, labelled_targets: jax.Array,
    unlabelled_logits: jax.Array, unlabelled_targets: jax.Array,
    unlabelled_weight: float = 1.0) -> tuple[jax.Array, dict[str, Any]]:
  """MixMatch L = L_s + lambda_u L_u on the mixed batches.

  Returns:
    (loss, extras) with 'supervised_loss' and 'unsupervised_loss'.
  """
  supervised = mixmatch_labelled_loss(logits=labelled_logits,
                                      targets=labelled_targets)
  unsupervised = mixmatch_unlabelled_loss(logits=unlabelled_logits,
                                          targets=unlabelled_targets)
  return supervised + unlabelled_weight * unsupervised, {
      "supervised_loss": supervised, "unsupervised_loss": unsupervised}
