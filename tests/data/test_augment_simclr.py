"""The 'simclr' augmentation (SemPPL App. E): each op against a NumPy reference."""
import math

import numpy as np
import pytest
import tensorflow as tf

from semissl.data import augment
from semissl.data import augment_simclr

# Every random op off: the view is the image resized to `size`.
ALL_OFF = {"name": "simclr", "crop_prob": 0.0, "flip_prob": 0.0, "jitter_prob": 0.0,
           "grayscale_prob": 0.0, "blur_prob": 0.0, "solarize_prob": 0.0}


def _run(image, spec, seed=(3, 4), image_size=None):
  out = augment.apply_view(tf.constant(image), spec=spec,
                           seed=tf.constant(seed, tf.int64),
                           image_size=image_size or image.shape[0])
  return out.numpy()


@pytest.fixture(scope="module")
def rgb_image():
  return np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def gray_image():
  return np.random.default_rng(1).integers(0, 256, (16, 16, 1), dtype=np.uint8)


def _numpy_blur(image, sigma, radius):
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-x**2 / (2 * sigma**2))
  taps /= taps.sum()
  padded = np.pad(image.astype(np.float64), [(radius, radius), (radius, radius), (0, 0)],
                  mode="reflect")
  height, width = image.shape[:2]
  vertical = sum(taps[i] * padded[i:i + height] for i in range(2 * radius + 1))
  return sum(taps[j] * vertical[:, j:j + width] for j in range(2 * radius + 1))


def test_registered_and_presets_are_valid():
  assert "simclr" in augment.known_augmentations()
  for preset in augment_simclr.PRESETS:
    augment.check_view_spec(augment_simclr.view_spec(preset=preset, size=24), where="test")
  with pytest.raises(ValueError, match="unknown simclr preset|Unknown simclr preset"):
    augment_simclr.view_spec(preset="nope", size=24)


@pytest.mark.parametrize("preset", sorted(augment_simclr.PRESETS))
def test_shapes_ranges_and_determinism(rgb_image, gray_image, preset):
  for image in (rgb_image, gray_image):
    spec = augment_simclr.view_spec(preset=preset, size=12, area_range=(0.2, 1.0))
    a = _run(image, spec, seed=(5, 6))
    assert a.shape == (12, 12, image.shape[-1]) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, _run(image, spec, seed=(5, 6)))
    others = [_run(image, spec, seed=(5, s)) for s in range(7, 10)]
    assert any(not np.array_equal(a, o) for o in others)


@pytest.mark.parametrize("image_fixture", ["rgb_image", "gray_image"])
def test_all_probabilities_zero_is_identity(request, image_fixture):
  image = request.getfixturevalue(image_fixture)
  np.testing.assert_allclose(_run(image, ALL_OFF), image / 255.0, atol=1e-5)


def test_flip(rgb_image):
  out = _run(rgb_image, {**ALL_OFF, "flip_prob": 1.0})
  np.testing.assert_allclose(out, rgb_image[:, ::-1] / 255.0, atol=1e-5)


def test_grayscale_rgb_weights_and_gray_identity(rgb_image, gray_image):
  out = _run(rgb_image, {**ALL_OFF, "grayscale_prob": 1.0})
  gray = (rgb_image / 255.0) @ np.array(augment_simclr.GRAYSCALE_WEIGHTS)
  np.testing.assert_allclose(out, np.repeat(gray[..., None], 3, -1), atol=1e-5)
  np.testing.assert_allclose(_run(gray_image, {**ALL_OFF, "grayscale_prob": 1.0}),
                             gray_image / 255.0, atol=1e-5)


def test_solarize(rgb_image):
  x = rgb_image / 255.0
  out = _run(rgb_image, {**ALL_OFF, "solarize_prob": 1.0})
  np.testing.assert_allclose(out, np.where(x < 0.5, x, 1.0 - x), atol=1e-5)


