"""Mixup, CutMix and Semi-ViT's probabilistic pseudo mixup (Semi-ViT Eq. 3-5).

Images are NHWC. A batch is mixed with a permuted copy of itself: example i is paired
with j = permutation[i]. The mixing ratio lambda (`mix_ratio`) is the weight of
example i and may be a scalar (batch-wise) or [B] (element-wise). Mixup or CutMix
is chosen by `use_cutmix`, a scalar (the whole batch) or [B] bool (per example, as
Semi-ViT's ProbPseudoMixup).
"""
from typing import Any

import chex
import jax
import jax.numpy as jnp

from semissl.losses import common


def sample_mix_ratio(*, rng: jax.Array, alpha: float,
                     shape: tuple[int, ...] = ()) -> jax.Array:
  """lambda ~ Beta(alpha, alpha) (Semi-ViT Eq. 3, Zhang et al. 2018)."""
  return jax.random.beta(rng, alpha, alpha, shape)


def _per_example(mix_ratio: jax.Array, batch_size: int, ndim: int,
                 dtype: jnp.dtype) -> jax.Array:
  """Broadcasts a scalar or [B] ratio to [B, 1, ..., 1] with `ndim` axes."""
  ratio = jnp.broadcast_to(jnp.asarray(mix_ratio, dtype), (batch_size,))
  return ratio.reshape((batch_size,) + (1,) * (ndim - 1))


