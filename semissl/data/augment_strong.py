"""Strong augmentations: RandAugment, Cutout and random erasing (tf.data, stateless).

Registered view name 'randaugment': the weak crop + flip of `crop_flip`, then
`num_ops` random image operations (each applied with probability `op_prob`), then
Cutout, then random erasing. Two operation sets:

* 'fixmatch': FixMatch's RandAugment variant (FixMatch App. "RA": identity,
  autocontrast, brightness, colour, contrast, equalize, posterize, rotate,
  sharpness, shear x/y, solarize, translate x/y) with a magnitude drawn uniformly
  per operation ('magnitude_mode': 'uniform') and Cutout of half the image side.
* 'timm_increasing': timm's `rand-m9-mstd0.5-inc1` set used by Semi-ViT (App. A:
  the "increasing" operations, magnitude 9 with Gaussian noise of std 0.5, adding
  invert and solarize-add), usually with random erasing (Semi-ViT Table 13).

Every operation maps float32 [H, W, C] in [0, 1] to the same shape, works for one
channel (colour becomes the identity) and three, and is the identity at level 0
except the parameter-free ones (autocontrast, equalize, invert). Level l in [0, 1]
is magnitude / 10; signed operations draw their sign with probability 1/2. Ranges
at l = 1: rotate 30 degrees, shear 0.3, translate `translate_max` of the side,
enhancement factor 1 +- 0.9, posterize to 4 bits, solarize threshold 0,
solarize-add +110/255. (timm's increasing posterize goes down to 0 bits; here it
stops at FixMatch's 4 bits, so both sets share one posterize.)

Other strong views come from the SimCLR family ('simclr', augment_simclr.py):
MoCo v2's strong view (SimMatch ImageNet) and Semi-ViT's weak view are presets
of it, named in the configs.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
import numbers

import tensorflow as tf

from semissl.data import augment

MAX_MAGNITUDE = 10.0
MAGNITUDE_MODES = ("fixed", "uniform", "gaussian")
ROTATE_MAX_DEGREES = 30.0
SHEAR_MAX = 0.3
ENHANCE_MAX = 0.9
POSTERIZE_MAX_BITS_REMOVED = 4
SOLARIZE_ADD_MAX = 110.0 / 255.0
PARAMETER_FREE_OPS = ("identity", "auto_contrast", "equalize", "invert")
OP_SETS = {
    "fixmatch": ("identity", "auto_contrast", "brightness", "color", "contrast",
                 "equalize", "posterize", "rotate", "sharpness", "shear_x", "shear_y",
                 "solarize", "translate_x", "translate_y"),
    "timm_increasing": ("auto_contrast", "equalize", "invert", "rotate", "posterize",
                        "solarize", "solarize_add", "color", "contrast", "brightness",
                        "sharpness", "shear_x", "shear_y", "translate_x", "translate_y"),
}
_CROP_PARAMS = ("mode", "pad", "area_range", "aspect_ratio_range", "flip")
_RANDAUGMENT_DEFAULTS = {
    "num_ops": 2, "magnitude": 10, "magnitude_mode": "uniform", "magnitude_std": 0.5,
    "ops": "fixmatch", "op_prob": 0.5, "translate_max": 0.3, "fill": 0.5,
    "cutout": 0.5, "random_erasing": 0.0,
}


def _split(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """[H, W, 1] luma (ITU-R 601, as PIL's 'L'); one channel is returned as is."""
  if image.shape[-1] == 1:
    return image
  return tf.image.rgb_to_grayscale(image)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance: degenerate + factor (image - degenerate), clipped to [0, 1]."""
  return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 1.0)


def _quantise(image: tf.Tensor) -> tf.Tensor:
  """float [0, 1] -> int32 pixel values 0..255."""
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.int32)


def _affine(image: tf.Tensor, transform: Sequence[tf.Tensor], fill: float) -> tf.Tensor:
  """Output pixel (x, y) samples the input at (a0 x + a1 y + a2, b0 x + b1 y + b2)."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  matrix = tf.reshape(tf.cast(tf.stack(list(transform) + [0.0, 0.0]), tf.float32), [1, 8])
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=matrix, output_shape=tf.stack([height, width]),
      fill_value=tf.constant(fill, tf.float32), interpolation="BILINEAR",
      fill_mode="CONSTANT")
  return tf.ensure_shape(out[0], image.shape)


