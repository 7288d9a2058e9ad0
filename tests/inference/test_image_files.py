"""Image files -> uint8 arrays for a loaded model (semissl.inference.image_files)."""
import numpy as np
import pytest
from PIL import Image

from semissl.inference import image_files


def test_find_images_any_depth_sorted(tmp_path):
  (tmp_path / "b" / "c").mkdir(parents=True)
  for name in ("z.png", "b/c/y.JPG", "b/x.jpeg", "b/readme.txt", "a.gif"):
    (tmp_path / name).write_bytes(b"")
  assert image_files.find_images(str(tmp_path)) == ["b/c/y.JPG", "b/x.jpeg", "z.png"]
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="has no .png / .jpg files"):
    image_files.find_images(str(tmp_path / "empty"))


def test_find_images_missing_folder(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    image_files.find_images(str(tmp_path / "nowhere"))


def test_small_images_convert_channels_and_resize(tmp_path):
  rgb = np.random.RandomState(0).randint(0, 256, (40, 30, 3)).astype(np.uint8)
  Image.fromarray(rgb).save(tmp_path / "rgb.png")
  gray = image_files.read_image(str(tmp_path / "rgb.png"), image_shape=(28, 28, 1))
  assert gray.shape == (28, 28, 1) and gray.dtype == np.uint8
  expected = np.asarray(Image.fromarray(rgb).convert("L").resize((28, 28),
                                                                 Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(gray[..., 0], expected)
  as_rgb = image_files.read_image(str(tmp_path / "rgb.png"), image_shape=(16, 16, 3))
  assert as_rgb.shape == (16, 16, 3)
  Image.fromarray(gray[..., 0]).save(tmp_path / "gray.png")  # exact size: unchanged
  np.testing.assert_array_equal(
      image_files.read_image(str(tmp_path / "gray.png"), image_shape=(28, 28, 1)), gray)
  rgba = np.concatenate([rgb, np.full((40, 30, 1), 128, np.uint8)], -1)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
  assert image_files.read_image(str(tmp_path / "rgba.png"),
                                image_shape=(28, 28, 3)).shape == (28, 28, 3)


def test_large_images_resize_the_shorter_side_and_centre_crop(tmp_path):
  # A 300 x 150 image whose left and right thirds are black, the middle white: the
  # eval view of a 96 px model (crop_fraction 0.5) resizes the shorter side to 192
  # (-> 384 x 192) and keeps the centre 96 x 96, all white.
  image = np.zeros((150, 300, 3), np.uint8)
  image[:, 100:200] = 255
  Image.fromarray(image).save(tmp_path / "wide.png")
  out = image_files.read_image(str(tmp_path / "wide.png"), image_shape=(96, 96, 3),
                               eval_view={"name": "identity", "crop_fraction": 0.5})
  assert out.shape == (96, 96, 3) and out.min() == 255
  default = image_files.read_image(str(tmp_path / "wide.png"), image_shape=(96, 96, 3))
  assert default.shape == (96, 96, 3) and default.min() < 255  # 0.875: wider crop


def test_unreadable_or_impossible_images_are_one_line_errors(tmp_path):
  (tmp_path / "broken.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match="cannot read image .*broken.png") as error:
    image_files.read_image(str(tmp_path / "broken.png"), image_shape=(28, 28, 1))
  assert "\n" not in str(error.value)
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
  with pytest.raises(ValueError, match="1 \\(gray\\) or 3 \\(RGB\\)"):
    image_files.read_image(str(tmp_path / "ok.png"), image_shape=(8, 8, 4))
  stacked = image_files.read_images([str(tmp_path / "ok.png")] * 2, image_shape=(8, 8, 1))
  assert stacked.shape == (2, 8, 8, 1)
