"""Tests of semissl.losses.queue (FIFO queue of embeddings, labels optional)."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np
import pytest

from semissl import losses


class ReferenceQueue:
  """A plain FIFO ring buffer, one entry at a time."""

  def __init__(self, embeddings, labels):
    self.embeddings = np.array(embeddings, np.float64)
    self.labels = np.array(labels)
    self.pointer = 0
    self.num_filled = 0

  def push(self, embeddings, labels, mask):
    capacity = len(self.labels)
    for embedding, label, keep in zip(embeddings, labels, mask):
      if keep:
        self.embeddings[self.pointer] = embedding
        self.labels[self.pointer] = label
        self.pointer = (self.pointer + 1) % capacity
        self.num_filled = min(self.num_filled + 1, capacity)


def assert_matches(queue, reference):
  np.testing.assert_allclose(queue.embeddings, reference.embeddings, rtol=1e-6)
  np.testing.assert_array_equal(queue.labels, reference.labels)
  assert int(queue.pointer) == reference.pointer
  assert int(queue.num_filled) == reference.num_filled


def test_init_is_empty_random_unit_vectors():
  queue = losses.init_embedding_queue(rng=jax.random.key(0), capacity=6, dim=3)
  np.testing.assert_allclose(
      np.linalg.norm(queue.embeddings, axis=1), 1.0, rtol=1e-6
  )
  np.testing.assert_array_equal(queue.labels, np.full(6, losses.EMPTY_LABEL))
  assert queue.labels.dtype == jnp.int32
  assert int(queue.pointer) == 0 and int(queue.num_filled) == 0
  stacked = losses.init_embedding_queue(
      rng=jax.random.key(0), capacity=6, dim=3, num_views=2
  )
  assert stacked.embeddings.shape == (2, 6, 3) and stacked.pointer.shape == (2,)
  assert not np.allclose(stacked.embeddings[0], stacked.embeddings[1])


@pytest.mark.parametrize(
    "capacity,batches",
    [
        (5, [2, 2, 2, 2]),  # wraps around mid-batch
        (4, [6, 3]),  # a batch bigger than the queue keeps its newest entries
    ],
)
def test_push_matches_fifo_reference(capacity, batches):
  rng = np.random.default_rng(capacity)
  queue = losses.init_embedding_queue(
      rng=jax.random.key(1), capacity=capacity, dim=3
  )
  reference = ReferenceQueue(queue.embeddings, queue.labels)
  push = jax.jit(losses.push_embedding_queue)
  for step, size in enumerate(batches):
    embeddings = rng.normal(size=(size, 3)).astype(np.float32)
    labels = rng.integers(0, 10, size=size).astype(np.int32)
    mask = (
        np.ones(size, bool)
        if step % 2 == 0
        else rng.integers(0, 2, size=size).astype(bool)
    )
    queue = push(queue, embeddings=embeddings, labels=labels, mask=mask)
    reference.push(embeddings, labels, mask)
    assert_matches(queue, reference)


def test_push_stacked_views_and_stop_gradient():
  rng = np.random.default_rng(0)
  queue = losses.init_embedding_queue(
      rng=jax.random.key(2), capacity=4, dim=2, num_views=3
  )
  embeddings = rng.normal(size=(3, 3, 2)).astype(np.float32)
  labels = np.array([4, 5, 6], np.int32)
  new = jax.jit(losses.push_embedding_queue)(queue, embeddings=embeddings, labels=labels)
  for view in range(3):
    reference = ReferenceQueue(queue.embeddings[view], queue.labels[view])
    reference.push(embeddings[view], labels, np.ones(3, bool))
    assert_matches(jax.tree.map(lambda x, v=view: x[v], new), reference)
  grad = jax.grad(
      lambda e: jnp.sum(
          losses.push_embedding_queue(queue, embeddings=e, labels=labels).embeddings
      )
  )(embeddings)
  np.testing.assert_array_equal(grad, np.zeros_like(embeddings))


def test_push_without_labels_writes_empty_labels():
  queue = losses.init_embedding_queue(rng=jax.random.key(4), capacity=4, dim=2)
  reference = ReferenceQueue(queue.embeddings, queue.labels)
  labelled = np.ones((2, 2), np.float32)
  queue = losses.push_embedding_queue(queue, embeddings=labelled,
                                      labels=np.array([3, 7], np.int32))
  reference.push(labelled, [3, 7], [True, True])
  embeddings = np.random.default_rng(5).normal(size=(3, 2)).astype(np.float32)
  queue = jax.jit(losses.push_embedding_queue)(queue, embeddings=embeddings)
  reference.push(embeddings, np.full(3, losses.EMPTY_LABEL), np.ones(3, bool))
  assert_matches(queue, reference)
  np.testing.assert_array_equal(queue.labels, [losses.EMPTY_LABEL, 7, losses.EMPTY_LABEL,
                                               losses.EMPTY_LABEL])


def test_push_on_queue_sharded_over_slots(mesh8):
  rng = np.random.default_rng(1)
  queue = losses.init_embedding_queue(
      rng=jax.random.key(3), capacity=32, dim=4, num_views=2
  )
  slots = NamedSharding(mesh8, PartitionSpec(None, "data"))
  replicated = NamedSharding(mesh8, PartitionSpec())
  queue_sharding = losses.EmbeddingQueue(slots, slots, replicated, replicated)
  push = jax.jit(
      lambda q, e, y: losses.push_embedding_queue(q, embeddings=e, labels=y),
      in_shardings=(queue_sharding, replicated, replicated),
      out_shardings=queue_sharding,
  )
  sharded = jax.device_put(queue, queue_sharding)
  single = queue
  for _ in range(3):  # 3 * 12 > 32: wraps across device boundaries
    embeddings = rng.normal(size=(2, 12, 4)).astype(np.float32)
    labels = rng.integers(0, 5, size=12).astype(np.int32)
    sharded = push(sharded, embeddings, labels)
    single = jax.jit(losses.push_embedding_queue)(single, embeddings=embeddings, labels=labels)
  for got, want in zip(sharded, single):
    np.testing.assert_array_equal(got, want)
  assert sharded.embeddings.sharding.is_equivalent_to(slots, 3)
