"""Tests for semissl.losses.fixmatch against float64 NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from semissl.losses import fixmatch


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def np_fixmatch(weak, strong, threshold, soft, smoothing, temperature):
  """Semi-ViT Eq. 2 written out: 1/N sum_i [o_i >= tau] CE(target_i, strong_i)."""
  probs = np_softmax(weak / temperature)
  num, classes = probs.shape
  total = 0.0
  masks = []
  for i in range(num):
    conf = probs[i].max()
    target = probs[i].copy() if soft else np.eye(classes)[probs[i].argmax()]
    target = (1 - smoothing) * target + smoothing / classes
    keep = float(conf >= threshold)
    masks.append(keep)
    total += keep * -(target * np_log_softmax(strong[i])).sum()
  return total / num, np.array(masks), probs


def random_logits(seed, shape, scale=3.0):
  return np.random.default_rng(seed).normal(size=shape) * scale


@pytest.mark.parametrize("soft,smoothing,temperature",
                         [(False, 0.0, 1.0), (False, 0.1, 1.0),
                          (True, 0.0, 0.5), (True, 0.1, 2.0)])
@pytest.mark.parametrize("shape", [(8, 4), (12, 7)])
def test_fixmatch_loss_matches_reference(shape, soft, smoothing, temperature):
  weak, strong = random_logits(2, shape), random_logits(3, shape)
  confidences = np.sort(np_softmax(weak / temperature).max(-1))
  half = len(confidences) // 2  # tau between two confidences: no float32 ties
  threshold = float(confidences[half - 1] + confidences[half]) / 2
  expected, mask, probs = np_fixmatch(weak, strong, threshold, soft, smoothing,
                                      temperature)
  loss, extras = fixmatch.fixmatch_loss(
      weak_logits=jnp.asarray(weak, jnp.float32),
      strong_logits=jnp.asarray(strong, jnp.float32), threshold=threshold,
      soft_targets=soft, label_smoothing=smoothing, temperature=temperature)
  assert 0 < mask.sum() < len(mask)  # the test data exercises both branches
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(extras["mask"], mask)
  np.testing.assert_allclose(extras["mask_rate"], mask.mean(), rtol=1e-6)
  np.testing.assert_array_equal(extras["pseudo_labels"], probs.argmax(-1))
  np.testing.assert_allclose(extras["confidences"], probs.max(-1), rtol=1e-5)


def test_fixmatch_gradients_flow_to_strong_only():
  weak, strong = random_logits(4, (6, 5)), random_logits(5, (6, 5))
  threshold = 0.5

  def loss_fn(w, s):
    return fixmatch.fixmatch_loss(weak_logits=w, strong_logits=s,
                                  threshold=threshold)[0]

  grad_weak, grad_strong = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(
      jnp.asarray(weak, jnp.float32), jnp.asarray(strong, jnp.float32))
  np.testing.assert_array_equal(grad_weak, np.zeros_like(weak))
  # d/ds of 1/N sum_i m_i CE(onehot_i, s_i) = m_i (softmax(s_i) - onehot_i) / N.
  probs = np_softmax(weak)
  mask = (probs.max(-1) >= threshold)[:, None]
  expected = mask * (np_softmax(strong) - np.eye(5)[probs.argmax(-1)]) / 6
  np.testing.assert_allclose(grad_strong, expected, rtol=1e-5, atol=1e-7)


def test_all_below_threshold_gives_zero_loss_and_finite_grads():
  weak = jnp.zeros((4, 10))  # uniform: confidence 0.1
  strong = jnp.asarray(random_logits(6, (4, 10)), jnp.float32)
  for reduction in ("mean", "masked_mean", "sum"):
    fn = lambda s, r=reduction: fixmatch.fixmatch_loss(  # noqa: E731
        weak_logits=weak, strong_logits=s, threshold=0.95, reduction=r)[0]
    loss, grad = jax.value_and_grad(fn)(strong)
    assert float(loss) == 0.0
    assert np.all(np.isfinite(grad)) and not np.any(grad)


def test_threshold_exactly_at_confidence():
  # Exactly representable confidences 0.5 and 0.75.
  probs = jnp.asarray([[0.5, 0.25, 0.25], [0.125, 0.75, 0.125]])
  logits = jnp.asarray(random_logits(7, (2, 3)), jnp.float32)
  _, inclusive = fixmatch.thresholded_cross_entropy(
      pseudo_probs=probs, logits=logits, threshold=0.5)
  _, strict = fixmatch.thresholded_cross_entropy(
      pseudo_probs=probs, logits=logits, threshold=0.5, strict=True)
  np.testing.assert_array_equal(inclusive["mask"], [1.0, 1.0])
  np.testing.assert_array_equal(strict["mask"], [0.0, 1.0])
  # FixMatch keeps an example whose confidence equals tau (Semi-ViT Eq. 2: >=).
  weak = jnp.asarray(random_logits(8, (3, 4)), jnp.float32)
  _, extras = fixmatch.fixmatch_loss(weak_logits=weak, strong_logits=weak,
                                     threshold=1.0)
  tau = extras["confidences"][1]
  _, extras = fixmatch.fixmatch_loss(weak_logits=weak, strong_logits=weak,
                                     threshold=tau)
  assert extras["mask"][1] == 1.0


def test_reductions_and_pseudo_label_loss():
  logits = random_logits(9, (5, 4))
  probs = np_softmax(logits)
  mask = probs.max(-1) >= 0.4
  per_example = -np_log_softmax(logits)[np.arange(5), probs.argmax(-1)] * mask
  jlogits = jnp.asarray(logits, jnp.float32)
  expected = {"mean": per_example.mean(), "sum": per_example.sum(),
              "masked_mean": per_example.sum() / mask.sum(), "none": per_example}
  for reduction, value in expected.items():
    loss, _ = fixmatch.pseudo_label_loss(logits=jlogits, threshold=0.4,
                                         reduction=reduction)
    np.testing.assert_allclose(loss, value, rtol=1e-5, atol=1e-6)


def test_sharded_equals_unsharded(mesh8):
  weak = jnp.asarray(random_logits(11, (16, 6)), jnp.float32)
  strong = jnp.asarray(random_logits(12, (16, 6)), jnp.float32)

  def fn(w, s):
    loss, extras = fixmatch.fixmatch_loss(weak_logits=w, strong_logits=s,
                                          threshold=0.7, label_smoothing=0.1)
    return loss, extras["mask_rate"], jax.grad(
        lambda x: fixmatch.fixmatch_loss(weak_logits=w, strong_logits=x,
                                         threshold=0.7)[0])(s)

  batch = NamedSharding(mesh8, P("data"))
  sharded = jax.jit(fn, in_shardings=(batch, batch))(weak, strong)
  unsharded = jax.jit(fn)(weak, strong)
  assert sharded[2].sharding.spec[0] == "data"
  for a, b in zip(sharded, unsharded):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
