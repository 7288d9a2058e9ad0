"""Tests of semissl.losses.distillation (SimCLRv2 Eq. 2 and Eq. 3)."""

import jax
import numpy as np
import pytest

from semissl import losses


def softmax64(logits):
  logits = logits.astype(np.float64)
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def reference_distillation(student, teacher, temperature):
  """Eq. 2 with the sum over the batch replaced by the mean."""
  teacher_probs = softmax64(teacher / temperature)
  student_probs = softmax64(student / temperature)
  return -np.mean(np.sum(teacher_probs * np.log(student_probs), axis=-1))


def reference_with_labels(student, teacher, labels, temperature, alpha):
  """Eq. 3: (1 - alpha) * mean labelled CE (tau = 1) + alpha * Eq. 2."""
  probs = softmax64(student)
  labelled = [i for i, y in enumerate(labels) if y >= 0]
  label_ce = (
      -np.mean([np.log(probs[i, labels[i]]) for i in labelled])
      if labelled
      else 0.0
  )
  distill = reference_distillation(student, teacher, temperature)
  return (1 - alpha) * label_ce + alpha * distill, distill, label_ce


@pytest.mark.parametrize(
    "batch,classes,temperature", [(4, 3, 1.0), (6, 10, 0.5)]
)
def test_distillation_value_and_gradients(batch, classes, temperature):
  rng = np.random.default_rng(batch)
  student = rng.normal(size=(batch, classes)).astype(np.float32)
  teacher = 3 * rng.normal(size=(batch, classes)).astype(np.float32)

  def loss_fn(s, t):
    return losses.distillation(
        student_logits=s, teacher_logits=t, temperature=temperature
    )

  loss, (grad_student, grad_teacher) = jax.jit(
      jax.value_and_grad(loss_fn, argnums=(0, 1))
  )(student, teacher)
  np.testing.assert_allclose(
      loss, reference_distillation(student, teacher, temperature), rtol=1e-5
  )
  # d/ds of -sum_y P_T log softmax(s / tau) = (P_S - P_T) / tau, over B.
  expected = (
      softmax64(student / temperature) - softmax64(teacher / temperature)
  ) / (temperature * batch)
  np.testing.assert_allclose(grad_student, expected, atol=1e-6)
  np.testing.assert_array_equal(grad_teacher, np.zeros_like(teacher))


@pytest.mark.parametrize("labels", [[0, -1, 2, 1, -1], [-1] * 5])
def test_distillation_with_labels(labels):
  rng = np.random.default_rng(3)
  student = rng.normal(size=(5, 3)).astype(np.float32)
  teacher = rng.normal(size=(5, 3)).astype(np.float32)
  labels = np.array(labels, np.int32)
  temperature, alpha = 2.0, 0.3

  def loss_fn(s, t):
    return losses.distillation_with_labels(
        student_logits=s,
        teacher_logits=t,
        labels=labels,
        temperature=temperature,
        alpha=alpha,
    )

  (loss, extras), grads = jax.jit(
      jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
  )(student, teacher)
  want, want_distill, want_ce = reference_with_labels(
      student, teacher, labels, temperature, alpha
  )
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(extras["distillation"], want_distill, rtol=1e-5)
  np.testing.assert_allclose(extras["label_cross_entropy"], want_ce, atol=1e-6)
  np.testing.assert_array_equal(grads[1], np.zeros_like(teacher))
  assert np.all(np.isfinite(grads[0])) and np.any(grads[0] != 0)
