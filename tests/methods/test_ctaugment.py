"""CTAugment on device (ReMixMatch Sec. 3.2.2): bin weights, sampling and update against
NumPy, and the transformations against PIL (the public CTAugment's implementation)."""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
import pytest

from semissl.methods import ctaugment as cta

NUM_OPS, DEPTH, DECAY, THRESHOLD = len(cta.OPS), 2, 0.99, 0.8


def _random_weights(seed):
  """Bin weights in (0, 1] with a spread around the threshold."""
  return np.random.RandomState(seed).uniform(0.3, 1.0, (NUM_OPS, cta.NUM_BINS)).astype(
      np.float32)


def _np_bin_probabilities(weights, threshold):
  """The paper: normalise so the largest weight is 1, zero those below the threshold,
  sample proportionally to what is left."""
  normalised = weights / weights.max(axis=1, keepdims=True)
  normalised[normalised < threshold] = 0.0
  return normalised / normalised.sum(axis=1, keepdims=True)


def test_bin_probabilities_match_numpy():
  weights = _random_weights(0)
  got = np.asarray(cta.bin_probabilities(weights=jnp.asarray(weights), threshold=THRESHOLD))
  np.testing.assert_allclose(got, _np_bin_probabilities(weights, THRESHOLD), rtol=1e-6)
  assert np.any(got == 0) and np.all((got > 0).sum(axis=1) >= 1)
  # The initial all-ones weights: every bin equally likely.
  uniform = cta.bin_probabilities(weights=cta.init_weights(), threshold=THRESHOLD)
  np.testing.assert_allclose(uniform, np.full((NUM_OPS, cta.NUM_BINS), 1 / cta.NUM_BINS),
                             rtol=1e-6)


def test_sample_policy_draws_only_kept_bins_with_their_frequencies():
  weights = _random_weights(1)
  want = _np_bin_probabilities(weights, THRESHOLD)
  num_images = 40000
  policy = cta.sample_policy(rng=jax.random.PRNGKey(0), weights=jnp.asarray(weights),
                             num_images=num_images, depth=DEPTH, threshold=THRESHOLD)
  ops, bins, levels = (np.asarray(a) for a in policy)
  assert ops.shape == bins.shape == levels.shape == (num_images, DEPTH)
  assert np.all(want[ops, bins] > 0)  # never a bin below the threshold
  # The magnitude lies in its bin: level in [bin / 17, (bin + 1) / 17).
  assert np.all(np.floor(levels * cta.NUM_BINS).astype(int) == bins)
  # Ops uniform; bin frequencies per op within 4 standard errors of `want`.
  op_counts = np.bincount(ops.ravel(), minlength=NUM_OPS)
  expected = ops.size / NUM_OPS
  assert np.all(np.abs(op_counts - expected) < 4 * np.sqrt(expected))
  for op in range(NUM_OPS):
    drawn = bins[ops == op]
    freq = np.bincount(drawn, minlength=cta.NUM_BINS) / len(drawn)
    stderr = np.sqrt(want[op] * (1 - want[op]) / len(drawn))
    assert np.all(np.abs(freq - want[op]) <= 4 * stderr + 1e-12), op


def test_probe_policy_is_uniform():
  policy = cta.sample_probe_policy(rng=jax.random.PRNGKey(3), num_ops=NUM_OPS,
                                   num_images=20000, depth=DEPTH)
  bins, levels = np.asarray(policy.bins), np.asarray(policy.levels)
  assert np.all(np.floor(levels * cta.NUM_BINS).astype(int) == bins)
  expected = bins.size / cta.NUM_BINS
  counts = np.bincount(bins.ravel(), minlength=cta.NUM_BINS)
  assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected))


def test_probe_proximity_and_update_match_the_sequential_rule():
  rs = np.random.RandomState(2)
  num_probes, num_classes = 6, 5
  probs = rs.dirichlet(np.ones(num_classes), num_probes).astype(np.float32)
  labels = rs.randint(0, num_classes, num_probes)
  proximity = np.asarray(cta.probe_proximity(probs=jnp.asarray(probs),
                                             labels=jnp.asarray(labels)))
  want_proximity = 1 - 0.5 * np.abs(probs - np.eye(num_classes)[labels]).sum(1)
  np.testing.assert_allclose(proximity, want_proximity, rtol=1e-6)
  ops = rs.randint(0, NUM_OPS, (num_probes, DEPTH))
  bins = rs.randint(0, cta.NUM_BINS, (num_probes, DEPTH))
  ops[1], bins[1] = ops[0], bins[0]  # the same (op, bin) updated by several probes
  ops[2, 1], bins[2, 1] = ops[2, 0], bins[2, 0]  # and twice by one probe
  weights = _random_weights(3)
  policy = cta.Policy(jnp.asarray(ops, jnp.int32), jnp.asarray(bins, jnp.int32),
                      jnp.zeros((num_probes, DEPTH)))
  got = cta.update_weights(weights=jnp.asarray(weights), policy=policy,
                           proximity=jnp.asarray(proximity), decay=DECAY)
  want = weights.astype(np.float64).copy()
  for probe in range(num_probes):  # the public code's loop, probe by probe
    for slot in range(DEPTH):
      op, bin_ = ops[probe, slot], bins[probe, slot]
      want[op, bin_] = DECAY * want[op, bin_] + (1 - DECAY) * want_proximity[probe]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  touched = np.zeros_like(weights, bool)
  touched[ops.ravel(), bins.ravel()] = True
  np.testing.assert_array_equal(np.asarray(got)[~touched], weights[~touched])


