"""Image augmentations as tf.data ops, in a registry by name, all stateless-seeded.

A view spec is a mapping with 'name' and that augmentation's parameters, e.g.
`{'name': 'crop_flip', 'pad': 4}`. Every augmentation accepts 'size' (output side;
default `data.image_size`). An augmentation maps a uint8 [h, w, c] image and an int64
[2] seed to float32 [size, size, c] in [0, 1]; the stream normalises afterwards. The
same seed gives the same output, whatever the process or thread that runs it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import math

import tensorflow as tf

# Output sides up to this many pixels count as "small" (CIFAR / Fashion-MNIST style:
# pad-and-crop, plain resize for eval); larger ones get Inception-style crops.
SMALL_IMAGE_MAX = 64


@dataclasses.dataclass(frozen=True)
class Augmentation:
  fn: Callable[..., tf.Tensor]
  params: frozenset[str]
  check: Callable[[Mapping], None] | None = None


_AUGMENTATIONS: dict[str, Augmentation] = {}


def register_augmentation(name: str, *, params: Sequence[str] = (),
                          check: Callable[[Mapping], None] | None = None):
  """Registers `fn(image, *, seed, spec, image_size) -> float32 [S, S, C]`.

  Args:
    name: the spec's 'name'.
    params: the spec keys `fn` reads, besides 'name' and 'size'; other keys are
      rejected by `check_view_spec`.
    check: optional `check(spec)` raising a one-line ValueError for bad parameter
      values; `check_view_spec` runs it (config-check time, before any data).
  """
  def decorator(fn):
    _AUGMENTATIONS[name] = Augmentation(fn, frozenset(params) | {"name", "size"}, check)
    return fn
  return decorator


def known_augmentations() -> tuple[str, ...]:
  return tuple(sorted(_AUGMENTATIONS))


def check_view_spec(spec: Mapping, *, where: str) -> None:
  """Raises a one-line ValueError for an unknown augmentation or parameter."""
  name = spec.get("name")
  if name not in _AUGMENTATIONS:
    raise ValueError(f"{where}: unknown augmentation {name!r}; known: "
                     f"{list(known_augmentations())}.")
  unknown = sorted(set(spec) - _AUGMENTATIONS[name].params)
  if unknown:
    raise ValueError(f"{where}: augmentation {name!r} has no parameters {unknown}; "
                     f"it takes {sorted(_AUGMENTATIONS[name].params)}.")
  size = spec.get("size")
  if size is not None and (not isinstance(size, int) or size < 1):
    raise ValueError(f"{where}: size={size!r} must be a positive integer.")
  if _AUGMENTATIONS[name].check is not None:
    try:
      _AUGMENTATIONS[name].check(spec)
    except ValueError as error:
      raise ValueError(f"{where}: {error}") from None


def view_size(spec: Mapping, *, image_size: int) -> int:
  """Output side of a view: its 'size', else `image_size`."""
  return int(spec.get("size") or image_size)


def apply_view(image: tf.Tensor, *, spec: Mapping, seed: tf.Tensor,
               image_size: int) -> tf.Tensor:
  """Runs the augmentation named by `spec` on one uint8 image; float32 in [0, 1]."""
  check_view_spec(spec, where="view")
  return _AUGMENTATIONS[spec["name"]].fn(image, seed=seed, spec=spec,
                                         image_size=image_size)


def convert_channels(image: tf.Tensor, *, channels: int) -> tf.Tensor:
  """uint8 [h, w, 1|3] -> [h, w, channels] (luma weights for RGB -> gray)."""
  have = image.shape[-1]
  if have == channels:
    return image
  if have == 1 and channels == 3:
    return tf.image.grayscale_to_rgb(image)
  if have == 3 and channels == 1:
    return tf.image.rgb_to_grayscale(image)
  raise ValueError(f"Cannot convert {have} channels to {channels}; use 1 or 3.")


def normalise(image: tf.Tensor, *, mean: Sequence[float],
              std: Sequence[float]) -> tf.Tensor:
  """(image - mean) / std per channel; image float32 in [0, 1]."""
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _to_unit_float(image: tf.Tensor) -> tf.Tensor:
  return tf.image.convert_image_dtype(image, tf.float32)


def _resize_square(image: tf.Tensor, size: int) -> tf.Tensor:
  """Resizes to [size, size] (antialiased bilinear) unless already that size."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
  return tf.ensure_shape(image, [size, size, image.shape[-1]])


