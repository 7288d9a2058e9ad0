"""ReMixMatch (Berthelot et al. 2020): the guessed targets and the loss.

Guess (distribution alignment + sharpening, Alg. 1 lines 3-5): for one weak view u
with prediction q = p(y | u), q~ = Normalize(q p(y) / p~(y)) with p(y) the labelled
class prior and p~(y) the mean prediction over the last N batches
(`distribution_alignment.push_and_align`: a ring buffer of N batch means, N = 128 in
the paper), then q = Sharpen(q~, T), all under stop-gradient.

Loss (Sec. 3.3): on the MixUp'ed labelled batch X' and the MixUp'ed K strong views U'
(`mixmatch.mixmatch_mix`, lambda' = max(lambda, 1 - lambda)):
  L = H(X') + lambda_u H(U') + lambda_u1 H(U^_1) + lambda_r H_rot,
with H the cross-entropy to the (mixed, stop-gradient) soft targets, U^_1 the first
strong view without MixUp (target: its image's guess) and H_rot the 4-way
cross-entropy of the rotation head on U^_1 rotated by r x 90 degrees. The paper uses
lambda_u = 1.5, lambda_u1 = lambda_r = 0.5, T = 0.5.
"""
from typing import Any

import jax

from semissl.losses import common
from semissl.losses import consistency
from semissl.losses import distribution_alignment


def remixmatch_guess(
    *, logits: jax.Array, window: distribution_alignment.DistributionAlignmentWindow,
    target_prior: jax.Array, temperature: float,
) -> tuple[jax.Array, distribution_alignment.DistributionAlignmentWindow]:
  """Sharpen(Normalize(q p(y) / p~(y)), T) of q = softmax(logits) [B, C] of the weak
  view, under stop-gradient; the window has this batch's mean pushed first.

  Returns:
    (guessed targets [B, C], updated window).
  """
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits), axis=-1)
  aligned, window = distribution_alignment.push_and_align(
      probs=probs, window=window, target_prior=target_prior)
  return jax.lax.stop_gradient(consistency.sharpen(probs=aligned,
                                                   temperature=temperature)), window


def soft_cross_entropy(*, logits: jax.Array, targets: jax.Array) -> jax.Array:
  """1/N sum_i H(t_i, softmax(logits_i)) with the targets under stop-gradient."""
  return common.reduce_loss(per_example=common.cross_entropy_with_probs(
      logits=logits, target_probs=jax.lax.stop_gradient(targets)))


def remixmatch_loss(
    *, labelled_logits: jax.Array, labelled_targets: jax.Array,
    unlabelled_logits: jax.Array, unlabelled_targets: jax.Array,
    strong_logits: jax.Array, strong_targets: jax.Array,
    rotation_logits: jax.Array, rotations: jax.Array,
    unlabelled_weight: jax.Array | float, pre_mixup_weight: float,
    rotation_weight: float) -> tuple[jax.Array, dict[str, Any]]:
  """L = H(X') + lambda_u H(U') + lambda_u1 H(U^_1) + lambda_r H_rot (module doc).

  Args:
    labelled_logits, labelled_targets: [B, C] of the mixed labelled batch X'.
    unlabelled_logits, unlabelled_targets: [K N, C] of the mixed strong views U'.
    strong_logits: [N, C] of the first strong view, not mixed.
    strong_targets: [N, C] its guesses.
    rotation_logits: [N, 4] of the rotated first strong view.
    rotations: [N] int, its quarter turns r.
    unlabelled_weight: lambda_u (possibly ramped).
    pre_mixup_weight: lambda_u1.
    rotation_weight: lambda_r.

  Returns:
    (loss, extras) with 'supervised_loss', 'unsupervised_loss', 'pre_mixup_loss',
    'rotation_loss'.
  """
  supervised = soft_cross_entropy(logits=labelled_logits, targets=labelled_targets)
  unsupervised = soft_cross_entropy(logits=unlabelled_logits, targets=unlabelled_targets)
  pre_mixup = soft_cross_entropy(logits=strong_logits, targets=strong_targets)
  rotation = common.softmax_cross_entropy(logits=rotation_logits, labels=rotations)
  loss = (supervised + unlabelled_weight * unsupervised + pre_mixup_weight * pre_mixup
          + rotation_weight * rotation)
  return loss, {"supervised_loss": supervised, "unsupervised_loss": unsupervised,
                "pre_mixup_loss": pre_mixup, "rotation_loss": rotation}