def _pil(name, image, level):
  """The public CTAugment's transformation `name` at `level` (PIL)."""
  x = Image.fromarray(image)
  factor, signed = 0.1 + 1.9 * level, 2 * level - 1
  ops = {
      "identity": lambda: x,
      "autocontrast": lambda: Image.blend(x, ImageOps.autocontrast(x), level),
      "blur": lambda: Image.blend(x, x.filter(ImageFilter.BLUR), level),
      "smooth": lambda: Image.blend(x, x.filter(ImageFilter.SMOOTH), level),
      "invert": lambda: Image.blend(x, ImageOps.invert(x), level),
      "brightness": lambda: ImageEnhance.Brightness(x).enhance(factor),
      "color": lambda: ImageEnhance.Color(x).enhance(factor),
      "contrast": lambda: ImageEnhance.Contrast(x).enhance(factor),
      "sharpness": lambda: ImageEnhance.Sharpness(x).enhance(factor),
      "posterize": lambda: ImageOps.posterize(x, 1 + int(level * 7.999)),
      "solarize": lambda: ImageOps.solarize(x, int(level * 255.999)),
      "rotate": lambda: x.rotate(int(np.round(signed * 45))),
      "shear_x": lambda: x.transform(x.size, Image.AFFINE, (1, signed * 0.3, 0, 0, 1, 0)),
      "shear_y": lambda: x.transform(x.size, Image.AFFINE, (1, 0, 0, signed * 0.3, 1, 0)),
      "translate_x": lambda: x.transform(x.size, Image.AFFINE,
                                         (1, 0, signed * 0.3 * x.size[0], 0, 1, 0)),
      "translate_y": lambda: x.transform(x.size, Image.AFFINE,
                                         (1, 0, 0, 0, 1, signed * 0.3 * x.size[1])),
  }
  return np.asarray(ops[name]())


# PIL rounds its intermediate images (the filtered / grey / enhanced copy) to 8 bits
# before the final rounding; we blend in float: up to 1.5 grey levels apart.
EXACT = {"identity", "posterize", "solarize", "rotate", "shear_x", "shear_y",
         "translate_x", "translate_y"}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", [n for n in cta.OPS if n != "cutout"])
def test_transformations_match_pil(name, channels):
  rs = np.random.RandomState(4)
  images = rs.randint(20, 230, (6, 16, 16, channels)).astype(np.uint8)  # autocontrast moves
  images[:, 4:9, 3:12] = 200  # a flat patch: the filters' interior
  levels = np.linspace(0.02, 0.98, 6).astype(np.float32)
  got = np.asarray(cta.apply_ops(jnp.asarray(images / 255.0, jnp.float32),
                                 ops=jnp.full((6,), cta.OPS.index(name)),
                                 levels=jnp.asarray(levels), rng=jax.random.PRNGKey(0)))
  squeeze = (lambda im: im[..., 0]) if channels == 1 else (lambda im: im)
  want = np.stack([_pil(name, squeeze(im), float(level)).reshape(im.shape)
                   for im, level in zip(images, levels)])
  atol = 1e-4 if name in EXACT else 1.5 / 255
  np.testing.assert_allclose(got, want / 255.0, atol=atol, rtol=0)
  if name != "identity" and not (name == "color" and channels == 1):
    assert np.any(np.abs(got - images / 255.0) > 1.5 / 255), name  # it did something


def test_cutout_is_a_grey_square_of_its_level_s_side():
  size, num = 28, 400
  images = jnp.zeros((num, size, size, 1))
  levels = np.linspace(0.0, 1.0, num).astype(np.float32)
  out = np.asarray(cta.cutout(images, rng=jax.random.PRNGKey(5), levels=jnp.asarray(levels)))
  assert set(np.unique(out)) <= {0.0, np.float32(127 / 255)}
  half = (1 + np.floor(levels * size * 0.499).astype(int)) // 2
  for image, h in zip(out[..., 0] > 0, half):
    rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
    assert image.sum() == len(rows) * len(cols)  # one filled rectangle
    assert len(rows) <= 2 * h and len(cols) <= 2 * h
    if len(rows):  # contiguous
      assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
  # Centres away from the border give the full 2 * (side // 2) square.
  full = [(image.sum(), 4 * h * h) for image, h in zip(out[..., 0] > 0, half)]
  assert sum(a == b for a, b in full) > num // 4


def test_apply_policy_runs_its_slots_in_order():
  rs = np.random.RandomState(6)
  images = jnp.asarray(rs.randint(0, 256, (4, 12, 12, 1)) / 255.0, jnp.float32)
  ops = jnp.asarray([[cta.OPS.index("invert"), cta.OPS.index("posterize")]] * 4)
  levels = jnp.asarray([[1.0, 0.0]] * 4, jnp.float32)  # invert fully, then keep 1 bit
  got = cta.apply_policy(images, policy=cta.Policy(ops, ops, levels),
                         rng=jax.random.PRNGKey(0))
  want = np.where(np.round((1 - np.asarray(images)) * 255) >= 128, 128 / 255, 0.0)
  np.testing.assert_allclose(got, want, atol=1e-6)
