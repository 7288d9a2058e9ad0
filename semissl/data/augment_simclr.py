"""The SimCLR / BYOL augmentation family as one registered augmentation, 'simclr'.

SemPPL App. E (Table 12), after Chen et al. 2020a and Grill et al. 2020, in this
order, every step after the crop applied with its own probability:
1. random resized crop: area fraction ~ U[area_range], aspect ratio
   log-uniform in aspect_ratio_range (10 attempts, then the largest central
   crop within the ratio range, as torchvision), bicubic resize to size x size;
   with probability 1 - crop_prob the whole image is resized instead (SemPPL
   views: crop_prob 1, see below);
2. horizontal flip;
3. colour jitter, the four adjustments in a random order, each by a value
   u ~ U[-a, a]: brightness x + u, contrast (x - mean) (1 + u) + mean per
   channel, saturation factor 1 + u, hue shift u (in turns), clipped to [0, 1]
   after each;
4. grayscale 0.2989 r + 0.5870 g + 0.1140 b, repeated on the three channels;
5. Gaussian blur, sigma ~ U[blur_sigma_range], separable kernel of side
   2 (size // 20) + 1 (23 at 224, 9 at 96, 3 at 28: ~10% of the side, as
   BYOL), reflect padding at the border;
6. solarize: x -> x if x < 0.5 else 1 - x.

One-channel (gray) images: brightness and contrast act on the one channel;
saturation, hue and grayscale are identities (a gray image has no chroma).

Two places where the SemPPL text and its cited pipelines differ, and what is
done here: App. E step 6 describes solarize as binarising at 0.5, but the
pipelines it says it follows (SimCLR, BYOL, ReLIC) map x >= 0.5 to 1 - x; we
follow those. App. E applies the random crop to every view (as BYOL's Table 6;
the BYOL input pipeline that SemPPL's released code reuses random-crops every
pretraining view), while Table 12 lists a 50% "probability of randomly cropping".
The crop is always applied here (`SEMPPL_*` and `BYOL_*` presets: crop_prob 1.0),
so a small view is always a small crop (area 5-14%), never a whole-image
thumbnail; `semppl_view_spec(crop_prob=SEMPPL_TABLE12_CROP_PROB)` gives Table
12's 0.5 (the setting of runs made before this default changed).

Presets (plain dicts of this augmentation's parameters, no 'size'/'area_range'
where those depend on the view's scale): `SEMPPL_EVEN`, `SEMPPL_ODD` (Table 12
columns; crop size and area per parity and scale in `SEMPPL_CROP`),
`BYOL_VIEW_1`, `BYOL_VIEW_2`
(Grill et al. 2020, Table 6). `view_spec(preset=..., size=..., ...)` and
`semppl_view_spec(parity=..., scale=...)` build specs.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import math

import tensorflow as tf

from semissl.data import augment

NAME = "simclr"
PARAMS = ("crop_prob", "area_range", "aspect_ratio_range", "flip_prob",
          "jitter_prob", "brightness", "contrast", "saturation", "hue",
          "grayscale_prob", "blur_prob", "blur_sigma_range", "solarize_prob",
          "saliency_mask_prob")
DEFAULTS = {
    "crop_prob": 1.0,
    "saliency_mask_prob": 0.0,  # not implemented: any other value is refused
    "area_range": (0.08, 1.0),
    "aspect_ratio_range": (3 / 4, 4 / 3),
    "flip_prob": 0.5,
    "jitter_prob": 0.8,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.2,
    "hue": 0.1,
    "grayscale_prob": 0.2,
    "blur_prob": 1.0,
    "blur_sigma_range": (0.1, 2.0),
    "solarize_prob": 0.0,
}
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)
_CROP_ATTEMPTS = 10

# SemPPL Table 12. Odd views: large views 1 and 3 and small view 1; even views:
# large views 2 and 4 and small view 2. The crop is applied to every view (App. E);
# Table 12's 50% crop probability is the `crop_prob` option of `semppl_view_spec`.
SEMPPL_TABLE12_CROP_PROB = 0.5
_SEMPPL_COMMON = {"crop_prob": 1.0, "flip_prob": 0.5, "jitter_prob": 0.8,
                  "grayscale_prob": 0.2, "brightness": 0.4, "contrast": 0.4,
                  "saturation": 0.2, "hue": 0.1,
                  "aspect_ratio_range": (3 / 4, 4 / 3),
                  "blur_sigma_range": (0.1, 2.0)}
SEMPPL_EVEN = {**_SEMPPL_COMMON, "blur_prob": 1.0, "solarize_prob": 0.0}
SEMPPL_ODD = {**_SEMPPL_COMMON, "blur_prob": 0.1, "solarize_prob": 0.2}
# Crop (size, area_range) by (parity, scale). Table 12 gives the even column
# only a large crop; the second small view (even) uses the small crop of the
# odd column (RELICv2 multi-crop), i.e. the crop depends on the scale only
# except for the large minimum area.
SEMPPL_CROP = {
    ("even", "large"): (224, (0.08, 1.0)),
    ("odd", "large"): (224, (0.14, 1.0)),
    ("even", "small"): (96, (0.05, 0.14)),
    ("odd", "small"): (96, (0.05, 0.14)),
}
# BYOL (Grill et al. 2020, Table 6): views T and T'.
BYOL_VIEW_1 = {**DEFAULTS}
BYOL_VIEW_2 = {**DEFAULTS, "blur_prob": 0.1, "solarize_prob": 0.2}
PRESETS = {"semppl_even": SEMPPL_EVEN, "semppl_odd": SEMPPL_ODD,
           "byol_view_1": BYOL_VIEW_1, "byol_view_2": BYOL_VIEW_2}


def view_spec(*, preset: str, size: int, **overrides) -> dict:
  """A 'simclr' view spec: the named preset, `size`, then `overrides`."""
  if preset not in PRESETS:
    raise ValueError(f"Unknown simclr preset {preset!r}; known: {sorted(PRESETS)}.")
  unknown = sorted(set(overrides) - set(PARAMS))
  if unknown:
    raise ValueError(f"simclr has no parameters {unknown}; it takes {list(PARAMS)}.")
  return {"name": NAME, **PRESETS[preset], **overrides, "size": int(size)}


def semppl_view_spec(*, parity: str, scale: str, size: int | None = None,
                     area_range: Sequence[float] | None = None,
                     crop_prob: float = 1.0) -> dict:
  """SemPPL Table 12 view: parity 'odd'|'even', scale 'large'|'small'.

  `crop_prob`: 1.0 crops every view (App. E); `SEMPPL_TABLE12_CROP_PROB` (0.5) is
  Table 12's figure, under which half the views are the whole image resized.
  """
  if (parity, scale) not in SEMPPL_CROP:
    raise ValueError(f"parity={parity!r}, scale={scale!r}: use odd|even and "
                     "large|small.")
  default_size, default_area = SEMPPL_CROP[(parity, scale)]
  return view_spec(preset=f"semppl_{parity}", size=size or default_size,
                   area_range=tuple(area_range or default_area),
                   crop_prob=float(crop_prob))


def blur_radius(size: int) -> int:
  """Half-side of the blur kernel for a size x size view (11 at 224)."""
  return (size // 10) // 2


def gaussian_blur(image: tf.Tensor, *, sigma: tf.Tensor, radius: int) -> tf.Tensor:
  """Separable Gaussian blur of a float [H, W, C] image, reflect padding.

  Kernel taps exp(-x^2 / (2 sigma^2)) for x in [-radius, radius], normalised.
  """
  if radius < 1:
    return image
  offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
  taps = tf.exp(-tf.square(offsets) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
  taps /= tf.reduce_sum(taps)
  channels = image.shape[-1]
  vertical = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, channels, 1])
  horizontal = tf.tile(tf.reshape(taps, [1, -1, 1, 1]), [1, 1, channels, 1])
  padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
  blurred = tf.nn.depthwise_conv2d(padded[None], vertical, [1, 1, 1, 1], "VALID")
  blurred = tf.nn.depthwise_conv2d(blurred, horizontal, [1, 1, 1, 1], "VALID")
  return blurred[0]


def _uniform(seed: tf.Tensor, low: float = 0.0, high: float = 1.0,
             shape: Sequence[int] = ()) -> tf.Tensor:
  return tf.random.stateless_uniform(list(shape), seed=seed, minval=low, maxval=high)


def _maybe(prob: float, seed: tf.Tensor, image: tf.Tensor, fn) -> tf.Tensor:
  """fn(image) with probability `prob` (static 0 / 1 skip the draw)."""
  if prob <= 0.0:
    return image
  if prob >= 1.0:
    return fn(image)
  out = tf.cond(_uniform(seed) < prob, lambda: fn(image), lambda: image)
  return tf.ensure_shape(out, [None, None, image.shape[-1]])


def crop_window(height: tf.Tensor, width: tf.Tensor, *, seed: tf.Tensor,
                area_range: Sequence[float],
                aspect_ratio_range: Sequence[float]) -> tuple[tf.Tensor, tf.Tensor]:
  """(offset [2], shape [2]) int32 of a random-resized-crop window (y, x order)."""
  area_seed, ratio_seed, y_seed, x_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  log_low, log_high = math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1])
  target_area = h * w * _uniform(area_seed, area_range[0], area_range[1], [_CROP_ATTEMPTS])
  ratio = tf.exp(_uniform(ratio_seed, log_low, log_high, [_CROP_ATTEMPTS]))
  crop_w = tf.round(tf.sqrt(target_area * ratio))
  crop_h = tf.round(tf.sqrt(target_area / ratio))
  fits = (crop_w >= 1) & (crop_h >= 1) & (crop_w <= w) & (crop_h <= h)
  first = tf.argmax(tf.cast(fits, tf.int32))
  # Fallback: the largest central window whose ratio is within the range.
  ratio_of_image = w / h
  fallback_w = tf.where(ratio_of_image > aspect_ratio_range[1],
                        tf.round(h * aspect_ratio_range[1]), w)
  fallback_h = tf.where(ratio_of_image < aspect_ratio_range[0],
                        tf.round(w / aspect_ratio_range[0]), h)
  found = tf.reduce_any(fits)
  chosen_h = tf.where(found, tf.gather(crop_h, first), fallback_h)
  chosen_w = tf.where(found, tf.gather(crop_w, first), fallback_w)
  chosen_h = tf.clip_by_value(chosen_h, 1.0, h)
  chosen_w = tf.clip_by_value(chosen_w, 1.0, w)
  top = tf.where(found, tf.floor(_uniform(y_seed) * (h - chosen_h + 1)),
                 tf.floor((h - chosen_h) / 2))
  left = tf.where(found, tf.floor(_uniform(x_seed) * (w - chosen_w + 1)),
                  tf.floor((w - chosen_w) / 2))
  offset = tf.cast(tf.stack([top, left]), tf.int32)
  shape = tf.cast(tf.stack([chosen_h, chosen_w]), tf.int32)
  return offset, shape


def _bicubic_resize(image: tf.Tensor, size: int) -> tf.Tensor:
  image = tf.image.resize(image, [size, size], method="bicubic", antialias=True)
  image = tf.clip_by_value(image, 0.0, 1.0)
  return tf.ensure_shape(image, [size, size, image.shape[-1]])


def _colour_jitter(image: tf.Tensor, *, seed: tf.Tensor, spec: Mapping) -> tf.Tensor:
  """The four jitter ops in a random order (ops with a = 0 are skipped)."""
  order_seed, *op_seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
  rgb = image.shape[-1] == 3
  brightness, contrast = float(spec["brightness"]), float(spec["contrast"])
  saturation, hue = float(spec["saturation"]), float(spec["hue"])

  def adjust(kind, x, op_seed):
    if kind == 0:
      return tf.clip_by_value(x + _uniform(op_seed, -brightness, brightness), 0.0, 1.0)
    if kind == 1:
      factor = 1.0 + _uniform(op_seed, -contrast, contrast)
      mean = tf.reduce_mean(x, axis=[0, 1], keepdims=True)
      return tf.clip_by_value((x - mean) * factor + mean, 0.0, 1.0)
    if kind == 2:
      factor = 1.0 + _uniform(op_seed, -saturation, saturation)
      return tf.clip_by_value(tf.image.adjust_saturation(x, factor), 0.0, 1.0)
    return tf.clip_by_value(tf.image.adjust_hue(x, _uniform(op_seed, -hue, hue)), 0.0, 1.0)

  active = [kind for kind, amount in enumerate((brightness, contrast, saturation, hue))
            if amount > 0 and (kind < 2 or rgb)]
  if not active:
    return image
  order = tf.argsort(_uniform(order_seed, shape=[len(active)]))
  for position in range(len(active)):
    branches = [lambda x=image, k=kind: adjust(k, x, op_seeds[k]) for kind in active]
    image = tf.switch_case(order[position], branches)
    image = tf.ensure_shape(image, [None, None, 3 if rgb else 1])
  return image


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  if image.shape[-1] != 3:
    return image
  gray = tf.tensordot(image, tf.constant(GRAYSCALE_WEIGHTS, tf.float32), axes=[[-1], [0]])
  return tf.tile(gray[..., None], [1, 1, 3])


def _solarize(image: tf.Tensor) -> tf.Tensor:
  return tf.where(image < 0.5, image, 1.0 - image)


def _spec_with_defaults(spec: Mapping) -> dict:
  full = {**DEFAULTS, **{k: v for k, v in spec.items() if k in DEFAULTS}}
  for key in ("area_range", "aspect_ratio_range", "blur_sigma_range"):
    low, high = (float(v) for v in full[key])
    if not 0 < low <= high:
      raise ValueError(f"simclr {key}={full[key]!r} must be 0 < low <= high.")
    full[key] = (low, high)
  if full["area_range"][1] > 1.0:
    raise ValueError(f"simclr area_range={full['area_range']} must be within (0, 1].")
  for key in PARAMS:
    if key.endswith("_prob") and not 0.0 <= float(full[key]) <= 1.0:
      raise ValueError(f"simclr {key}={full[key]!r} must be a probability in [0, 1].")
  for key in ("brightness", "contrast", "saturation"):
    if not 0.0 <= float(full[key]) <= 1.0:
      raise ValueError(f"simclr {key}={full[key]!r} must be in [0, 1].")
  if not 0.0 <= float(full["hue"]) <= 0.5:
    raise ValueError(f"simclr hue={full['hue']!r} must be in [0, 0.5].")
  return full


def check_spec(spec: Mapping) -> None:
  """One-line ValueError for bad 'simclr' parameter values (config-check time)."""
  if spec.get("saliency_mask_prob", 0.0):
    raise ValueError(
        "saliency_mask_prob: RELICv2/SemPPL saliency background masking is not implemented "
        "(it needs per-image saliency masks, which no dataset here provides); set it to 0.")
  _spec_with_defaults(spec)


@augment.register_augmentation(NAME, params=PARAMS, check=check_spec)
def simclr(image: tf.Tensor, *, seed: tf.Tensor, spec: Mapping,
           image_size: int) -> tf.Tensor:
  """SimCLR/BYOL/SemPPL view of a uint8 image (see the module docstring)."""
  size = augment.view_size(spec, image_size=image_size)
  cfg = _spec_with_defaults(spec)
  (crop_seed, crop_draw_seed, flip_seed, jitter_seed, jitter_draw_seed,
   gray_seed, blur_seed, sigma_seed, solarize_seed) = tf.unstack(
       tf.random.experimental.stateless_split(seed, 9))
  channels = image.shape[-1]
  if channels is None:
    raise ValueError("simclr needs images with a known channel count.")
  image = tf.image.convert_image_dtype(image, tf.float32)
  shape = tf.shape(image)

  def crop(x):
    offset, window = crop_window(shape[0], shape[1], seed=crop_seed,
                                 area_range=cfg["area_range"],
                                 aspect_ratio_range=cfg["aspect_ratio_range"])
    x = tf.slice(x, tf.concat([offset, [0]], 0), tf.concat([window, [-1]], 0))
    return tf.ensure_shape(x, [None, None, channels])

  image = _maybe(cfg["crop_prob"], crop_draw_seed, image, crop)
  image = _bicubic_resize(image, size)
  image = _maybe(cfg["flip_prob"], flip_seed, image, lambda x: tf.reverse(x, [1]))
  image = _maybe(cfg["jitter_prob"], jitter_draw_seed, image,
                 lambda x: _colour_jitter(x, seed=jitter_seed, spec=cfg))
  image = _maybe(cfg["grayscale_prob"], gray_seed, image, _grayscale)
  low, high = cfg["blur_sigma_range"]
  image = _maybe(cfg["blur_prob"], blur_seed, image,
                 lambda x: gaussian_blur(x, sigma=_uniform(sigma_seed, low, high),
                                         radius=blur_radius(size)))
  image = _maybe(cfg["solarize_prob"], solarize_seed, image, _solarize)
  return tf.ensure_shape(image, [size, size, image.shape[-1]])
