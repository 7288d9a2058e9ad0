"""CTAugment (ReMixMatch, Berthelot et al. 2020, Sec. 3.2.2) on device, in JAX.

Control Theory Augment keeps, for every transformation, the weights m of
NUM_BINS = 17 magnitude bins (a float32 [num_ops, 17] array, all 1 at the start; it
lives in the method state, so checkpoints and resumes carry it).

* Strong views (`sample_policy`): `depth` = 2 transformations per image, each drawn
  uniformly; its bin is drawn with probability proportional to m / max(m), with the
  bins whose normalised weight is below the threshold (0.8) set to 0 (the paper's rule;
  the public code adds 1 - rho to m first and thresholds at 0.85), and its magnitude is
  uniform within the bin, level = (bin + U[0, 1)) / 17. ReMixMatch then applies Cutout
  at level 1 (a square of half the side) to every strong view.
* Probes (`sample_probe_policy`): labelled images augmented with `depth` uniformly
  drawn transformations at uniformly drawn bins (level uniform in [0, 1)).
* Update (`update_weights`): for each probe, with the model's prediction p on it and
  its label y, proximity w = 1 - |p - onehot(y)|_1 / 2, and every (op, bin) of its
  policy in turn: m <- rho m + (1 - rho) w, rho = 0.99 (probe by probe, slot by slot,
  as the public code's loop: a bin hit twice in a batch moves twice).

Transformations (`OPS`; images float [N, H, W, C] in [0, 1]; level l in [0, 1]) with
the public CTAugment's ranges: identity (its bins are kept but unused), autocontrast,
blur, smooth, invert (each blended with the image by l),
brightness / color / contrast / sharpness (PIL enhance factor 0.1 + 1.9 l), cutout
(a grey square of side 1 + floor(0.499 l min(H, W))), posterize (1 + floor(7.999 l)
bits kept), solarize (threshold floor(255.999 l)), rotate ((2 l - 1) 45 degrees),
shear_x / shear_y ((2 l - 1) 0.3) and translate_x / translate_y ((2 l - 1) 0.3 of
the side). Geometric transforms use nearest-neighbour sampling and fill 0 (PIL's
defaults). Left out of the paper's set: equalize (a per-image 256-bin histogram and
lookup table per channel: scatter/gather heavy on every strong view, and on
Fashion-MNIST's mostly-black images close to autocontrast) and rescale (a crop then
a resize with one of six PIL filters, no JAX counterpart for most of them).
Every transformation is computed for every image and the drawn one is selected
element-wise (`jnp.where`), so sharded batches stay on their devices.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NUM_BINS = 17
OPS = ("identity", "autocontrast", "blur", "brightness", "color", "contrast", "cutout",
       "invert", "posterize", "rotate", "sharpness", "shear_x", "shear_y", "smooth",
       "solarize", "translate_x", "translate_y")
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
CUTOUT_FILL = 127.0 / 255.0  # PIL (127, 127, 127)
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0  # PIL SMOOTH
_BLUR = np.array([[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1],
                  [1, 1, 1, 1, 1]], np.float32) / 16.0  # PIL BLUR
_LUMA = (0.299, 0.587, 0.114)  # PIL 'L'


class Policy(NamedTuple):
  """The drawn transformations of N images: op index, bin and level, each [N, depth]."""
  ops: jax.Array
  bins: jax.Array
  levels: jax.Array


def init_weights(*, num_ops: int = len(OPS), num_bins: int = NUM_BINS) -> jax.Array:
  """The bin weights at the start: all 1, float32 [num_ops, num_bins]."""
  return jnp.ones((num_ops, num_bins), jnp.float32)


def bin_probabilities(*, weights: jax.Array, threshold: float) -> jax.Array:
  """Per op, the probability of each bin: m / max(m), 0 where that is below `threshold`,
  normalised; [num_ops, num_bins] (uniform for an op whose weights are all 0)."""
  peak = jnp.max(weights, axis=-1, keepdims=True)
  scaled = weights / jnp.where(peak > 0, peak, 1.0)
  kept = jnp.where(peak > 0, jnp.where(scaled >= threshold, scaled, 0.0), 1.0)
  return kept / jnp.sum(kept, axis=-1, keepdims=True)


def _levels(rng: jax.Array, bins: jax.Array) -> jax.Array:
  """A magnitude uniform within each bin: (bin + U[0, 1)) / NUM_BINS."""
  return (bins.astype(jnp.float32) + jax.random.uniform(rng, bins.shape)) / NUM_BINS


def sample_policy(*, rng: jax.Array, weights: jax.Array, num_images: int, depth: int,
                  threshold: float) -> Policy:
  """Strong-view policies: ops uniform, bins from `bin_probabilities` of `weights`."""
  op_rng, bin_rng, level_rng = jax.random.split(rng, 3)
  ops = jax.random.randint(op_rng, (num_images, depth), 0, weights.shape[0])
  probs = bin_probabilities(weights=jax.lax.stop_gradient(weights), threshold=threshold)
  log_probs = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)
  bins = jax.random.categorical(bin_rng, log_probs[ops], axis=-1)
  return Policy(ops.astype(jnp.int32), bins.astype(jnp.int32), _levels(level_rng, bins))


def sample_probe_policy(*, rng: jax.Array, num_ops: int, num_images: int,
                        depth: int) -> Policy:
  """Probe policies: ops and bins uniform (so levels uniform in [0, 1))."""
  op_rng, bin_rng, level_rng = jax.random.split(rng, 3)
  ops = jax.random.randint(op_rng, (num_images, depth), 0, num_ops)
  bins = jax.random.randint(bin_rng, (num_images, depth), 0, NUM_BINS)
  return Policy(ops.astype(jnp.int32), bins.astype(jnp.int32), _levels(level_rng, bins))


def probe_proximity(*, probs: jax.Array, labels: jax.Array) -> jax.Array:
  """w = 1 - |p - onehot(y)|_1 / 2 per probe, in [0, 1] (stop-gradient); [N]."""
  probs = jax.lax.stop_gradient(probs)
  error = jnp.sum(jnp.abs(probs - jax.nn.one_hot(labels, probs.shape[-1])), axis=-1)
  return 1.0 - 0.5 * error


def update_weights(*, weights: jax.Array, policy: Policy, proximity: jax.Array,
                   decay: float) -> jax.Array:
  """m[op, bin] <- decay m[op, bin] + (1 - decay) w, for each probe's (op, bin) in turn
  (probe-major, then slot); `proximity` [N] from `probe_proximity`."""
  depth = policy.ops.shape[1]
  rates = jnp.repeat(jax.lax.stop_gradient(proximity).astype(weights.dtype), depth)

  def step(current, update):
    op, bin_, rate = update
    return current.at[op, bin_].set(decay * current[op, bin_] + (1.0 - decay) * rate), None

  weights, _ = jax.lax.scan(step, jax.lax.stop_gradient(weights),
                            (policy.ops.reshape(-1), policy.bins.reshape(-1), rates))
  return weights


# --- the transformations: images [N, H, W, C] in [0, 1], levels [N] ---


def _per_image(values: jax.Array) -> jax.Array:
  return values[:, None, None, None]


def _blend(degenerate: jax.Array, images: jax.Array, factor: jax.Array) -> jax.Array:
  """PIL blend / ImageEnhance: degenerate + factor (image - degenerate), in [0, 1]."""
  return jnp.clip(degenerate + _per_image(factor) * (images - degenerate), 0.0, 1.0)


def _grayscale(images: jax.Array) -> jax.Array:
  if images.shape[-1] != 3:
    return images
  return jnp.sum(images * jnp.asarray(_LUMA, images.dtype), axis=-1, keepdims=True)


def _filter(images: jax.Array, kernel: np.ndarray) -> jax.Array:
  """PIL kernel filter: the kernel's weighted sum inside, the border pixels kept (a sum
  of shifted slices: cheaper on CPU than a grouped convolution for these sizes)."""
  size = kernel.shape[0]
  pad = size // 2
  height, width = images.shape[1:3]
  inner = sum(float(kernel[dy, dx]) * images[:, dy:height - size + 1 + dy,
                                             dx:width - size + 1 + dx]
              for dy in range(size) for dx in range(size) if kernel[dy, dx])
  interior = jnp.zeros((height, width), bool).at[pad:-pad, pad:-pad].set(True)
  padded = jnp.pad(inner, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return jnp.where(interior[None, :, :, None], padded, images)


def _autocontrast(images: jax.Array) -> jax.Array:
  """Per image and channel, 8-bit [min, max] stretched to [0, 255] (PIL, cutoff 0: its
  lookup table truncates, int(p * 255 / (max - min) - min * 255 / (max - min)))."""
  pixels = _quantise(images)
  low = jnp.min(pixels, axis=(1, 2), keepdims=True)
  high = jnp.max(pixels, axis=(1, 2), keepdims=True)
  spread = high > low
  scale = 255.0 / jnp.where(spread, high - low, 1.0)
  stretched = jnp.floor(pixels * scale - low * scale) / 255.0
  return jnp.where(spread, stretched, images)


def _quantise(images: jax.Array) -> jax.Array:
  return jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0)


def _posterize(images: jax.Array, levels: jax.Array) -> jax.Array:
  bits = 1 + jnp.floor(levels * 7.999)
  step = _per_image(jnp.exp2(8.0 - bits))
  return jnp.floor(_quantise(images) / step) * step / 255.0


def _solarize(images: jax.Array, levels: jax.Array) -> jax.Array:
  threshold = _per_image(jnp.floor(levels * 255.999))
  pixels = _quantise(images)
  return jnp.where(pixels >= threshold, 255.0 - pixels, pixels) / 255.0


def box_mask(*, rng: jax.Array, sizes: jax.Array, height: int, width: int) -> jax.Array:
  """CTAugment's cutout box of side `sizes` [N] around a uniform centre (c, r):
  rows [max(0, r - s // 2), min(H, r + s // 2)), same for columns; [N, H, W, 1]."""
  row_rng, col_rng = jax.random.split(rng)
  num = sizes.shape[0]
  half = sizes // 2

  def inside(key, length):
    centre = jax.random.randint(key, (num,), 0, length)
    positions = jnp.arange(length)
    return ((positions >= jnp.maximum(centre - half, 0)[:, None])
            & (positions < jnp.minimum(centre + half, length)[:, None]))

  rows, cols = inside(row_rng, height), inside(col_rng, width)
  return (rows[:, :, None] & cols[:, None, :])[..., None]


def cutout(images: jax.Array, *, rng: jax.Array, levels: jax.Array) -> jax.Array:
  """Grey square of side 1 + floor(0.499 l min(H, W)) (CTAugment's cutout)."""
  height, width = images.shape[1:3]
  sizes = 1 + jnp.floor(levels * min(height, width) * 0.499).astype(jnp.int32)
  mask = box_mask(rng=rng, sizes=sizes, height=height, width=width)
  return jnp.where(mask, jnp.asarray(CUTOUT_FILL, images.dtype), images)


def affine_coefficients(ops: jax.Array, levels: jax.Array, *, height: int,
                        width: int) -> jax.Array:
  """PIL AFFINE data (a, b, c, d, e, f) [N, 6] of each geometric op (identity for the
  others): output (x, y) samples the input at (a x + b y + c, d x + e y + f)."""
  signed = 2.0 * levels - 1.0
  ones, zeros = jnp.ones_like(levels), jnp.zeros_like(levels)
  # PIL rotate(angle): counter-clockwise about (W / 2, H / 2), angle rounded to degrees.
  angle = -jnp.deg2rad(jnp.round(signed * 45.0))
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  centre_x, centre_y = width / 2.0, height / 2.0
  rotate = jnp.stack([cos, sin, centre_x - cos * centre_x - sin * centre_y,
                      -sin, cos, centre_y + sin * centre_x - cos * centre_y], -1)
  shear, shift = signed * 0.3, signed * 0.3
  table = {
      "rotate": rotate,
      "shear_x": jnp.stack([ones, shear, zeros, zeros, ones, zeros], -1),
      "shear_y": jnp.stack([ones, zeros, zeros, shear, ones, zeros], -1),
      "translate_x": jnp.stack([ones, zeros, shift * width, zeros, ones, zeros], -1),
      "translate_y": jnp.stack([ones, zeros, zeros, zeros, ones, shift * height], -1),
  }
  coefficients = jnp.stack([ones, zeros, zeros, zeros, ones, zeros], -1)
  for name, values in table.items():
    coefficients = jnp.where((ops == OPS.index(name))[:, None], values, coefficients)
  return coefficients


def affine_nearest(images: jax.Array, coefficients: jax.Array) -> jax.Array:
  """Nearest-neighbour affine warp (PIL NEAREST, fill 0): output pixel (i, j) takes the
  input pixel containing (a x + b y + c, d x + e y + f) at its centre (x, y) = (j +
  1/2, i + 1/2)."""
  num, height, width, channels = images.shape
  y, x = jnp.meshgrid(jnp.arange(height) + 0.5, jnp.arange(width) + 0.5, indexing="ij")
  a, b, c, d, e, f = (coefficients[:, k, None, None] for k in range(6))
  source_x = jnp.floor(a * x + b * y + c).astype(jnp.int32)
  source_y = jnp.floor(d * x + e * y + f).astype(jnp.int32)
  valid = ((source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height))
  flat = (jnp.clip(source_y, 0, height - 1) * width
          + jnp.clip(source_x, 0, width - 1)).reshape(num, height * width, 1)
  gathered = jnp.take_along_axis(images.reshape(num, height * width, channels), flat,
                                 axis=1).reshape(images.shape)
  return jnp.where(valid[..., None], gathered, 0.0)


def apply_ops(images: jax.Array, *, ops: jax.Array, levels: jax.Array,
              rng: jax.Array) -> jax.Array:
  """One transformation per image: `ops` [N] (index into OPS) at `levels` [N]."""
  images = jnp.clip(images, 0.0, 1.0)
  factor = 0.1 + 1.9 * levels
  gray = _grayscale(images)
  smoothed = _filter(images, _SMOOTH)
  outputs = {
      "identity": images,
      "autocontrast": _blend(images, _autocontrast(images), levels),
      "blur": _blend(images, _filter(images, _BLUR), levels),
      "brightness": _blend(jnp.zeros_like(images), images, factor),
      "color": _blend(jnp.broadcast_to(gray, images.shape), images, factor),
      "contrast": _blend(jnp.broadcast_to(jnp.mean(gray, axis=(1, 2, 3), keepdims=True),
                                          images.shape), images, factor),
      "cutout": cutout(images, rng=rng, levels=levels),
      "invert": _blend(images, 1.0 - images, levels),
      "posterize": _posterize(images, levels),
      "sharpness": _blend(smoothed, images, factor),
      "smooth": _blend(images, smoothed, levels),
      "solarize": _solarize(images, levels),
  }
  warped = affine_nearest(images, affine_coefficients(
      ops, levels, height=images.shape[1], width=images.shape[2]))
  out = warped  # every geometric op shares the one warp
  for name, value in outputs.items():
    out = jnp.where(_per_image(ops == OPS.index(name)), value, out)
  return out


def apply_policy(images: jax.Array, *, policy: Policy, rng: jax.Array) -> jax.Array:
  """The policy's transformations in order (slot 0 first) on images [N, H, W, C]."""
  for slot, slot_rng in enumerate(jax.random.split(rng, policy.ops.shape[1])):
    images = apply_ops(images, ops=policy.ops[:, slot], levels=policy.levels[:, slot],
                       rng=slot_rng)
  return images


# --- strong views and the probe update, as ReMixMatch and FixMatch (CTA) use them ---


def augment_normalised(images: jax.Array, *, policy: Policy, rng: jax.Array,
                       mean=None, std=None, final_cutout: bool = False) -> jax.Array:
  """`policy` on images normalised as (pixels - mean) / std (the pipeline's
  `DatasetInfo` mean / std; None: already [0, 1] pixels), then Cutout at level 1 if
  `final_cutout`; returned normalised the same way. [N, H, W, C] -> [N, H, W, C]."""
  policy_rng, cutout_rng = jax.random.split(rng)
  if mean is None or std is None:
    pixels, renormalise = images, lambda x: x
  else:
    mean, std = jnp.asarray(mean, images.dtype), jnp.asarray(std, images.dtype)
    pixels, renormalise = images * std + mean, lambda x: (x - mean) / std
  pixels = apply_policy(pixels, policy=policy, rng=policy_rng)
  if final_cutout:
    pixels = cutout(pixels, rng=cutout_rng, levels=jnp.ones((images.shape[0],), pixels.dtype))
  return renormalise(pixels)


def strong_views(images: jax.Array, *, weights: jax.Array, rng: jax.Array, depth: int,
                 threshold: float, mean=None, std=None) -> jax.Array:
  """Strong views (ReMixMatch Sec. 3.2.2, FixMatch's CTAugment variant): `depth`
  transformations drawn from the bin `weights` (`sample_policy`), then Cutout."""
  policy_rng, augment_rng = jax.random.split(rng)
  policy = sample_policy(rng=policy_rng, weights=weights, num_images=images.shape[0],
                         depth=depth, threshold=threshold)
  return augment_normalised(images, policy=policy, rng=augment_rng, mean=mean, std=std,
                            final_cutout=True)


def probe_update(images: jax.Array, labels: jax.Array, *, weights: jax.Array,
                 rng: jax.Array, depth: int, decay: float, predict,
                 mean=None, std=None) -> tuple[jax.Array, jax.Array]:
  """CTAugment's learning step: labelled `images` [N, H, W, C] under uniformly drawn
  policies (the probes), `predict(probes)` -> class probabilities [N, C] (the current
  model, eval mode), and `update_weights` by their proximity to `labels` [N].

  Returns:
    (the new bin weights [num_ops, NUM_BINS], the probes' proximity [N]).
  """
  policy_rng, augment_rng = jax.random.split(rng)
  policy = sample_probe_policy(rng=policy_rng, num_ops=weights.shape[0],
                               num_images=images.shape[0], depth=depth)
  probes = augment_normalised(images, policy=policy, rng=augment_rng, mean=mean, std=std)
  proximity = probe_proximity(probs=predict(probes), labels=labels)
  return update_weights(weights=weights, policy=policy, proximity=proximity,
                        decay=decay), proximity

