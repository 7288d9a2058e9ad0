"""Tests for semissl.losses.dividemix against NumPy / scikit-learn references."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from semissl.losses import dividemix


def rand(seed, shape, scale=1.0):
  return np.random.default_rng(seed).normal(size=shape) * scale


def np_softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def np_sharpen(p, temperature):
  powered = p ** (1.0 / temperature)
  return powered / powered.sum(-1, keepdims=True)


def noisy_losses(seed, n=4000, noise=0.4):
  """Per-example losses: a clean low-loss mode and a noisy high-loss mode."""
  rng = np.random.default_rng(seed)
  is_noisy = rng.random(n) < noise
  clean = rng.gamma(2.0, 0.1, size=n)
  bad = 2.5 + rng.normal(0.0, 0.6, size=n)
  return np.where(is_noisy, np.abs(bad), clean), is_noisy


def sklearn_clean_probability(losses, num_iterations, reg_covar):
  """DivideMix's code (sklearn GaussianMixture on min-max normalised losses), with the
  same deterministic start: the parameters of the median split."""
  x = (losses - losses.min()) / (losses.max() - losses.min())
  upper = x > np.median(x)
  halves = [x[~upper], x[upper]]
  weights = np.array([len(h) / len(x) for h in halves])
  means = np.array([h.mean() for h in halves])
  variances = np.array([h.var() + reg_covar for h in halves])
  gmm = GaussianMixture(n_components=2, max_iter=num_iterations, tol=0.0,
                        reg_covar=reg_covar, weights_init=weights,
                        means_init=means[:, None],
                        precisions_init=(1.0 / variances)[:, None, None])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    gmm.fit(x[:, None])
  return gmm.predict_proba(x[:, None])[:, gmm.means_.argmin()], gmm


@pytest.mark.parametrize("seed, noise", [(0, 0.2), (1, 0.5), (2, 0.8)])
@pytest.mark.parametrize("num_iterations", [1, 10])
def test_clean_probability_matches_sklearn(seed, noise, num_iterations):
  losses, _ = noisy_losses(seed, noise=noise)
  expected, gmm = sklearn_clean_probability(losses, num_iterations, 5e-4)
  got, extras = dividemix.clean_probability(losses=jnp.asarray(losses, jnp.float32),
                                            num_iterations=num_iterations,
                                            reg_covar=5e-4)
  np.testing.assert_allclose(np.asarray(got), expected, atol=2e-4)
  np.testing.assert_allclose(np.asarray(extras["means"]), gmm.means_[:, 0], atol=1e-5)
  np.testing.assert_allclose(np.asarray(extras["variances"]), gmm.covariances_[:, 0, 0],
                             rtol=1e-4)
  np.testing.assert_allclose(np.asarray(extras["weights"]), gmm.weights_, atol=1e-5)


def test_clean_probability_separates_clean_from_noisy():
  losses, is_noisy = noisy_losses(3, noise=0.5)
  w, _ = dividemix.clean_probability(losses=jnp.asarray(losses))
  w = np.asarray(w)
  assert w.shape == losses.shape and np.all((w >= 0) & (w <= 1))
  assert np.mean((w > 0.5) == ~is_noisy) > 0.95


def test_clean_probability_is_jittable_and_survives_constant_losses():
  w, _ = jax.jit(lambda l: dividemix.clean_probability(losses=l))(jnp.ones(50))
  assert np.all(np.isfinite(np.asarray(w)))


def test_refine_labels_matches_equations_3_and_4():
  m, b, c, t = 2, 6, 5, 0.5
  logits = rand(0, (m, b, c), 2.0)
  labels = np.eye(c)[np.random.default_rng(1).integers(0, c, b)]
  w = np.random.default_rng(2).random(b)
  expected = np_sharpen(w[:, None] * labels + (1 - w[:, None]) * np_softmax(logits).mean(0),
                        t)
  fn = lambda z: dividemix.refine_labels(  # noqa: E731
      labels_onehot=jnp.asarray(labels), clean_prob=jnp.asarray(w),
      logits_per_augmentation=z, temperature=t)
  np.testing.assert_allclose(np.asarray(fn(jnp.asarray(logits, jnp.float32))), expected,
                             atol=1e-5)
  grad = jax.grad(lambda z: jnp.sum(fn(z) * jnp.arange(c)))(jnp.asarray(logits, jnp.float32))
  assert not np.any(np.asarray(grad))


def test_refine_labels_with_w_one_keeps_the_label():
  labels = np.eye(4)[[0, 3, 1]]
  got = dividemix.refine_labels(labels_onehot=jnp.asarray(labels), clean_prob=jnp.ones(3),
                                logits_per_augmentation=jnp.asarray(rand(3, (2, 3, 4))),
                                temperature=0.5)
  np.testing.assert_allclose(np.asarray(got), labels, atol=1e-6)


def test_co_guess_averages_both_networks_then_sharpens():
  m, b, c, t = 2, 7, 4, 0.5
  first, second = rand(4, (m, b, c), 2.0), rand(5, (m, b, c), 2.0)
  expected = np_sharpen((np_softmax(first).sum(0) + np_softmax(second).sum(0)) / (2 * m), t)
  got = dividemix.co_guess(logits_per_augmentation=jnp.asarray(first, jnp.float32),
                           other_logits_per_augmentation=jnp.asarray(second, jnp.float32),
                           temperature=t)
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


def np_dividemix_loss(lx, tx, lu, tu, lambda_u, lambda_r):
  px, pu = np_softmax(lx), np_softmax(lu)
  l_x = -np.mean(np.sum(tx * np.log(px), -1))
  l_u = np.mean((pu - tu) ** 2)  # DivideMix's code: mean over examples and classes
  mean_p = np.concatenate([px, pu]).mean(0)
  prior = np.full(lx.shape[-1], 1.0 / lx.shape[-1])
  l_reg = np.sum(prior * np.log(prior / mean_p))
  return l_x + lambda_u * l_u + lambda_r * l_reg, (l_x, l_u, l_reg)


def test_dividemix_loss_matches_equations_7_to_10():
  c = 6
  lx, lu = rand(6, (8, c), 2.0), rand(7, (12, c), 2.0)
  tx = np_softmax(rand(8, (8, c), 3.0))
  tu = np_softmax(rand(9, (12, c), 3.0))
  expected, (l_x, l_u, l_reg) = np_dividemix_loss(lx, tx, lu, tu, 25.0, 1.0)
  loss, extras = dividemix.dividemix_loss(
      labelled_logits=jnp.asarray(lx, jnp.float32), labelled_targets=jnp.asarray(tx),
      unlabelled_logits=jnp.asarray(lu, jnp.float32), unlabelled_targets=jnp.asarray(tu),
      unlabelled_weight=25.0, regularisation_weight=1.0)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(
      [float(extras[k]) for k in ("supervised_loss", "unsupervised_loss", "regulariser")],
      [l_x, l_u, l_reg], rtol=1e-5, atol=1e-7)


def test_prior_regulariser_gradient_matches_finite_differences():
  logits = rand(10, (5, 3))
  fn = lambda z: dividemix.prior_regulariser(logits=z)  # noqa: E731
  grad = np.asarray(jax.grad(fn)(jnp.asarray(logits, jnp.float32)))

  def np_reg(z):
    mean_p = np_softmax(z).mean(0)
    return np.sum(np.log((1 / 3) / mean_p)) / 3

  eps, numeric = 1e-5, np.zeros_like(logits)
  for index in np.ndindex(*logits.shape):
    up, down = logits.copy(), logits.copy()
    up[index] += eps
    down[index] -= eps
    numeric[index] = (np_reg(up) - np_reg(down)) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, atol=1e-4)


def test_negative_entropy():
  logits = rand(11, (4, 5))
  p = np_softmax(logits)
  np.testing.assert_allclose(
      float(dividemix.negative_entropy(logits=jnp.asarray(logits, jnp.float32))),
      np.mean(np.sum(p * np.log(p), -1)), rtol=1e-5)


def test_masked_loss_equals_the_split_loss():
  """Rows marked clean are X', the others U': the same value as `dividemix_loss` on
  the two parts (and as the NumPy Eq. 7-10), whatever the row order."""
  c = 5
  logits, targets = rand(12, (10, c), 2.0), np_softmax(rand(13, (10, c), 3.0))
  clean = np.array([1, 0, 0, 1, 1, 0, 1, 0, 0, 0], bool)
  expected, parts = np_dividemix_loss(logits[clean], targets[clean], logits[~clean],
                                      targets[~clean], 3.0, 0.5)
  loss, extras = dividemix.dividemix_masked_loss(
      logits=jnp.asarray(logits, jnp.float32), targets=jnp.asarray(targets),
      clean_mask=jnp.asarray(clean), unlabelled_weight=3.0, regularisation_weight=0.5)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(
      [float(extras[k]) for k in ("supervised_loss", "unsupervised_loss", "regulariser")],
      parts, rtol=1e-5, atol=1e-7)


def test_masked_loss_with_no_unlabelled_row_has_no_l_u():
  logits, targets = rand(14, (4, 3)), np_softmax(rand(15, (4, 3)))
  _, extras = dividemix.dividemix_masked_loss(
      logits=jnp.asarray(logits, jnp.float32), targets=jnp.asarray(targets),
      clean_mask=jnp.ones(4), unlabelled_weight=1.0)
  assert float(extras["unsupervised_loss"]) == 0.0
