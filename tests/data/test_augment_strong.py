"""Strong augmentations: RandAugment ops vs PIL / identity, magnitudes, Cutout, erasing."""
import numpy as np
from PIL import Image, ImageOps
import pytest
import tensorflow as tf

from semissl.data import augment
from semissl.data import augment_strong

PARAMETRIC_OPS = sorted(set(augment_strong.OPS) - set(augment_strong.PARAMETER_FREE_OPS))


@pytest.fixture(scope="module")
def rgb():
  """An image with a limited range (so autocontrast/equalize do something)."""
  return np.random.default_rng(0).integers(40, 200, (16, 16, 3), dtype=np.uint8)


def _float(image):
  return tf.constant(image / 255.0, tf.float32)


def _view(image, spec, seed, size=16):
  return augment.apply_view(tf.constant(image), spec=spec,
                            seed=tf.constant(seed, tf.int64), image_size=size).numpy()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("spec", [
    {"name": "randaugment"},
    {"name": "randaugment", "ops": "timm_increasing", "magnitude": 9,
     "magnitude_mode": "gaussian", "magnitude_std": 0.5, "random_erasing": 0.25,
     "cutout": 0.0, "size": 12},
])
def test_view_shape_range_and_determinism(rgb, channels, spec):
  image = rgb[..., :channels]
  size = spec.get("size", 16)
  views = [_view(image, spec, [s, 3]) for s in range(4)]
  for view in views:
    assert view.shape == (size, size, channels) and view.dtype == np.float32
    assert view.min() >= 0.0 and view.max() <= 1.0
  np.testing.assert_array_equal(views[0], _view(image, spec, [0, 3]))
  assert any(not np.array_equal(views[0], v) for v in views[1:])


def test_view_in_graph_mode_keeps_static_shape(rgb):
  """tf.data traces the view: every op must keep the static [S, S, C] shape."""
  spec = {"name": "randaugment", "num_ops": 4, "op_prob": 1.0, "random_erasing": 0.5,
          "mode": "resized_crop"}

  @tf.function
  def traced(seed):
    out = augment.apply_view(tf.constant(rgb[..., :1]), spec=spec, seed=seed,
                             image_size=16)
    assert out.shape == (16, 16, 1)
    return out

  np.testing.assert_allclose(traced(tf.constant([5, 6], tf.int64)).numpy(),
                             _view(rgb[..., :1], spec, [5, 6]), atol=1e-6)


@pytest.mark.parametrize("name", PARAMETRIC_OPS)
def test_op_is_identity_at_level_zero_and_changes_at_level_one(rgb, name):
  image = _float(rgb)
  for sign in (-1.0, 1.0):
    unchanged = augment_strong.apply_op(name, image, level=0.0, sign=sign).numpy()
    np.testing.assert_allclose(unchanged, image.numpy(), atol=1e-6)
  changed = augment_strong.apply_op(name, image, level=1.0).numpy()
  assert changed.shape == image.shape
  assert np.abs(changed - image.numpy()).max() > 0.02


def test_color_is_identity_on_one_channel(rgb):
  image = _float(rgb[..., :1])
  out = augment_strong.apply_op("color", image, level=1.0).numpy()
  np.testing.assert_array_equal(out, image.numpy())


@pytest.mark.parametrize("channels", [1, 3])
def test_pil_equivalent_ops(rgb, channels):
  image = rgb[..., :channels]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)

  def ours(name, level=0.0):
    out = augment_strong.apply_op(name, _float(image), level=level).numpy()
    return np.round(out * 255).astype(np.int32)

  def theirs(pil_image):
    out = np.asarray(pil_image, np.int32)
    return out[..., None] if out.ndim == 2 else out

  np.testing.assert_array_equal(ours("equalize"), theirs(ImageOps.equalize(pil)))
  np.testing.assert_allclose(ours("auto_contrast"), theirs(ImageOps.autocontrast(pil)),
                             atol=1)
  np.testing.assert_array_equal(ours("invert"), theirs(ImageOps.invert(pil)))
  for level, bits in ((0.5, 6), (1.0, 4)):
    np.testing.assert_array_equal(ours("posterize", level),
                                  theirs(ImageOps.posterize(pil, bits)))
  for level in (0.25, 0.5):
    np.testing.assert_array_equal(ours("solarize", level),
                                  theirs(ImageOps.solarize(pil, 256 * (1 - level))))


def test_translate_and_shear_move_pixels_exactly(rgb):
  image = _float(rgb)
  # translate_x by 0.25 * 16 = 4 px: output column x reads input column x + 4.
  out = augment_strong.apply_op("translate_x", image, level=1.0, translate_max=0.25,
                                fill=0.0).numpy()
  np.testing.assert_allclose(out[:, :12], image.numpy()[:, 4:], atol=1e-6)
  np.testing.assert_array_equal(out[:, 12:], 0.0)
  # shear_y by 0.3 * (-1): output (x, y) reads input (x, y - 0.3 x); column 0 is kept.
  out = augment_strong.apply_op("shear_y", image, level=1.0, sign=-1.0).numpy()
  np.testing.assert_allclose(out[:, 0], image.numpy()[:, 0], atol=1e-6)


