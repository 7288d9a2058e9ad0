"""Tests of semissl.losses.contrastive (SimCLRv2 Eq. 1, MoCo negatives)."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np
import pytest

from semissl import losses


def reference_nt_xent(z_a, z_b, temperature, extra_negatives=None):
  """SimCLRv2 Eq. 1 in float64, one anchor at a time, mean over 2N anchors."""
  z = np.concatenate([z_a, z_b]).astype(np.float64)
  norms = np.linalg.norm(z, axis=1, keepdims=True)
  z = z / np.maximum(norms, 1e-12)
  queue = None
  if extra_negatives is not None:
    queue = extra_negatives.astype(np.float64)
    queue = queue / np.linalg.norm(queue, axis=1, keepdims=True)
  n = z_a.shape[0]
  total = 0.0
  for i in range(2 * n):
    j = (i + n) % (2 * n)
    denominator = sum(
        np.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i
    )
    if queue is not None:
      denominator += np.sum(np.exp(queue @ z[i] / temperature))
    total += -np.log(np.exp(z[i] @ z[j] / temperature) / denominator)
  return total / (2 * n)


def numerical_gradient(fn, x, step=1e-6):
  """Central differences of a float64 function."""
  grad = np.zeros_like(x, dtype=np.float64)
  for index in np.ndindex(x.shape):
    plus, minus = x.astype(np.float64), x.astype(np.float64)
    plus[index] += step
    minus[index] -= step
    grad[index] = (fn(plus) - fn(minus)) / (2 * step)
  return grad


@pytest.mark.parametrize("n,dim,num_queue", [(3, 4, 0), (5, 3, 7)])
def test_nt_xent_value_and_gradient_match_reference(n, dim, num_queue):
  rng = np.random.default_rng(n)
  z_a = rng.normal(size=(n, dim)).astype(np.float32)
  z_b = rng.normal(size=(n, dim)).astype(np.float32)
  queue = (
      rng.normal(size=(num_queue, dim)).astype(np.float32)
      if num_queue
      else None
  )
  temperature = 0.5

  def loss_fn(a, b, q):
    return losses.nt_xent(a, b, temperature=temperature, extra_negatives=q)[0]

  loss, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2)))(
      z_a, z_b, queue
  )
  np.testing.assert_allclose(
      loss, reference_nt_xent(z_a, z_b, temperature, queue), rtol=1e-5
  )
  np.testing.assert_allclose(
      grads[0],
      numerical_gradient(
          lambda a: reference_nt_xent(a, z_b, temperature, queue), z_a
      ),
      atol=1e-5,
  )
  np.testing.assert_allclose(
      grads[1],
      numerical_gradient(
          lambda b: reference_nt_xent(z_a, b, temperature, queue), z_b
      ),
      atol=1e-5,
  )
  if queue is not None:  # MoCo memory entries are constants (stop_gradient).
    np.testing.assert_array_equal(grads[2], np.zeros_like(queue))


def test_nt_xent_accuracy_counts_positive_argmax():
  z_a = np.eye(4, dtype=np.float32)
  z_b = np.eye(4, dtype=np.float32)
  z_b[3] = z_a[0]  # anchor 3's positive is orthogonal; its argmax is elsewhere.
  _, extras = losses.nt_xent(z_a, z_b, temperature=0.1)
  z = np.concatenate([z_a, z_b])
  logits = z @ z.T - 1e9 * np.eye(8)
  expected = np.mean(np.argmax(logits, axis=1) == (np.arange(8) + 4) % 8)
  np.testing.assert_allclose(extras["contrastive_accuracy"], expected)


def test_nt_xent_zero_norm_vectors_are_finite():
  z_a = np.zeros((3, 4), np.float32)
  z_b = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
  loss, grads = jax.value_and_grad(
      lambda a, b: losses.nt_xent(a, b, temperature=0.2)[0], argnums=(0, 1)
  )(z_a, z_b)
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_allclose(loss, reference_nt_xent(z_a, z_b, 0.2), rtol=1e-5)


def test_nt_xent_sharded_batch_uses_negatives_from_all_devices(mesh8):
  n, dim, temperature = 16, 8, 0.3
  rng = np.random.default_rng(1)
  z_a = rng.normal(size=(n, dim)).astype(np.float32)
  z_b = rng.normal(size=(n, dim)).astype(np.float32)
  batch_sharding = NamedSharding(mesh8, PartitionSpec("data"))

  def loss_fn(a, b):
    return losses.nt_xent(a, b, temperature=temperature)[0]

  value_and_grad = jax.value_and_grad(loss_fn, argnums=(0, 1))
  single = jax.jit(value_and_grad)(z_a, z_b)
  sharded_fn = jax.jit(value_and_grad, in_shardings=(batch_sharding,) * 2)
  sharded = sharded_fn(
      jax.device_put(z_a, batch_sharding), jax.device_put(z_b, batch_sharding)
  )
  assert sharded[1][0].sharding.is_equivalent_to(batch_sharding, 2)
  np.testing.assert_allclose(sharded[0], single[0], rtol=1e-6)
  for got, want in zip(sharded[1], single[1]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
      sharded[0], reference_nt_xent(z_a, z_b, temperature), rtol=1e-5
  )
  # Per-device losses (each device's 2 examples contrasted among themselves)
  # give a different number: the global loss really sees all devices' negatives.
  per_shard = np.mean(
      [
          reference_nt_xent(z_a[s : s + 2], z_b[s : s + 2], temperature)
          for s in range(0, n, 2)
      ]
  )
  assert abs(float(sharded[0]) - per_shard) > 0.1