def mixup(*, images: jax.Array, targets: jax.Array, permutation: jax.Array,
          mix_ratio: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mixup, Semi-ViT Eq. 3: x~ = l x_i + (1 - l) x_j, y~ = l y_i + (1 - l) y_j.

  Args:
    images: [B, ...] float inputs.
    targets: [B, C] one-hot or soft targets (stop-gradient applied).
    permutation: [B] int partner index j of each example.
    mix_ratio: lambda, scalar or [B].

  Returns:
    (mixed images [B, ...], mixed targets [B, C]).
  """
  batch_size = images.shape[0]
  targets = jax.lax.stop_gradient(targets)
  image_ratio = _per_example(mix_ratio, batch_size, images.ndim, images.dtype)
  target_ratio = _per_example(mix_ratio, batch_size, targets.ndim, targets.dtype)
  mixed_images = image_ratio * images + (1.0 - image_ratio) * images[permutation]
  mixed_targets = (target_ratio * targets
                   + (1.0 - target_ratio) * targets[permutation])
  return mixed_images, mixed_targets


def cutmix_box_mask(*, rng: jax.Array, mix_ratio: jax.Array, batch_size: int,
                    height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """One random box per example with area ~ (1 - lambda) H W (Yun et al. 2019).

  The box has sides round(H sqrt(1 - l)) x round(W sqrt(1 - l)) around a uniform
  centre and is clipped to the image; lambda is then corrected to the kept area.

  Args:
    rng: PRNG key for the box centres.
    mix_ratio: lambda, scalar or [B].
    batch_size: B.
    height: H.
    width: W.

  Returns:
    (inside [B, H, W] bool, True where the partner's pixels go; corrected lambda [B]
    = 1 - box area / (H W)).
  """
  ratio = jnp.broadcast_to(jnp.asarray(mix_ratio, jnp.float32), (batch_size,))
  cut_fraction = jnp.sqrt(jnp.clip(1.0 - ratio, 0.0, 1.0))
  rng_y, rng_x = jax.random.split(rng)

  def interval(key, size):
    cut = jnp.round(size * cut_fraction).astype(jnp.int32)
    centre = jax.random.randint(key, (batch_size,), 0, size)
    start = centre - cut // 2
    low, high = jnp.clip(start, 0, size), jnp.clip(start + cut, 0, size)
    positions = jnp.arange(size)
    inside = (positions >= low[:, None]) & (positions < high[:, None])
    return inside, high - low

  rows, box_height = interval(rng_y, height)
  cols, box_width = interval(rng_x, width)
  inside = rows[:, :, None] & cols[:, None, :]
  corrected = 1.0 - (box_height * box_width).astype(jnp.float32) / (height * width)
  return inside, corrected


def cutmix(*, images: jax.Array, targets: jax.Array, permutation: jax.Array,
           mix_ratio: jax.Array,
           rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """CutMix: paste a box of x_j into x_i, mix targets with the box-corrected lambda.

  Args:
    images: [B, H, W, C].
    targets: [B, K] one-hot or soft targets (stop-gradient applied).
    permutation: [B] partner index j.
    mix_ratio: lambda (scalar or [B]) setting the box area.
    rng: PRNG key for the box positions.

  Returns:
    (mixed images, mixed targets, corrected lambda [B]).
  """
  batch_size, height, width = images.shape[:3]
  inside, corrected = cutmix_box_mask(rng=rng, mix_ratio=mix_ratio,
                                      batch_size=batch_size, height=height,
                                      width=width)
  mixed_images = jnp.where(inside[..., None], images[permutation], images)
  targets = jax.lax.stop_gradient(targets)
  target_ratio = corrected.astype(targets.dtype)[:, None]
  mixed_targets = (target_ratio * targets
                   + (1.0 - target_ratio) * targets[permutation])
  return mixed_images, mixed_targets, corrected.astype(images.dtype)


def mixup_or_cutmix(*, images: jax.Array, targets: jax.Array, permutation: jax.Array,
                    mix_ratio: jax.Array, use_cutmix: jax.Array | bool,
                    rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Mixup where `use_cutmix` is False, CutMix where it is True.

  Semi-ViT's ProbPseudoMixup (`_mix_elem`) draws the choice per example: x~_i is
  lambda_i x_i + (1 - lambda_i) x_j or x_i with a box of x_j pasted in (area from
  lambda_i); y~_i mixes with lambda_i or with the box-corrected lambda.

  Args:
    images: [B, H, W, C].
    targets: [B, K] one-hot or soft targets (stop-gradient applied).
    permutation: [B] partner index j.
    mix_ratio: lambda, scalar or [B].
    use_cutmix: bool, scalar (whole batch) or [B] (per example).
    rng: PRNG key for the CutMix boxes; needed unless `use_cutmix` is False.

  Returns:
    (mixed images, mixed targets [B, K]).
  """
  batch_size = images.shape[0]
  if isinstance(use_cutmix, bool) and not use_cutmix:
    return mixup(images=images, targets=targets, permutation=permutation,
                 mix_ratio=mix_ratio)
  if rng is None:
    raise ValueError("CutMix (use_cutmix not False) needs an rng for the box positions.")
  use_cutmix = jnp.broadcast_to(jnp.asarray(use_cutmix, bool), (batch_size,))
  mixed_up = mixup(images=images, targets=targets, permutation=permutation,
                   mix_ratio=mix_ratio)
  cut = cutmix(images=images, targets=targets, permutation=permutation,
               mix_ratio=mix_ratio, rng=rng)
  image_choice = use_cutmix.reshape((batch_size,) + (1,) * (images.ndim - 1))
  mixed_images = jnp.where(image_choice, cut[0], mixed_up[0])
  mixed_targets = jnp.where(use_cutmix[:, None], cut[1], mixed_up[1])
  return mixed_images, mixed_targets


def probabilistic_pseudo_mixup_ratio(
    *, probs: jax.Array, permutation: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Semi-ViT Eq. 4-5: lambda_i = o_i / (o_i + o_j) and o*_i = max(o_i, o_j).

  Args:
    probs: [B, C] teacher probabilities (stop-gradient applied); o = max_c p.
    permutation: [B] partner index j.

  Returns:
    (lambda [B] (0.5 if o_i + o_j = 0), mixed confidence o* [B]).
  """
  confidences = jnp.max(jax.lax.stop_gradient(probs), axis=-1)
  partner = confidences[permutation]
  total = confidences + partner
  mix_ratio = jnp.where(total > 0, confidences / jnp.where(total > 0, total, 1.0),
                        0.5)
  return mix_ratio, jnp.maximum(confidences, partner)


def probabilistic_pseudo_mixup(
    *, images: jax.Array, probs: jax.Array, permutation: jax.Array,
    threshold: float, use_cutmix: jax.Array | bool = False,
    rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Semi-ViT probabilistic pseudo mixup, Eq. 3-5.

  lambda_i = o_i / (o_i + o_j) (Eq. 4); x~_i = lambda_i x_i + (1 - lambda_i) x_j and
  y~_i = lambda_i onehot(y_hat_i) + (1 - lambda_i) onehot(y_hat_j) (Eq. 3); the
  mixed example is kept iff o*_i = max(o_i, o_j) >= tau (Eq. 5), so a noisy example
  mixed with a confident one contributes, weighted by its confidence. Where
  `use_cutmix`, example i is CutMix'ed instead (box area from lambda_i, targets from
  the box-corrected lambda, as the official ProbPseudoMixup).

  Args:
    images: [B, H, W, C] strongly augmented unlabelled images.
    probs: [B, C] teacher probabilities of the weak view.
    permutation: [B] partner index j (the official code: a random permutation).
    threshold: tau.
    use_cutmix: bool, scalar or [B]: CutMix instead of mixup (the official code
      draws it per example).
    rng: PRNG key for the CutMix boxes; needed unless `use_cutmix` is False.

  Returns:
    (mixed images, mixed targets [B, C], mask [B] float), targets and mask under
    stop-gradient.
  """
  chex.assert_rank(probs, 2)
  chex.assert_shape(permutation, (images.shape[0],))
  probs = jax.lax.stop_gradient(probs)
  mix_ratio, mixed_confidence = probabilistic_pseudo_mixup_ratio(
      probs=probs, permutation=permutation)
  one_hot = jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1],
                           dtype=probs.dtype)
  mixed_images, mixed_targets = mixup_or_cutmix(
      images=images, targets=one_hot, permutation=permutation, mix_ratio=mix_ratio,
      use_cutmix=use_cutmix, rng=rng)
  mask = (mixed_confidence >= threshold).astype(probs.dtype)
  return (mixed_images, jax.lax.stop_gradient(mixed_targets),
          jax.lax.stop_gradient(mask))


def pseudo_mixup_loss(
    *, logits: jax.Array, mixed_targets: jax.Array, mask: jax.Array,
    label_smoothing: float = 0.0,
    reduction: str = "mean") -> tuple[jax.Array, dict[str, Any]]:
  """Semi-ViT's L_u on the mixed batch: 1/N sum_i [o*_i >= tau] CE(y~_i, logits_i).

  Args:
    logits: [B, C] student logits of the mixed images.
    mixed_targets: [B, C] y~ from `probabilistic_pseudo_mixup` (stop-gradient applied).
    mask: [B] its Eq. 5 mask.
    label_smoothing: applied to y~ (Semi-ViT: 0.1).
    reduction: see `common.reduce_loss`.

  Returns:
    (loss, extras) with 'mask_rate'.
  """
  targets = jax.lax.stop_gradient(mixed_targets).astype(logits.dtype)
  if label_smoothing:
    targets = common.smooth_labels(targets=targets,
                                   label_smoothing=label_smoothing)
  mask = jax.lax.stop_gradient(mask).astype(logits.dtype)
  per_example = common.cross_entropy_with_probs(logits=logits,
                                                target_probs=targets)
  loss = common.reduce_loss(per_example=per_example, reduction=reduction,
                            mask=mask)
  return loss, {"mask_rate": jnp.mean(mask)}
