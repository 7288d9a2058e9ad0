"""Noisy Student self-training (Xie et al. 2020, Algorithm 1 and §2 "Other techniques").

The teacher's soft pseudo-labels of the clean unlabelled images, q_i =
softmax(teacher_logits_i / T), are filtered by confidence and class-balanced, and the
noised student is trained on them with a soft cross-entropy:

  kept_i = [max_k q_ik >= tau]                                  (data filtering)
  n_c   <- n_c + sum_i kept_i [argmax q_i = c]                   (running class counts)
  w_i    = kept_i * (N / K) / n_{argmax q_i},  N = sum_c n_c      (data balancing)
  L_u    = 1/B sum_i w_i H(q_i, softmax(student_logits_i))

The paper balances the pseudo-labelled set once, offline, by duplicating images of
rare classes and keeping the most confident images of frequent ones, up to a target
count per class. In a stream the same per-class share is reached in expectation by
weighting each kept example with (target count per class) / (count of its class):
the target is the mean kept count N / K, and the counts are running totals over every
batch seen so far (method state, so a resumed run continues them exactly). With equal
counts every kept weight is 1. The normaliser is the batch size B, as FixMatch's.

Targets are under `jax.lax.stop_gradient`; the cross-entropy is `common`'s.
"""
from typing import Any

import jax
import jax.numpy as jnp

from semissl.losses import common


def soft_pseudo_labels(*, teacher_logits: jax.Array, temperature: float = 1.0) -> jax.Array:
  """q = softmax(sg(teacher_logits) / T) [..., K] (T = 1: the paper's soft labels)."""
  return jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1)


def confidence_filter(*, pseudo_probs: jax.Array, threshold: float) -> jax.Array:
  """kept_i = [max_k q_ik >= tau] as float (the paper's data filtering, tau = 0.3)."""
  return (jnp.max(pseudo_probs, axis=-1) >= threshold).astype(pseudo_probs.dtype)


def update_class_counts(*, class_counts: jax.Array, pseudo_labels: jax.Array,
                        mask: jax.Array) -> jax.Array:
  """n_c + sum_i kept_i [y_hat_i = c]: the running count [K] of kept pseudo-labels per
  class (int32, summed over the global batch)."""
  one_hot = jax.nn.one_hot(pseudo_labels, class_counts.shape[-1], dtype=jnp.int32)
  kept = (mask > 0).astype(jnp.int32)[..., None]
  return class_counts + jnp.sum(one_hot * kept, axis=tuple(range(one_hot.ndim - 1)))


def class_balance_weights(*, class_counts: jax.Array, pseudo_labels: jax.Array,
                          mask: jax.Array) -> jax.Array:
  """w_i = kept_i * (N / K) / n_{y_hat_i} with N = sum_c n_c (counts including this
  batch, so n_{y_hat_i} >= 1 for every kept example); 0 where not kept."""
  counts = class_counts.astype(jnp.float32)
  target = jnp.sum(counts) / counts.shape[-1]
  own = counts[pseudo_labels]
  return jnp.where(mask > 0, target / jnp.maximum(own, 1.0), 0.0).astype(jnp.float32)


def noisy_student_loss(
    *, student_logits: jax.Array, teacher_logits: jax.Array, class_counts: jax.Array,
    threshold: float = 0.0, temperature: float = 1.0, class_balance: bool = True,
    hard_targets: bool = False) -> tuple[jax.Array, dict[str, Any]]:
  """L_u = 1/B sum_i w_i H(q_i, softmax(student_logits_i)) (module docstring).

  Args:
    student_logits: [B, K] the noised student's logits of the strong view.
    teacher_logits: [B, K] the fixed teacher's eval-mode logits of the clean view.
    class_counts: int32 [K] running counts of kept pseudo-labels before this batch.
    threshold: confidence threshold tau (0: keep all).
    temperature: T of the soft pseudo-labels.
    class_balance: weights w_i as above; False: w_i = kept_i.
    hard_targets: one-hot argmax q_i instead of q_i (the paper's hard variant).

  Returns:
    (loss, extras): 'class_counts' (updated), 'mask', 'mask_rate', 'weights',
    'pseudo_labels', 'confidences' [B].
  """
  probs = soft_pseudo_labels(teacher_logits=teacher_logits, temperature=temperature)
  probs = probs.astype(student_logits.dtype)
  pseudo_labels = jnp.argmax(probs, axis=-1)
  mask = confidence_filter(pseudo_probs=probs, threshold=threshold)
  counts = update_class_counts(class_counts=class_counts, pseudo_labels=pseudo_labels,
                               mask=mask)
  if class_balance:
    weights = class_balance_weights(class_counts=counts, pseudo_labels=pseudo_labels,
                                    mask=mask)
  else:
    weights = mask.astype(jnp.float32)
  targets = (jax.nn.one_hot(pseudo_labels, probs.shape[-1], dtype=probs.dtype)
             if hard_targets else probs)
  per_example = common.cross_entropy_with_probs(logits=student_logits, target_probs=targets)
  loss = jnp.mean(weights * per_example)
  extras = {"class_counts": counts, "mask": mask, "mask_rate": jnp.mean(mask),
            "weights": weights, "pseudo_labels": pseudo_labels,
            "confidences": jnp.max(probs, axis=-1)}
  return loss, extras