def test_gaussian_blur_matches_numpy(rgb_image):
  image = rgb_image / 255.0
  for sigma, radius in ((0.7, 1), (1.5, 3)):
    out = augment_simclr.gaussian_blur(tf.constant(image, tf.float32),
                                       sigma=tf.constant(sigma), radius=radius)
    np.testing.assert_allclose(out.numpy(), _numpy_blur(image, sigma, radius), atol=1e-5)


def test_blur_step_uses_size_scaled_kernel_and_sigma_range(gray_image):
  assert augment_simclr.blur_radius(224) == 11  # the paper's 23 x 23 kernel
  assert augment_simclr.blur_radius(96) == 4
  image = np.random.default_rng(2).integers(0, 256, (40, 40, 1), dtype=np.uint8)
  out = _run(image, {**ALL_OFF, "blur_prob": 1.0, "blur_sigma_range": (1.3, 1.3)})
  np.testing.assert_allclose(out, _numpy_blur(image / 255.0, 1.3, 2), atol=1e-5)


def test_brightness_only_jitter_shifts_every_pixel_equally(rgb_image):
  spec = {**ALL_OFF, "jitter_prob": 1.0, "brightness": 0.3, "contrast": 0.0,
          "saturation": 0.0, "hue": 0.0}
  image = np.full((8, 8, 3), 128, np.uint8) + np.arange(8, dtype=np.uint8)[:, None, None]
  out = _run(image, spec)
  shift = out - image / 255.0
  assert 0 < abs(shift[0, 0, 0]) <= 0.3
  np.testing.assert_allclose(shift, shift[0, 0, 0], atol=1e-5)


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_each_jitter_op_changes_rgb(rgb_image, op):
  spec = {**ALL_OFF, "jitter_prob": 1.0, "brightness": 0.0, "contrast": 0.0,
          "saturation": 0.0, "hue": 0.0, op: 0.4 if op != "hue" else 0.1}
  changed = [not np.allclose(_run(rgb_image, spec, seed=(1, s)), rgb_image / 255.0,
                             atol=1e-4) for s in range(3)]
  assert any(changed)
  no_jitter = {**spec, "jitter_prob": 0.0}
  np.testing.assert_allclose(_run(rgb_image, no_jitter), rgb_image / 255.0, atol=1e-5)


def test_colour_ops_are_identities_on_gray(gray_image):
  spec = {**ALL_OFF, "jitter_prob": 1.0, "brightness": 0.0, "contrast": 0.0,
          "saturation": 0.2, "hue": 0.1, "grayscale_prob": 1.0}
  np.testing.assert_allclose(_run(gray_image, spec), gray_image / 255.0, atol=1e-5)
  contrast = {**spec, "contrast": 0.4, "saturation": 0.0, "hue": 0.0}
  out = _run(gray_image, contrast)
  x = gray_image / 255.0
  factor = (out - out.mean()) / (x - x.mean())  # unclipped where factor < 1
  assert not np.allclose(out, x, atol=1e-4)
  assert 0.6 - 1e-4 <= np.median(factor) <= 1.4 + 1e-4


def test_crop_window_area_ratio_and_bounds():
  height, width = 60, 80
  areas, log_ratios = [], []
  for s in range(40):
    offset, shape = augment_simclr.crop_window(
        tf.constant(height), tf.constant(width), seed=tf.constant([s, 1], tf.int64),
        area_range=(0.1, 0.5), aspect_ratio_range=(3 / 4, 4 / 3))
    (top, left), (h, w) = offset.numpy(), shape.numpy()
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    areas.append(h * w / (height * width))
    log_ratios.append(math.log(w / h))
  # rounding to whole pixels moves area and ratio a little
  assert 0.1 * 0.9 <= min(areas) and max(areas) <= 0.5 * 1.1
  assert max(abs(r) for r in log_ratios) <= math.log(4 / 3) + 0.05
  assert np.std(areas) > 0.05 and np.std(log_ratios) > 0.05