def test_rotate_by_ninety_degrees_is_rot90():
  image = np.random.default_rng(3).random((9, 9, 1)).astype(np.float32)
  # level 3 = 90 degrees (beyond the RandAugment range, but exact on the grid).
  out = augment_strong.apply_op("rotate", tf.constant(image), level=3.0).numpy()
  assert any(np.allclose(out, np.rot90(image, k), atol=1e-5) for k in (1, 3))


@pytest.mark.parametrize("mode", augment_strong.MAGNITUDE_MODES)
def test_sample_level(mode):
  seeds = [tf.constant([s, 5], tf.int64) for s in range(200)]
  levels = np.array([float(augment_strong.sample_level(
      seed=s, magnitude=9.0, mode=mode, magnitude_std=0.5)) for s in seeds])
  assert levels.min() >= 0.0 and levels.max() <= 1.0
  if mode == "fixed":
    np.testing.assert_allclose(levels, 0.9, rtol=1e-6)
  elif mode == "uniform":
    assert levels.max() <= 0.9 + 1e-6
    assert abs(levels.mean() - 0.45) < 0.05 and levels.min() < 0.1
  else:
    unclipped = levels[levels < 1.0]
    assert abs(np.median(levels) - 0.9) < 0.02
    assert abs(unclipped.std() - 0.05) < 0.02  # std 0.5 on the 0..10 scale
    assert np.mean(levels == 1.0) > 0.01  # clipped at the top


def test_op_prob_zero_keeps_crop(rgb):
  base = {"name": "crop_flip"}
  spec = {"name": "randaugment", "op_prob": 0.0, "cutout": 0.0}
  for s in range(3):
    crop_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.constant([s, 1], tf.int64), 4))[0]
    expected = augment.apply_view(tf.constant(rgb), spec=base, seed=crop_seed,
                                  image_size=16).numpy()
    np.testing.assert_array_equal(_view(rgb, spec, [s, 1]), expected)


@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_cutout_fills_exactly_its_clipped_box(fraction):
  image = tf.ones((20, 16, 3), tf.float32)
  areas = []
  for s in range(30):
    seed = tf.constant([s, 9], tf.int64)
    top, left, bottom, right = (int(v) for v in augment_strong.cutout_box(
        seed=seed, height=20, width=16, size_fraction=fraction))
    out = augment_strong.cutout(image, seed=seed, size_fraction=fraction, fill=0.5).numpy()
    filled = out[..., 0] == 0.5
    expected = np.zeros((20, 16), bool)
    expected[top:bottom, left:right] = True
    np.testing.assert_array_equal(filled, expected)
    assert (bottom - top) <= round(fraction * 20) and (right - left) <= round(fraction * 16)
    assert (bottom - top) >= round(fraction * 20) // 2
    areas.append(filled.sum())
  assert max(areas) == round(fraction * 20) * round(fraction * 16)  # unclipped boxes


def test_random_erasing_box_area_and_probability():
  image = tf.fill((32, 32, 1), -1.0)
  fractions = []
  for s in range(20):
    seed = tf.constant([s, 4], tf.int64)
    np.testing.assert_array_equal(
        augment_strong.random_erasing(image, seed=seed, probability=0.0).numpy(), -1.0)
    erased = augment_strong.random_erasing(image, seed=seed, probability=1.0).numpy()
    mask = erased[..., 0] != -1.0
    rows, cols = np.nonzero(mask)
    assert mask.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # one rectangle
    assert erased[mask].min() >= 0.0 and erased[mask].max() <= 1.0
    fractions.append(mask.mean())
  assert 0.015 < min(fractions) and max(fractions) < 0.4


@pytest.mark.parametrize("bad,match", [
    ({"magnitude": 12}, r"magnitude=12 is outside \[0, 10\]"),
    ({"magnitude": -1}, "magnitude=-1 is outside"),
    ({"num_ops": -1}, "num_ops=-1"),
    ({"ops": "autoaugment"}, "known sets"),
    ({"ops": ["rotate", "warp"]}, "operations from"),
    ({"magnitude_mode": "normal"}, "magnitude_mode='normal'"),
    ({"op_prob": 1.5}, r"op_prob=1.5 is outside \[0, 1\]"),
    ({"cutout": 2}, "cutout=2"),
])
def test_bad_parameters_fail_at_config_check(bad, match):
  spec = {"name": "randaugment", **bad}
  with pytest.raises(ValueError, match=match) as error:
    augment.check_view_spec(spec, where="data.unlabelled_views['strong']")
  assert "\n" not in str(error.value)
  assert str(error.value).startswith("data.unlabelled_views['strong']: randaugment")