def identity(image, level, sign, *, translate_max, fill):
  del level, sign, translate_max, fill
  return image


def auto_contrast(image, level, sign, *, translate_max, fill):
  """Per channel: stretch [min, max] to [0, 1] (PIL ImageOps.autocontrast, cutoff 0)."""
  del level, sign, translate_max, fill
  low = tf.reduce_min(image, axis=(0, 1), keepdims=True)
  high = tf.reduce_max(image, axis=(0, 1), keepdims=True)
  scale = tf.where(high > low, 1.0 / tf.maximum(high - low, 1e-12), 1.0)
  offset = tf.where(high > low, low, 0.0)
  return tf.clip_by_value((image - offset) * scale, 0.0, 1.0)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
  """PIL ImageOps.equalize on one int32 channel [H, W] of values 0..255."""
  histogram = tf.math.bincount(tf.reshape(channel, [-1]), minlength=256, maxlength=256)
  nonzero = tf.reshape(tf.where(histogram > 0), [-1])
  last = tf.gather(histogram, nonzero[-1])
  step = (tf.reduce_sum(histogram) - last) // 255
  safe_step = tf.maximum(step, 1)
  lut = (tf.cumsum(histogram, exclusive=True) + safe_step // 2) // safe_step
  lut = tf.clip_by_value(lut, 0, 255)
  return tf.where(step > 0, tf.gather(lut, channel), channel)


def equalize(image, level, sign, *, translate_max, fill):
  """Histogram equalisation per channel, on 8-bit values (PIL ImageOps.equalize)."""
  del level, sign, translate_max, fill
  pixels = _quantise(image)
  channels = [_equalize_channel(pixels[..., c]) for c in range(image.shape[-1])]
  return tf.cast(tf.stack(channels, axis=-1), tf.float32) / 255.0


def invert(image, level, sign, *, translate_max, fill):
  del level, sign, translate_max, fill
  return 1.0 - image


def brightness(image, level, sign, *, translate_max, fill):
  del translate_max, fill
  return _blend(tf.zeros_like(image), image, 1.0 + sign * level * ENHANCE_MAX)


def color(image, level, sign, *, translate_max, fill):
  """Saturation: blend with the grayscale image; the identity for one channel."""
  del translate_max, fill
  if image.shape[-1] == 1:
    return image
  degenerate = tf.broadcast_to(_grayscale(image), tf.shape(image))
  return _blend(degenerate, image, 1.0 + sign * level * ENHANCE_MAX)


def contrast(image, level, sign, *, translate_max, fill):
  """Blend with the mean gray level (PIL ImageEnhance.Contrast)."""
  del translate_max, fill
  mean = tf.reduce_mean(_grayscale(image))
  return _blend(tf.fill(tf.shape(image), mean), image, 1.0 + sign * level * ENHANCE_MAX)


def sharpness(image, level, sign, *, translate_max, fill):
  """Blend with a 3x3 smoothed copy (kernel [1 1 1; 1 5 1; 1 1 1]/13, borders kept)."""
  del translate_max, fill
  channels = image.shape[-1]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
  smoothed = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
  paddings = [[1, 1], [1, 1], [0, 0]]
  interior = tf.pad(tf.ones_like(smoothed, tf.bool), paddings)
  degenerate = tf.where(interior, tf.pad(smoothed, paddings), image)
  return _blend(degenerate, image, 1.0 + sign * level * ENHANCE_MAX)


def posterize(image, level, sign, *, translate_max, fill):
  """Keep 8 - round(4 l) bits of each 8-bit value (PIL ImageOps.posterize)."""
  del sign, translate_max, fill
  shift = tf.cast(tf.round(level * POSTERIZE_MAX_BITS_REMOVED), tf.int32)
  pixels = tf.bitwise.left_shift(tf.bitwise.right_shift(_quantise(image), shift), shift)
  return tf.cast(pixels, tf.float32) / 255.0


def solarize(image, level, sign, *, translate_max, fill):
  """Invert pixels >= 256 (1 - l) in 8-bit units (PIL ImageOps.solarize)."""
  del sign, translate_max, fill
  pixels = tf.round(image * 255.0)
  return tf.where(pixels >= 256.0 * (1.0 - level), 1.0 - image, image)


def solarize_add(image, level, sign, *, translate_max, fill):
  """Add 110 l / 255 to pixels below 128/255 (timm SolarizeAdd, threshold 128)."""
  del sign, translate_max, fill
  added = tf.minimum(image + level * SOLARIZE_ADD_MAX, 1.0)
  return tf.where(tf.round(image * 255.0) < 128.0, added, image)


def rotate(image, level, sign, *, translate_max, fill):
  """Rotation about the centre by sign * 30 l degrees."""
  del translate_max
  angle = sign * level * ROTATE_MAX_DEGREES * math.pi / 180.0
  centre_y = (tf.cast(tf.shape(image)[0], tf.float32) - 1.0) / 2.0
  centre_x = (tf.cast(tf.shape(image)[1], tf.float32) - 1.0) / 2.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  return _affine(image, [cos, sin, centre_x - cos * centre_x - sin * centre_y,
                         -sin, cos, centre_y + sin * centre_x - cos * centre_y], fill)


def shear_x(image, level, sign, *, translate_max, fill):
  del translate_max
  return _affine(image, [1.0, sign * level * SHEAR_MAX, 0.0, 0.0, 1.0, 0.0], fill)


def shear_y(image, level, sign, *, translate_max, fill):
  del translate_max
  return _affine(image, [1.0, 0.0, 0.0, sign * level * SHEAR_MAX, 1.0, 0.0], fill)


def translate_x(image, level, sign, *, translate_max, fill):
  shift = sign * level * translate_max * tf.cast(tf.shape(image)[1], tf.float32)
  return _affine(image, [1.0, 0.0, shift, 0.0, 1.0, 0.0], fill)


def translate_y(image, level, sign, *, translate_max, fill):
  shift = sign * level * translate_max * tf.cast(tf.shape(image)[0], tf.float32)
  return _affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, shift], fill)


