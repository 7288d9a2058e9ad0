"""The pieces every loss shares, one of each: reductions, cross-entropy, KL divergence,
label smoothing (all delegating to optax) and l2 normalisation.

* `reduce_loss`: mean / masked mean / sum of per-example losses.
* `cross_entropy_with_probs`: H(t, softmax(logits)) per example
  (`optax.softmax_cross_entropy`).
* `kl_divergence_with_probs`: KL(t || softmax(logits)) per example
  (`optax.kl_divergence`, 0 log 0 = 0).
* `smooth_labels`: (1 - eps) t + eps / C (`optax.smooth_labels`).
* `softmax_cross_entropy`: the supervised loss (SimMatch Eq. 1, Semi-ViT L_l), with
  integer (`optax.softmax_cross_entropy_with_integer_labels`) or soft labels and
  label smoothing.
* `l2_normalize`: x / max(||x||, eps).

No stop-gradient is applied here: callers put it where their equation has it.
"""
import chex
import jax
import jax.numpy as jnp
import optax

REDUCTIONS = ("mean", "masked_mean", "sum", "none")

# Norms below this are treated as this value, so zero vectors normalise to zero.
NORM_EPSILON = 1e-12


def reduce_loss(*, per_example: jax.Array, reduction: str = "mean",
                mask: jax.Array | None = None) -> jax.Array:
  """Reduces per-example losses over all their axes.

  Args:
    per_example: losses, any shape (usually [B]).
    reduction: 'mean' (sum / number of examples, the papers' 1/N sum incl. masked-out
      ones), 'masked_mean' (sum / number of kept examples, 0 when none is kept),
      'sum', or 'none' (the masked per-example losses).
    mask: optional weights (same shape), multiplied into the losses.

  Returns:
    The reduced loss (a scalar unless reduction is 'none').
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"Unknown reduction {reduction!r}; known: {REDUCTIONS}.")
  if mask is not None:
    per_example = per_example * mask
  if reduction == "none":
    return per_example
  if reduction == "sum":
    return jnp.sum(per_example)
  if reduction == "mean":
    return jnp.mean(per_example)
  kept = jnp.size(per_example) if mask is None else jnp.sum(mask)
  return jnp.sum(per_example) / jnp.maximum(kept, 1.0)


def cross_entropy_with_probs(*, logits: jax.Array,
                             target_probs: jax.Array) -> jax.Array:
  """Per-example H(t, softmax(logits)) = -sum_c t_c log_softmax(logits)_c; [..., C] -> [...]."""
  return optax.softmax_cross_entropy(logits, target_probs)


def kl_divergence_with_probs(*, logits: jax.Array,
                             target_probs: jax.Array) -> jax.Array:
  """Per-example KL(t || softmax(logits)), with 0 log 0 = 0; [..., C] -> [...].

  `optax.kl_divergence(log_predictions, targets)`: its derivative in `target_probs`
  is NaN at zero entries (optax's where(t == 0, 0, log t)), so targets are data, as
  in every caller (a stop-gradient teacher or clean prediction); gradients in
  `logits` are exact.
  """
  return optax.kl_divergence(jax.nn.log_softmax(logits, axis=-1), target_probs)


def smooth_labels(*, targets: jax.Array, label_smoothing: float) -> jax.Array:
  """Label smoothing (Szegedy et al. 2016): (1 - eps) * t + eps / C."""
  return optax.smooth_labels(targets, label_smoothing)


def softmax_cross_entropy(*, logits: jax.Array, labels: jax.Array,
                          label_smoothing: float = 0.0,
                          reduction: str = "mean") -> jax.Array:
  """Supervised cross-entropy, SimMatch Eq. 1 / Semi-ViT L_l (Sec. 2.3).

  Args:
    logits: [..., C].
    labels: integer class ids [...] in [0, C), or soft / one-hot targets [..., C].
    label_smoothing: eps of `smooth_labels` (Semi-ViT uses 0.1).
    reduction: see `reduce_loss`.

  Returns:
    The loss.
  """
  num_classes = logits.shape[-1]
  integer_labels = labels.ndim == logits.ndim - 1
  if integer_labels and not label_smoothing:
    per_example = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels.astype(jnp.int32))
    return reduce_loss(per_example=per_example, reduction=reduction)
  if integer_labels:
    targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  else:
    targets = labels.astype(logits.dtype)
  if label_smoothing:
    targets = smooth_labels(targets=targets, label_smoothing=label_smoothing)
  per_example = cross_entropy_with_probs(logits=logits, target_probs=targets)
  return reduce_loss(per_example=per_example, reduction=reduction)


def l2_normalize(
    x: chex.Array, *, axis: int = -1, epsilon: float = NORM_EPSILON
) -> chex.Array:
  """`x / max(||x||, epsilon)` along `axis`: zero vectors map to zero (no NaN value
  or gradient)."""
  squared_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared_norm, epsilon * epsilon))
