"""Tests for semissl.losses.mixmatch (MixMatch pieces, ReMixMatch DA)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from semissl.losses import distribution_alignment as da
from semissl.losses import mixmatch


def f32(x):
  return jnp.asarray(x, jnp.float32)


def rand(seed, shape, scale=1.0):
  return np.random.default_rng(seed).normal(size=shape) * scale


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def np_guess(logits, temperature):
  mean = np_softmax(logits).mean(0)
  powered = mean ** (1 / temperature)
  return powered / powered.sum(-1, keepdims=True)


@pytest.mark.parametrize("num_augmentations,batch", [(1, 3), (2, 5)])
def test_guess_labels_matches_reference_and_stops_gradient(num_augmentations,
                                                          batch):
  logits = rand(0, (num_augmentations, batch, 4), 2.0)
  fn = lambda z: mixmatch.mixmatch_guess_labels(  # noqa: E731
      logits_per_augmentation=z, temperature=0.5)
  np.testing.assert_allclose(fn(f32(logits)), np_guess(logits, 0.5), rtol=1e-5)
  np.testing.assert_array_equal(
      jax.grad(lambda z: jnp.sum(fn(z) * jnp.arange(4.0)))(f32(logits)), 0.0)


def test_mix_ratio_and_mix():
  rng = jax.random.key(0)
  lam = np.asarray(jax.random.beta(rng, 0.75, 0.75, (64,)))
  got = mixmatch.mixmatch_mix_ratio(rng=rng, alpha=0.75, shape=(64,))
  np.testing.assert_allclose(got, np.maximum(lam, 1 - lam), rtol=1e-6)
  labelled, unlabelled = rand(1, (2, 3, 3, 1)), rand(2, (4, 3, 3, 1))
  labelled_t = np.eye(3)[[0, 2]]
  unlabelled_t = np_softmax(rand(3, (4, 3)))
  perm = np.random.default_rng(4).permutation(6)
  ratio = np.random.default_rng(5).uniform(size=6)
  outs = mixmatch.mixmatch_mix(
      labelled_images=f32(labelled), labelled_targets=f32(labelled_t),
      unlabelled_images=f32(unlabelled), unlabelled_targets=f32(unlabelled_t),
      permutation=jnp.asarray(perm), mix_ratio=f32(ratio))
  images = np.concatenate([labelled, unlabelled])
  targets = np.concatenate([labelled_t, unlabelled_t])
  lam = np.maximum(ratio, 1 - ratio)  # lambda' keeps each example dominant
  want_x = np.stack([lam[i] * images[i] + (1 - lam[i]) * images[perm[i]]
                     for i in range(6)])
  want_y = np.stack([lam[i] * targets[i] + (1 - lam[i]) * targets[perm[i]]
                     for i in range(6)])
  np.testing.assert_allclose(np.concatenate([outs[0], outs[2]]), want_x,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.concatenate([outs[1], outs[3]]), want_y,
                             rtol=1e-5, atol=1e-6)


def test_mixmatch_loss_matches_reference():
  logits_x, logits_u = rand(6, (4, 5)), rand(7, (6, 5))
  targets_x = np_softmax(rand(8, (4, 5)))
  targets_u = np_softmax(rand(9, (6, 5)))
  fn = lambda lx, tx, lu, tu: mixmatch.mixmatch_loss(  # noqa: E731
      labelled_logits=lx, labelled_targets=tx, unlabelled_logits=lu,
      unlabelled_targets=tu, unlabelled_weight=75.0)
  loss, extras = fn(f32(logits_x), f32(targets_x), f32(logits_u), f32(targets_u))
  supervised = np.mean(-(targets_x * np_log_softmax(logits_x)).sum(-1))
  unsupervised = np.sum((targets_u - np_softmax(logits_u)) ** 2) / (5 * 6)
  np.testing.assert_allclose(extras["supervised_loss"], supervised, rtol=1e-5)
  np.testing.assert_allclose(extras["unsupervised_loss"], unsupervised,
                             rtol=1e-5)
  np.testing.assert_allclose(loss, supervised + 75.0 * unsupervised, rtol=1e-5)
  grads = jax.grad(lambda *a: fn(*a)[0], argnums=(1, 3))(
      f32(logits_x), f32(targets_x), f32(logits_u), f32(targets_u))
  for grad in grads:  # guessed / mixed targets are constants
    np.testing.assert_array_equal(grad, 0.0)


def test_remixmatch_distribution_alignment():
  probs = np_softmax(rand(10, (5, 4)))
  labelled_prior = np.array([0.1, 0.2, 0.3, 0.4])
  model_prior = np_softmax(rand(11, (4,)))
  want = probs * labelled_prior / model_prior
  want /= want.sum(-1, keepdims=True)
  got = da.align_distribution(probs=f32(probs), model_prior=f32(model_prior),
                              target_prior=f32(labelled_prior))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # With the ring window: empty -> unchanged even with a target prior.
  window = da.init_distribution_alignment_window(num_classes=4, window_size=4)
  same = da.align_with_window(probs=f32(probs), window=window,
                              target_prior=f32(labelled_prior))
  np.testing.assert_allclose(same, probs, rtol=1e-6)
  history = [np_softmax(rand(12 + i, (3, 4))) for i in range(2)]
  for batch in history:
    window = da.push_distribution_window(window=window, probs=f32(batch))
  model_prior = np.mean([b.mean(0) for b in history], axis=0)
  want = probs * labelled_prior / model_prior
  want /= want.sum(-1, keepdims=True)
  got = da.align_with_window(probs=f32(probs), window=window,
                             target_prior=f32(labelled_prior))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # push_and_align (FixMatch's ReMixMatch DA): this batch enters the window first.
  model_prior = np.mean([b.mean(0) for b in history + [probs]], axis=0)
  want = probs * labelled_prior / model_prior
  want /= want.sum(-1, keepdims=True)
  got, pushed = da.push_and_align(probs=f32(probs), window=window,
                                  target_prior=f32(labelled_prior))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert int(pushed.count) == 3


def test_sharded_equals_unsharded(mesh8):
  logits = f32(rand(20, (2, 16, 5), 2.0))
  student = f32(rand(21, (16, 5)))

  def fn(logits, student):
    guess = mixmatch.mixmatch_guess_labels(logits_per_augmentation=logits,
                                           temperature=0.5)
    window = da.init_distribution_alignment_window(num_classes=5,
                                                   window_size=8)
    aligned, window = da.push_and_align(probs=guess, window=window)
    loss, _ = mixmatch.mixmatch_loss(
        labelled_logits=student, labelled_targets=guess,
        unlabelled_logits=student, unlabelled_targets=aligned)
    return guess, aligned, loss, window.batch_means

  shardings = (NamedSharding(mesh8, P(None, "data")),
               NamedSharding(mesh8, P("data")))
  sharded = jax.jit(fn, in_shardings=shardings)(logits, student)
  unsharded = jax.jit(fn)(logits, student)
  for a, b in zip(sharded, unsharded):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