OPS = {fn.__name__: fn for fn in (
    identity, auto_contrast, equalize, invert, brightness, color, contrast, sharpness,
    posterize, solarize, solarize_add, rotate, shear_x, shear_y, translate_x,
    translate_y)}


def apply_op(name: str, image: tf.Tensor, *, level: float, sign: float = 1.0,
             translate_max: float = 0.3, fill: float = 0.5) -> tf.Tensor:
  """Runs one RandAugment operation on float32 [H, W, C] in [0, 1]."""
  return OPS[name](image, tf.constant(level, tf.float32), tf.constant(sign, tf.float32),
                   translate_max=translate_max, fill=fill)


def sample_level(*, seed: tf.Tensor, magnitude: float, mode: str,
                 magnitude_std: float = 0.5) -> tf.Tensor:
  """Operation level in [0, 1] = m / 10 with m from the magnitude mode.

  'fixed': m = magnitude (RandAugment); 'uniform': m ~ U[0, magnitude] (FixMatch
  RA's random magnitude); 'gaussian': m ~ N(magnitude, magnitude_std) clipped to
  [0, 10] (timm 'mstd').
  """
  if mode == "fixed":
    value = tf.constant(magnitude, tf.float32)
  elif mode == "uniform":
    value = tf.random.stateless_uniform([], seed, 0.0, magnitude)
  elif mode == "gaussian":
    value = magnitude + magnitude_std * tf.random.stateless_normal([], seed)
  else:
    raise ValueError(f"magnitude_mode={mode!r}; known: {MAGNITUDE_MODES}.")
  return tf.clip_by_value(value, 0.0, MAX_MAGNITUDE) / MAX_MAGNITUDE


def _op_names(ops: str | Sequence[str]) -> tuple[str, ...]:
  return OP_SETS[ops] if isinstance(ops, str) else tuple(ops)


def rand_augment(image: tf.Tensor, *, seed: tf.Tensor, num_ops: int, magnitude: float,
                 magnitude_mode: str = "uniform", magnitude_std: float = 0.5,
                 ops: str | Sequence[str] = "fixmatch", op_prob: float = 0.5,
                 translate_max: float = 0.3, fill: float = 0.5) -> tf.Tensor:
  """`num_ops` operations drawn uniformly (with replacement), each kept w.p. `op_prob`."""
  names = _op_names(ops)
  shape = image.shape  # static; the ops' graph outputs may lose it
  for op_seed in _split(seed, num_ops) if num_ops else ():
    choice_seed, keep_seed, level_seed, sign_seed = _split(op_seed, 4)
    index = tf.random.stateless_uniform([], choice_seed, 0, len(names), dtype=tf.int32)
    keep = tf.random.stateless_uniform([], keep_seed) < op_prob
    index = tf.where(keep, index, len(names))  # the extra last branch: skip
    level = sample_level(seed=level_seed, magnitude=magnitude, mode=magnitude_mode,
                         magnitude_std=magnitude_std)
    sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)

    def branch(name, current=image, level=level, sign=sign):
      return lambda: OPS[name](current, level, sign, translate_max=translate_max,
                               fill=fill)
    image = tf.switch_case(index, [branch(n) for n in names] + [lambda x=image: x])
    image = tf.ensure_shape(image, shape)
  return image


