"""Tests of semissl.losses.common (cross-entropy, KL, label smoothing, reductions,
l2 normalisation) against float64 NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semissl import losses
from semissl.losses import common


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def random_logits(seed, shape, scale=3.0):
  return np.random.default_rng(seed).normal(size=shape) * scale


def f32(x):
  return jnp.asarray(x, jnp.float32)


@pytest.mark.parametrize("shape", [(4, 3), (16, 10)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_int_and_soft_labels(shape, smoothing):
  logits = random_logits(0, shape)
  labels = np.random.default_rng(1).integers(0, shape[1], shape[0])
  one_hot = np.eye(shape[1])[labels]
  target = (1 - smoothing) * one_hot + smoothing / shape[1]
  per_example = -(target * np_log_softmax(logits)).sum(-1)
  for given in (labels, one_hot):
    got = common.softmax_cross_entropy(logits=f32(logits), labels=jnp.asarray(given),
                                       label_smoothing=smoothing)
    np.testing.assert_allclose(got, per_example.mean(), rtol=1e-5, atol=1e-6)
    got = common.softmax_cross_entropy(logits=f32(logits), labels=jnp.asarray(given),
                                       label_smoothing=smoothing, reduction="none")
    np.testing.assert_allclose(got, per_example, rtol=1e-5, atol=1e-6)


def test_integer_and_one_hot_labels_give_the_same_gradient():
  logits = f32(random_logits(2, (6, 5)))
  labels = jnp.asarray([0, 4, 2, 2, 1, 3])
  grad_int = jax.grad(lambda x: common.softmax_cross_entropy(logits=x, labels=labels))(logits)
  grad_soft = jax.grad(lambda x: common.softmax_cross_entropy(
      logits=x, labels=jax.nn.one_hot(labels, 5)))(logits)
  probs = np.exp(np_log_softmax(np.asarray(logits, np.float64)))
  expected = (probs - np.eye(5)[np.asarray(labels)]) / 6
  np.testing.assert_allclose(grad_int, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad_soft, expected, rtol=1e-5, atol=1e-7)


def test_cross_entropy_with_probs_and_smooth_labels():
  logits = random_logits(3, (2, 3, 4))  # any leading axes
  target = np.exp(np_log_softmax(random_logits(4, (2, 3, 4))))
  got = common.cross_entropy_with_probs(logits=f32(logits), target_probs=f32(target))
  np.testing.assert_allclose(got, -(target * np_log_softmax(logits)).sum(-1), rtol=1e-5)
  smoothed = common.smooth_labels(targets=f32(target), label_smoothing=0.2)
  np.testing.assert_allclose(smoothed, 0.8 * target + 0.2 / 4, rtol=1e-6)
  np.testing.assert_array_equal(
      common.smooth_labels(targets=f32(target), label_smoothing=0.0), f32(target))


def test_kl_divergence_with_zero_target_entries():
  target = np.array([[0.0, 0.25, 0.75], [1.0, 0.0, 0.0]])
  logits = random_logits(10, (2, 3))
  log_q = np_log_softmax(logits)
  expected = [sum(t * (np.log(t) - lq) for t, lq in zip(row, lrow) if t > 0)
              for row, lrow in zip(target, log_q)]
  got = common.kl_divergence_with_probs(logits=f32(logits), target_probs=f32(target))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # d KL / d logits = softmax(logits) - t (targets sum to 1), finite at zero entries.
  grad = jax.grad(lambda x: jnp.sum(common.kl_divergence_with_probs(
      logits=x, target_probs=f32(target))))(f32(logits))
  np.testing.assert_allclose(grad, np.exp(log_q) - target, rtol=1e-5, atol=1e-6)


def test_reductions():
  per_example = np.array([1.0, 2.0, 3.0, 4.0])
  mask = np.array([1.0, 0.0, 1.0, 0.0])
  expected = {"mean": 1.0, "sum": 4.0, "masked_mean": 2.0, "none": per_example * mask}
  for reduction, value in expected.items():
    got = common.reduce_loss(per_example=f32(per_example), reduction=reduction,
                             mask=f32(mask))
    np.testing.assert_allclose(got, value, rtol=1e-6)
  none_kept = common.reduce_loss(per_example=f32(per_example), reduction="masked_mean",
                                 mask=jnp.zeros(4))
  assert float(none_kept) == 0.0
  with pytest.raises(ValueError, match="known"):
    common.reduce_loss(per_example=f32(per_example), reduction="median")


def test_l2_normalize():
  x = random_logits(5, (3, 4))
  x[1] = 0.0  # a zero vector stays zero, with a finite gradient
  got = common.l2_normalize(f32(x))
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  np.testing.assert_allclose(got, x / np.maximum(norms, 1e-12), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(common.l2_normalize(f32(x.T), axis=0), got.T, rtol=1e-6)
  grad = jax.grad(lambda v: jnp.sum(common.l2_normalize(v)))(f32(x))
  assert np.all(np.isfinite(grad))
  assert losses.l2_normalize is common.l2_normalize  # one of it, package-wide
