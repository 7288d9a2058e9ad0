"""Distribution alignment (ReMixMatch; SimMatch Eq. 2's DA) with a moving window.

DA(p) = Normalize(p * p_target / p_model), where p_model is the mean of the last N
batch-mean predictions (a ring buffer; SimMatch keeps 32 steps on CIFAR and 256 on
ImageNet) and p_target is the labelled class prior (ReMixMatch) or uniform (SimMatch,
which writes Normalize(p_w / p_w_avg)). The window is a pure pytree and starts empty;
an empty window leaves p unchanged (no division by its zero initialisation).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp


class DistributionAlignmentWindow(NamedTuple):
  """Ring buffer of the last N batch-mean predictions.

  Attributes:
    batch_means: [N, C] the stored batch means; rows not yet written are zero.
    count: int32 scalar, how many batch means were ever pushed (slot = count mod N).
  """
  batch_means: jax.Array
  count: jax.Array


def init_distribution_alignment_window(
    *, num_classes: int, window_size: int,
    dtype: jnp.dtype = jnp.float32) -> DistributionAlignmentWindow:
  """An empty window of `window_size` batch means over `num_classes` classes."""
  return DistributionAlignmentWindow(
      batch_means=jnp.zeros((window_size, num_classes), dtype),
      count=jnp.zeros((), jnp.int32))


def push_distribution_window(*, window: DistributionAlignmentWindow,
                             probs: jax.Array) -> DistributionAlignmentWindow:
  """Writes the batch mean of sg(probs) [..., C] into the oldest slot."""
  batch_mean = jnp.mean(jax.lax.stop_gradient(probs).reshape(-1, probs.shape[-1]),
                        axis=0)
  slot = window.count % window.batch_means.shape[0]
  batch_means = window.batch_means.at[slot].set(
      batch_mean.astype(window.batch_means.dtype))
  return DistributionAlignmentWindow(batch_means=batch_means,
                                     count=window.count + 1)


def window_mean(*, window: DistributionAlignmentWindow,
                empty_value: jax.Array) -> jax.Array:
  """Mean over the filled slots only; `empty_value` [C] while the window is empty."""
  window_size = window.batch_means.shape[0]
  filled = jnp.minimum(window.count, window_size)
  mean = jnp.sum(window.batch_means, axis=0) / jnp.maximum(filled, 1).astype(
      window.batch_means.dtype)
  return jnp.where(filled > 0, mean, empty_value)


def normalize_or_keep(*, values: jax.Array, fallback: jax.Array) -> jax.Array:
  """values / sum(values) over the last axis; `fallback` rows where the sum is 0."""
  total = jnp.sum(values, axis=-1, keepdims=True)
  safe_total = jnp.where(total > 0, total, 1.0)
  return jnp.where(total > 0, values / safe_total, fallback)


def align_distribution(*, probs: jax.Array, model_prior: jax.Array,
                       target_prior: jax.Array | None = None) -> jax.Array:
  """ReMixMatch DA: Normalize(p * p_target / p_model) (survey; SimMatch Eq. 2).

  Args:
    probs: [..., C] predictions (stop-gradient is applied: DA builds targets).
    model_prior: [C] running mean of the model's predictions; clamped below at the
      dtype's epsilon so a class never predicted does not divide by zero.
    target_prior: [C] class prior to align to; None = uniform (SimMatch).

  Returns:
    [..., C] aligned distributions (rows of p unchanged if the product sums to 0).
  """
  probs = jax.lax.stop_gradient(probs)
  model_prior = jax.lax.stop_gradient(model_prior).astype(probs.dtype)
  eps = jnp.finfo(probs.dtype).eps
  ratio = 1.0 / jnp.maximum(model_prior, eps)
  if target_prior is not None:
    ratio = ratio * jax.lax.stop_gradient(target_prior).astype(probs.dtype)
  return normalize_or_keep(values=probs * ratio, fallback=probs)


def align_with_window(*, probs: jax.Array, window: DistributionAlignmentWindow,
                      target_prior: jax.Array | None = None) -> jax.Array:
  """`align_distribution` with p_model = mean of the filled window slots.

  An empty window aligns p_model to p_target, so p passes through unchanged.
  """
  num_classes = probs.shape[-1]
  if target_prior is None:
    empty_value = jnp.full((num_classes,), 1.0 / num_classes, probs.dtype)
  else:
    empty_value = jnp.asarray(target_prior, probs.dtype)
  model_prior = window_mean(window=window, empty_value=empty_value)
  return align_distribution(probs=probs, model_prior=model_prior,
                            target_prior=target_prior)


def push_and_align(
    *, probs: jax.Array, window: DistributionAlignmentWindow,
    target_prior: jax.Array | None = None,
) -> tuple[jax.Array, DistributionAlignmentWindow]:
  """DA with a moving window: push the batch mean, then Normalize(p * p_target / p_model).

  ReMixMatch's DA with `target_prior` the labelled class prior; SimMatch Eq. 2's
  DA(p_w) = Normalize(p_w / p_w_avg) with `target_prior` None (uniform). The order
  (the current batch enters the window before it is aligned, as in the public
  CoMatch/SimMatch code) means the window is never empty when used.

  Args:
    probs: [B, C] weak-view (teacher) probabilities.
    window: the ring buffer state.
    target_prior: [C] class prior to align to; None = uniform.

  Returns:
    (aligned probs [B, C] under stop-gradient, updated window).
  """
  window = push_distribution_window(window=window, probs=probs)
  return align_with_window(probs=probs, window=window,
                           target_prior=target_prior), window