def cutout_box(*, seed: tf.Tensor, height: int, width: int,
               size_fraction: float) -> tuple[tf.Tensor, ...]:
  """Box of round(fraction * side) per side around a uniform centre, clipped.

  Returns (top, left, bottom, right), int32, rows [top, bottom) x cols [left, right).
  """
  box_height = round(size_fraction * height)
  box_width = round(size_fraction * width)
  centre_y = tf.random.stateless_uniform([], seed, 0, height, dtype=tf.int32)
  centre_x = tf.random.stateless_uniform(
      [], tf.random.experimental.stateless_fold_in(seed, 1), 0, width, dtype=tf.int32)
  top, left = centre_y - box_height // 2, centre_x - box_width // 2
  return (tf.maximum(top, 0), tf.maximum(left, 0),
          tf.minimum(top + box_height, height), tf.minimum(left + box_width, width))


def _box_mask(height: int, width: int, top, left, bottom, right) -> tf.Tensor:
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]
  inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  return inside[..., None]


def cutout(image: tf.Tensor, *, seed: tf.Tensor, size_fraction: float,
           fill: float = 0.5) -> tf.Tensor:
  """Cutout (DeVries & Taylor 2017) as FixMatch RA uses it: one gray square."""
  height, width = image.shape[0], image.shape[1]
  box = cutout_box(seed=seed, height=height, width=width, size_fraction=size_fraction)
  return tf.where(_box_mask(height, width, *box), tf.constant(fill, image.dtype), image)


def random_erasing(image: tf.Tensor, *, seed: tf.Tensor, probability: float,
                   area_range: Sequence[float] = (0.02, 1.0 / 3.0),
                   aspect_range: Sequence[float] = (0.3, 1.0 / 0.3),
                   attempts: int = 10) -> tf.Tensor:
  """Random erasing (Zhong et al. 2020; timm 'pixel' mode): a box of uniform noise.

  With probability `probability`, the first of `attempts` boxes (area fraction
  ~ U(area_range), log-uniform aspect) that fits in the image is filled with
  per-pixel uniform [0, 1] noise; none fitting leaves the image unchanged.
  """
  height, width = image.shape[0], image.shape[1]
  apply_seed, box_seed, noise_seed = _split(seed, 3)
  draws = tf.random.stateless_uniform([4, attempts], box_seed)
  area = (area_range[0] + draws[0] * (area_range[1] - area_range[0])) * height * width
  log_low, log_high = math.log(aspect_range[0]), math.log(aspect_range[1])
  aspect = tf.exp(log_low + draws[1] * (log_high - log_low))
  box_height = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  box_width = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = (box_height < height) & (box_width < width) & (box_height > 0) & (box_width > 0)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  box_height, box_width = box_height[first], box_width[first]
  top = tf.cast(draws[2, first] * tf.cast(height - box_height + 1, tf.float32), tf.int32)
  left = tf.cast(draws[3, first] * tf.cast(width - box_width + 1, tf.float32), tf.int32)
  top, left = tf.minimum(top, height - box_height), tf.minimum(left, width - box_width)
  apply = (tf.random.stateless_uniform([], apply_seed) < probability) & fits[first]
  inside = _box_mask(height, width, top, left, top + box_height, left + box_width)
  noise = tf.random.stateless_uniform(tf.shape(image), noise_seed, dtype=image.dtype)
  return tf.where(inside & apply, noise, image)


def _check_fraction(spec: Mapping, key: str) -> None:
  value = spec.get(key, _RANDAUGMENT_DEFAULTS[key])
  if (not isinstance(value, numbers.Real) or isinstance(value, bool)
      or not 0.0 <= value <= 1.0):
    raise ValueError(f"randaugment {key}={value!r} is outside [0, 1].")


