"""Augmentations: exact identity views, crops that are windows of the padded image."""
import numpy as np
import pytest
import tensorflow as tf

from semissl.data import augment
from semissl.data import augment_simclr, augment_strong  # noqa: F401  (register their views)


def _run(image, spec, seed, image_size):
  out = augment.apply_view(tf.constant(image), spec=spec,
                           seed=tf.constant(seed, tf.int64), image_size=image_size)
  return out.numpy()


@pytest.fixture(scope="module")
def small_image():
  return np.random.default_rng(0).integers(0, 256, (12, 12, 1), dtype=np.uint8)


def test_identity_small_keeps_pixels(small_image):
  out = _run(small_image, {"name": "identity"}, [0, 0], 12)
  np.testing.assert_allclose(out, small_image / 255.0, atol=1e-6)


def test_identity_large_resizes_shorter_side_and_centre_crops():
  image = np.random.default_rng(1).integers(0, 256, (100, 80, 3), dtype=np.uint8)
  # size 70 / crop_fraction 0.875 = 80 = the shorter side: no resampling, a 70x70
  # centre crop of the 100x80 image.
  out = _run(image, {"name": "identity"}, [0, 0], 70)
  np.testing.assert_allclose(out, image[15:85, 5:75] / 255.0, atol=1e-6)


def test_pad_crop_is_window_of_reflect_padded_image(small_image):
  padded = np.pad(small_image / 255.0, [(4, 4), (4, 4), (0, 0)], mode="reflect")
  windows = {}
  for dy in range(9):
    for dx in range(9):
      window = padded[dy:dy + 12, dx:dx + 12]
      windows[(dy, dx, False)] = window
      windows[(dy, dx, True)] = window[:, ::-1]
  seen = set()
  for s in range(24):
    out = _run(small_image, {"name": "crop_flip"}, [s, 11], 12)
    assert out.shape == (12, 12, 1)
    matches = [k for k, w in windows.items() if np.allclose(out, w, atol=1e-6)]
    assert matches, f"seed {s}: not a (flipped) window of the padded image"
    seen.update(matches)
  assert {k[2] for k in seen} == {False, True}  # both flipped and unflipped
  assert len({k[:2] for k in seen}) > 5  # many offsets


def test_same_seed_same_view_other_seed_other_view(small_image):
  spec = {"name": "crop_flip", "pad": 3}
  a = _run(small_image, spec, [1, 2], 12)
  np.testing.assert_array_equal(a, _run(small_image, spec, [1, 2], 12))
  others = [_run(small_image, spec, [1, s], 12) for s in range(3, 8)]
  assert any(not np.array_equal(a, o) for o in others)


def test_resized_crop_for_large_images():
  image = np.random.default_rng(2).integers(0, 256, (90, 70, 3), dtype=np.uint8)
  spec = {"name": "crop_flip", "area_range": (0.2, 0.5)}
  outs = [_run(image, spec, [s, 0], 72) for s in range(4)]
  for out in outs:
    assert out.shape == (72, 72, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
  assert not np.array_equal(outs[0], outs[1])
  np.testing.assert_array_equal(outs[0], _run(image, spec, [0, 0], 72))


def test_view_size_overrides_image_size(small_image):
  out = _run(small_image, {"name": "crop_flip", "size": 8}, [0, 1], 12)
  assert out.shape == (8, 8, 1)


def test_convert_channels_uses_luma_and_replication():
  rgb = np.array([[[255, 0, 0], [0, 255, 0]]], np.uint8)
  gray = augment.convert_channels(tf.constant(rgb), channels=1).numpy()
  np.testing.assert_allclose(gray[..., 0], [[0.2989 * 255, 0.587 * 255]], atol=1.0)
  back = augment.convert_channels(tf.constant(gray), channels=3).numpy()
  np.testing.assert_array_equal(back, np.repeat(gray, 3, axis=-1))


def test_normalise_per_channel():
  image = np.full((2, 2, 2), 0.5, np.float32)
  out = augment.normalise(tf.constant(image), mean=(0.25, 0.5), std=(0.5, 0.1)).numpy()
  np.testing.assert_allclose(out[..., 0], 0.5)
  np.testing.assert_allclose(out[..., 1], 0.0)


@pytest.mark.parametrize("spec, match", [
    ({"name": "simclr_typo"}, "unknown augmentation 'simclr_typo'; known: .*crop_flip"),
    ({"name": "crop_flip", "padding": 4}, r"has no parameters \['padding'\]"),
    ({"name": "identity", "size": 0}, "positive integer"),
])
def test_bad_specs(spec, match):
  with pytest.raises(ValueError, match=match):
    augment.check_view_spec(spec, where="data.labelled_views['image']")


def test_registry_accepts_new_augmentations(small_image):
  @augment.register_augmentation("test_invert", params=("unused",))
  def invert(image, *, seed, spec, image_size):
    del seed, spec, image_size
    return 1.0 - tf.image.convert_image_dtype(image, tf.float32)
  try:
    out = _run(small_image, {"name": "test_invert"}, [0, 0], 12)
    np.testing.assert_allclose(out, 1.0 - small_image / 255.0, atol=1e-6)
    assert "test_invert" in augment.known_augmentations()
  finally:
    augment._AUGMENTATIONS.pop("test_invert")  # pylint: disable=protected-access
