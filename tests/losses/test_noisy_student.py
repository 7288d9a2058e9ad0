"""Tests for semissl.losses.noisy_student against float64 NumPy references written from
the equations (Xie et al. 2020: soft pseudo-labels, confidence filtering, class
balancing by running counts, the student's soft cross-entropy)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semissl.losses import noisy_student


def np_softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def np_noisy_student(student, teacher, counts, threshold, temperature, balance, hard):
  """The module docstring's equations, example by example."""
  q = np_softmax(teacher / temperature)
  batch, classes = q.shape
  kept = [q[i].max() >= threshold for i in range(batch)]
  labels = [int(q[i].argmax()) for i in range(batch)]
  counts = np.array(counts, np.int64).copy()
  for i in range(batch):
    if kept[i]:
      counts[labels[i]] += 1
  target_per_class = counts.sum() / classes
  weights, total = [], 0.0
  log_p = np.log(np_softmax(student))
  for i in range(batch):
    if not kept[i]:
      w = 0.0
    elif balance:
      w = target_per_class / counts[labels[i]]
    else:
      w = 1.0
    target = np.eye(classes)[labels[i]] if hard else q[i]
    total += w * -(target * log_p[i]).sum()
    weights.append(w)
  return total / batch, counts, np.array(weights), np.array(kept, float)


def _logits(seed, shape, scale=2.0):
  return np.random.default_rng(seed).normal(size=shape) * scale


@pytest.mark.parametrize("threshold, temperature, balance, hard", [
    (0.0, 1.0, True, False), (0.5, 1.0, True, False), (0.5, 0.7, False, False),
    (0.4, 2.0, True, True)])
def test_loss_matches_numpy(threshold, temperature, balance, hard):
  student, teacher = _logits(0, (24, 5)), _logits(1, (24, 5), scale=3.0)
  counts = np.array([7, 0, 3, 12, 1], np.int32)
  loss, extras = noisy_student.noisy_student_loss(
      student_logits=jnp.asarray(student, jnp.float32),
      teacher_logits=jnp.asarray(teacher, jnp.float32),
      class_counts=jnp.asarray(counts), threshold=threshold, temperature=temperature,
      class_balance=balance, hard_targets=hard)
  ref, ref_counts, ref_weights, ref_kept = np_noisy_student(
      student, teacher, counts, threshold, temperature, balance, hard)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  assert extras["class_counts"].dtype == jnp.int32
  np.testing.assert_array_equal(extras["class_counts"], ref_counts)
  np.testing.assert_allclose(extras["weights"], ref_weights, rtol=1e-6)
  np.testing.assert_array_equal(extras["mask"], ref_kept)
  np.testing.assert_allclose(extras["mask_rate"], ref_kept.mean(), rtol=1e-6)
  if threshold > 0:
    assert 0 < ref_kept.sum() < len(ref_kept)  # the filter does something here


def test_balanced_counts_give_unit_weights_and_rare_classes_weigh_more():
  labels = jnp.array([0, 1, 2, 2])
  mask = jnp.array([1.0, 1.0, 1.0, 0.0])
  equal = noisy_student.class_balance_weights(class_counts=jnp.array([5, 5, 5]),
                                              pseudo_labels=labels, mask=mask)
  np.testing.assert_allclose(equal, [1.0, 1.0, 1.0, 0.0])
  skewed = noisy_student.class_balance_weights(class_counts=jnp.array([20, 5, 5]),
                                               pseudo_labels=labels, mask=mask)
  np.testing.assert_allclose(skewed, [10 / 20, 10 / 5, 10 / 5, 0.0], rtol=1e-6)


def test_running_counts_accumulate_over_batches():
  """Counts over two batches fed in turn equal those of the two batches at once."""
  rs = np.random.default_rng(3)
  labels = rs.integers(0, 4, size=(2, 10))
  masks = (rs.random((2, 10)) > 0.3).astype(np.float32)
  counts = jnp.zeros(4, jnp.int32)
  for labels_b, mask_b in zip(labels, masks):
    counts = noisy_student.update_class_counts(class_counts=counts,
                                               pseudo_labels=jnp.asarray(labels_b),
                                               mask=jnp.asarray(mask_b))
  expected = np.array([np.sum((labels == c) * masks) for c in range(4)])
  np.testing.assert_array_equal(counts, expected)


def test_filter_and_soft_labels():
  teacher = _logits(5, (6, 3))
  probs = noisy_student.soft_pseudo_labels(teacher_logits=jnp.asarray(teacher),
                                           temperature=0.5)
  np.testing.assert_allclose(probs, np_softmax(teacher / 0.5), rtol=1e-5)
  mask = noisy_student.confidence_filter(pseudo_probs=probs, threshold=0.8)
  np.testing.assert_array_equal(mask, (np_softmax(teacher / 0.5).max(-1) >= 0.8).astype(float))


def test_gradient_flows_to_the_student_only():
  student, teacher = jnp.asarray(_logits(6, (8, 4))), jnp.asarray(_logits(7, (8, 4)))
  counts = jnp.array([1, 2, 3, 4], jnp.int32)
  loss = lambda s, t: noisy_student.noisy_student_loss(
      student_logits=s, teacher_logits=t, class_counts=counts, threshold=0.3)[0]
  grad_s, grad_t = jax.grad(loss, argnums=(0, 1))(student, teacher)
  assert np.any(np.asarray(grad_s)) and not np.any(np.asarray(grad_t))