def _resize_and_centre_crop(image: tf.Tensor, size: int,
                            crop_fraction: float) -> tf.Tensor:
  """Resizes the shorter side to ceil(size / crop_fraction), then centre-crops."""
  shorter = math.ceil(size / crop_fraction)
  height = tf.cast(tf.shape(image)[0], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  scale = shorter / tf.minimum(height, width)
  new_height = tf.maximum(size, tf.cast(tf.round(height * scale), tf.int32))
  new_width = tf.maximum(size, tf.cast(tf.round(width * scale), tf.int32))
  image = tf.image.resize(image, tf.stack([new_height, new_width]),
                          method="bilinear", antialias=True)
  top, left = (new_height - size) // 2, (new_width - size) // 2
  image = tf.slice(image, tf.stack([top, left, 0]), [size, size, -1])
  return tf.ensure_shape(image, [size, size, image.shape[-1]])


def _pad_and_crop(image: tf.Tensor, size: int, pad: int, seed: tf.Tensor) -> tf.Tensor:
  """Reflect-pads by `pad` and takes a random size x size crop (CIFAR style)."""
  pad = max(0, min(pad, size - 1))
  image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
  return tf.image.stateless_random_crop(image, [size, size, image.shape[-1]], seed=seed)


def _random_resized_crop(image: tf.Tensor, size: int, *,
                         area_range: Sequence[float],
                         aspect_ratio_range: Sequence[float],
                         seed: tf.Tensor) -> tf.Tensor:
  """Crop of random area fraction and aspect ratio, resized to size x size."""
  begin, crop_shape, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed, min_object_covered=0.0,
      aspect_ratio_range=tuple(aspect_ratio_range), area_range=tuple(area_range),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  channels = image.shape[-1]  # static; tf.slice with a dynamic size loses it
  image = tf.slice(image, begin, crop_shape)
  image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
  return tf.ensure_shape(image, [size, size, channels])


@register_augmentation("identity", params=("crop_fraction",))
def identity(image: tf.Tensor, *, seed: tf.Tensor, spec: Mapping,
             image_size: int) -> tf.Tensor:
  """Deterministic eval view: small -> resize to size; large -> resize + centre crop.

  Params: crop_fraction (large images: shorter side resized to size/crop_fraction
  before the centre crop; default 0.875).
  """
  del seed
  size = view_size(spec, image_size=image_size)
  image = _to_unit_float(image)
  if size <= SMALL_IMAGE_MAX:
    return _resize_square(image, size)
  return _resize_and_centre_crop(image, size, spec.get("crop_fraction", 0.875))


@register_augmentation(
    "crop_flip", params=("mode", "pad", "area_range", "aspect_ratio_range", "flip"))
def crop_flip(image: tf.Tensor, *, seed: tf.Tensor, spec: Mapping,
              image_size: int) -> tf.Tensor:
  """Random crop + horizontal flip (the 'weak' augmentation of FixMatch/SimMatch).

  Params: mode ('auto' | 'pad_crop' | 'resized_crop'; auto = pad_crop for sizes up
  to 64 px, else resized_crop); pad (pad_crop reflect padding; default 4 up to 32 px,
  else size/8); area_range (default (0.08, 1)); aspect_ratio_range (default
  (3/4, 4/3)); flip (default True).
  """
  size = view_size(spec, image_size=image_size)
  mode = spec.get("mode", "auto")
  if mode == "auto":
    mode = "pad_crop" if size <= SMALL_IMAGE_MAX else "resized_crop"
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = _to_unit_float(image)
  if mode == "pad_crop":
    default_pad = 4 if size <= 32 else round(size / 8)
    image = _pad_and_crop(_resize_square(image, size), size,
                          int(spec.get("pad", default_pad)), crop_seed)
  elif mode == "resized_crop":
    image = _random_resized_crop(
        image, size, area_range=spec.get("area_range", (0.08, 1.0)),
        aspect_ratio_range=spec.get("aspect_ratio_range", (3 / 4, 4 / 3)),
        seed=crop_seed)
  else:
    raise ValueError(f"crop_flip mode={mode!r}; use 'auto', 'pad_crop' or "
                     "'resized_crop'.")
  if spec.get("flip", True):
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return image
