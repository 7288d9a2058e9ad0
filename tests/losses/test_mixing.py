"""Tests for semissl.losses.mixing (mixup, CutMix, Semi-ViT Eq. 3-5)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from semissl.losses import mixing


def f32(x):
  return jnp.asarray(x, jnp.float32)


def rand(seed, shape):
  return np.random.default_rng(seed).normal(size=shape)


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_pseudo_mixup(images, probs, perm, threshold):
  """Semi-ViT Eq. 3-5, one example at a time."""
  classes = probs.shape[1]
  mixed, targets, mask = [], [], []
  for i, j in enumerate(perm):
    o_i, o_j = probs[i].max(), probs[j].max()
    lam = o_i / (o_i + o_j)                                   # Eq. 4
    mixed.append(lam * images[i] + (1 - lam) * images[j])     # Eq. 3
    targets.append(lam * np.eye(classes)[probs[i].argmax()]
                   + (1 - lam) * np.eye(classes)[probs[j].argmax()])
    mask.append(float(max(o_i, o_j) >= threshold))           # Eq. 5
  return np.array(mixed), np.array(targets), np.array(mask)


@pytest.mark.parametrize("batch", [4, 8])
@pytest.mark.parametrize("per_example", [False, True])
def test_mixup_matches_reference(batch, per_example):
  images, targets = rand(0, (batch, 3, 3, 2)), np.eye(5)[np.arange(batch) % 5]
  perm = np.random.default_rng(1).permutation(batch)
  lam = (np.random.default_rng(2).uniform(size=batch) if per_example
         else np.float64(0.3))
  lam_b = np.broadcast_to(lam, (batch,))
  mixed, mixed_targets = mixing.mixup(images=f32(images), targets=f32(targets),
                                      permutation=jnp.asarray(perm),
                                      mix_ratio=f32(lam))
  want = np.stack([lam_b[i] * images[i] + (1 - lam_b[i]) * images[perm[i]]
                   for i in range(batch)])
  want_t = np.stack([lam_b[i] * targets[i] + (1 - lam_b[i]) * targets[perm[i]]
                     for i in range(batch)])
  np.testing.assert_allclose(mixed, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mixed_targets, want_t, rtol=1e-5, atol=1e-6)


# Exactly representable confidences: 0.5, 0.75, 0.25 (uniform over 4), 0.625.
PROBS = np.array([[0.5, 0.25, 0.125, 0.125], [0.125, 0.75, 0.0625, 0.0625],
                  [0.25, 0.25, 0.25, 0.25], [0.125, 0.125, 0.125, 0.625],
                  [0.25, 0.25, 0.25, 0.25], [0.0625, 0.0625, 0.75, 0.125]])
PERM = np.array([2, 4, 0, 5, 3, 1])


@pytest.mark.parametrize("threshold", [0.3, 0.625, 0.7, 0.75, 0.9])
def test_probabilistic_pseudo_mixup_matches_reference(threshold):
  images = rand(3, (6, 4, 4, 3))
  mixed, targets, mask = mixing.probabilistic_pseudo_mixup(
      images=f32(images), probs=f32(PROBS), permutation=jnp.asarray(PERM),
      threshold=threshold)
  want, want_t, want_mask = np_pseudo_mixup(images, PROBS, PERM, threshold)
  np.testing.assert_allclose(mixed, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(targets, want_t, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(mask, want_mask)


def test_pseudo_mixup_loss_matches_reference():
  _, targets, mask = np_pseudo_mixup(rand(13, (6, 1)), PROBS, PERM, 0.7)
  logits = rand(14, (6, 4))
  smoothed = 0.9 * targets + 0.1 / 4
  log_q = logits - logits.max(-1, keepdims=True)
  log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
  want = np.mean(mask * -(smoothed * log_q).sum(-1))
  fn = lambda z, t, m: mixing.pseudo_mixup_loss(  # noqa: E731
      logits=z, mixed_targets=t, mask=m, label_smoothing=0.1)[0]
  loss = fn(f32(logits), f32(targets), f32(mask))
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  grad_z, grad_t, grad_m = jax.grad(fn, argnums=(0, 1, 2))(
      f32(logits), f32(targets), f32(mask))
  np.testing.assert_array_equal(grad_t, 0.0)
  np.testing.assert_array_equal(grad_m, 0.0)
  probs = np.exp(log_q)
  np.testing.assert_allclose(grad_z, mask[:, None] * (probs - smoothed) / 6,
                             rtol=1e-5, atol=1e-7)


def test_probabilistic_pseudo_mixup_gradients():
  images, perm = rand(4, (6, 2, 2, 1)), jnp.asarray(PERM)
  weights = f32(rand(5, (6, 2, 2, 1)))

  def image_term(x, p):
    mixed, _, _ = mixing.probabilistic_pseudo_mixup(
        images=x, probs=p, permutation=perm, threshold=0.6)
    return jnp.sum(mixed * weights)

  def target_term(p):
    _, targets, mask = mixing.probabilistic_pseudo_mixup(
        images=f32(images), probs=p, permutation=perm, threshold=0.6)
    return jnp.sum(targets * jnp.arange(4.0)) + jnp.sum(mask)

  grad_x, grad_p = jax.grad(image_term, argnums=(0, 1))(f32(images), f32(PROBS))
  np.testing.assert_array_equal(grad_p, 0.0)  # lambda from sg(teacher probs)
  np.testing.assert_array_equal(jax.grad(target_term)(f32(PROBS)), 0.0)
  conf = PROBS.max(-1)
  lam = conf / (conf + conf[PERM])
  want = np.zeros_like(images)
  for i, j in enumerate(PERM):  # d/dx of sum_i w_i (lam_i x_i + (1-lam_i) x_j)
    want[i] += lam[i] * np.asarray(weights[i])
    want[j] += (1 - lam[i]) * np.asarray(weights[i])
  np.testing.assert_allclose(grad_x, want, rtol=1e-5, atol=1e-6)


def box_of(inside):
  rows, cols = np.nonzero(inside)
  return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cutmix_box_and_corrected_ratio(seed):
  batch, height, width = 8, 12, 10
  images = rand(10 + seed, (batch, height, width, 2)) + 10.0 * np.arange(
      batch)[:, None, None, None]  # every pixel differs between examples
  targets = np.eye(batch)
  perm = np.roll(np.arange(batch), 1)
  lam = np.random.default_rng(seed).uniform(0.2, 0.9, batch)
  mixed, mixed_targets, corrected = mixing.cutmix(
      images=f32(images), targets=f32(targets), permutation=jnp.asarray(perm),
      mix_ratio=f32(lam), rng=jax.random.key(seed))
  mixed = np.asarray(mixed)
  for i, j in enumerate(perm):
    from_partner = np.all(np.isclose(mixed[i], images[j]), axis=-1)
    assert np.all(from_partner | np.all(np.isclose(mixed[i], images[i]), -1))
    area = from_partner.sum()
    if area:  # a filled axis-aligned rectangle
      y0, y1, x0, x1 = box_of(from_partner)
      assert area == (y1 - y0) * (x1 - x0)
    side_h = round(height * np.sqrt(1 - lam[i]))
    side_w = round(width * np.sqrt(1 - lam[i]))
    assert area <= side_h * side_w  # clipping only shrinks the box
    lam_true = 1 - area / (height * width)
    np.testing.assert_allclose(corrected[i], lam_true, rtol=1e-6)
    want_t = lam_true * targets[i] + (1 - lam_true) * targets[j]
    np.testing.assert_allclose(mixed_targets[i], want_t, rtol=1e-6, atol=1e-7)


def test_cutmix_box_area_when_not_clipped():
  inside, corrected = mixing.cutmix_box_mask(
      rng=jax.random.key(3), mix_ratio=f32(np.full(64, 0.75)), batch_size=64,
      height=16, width=16)
  side = round(16 * np.sqrt(0.25))
  for box in np.asarray(inside):
    y0, y1, x0, x1 = box_of(box)
    if 0 < y0 and y1 < 16 and 0 < x0 and x1 < 16:
      assert (y1 - y0, x1 - x0) == (side, side)
  assert np.any(np.isclose(corrected, 0.75))


def test_probabilistic_pseudo_mixup_cutmix_mode():
  images = rand(6, (6, 8, 8, 1)) + 10.0 * np.arange(6)[:, None, None, None]
  mixed, targets, mask = mixing.probabilistic_pseudo_mixup(
      images=f32(images), probs=f32(PROBS), permutation=jnp.asarray(PERM),
      threshold=0.7, use_cutmix=True, rng=jax.random.key(0))
  _, _, want_mask = np_pseudo_mixup(images, PROBS, PERM, 0.7)
  np.testing.assert_array_equal(mask, want_mask)  # Eq. 5 on max(o_i, o_j)
  labels = PROBS.argmax(-1)
  for i, j in enumerate(PERM):
    kept = np.isclose(np.asarray(mixed)[i], images[i]).mean()
    want = kept * np.eye(4)[labels[i]] + (1 - kept) * np.eye(4)[labels[j]]
    np.testing.assert_allclose(targets[i], want, rtol=1e-6, atol=1e-7)
  for use_cutmix in (True, jnp.ones(6, bool)):
    with pytest.raises(ValueError, match="rng"):
      mixing.probabilistic_pseudo_mixup(
          images=f32(images), probs=f32(PROBS), permutation=jnp.asarray(PERM),
          threshold=0.7, use_cutmix=use_cutmix)


def np_cutmix_from_output(mixed_i, image_i, image_j, lam_i):
  """Checks that a CutMix'ed example is image_i with one box of image_j; returns the
  kept fraction (the corrected lambda)."""
  from_partner = np.all(np.isclose(mixed_i, image_j), axis=-1)
  from_self = np.all(np.isclose(mixed_i, image_i), axis=-1)
  assert np.all(from_partner | from_self)
  area = from_partner.sum()
  assert area > 0  # every box below is non-empty (lambda <= 2/3 on 8 x 8 images)
  y0, y1, x0, x1 = box_of(from_partner)
  assert area == (y1 - y0) * (x1 - x0)
  height, width = from_partner.shape
  assert area <= round(height * np.sqrt(1 - lam_i)) * round(width * np.sqrt(1 - lam_i))
  return 1.0 - area / (height * width)


def test_probabilistic_pseudo_mixup_per_example_choice():
  """Semi-ViT's ProbPseudoMixup: mixup or CutMix chosen for each example."""
  images = rand(6, (6, 8, 8, 2)) + 10.0 * np.arange(6)[:, None, None, None]
  use_cutmix = np.array([True, False, True, False, False, True])
  mixed, targets, mask = mixing.probabilistic_pseudo_mixup(
      images=f32(images), probs=f32(PROBS), permutation=jnp.asarray(PERM),
      threshold=0.7, use_cutmix=jnp.asarray(use_cutmix), rng=jax.random.key(5))
  mixed, targets = np.asarray(mixed), np.asarray(targets)
  want, want_t, want_mask = np_pseudo_mixup(images, PROBS, PERM, 0.7)
  np.testing.assert_array_equal(mask, want_mask)  # Eq. 5 whichever the mode
  conf, one_hot = PROBS.max(-1), np.eye(4)[PROBS.argmax(-1)]
  for i, j in enumerate(PERM):
    if use_cutmix[i]:
      kept = np_cutmix_from_output(mixed[i], images[i], images[j],
                                   conf[i] / (conf[i] + conf[j]))
      np.testing.assert_allclose(targets[i], kept * one_hot[i] + (1 - kept) * one_hot[j],
                                 rtol=1e-6, atol=1e-7)
    else:  # Eq. 3 mixup: every pixel a blend, none a copy of either image
      np.testing.assert_allclose(mixed[i], want[i], rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(targets[i], want_t[i], rtol=1e-6, atol=1e-7)
      assert not np.any(np.isclose(mixed[i], images[j]))


def test_mixup_or_cutmix_scalar_choice_is_batch_wide():
  images = rand(8, (6, 8, 8, 1)) + 10.0 * np.arange(6)[:, None, None, None]
  targets, perm, lam = np.eye(6), np.roll(np.arange(6), 2), np.full(6, 0.6)
  mixed_up, mixed_up_t = mixing.mixup_or_cutmix(
      images=f32(images), targets=f32(targets), permutation=jnp.asarray(perm),
      mix_ratio=f32(lam), use_cutmix=False)
  want = 0.6 * images + 0.4 * images[perm]
  np.testing.assert_allclose(mixed_up, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mixed_up_t, 0.6 * targets + 0.4 * targets[perm], atol=1e-6)
  cut, cut_t = mixing.mixup_or_cutmix(
      images=f32(images), targets=f32(targets), permutation=jnp.asarray(perm),
      mix_ratio=f32(lam), use_cutmix=jnp.asarray(True), rng=jax.random.key(1))
  for i, j in enumerate(perm):
    kept = np_cutmix_from_output(np.asarray(cut)[i], images[i], images[j], lam[i])
    np.testing.assert_allclose(cut_t[i], kept * targets[i] + (1 - kept) * targets[j],
                               atol=1e-6)


def test_sample_mix_ratio_in_unit_interval():
  lam = mixing.sample_mix_ratio(rng=jax.random.key(0), alpha=0.8, shape=(256,))
  assert lam.shape == (256,) and np.all((lam >= 0) & (lam <= 1))


def test_sharded_equals_unsharded(mesh8):
  batch = 16
  images = f32(rand(7, (batch, 4, 4, 3)))
  probs = f32(np_softmax(rand(8, (batch, 5)) * 2))
  perm = jnp.asarray(np.random.default_rng(9).permutation(batch))
  use_cutmix = jnp.asarray(np.random.default_rng(10).uniform(size=batch) < 0.5)

  def fn(x, p, perm, use_cutmix):
    mixup_out = mixing.probabilistic_pseudo_mixup(
        images=x, probs=p, permutation=perm, threshold=0.5)
    cutmix_out = mixing.probabilistic_pseudo_mixup(
        images=x, probs=p, permutation=perm, threshold=0.5, use_cutmix=True,
        rng=jax.random.key(1))
    per_example_out = mixing.probabilistic_pseudo_mixup(
        images=x, probs=p, permutation=perm, threshold=0.5, use_cutmix=use_cutmix,
        rng=jax.random.key(2))
    return mixup_out, cutmix_out, per_example_out

  sharding = NamedSharding(mesh8, P("data"))
  sharded = jax.jit(fn, in_shardings=(sharding,) * 4)(images, probs, perm, use_cutmix)
  unsharded = jax.jit(fn)(images, probs, perm, use_cutmix)
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(unsharded)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