def check_randaugment_spec(spec: Mapping) -> None:
  """One-line ValueError for bad 'randaugment' values (run at config-check time)."""
  magnitude = spec.get("magnitude", _RANDAUGMENT_DEFAULTS["magnitude"])
  if (not isinstance(magnitude, numbers.Real) or isinstance(magnitude, bool)
      or not 0.0 <= magnitude <= MAX_MAGNITUDE):
    raise ValueError(f"randaugment magnitude={magnitude!r} is outside [0, "
                     f"{MAX_MAGNITUDE:g}]; use e.g. 9 (Semi-ViT) or 10 (FixMatch).")
  num_ops = spec.get("num_ops", _RANDAUGMENT_DEFAULTS["num_ops"])
  if not isinstance(num_ops, int) or isinstance(num_ops, bool) or num_ops < 0:
    raise ValueError(f"randaugment num_ops={num_ops!r} must be an integer >= 0.")
  mode = spec.get("magnitude_mode", _RANDAUGMENT_DEFAULTS["magnitude_mode"])
  if mode not in MAGNITUDE_MODES:
    raise ValueError(f"randaugment magnitude_mode={mode!r}; known: {MAGNITUDE_MODES}.")
  std = spec.get("magnitude_std", _RANDAUGMENT_DEFAULTS["magnitude_std"])
  if not isinstance(std, numbers.Real) or std < 0:
    raise ValueError(f"randaugment magnitude_std={std!r} must be >= 0.")
  ops = spec.get("ops", _RANDAUGMENT_DEFAULTS["ops"])
  if isinstance(ops, str):
    if ops not in OP_SETS:
      raise ValueError(f"randaugment ops={ops!r}; known sets: {sorted(OP_SETS)} "
                       f"or a list of operations from {sorted(OPS)}.")
  elif not ops or set(ops) - set(OPS):
    raise ValueError(f"randaugment ops={list(ops)!r} must be non-empty operations from "
                     f"{sorted(OPS)}.")
  for key in ("op_prob", "translate_max", "fill", "cutout", "random_erasing"):
    _check_fraction(spec, key)


@augment.register_augmentation(
    "randaugment", params=_CROP_PARAMS + tuple(_RANDAUGMENT_DEFAULTS),
    check=check_randaugment_spec)
def randaugment_view(image: tf.Tensor, *, seed: tf.Tensor, spec: Mapping,
                     image_size: int) -> tf.Tensor:
  """Strong view: crop + flip (crop_flip's params) -> RandAugment -> Cutout -> erasing.

  Params (defaults = FixMatch RA): num_ops (2), magnitude (10, in [0, 10]),
  magnitude_mode ('uniform' | 'fixed' | 'gaussian'), magnitude_std (0.5, gaussian
  mode), ops ('fixmatch' | 'timm_increasing' | list of names), op_prob (0.5),
  translate_max (0.3 of the side), fill (0.5, for geometric ops and Cutout),
  cutout (0.5 of the side; 0 = off), random_erasing (probability, 0 = off); and
  crop_flip's mode, pad, area_range, aspect_ratio_range, flip.
  """
  check_randaugment_spec(spec)
  params = dict(_RANDAUGMENT_DEFAULTS)
  params.update({k: v for k, v in spec.items() if k in _RANDAUGMENT_DEFAULTS})
  crop_seed, ra_seed, cutout_seed, erasing_seed = _split(seed, 4)
  crop_spec = {k: v for k, v in spec.items() if k in _CROP_PARAMS + ("size",)}
  image = augment.crop_flip(image, seed=crop_seed, spec=crop_spec, image_size=image_size)
  image = rand_augment(
      image, seed=ra_seed, num_ops=params["num_ops"], magnitude=params["magnitude"],
      magnitude_mode=params["magnitude_mode"], magnitude_std=params["magnitude_std"],
      ops=params["ops"], op_prob=params["op_prob"],
      translate_max=params["translate_max"], fill=params["fill"])
  if params["cutout"] > 0:
    image = cutout(image, seed=cutout_seed, size_fraction=params["cutout"],
                   fill=params["fill"])
  if params["random_erasing"] > 0:
    image = random_erasing(image, seed=erasing_seed,
                           probability=params["random_erasing"])
  return image
