"""Thresholded pseudo-label losses: FixMatch and EMA-Teacher.

* `thresholded_cross_entropy`: 1/N sum_i [o_i >= tau] CE(y_hat_i, logits_i), the
  unsupervised term shared by FixMatch, EMA-Teacher (Semi-ViT Eq. 2) and SimMatch Eq. 2.
* `fixmatch_loss`: pseudo-labels from the weak view (student for FixMatch, EMA teacher
  for Semi-ViT, whose teacher update Eq. 1 is `semissl.losses.ema.ema_update`), target
  for the strong view.
* `pseudo_label_loss`: Lee (2013), the model's own argmax as a target (survey).

All targets built from predictions are under `jax.lax.stop_gradient`. The
cross-entropy, smoothing and reductions are `semissl.losses.common`'s.
"""
from typing import Any

import jax
import jax.numpy as jnp

from semissl.losses import common

def confidence_mask(*, confidences: jax.Array, threshold: float,
                    strict: bool = False) -> jax.Array:
  """[o >= tau] (FixMatch, Semi-ViT Eq. 2) or, if `strict`, [o > tau] (SimMatch Eq. 2)."""
  kept = confidences > threshold if strict else confidences >= threshold
  return kept.astype(confidences.dtype)


def thresholded_cross_entropy(
    *, pseudo_probs: jax.Array, logits: jax.Array, threshold: float,
    hard_targets: bool = True, label_smoothing: float = 0.0, strict: bool = False,
    reduction: str = "mean") -> tuple[jax.Array, dict[str, Any]]:
  """1/N sum_i [max p_i >= tau] H(target(p_i), softmax(logits_i)).

  Semi-ViT Eq. 2 (hard argmax targets, `>=`) and SimMatch Eq. 2 (soft targets DA(p_w)
  or p_hat, strict `>`).

  Args:
    pseudo_probs: [..., C] pseudo-label distribution (stop-gradient is applied here).
    logits: [..., C] student logits (the strongly augmented view).
    threshold: confidence threshold tau.
    hard_targets: one-hot argmax targets if True, else the distribution itself.
    label_smoothing: applied to the targets (after the argmax).
    strict: `>` instead of `>=`.
    reduction: see `common.reduce_loss`; 'mean' divides by all N as the papers do.

  Returns:
    (loss, extras) with extras 'mask' [...], 'mask_rate', 'pseudo_labels' [...] (int),
    'confidences' [...].
  """
  pseudo_probs = jax.lax.stop_gradient(pseudo_probs).astype(logits.dtype)
  confidences = jnp.max(pseudo_probs, axis=-1)
  pseudo_labels = jnp.argmax(pseudo_probs, axis=-1)
  mask = confidence_mask(confidences=confidences, threshold=threshold, strict=strict)
  if hard_targets:
    targets = jax.nn.one_hot(pseudo_labels, logits.shape[-1], dtype=logits.dtype)
  else:
    targets = pseudo_probs
  if label_smoothing:
    targets = common.smooth_labels(targets=targets, label_smoothing=label_smoothing)
  per_example = common.cross_entropy_with_probs(logits=logits, target_probs=targets)
  loss = common.reduce_loss(per_example=per_example, reduction=reduction, mask=mask)
  extras = {"mask": mask, "mask_rate": jnp.mean(mask),
            "pseudo_labels": pseudo_labels, "confidences": confidences}
  return loss, extras


def fixmatch_loss(
    *, weak_logits: jax.Array, strong_logits: jax.Array, threshold: float,
    soft_targets: bool = False, label_smoothing: float = 0.0,
    temperature: float = 1.0,
    reduction: str = "mean") -> tuple[jax.Array, dict[str, Any]]:
  """FixMatch / EMA-Teacher unsupervised loss, Semi-ViT Eq. 2.

  p = softmax(sg(weak_logits) / T); y_hat = argmax p; o = max p;
  L_u = 1/N sum_i [o_i >= tau] CE(y_hat_i, strong_logits_i). With EMA-Teacher the weak
  logits come from the teacher (params updated by Semi-ViT Eq. 1); with FixMatch from
  the student itself.

  Args:
    weak_logits: [..., C] logits of the weakly augmented view (no gradient flows).
    strong_logits: [..., C] student logits of the strongly augmented view.
    threshold: tau.
    soft_targets: use p itself instead of the one-hot argmax as the target.
    label_smoothing: smoothing of the targets (Semi-ViT: 0.1).
    temperature: T applied to the weak logits (confidence and soft targets).
    reduction: see `common.reduce_loss`.

  Returns:
    (loss, extras) as `thresholded_cross_entropy`, plus 'pseudo_probs'.
  """
  weak_logits = jax.lax.stop_gradient(weak_logits)
  pseudo_probs = jax.nn.softmax(weak_logits / temperature, axis=-1)
  loss, extras = thresholded_cross_entropy(
      pseudo_probs=pseudo_probs, logits=strong_logits, threshold=threshold,
      hard_targets=not soft_targets, label_smoothing=label_smoothing,
      reduction=reduction)
  extras["pseudo_probs"] = pseudo_probs
  return loss, extras


def pseudo_label_loss(*, logits: jax.Array, threshold: float = 0.0,
                      reduction: str = "mean") -> tuple[jax.Array, dict[str, Any]]:
  """Pseudo-label (Lee 2013, survey): CE to the model's own sg(argmax) on the same input."""
  return thresholded_cross_entropy(
      pseudo_probs=jax.nn.softmax(jax.lax.stop_gradient(logits), axis=-1),
      logits=logits, threshold=threshold, reduction=reduction)