def test_crop_always_changes_and_is_deterministic(rgb_image):
  spec = {**ALL_OFF, "crop_prob": 1.0, "area_range": (0.2, 0.3)}
  a = _run(rgb_image, spec)
  assert not np.allclose(a, rgb_image / 255.0, atol=1e-3)
  np.testing.assert_array_equal(a, _run(rgb_image, spec))


@pytest.mark.parametrize("parity", ["odd", "even"])
@pytest.mark.parametrize("scale", ["large", "small"])
def test_semppl_views_crop_every_view(parity, scale):
  """SemPPL App. E: the random crop is applied to every view."""
  spec = augment_simclr.semppl_view_spec(parity=parity, scale=scale)
  assert spec["crop_prob"] == 1.0
  table12 = augment_simclr.semppl_view_spec(
      parity=parity, scale=scale, crop_prob=augment_simclr.SEMPPL_TABLE12_CROP_PROB)
  assert table12["crop_prob"] == 0.5
  assert {k: v for k, v in table12.items() if k != "crop_prob"} == {
      k: v for k, v in spec.items() if k != "crop_prob"}


def _thumbnail(image, size):
  """The whole image resized to size x size (what an uncropped view is)."""
  x = tf.image.resize(tf.constant(image, tf.float32) / 255.0, [size, size],
                      method="bicubic", antialias=True)
  return np.clip(x.numpy(), 0.0, 1.0)


@pytest.mark.parametrize("parity", ["odd", "even"])
def test_semppl_small_view_is_a_small_crop_never_a_thumbnail(parity):
  """A 'small' SemPPL view (area 5-14%) of a distinctive image differs from the
  whole-image thumbnail for every seed; photometric ops off so only the crop acts."""
  image = np.random.default_rng(7).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  photometric_off = {"flip_prob": 0.0, "jitter_prob": 0.0, "grayscale_prob": 0.0,
                     "blur_prob": 0.0, "solarize_prob": 0.0}

  def uncropped_seeds(spec):
    thumbnail = _thumbnail(image, spec["size"])
    return [s for s in range(16)
            if np.abs(_run(image, spec, seed=(11, s)) - thumbnail).max() < 0.05]

  spec = {**augment_simclr.semppl_view_spec(parity=parity, scale="small", size=16),
          **photometric_off}
  assert uncropped_seeds(spec) == []
  # The test tells the two apart: with Table 12's 50% some views are thumbnails.
  table12 = {**spec, "crop_prob": augment_simclr.SEMPPL_TABLE12_CROP_PROB}
  assert 0 < len(uncropped_seeds(table12)) < 16


def test_probability_half_applies_sometimes(gray_image):
  spec = {**ALL_OFF, "solarize_prob": 0.5}
  x = gray_image / 255.0
  applied = [not np.allclose(_run(gray_image, spec, seed=(9, s)), x, atol=1e-5)
             for s in range(24)]
  assert 3 < sum(applied) < 21


@pytest.mark.parametrize("bad", [{"blur_prob": 1.5}, {"area_range": (0.5, 0.2)},
                                 {"hue": 0.9}, {"area_range": (0.1, 1.5)}])
def test_bad_parameters_raise_at_config_check(gray_image, bad):
  with pytest.raises(ValueError, match="data.unlabelled_views"):
    augment.check_view_spec({**ALL_OFF, **bad}, where="data.unlabelled_views['large1']")
  with pytest.raises(ValueError):
    _run(gray_image, {**ALL_OFF, **bad})


def test_saliency_masking_is_refused_with_a_clear_message():
  from semissl.data import augment
  with pytest.raises(ValueError, match="saliency background masking is not implemented"):
    augment.check_view_spec({"name": "simclr", "saliency_mask_prob": 0.1}, where="view")
  augment.check_view_spec({"name": "simclr", "saliency_mask_prob": 0.0}, where="view")
