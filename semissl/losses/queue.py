"""Functional FIFO queue of embeddings, with optional labels (SemPPL §2 queue Q of
labelled embeddings; SimCLRv2's MoCo memory of unlabelled ones).

An `EmbeddingQueue` is a pytree of arrays, so it lives in the train state, is
checkpointed with it and can be sharded on its slot axis C. Empty slots, and
entries pushed without labels, carry the label `EMPTY_LABEL` (-1): they never
vote in the k-NN and are never drawn as semantic positives. SemPPL initialises
the queue with random vectors; we use random unit vectors.

A per-view stack of queues (SemPPL keeps one queue per large view) is the same
NamedTuple with a leading view axis on every field: embeddings [V, C, D], labels
[V, C], pointer [V], num_filled [V]. `push_embedding_queue` handles both forms.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from semissl.losses.common import l2_normalize

EMPTY_LABEL = -1


class EmbeddingQueue(NamedTuple):
  """FIFO ring buffer of embeddings and their labels (`EMPTY_LABEL` when unlabelled).

  Attributes:
    embeddings: [C, D] (or [V, C, D]) stored embeddings.
    labels: [C] (or [V, C]) int32 labels, `EMPTY_LABEL` for never-written slots
      and unlabelled entries.
    pointer: [] (or [V]) int32, the slot the next entry is written to.
    num_filled: [] (or [V]) int32, number of written slots (saturates at C).
  """

  embeddings: chex.Array
  labels: chex.Array
  pointer: chex.Array
  num_filled: chex.Array


def init_embedding_queue(
    *,
    rng: chex.PRNGKey,
    capacity: int,
    dim: int,
    num_views: int | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> EmbeddingQueue:
  """An empty queue holding random unit vectors labelled `EMPTY_LABEL`.

  Args:
    rng: key for the random initial vectors.
    capacity: number of slots C.
    dim: embedding size D.
    num_views: if given, a stack of that many independent queues (leading
      axis V).
    dtype: embedding dtype.

  Returns:
    A `EmbeddingQueue`.
  """
  lead = () if num_views is None else (num_views,)
  embeddings = l2_normalize(
      jax.random.normal(rng, lead + (capacity, dim), jnp.float32)
  ).astype(dtype)
  return EmbeddingQueue(
      embeddings=embeddings,
      labels=jnp.full(lead + (capacity,), EMPTY_LABEL, jnp.int32),
      pointer=jnp.zeros(lead, jnp.int32),
      num_filled=jnp.zeros(lead, jnp.int32),
  )


def _push_single(
    queue: EmbeddingQueue,
    embeddings: chex.Array,
    labels: chex.Array,
    mask: chex.Array,
) -> EmbeddingQueue:
  """Push into one [C, D] queue; entries with mask False are skipped."""
  capacity = queue.embeddings.shape[0]
  mask = mask.astype(bool)
  count = jnp.sum(mask, dtype=jnp.int32)
  rank = jnp.cumsum(mask, dtype=jnp.int32) - 1  # position among kept entries
  # When more than C entries are pushed at once only the newest C survive.
  keep = mask & (rank >= count - capacity)
  slot = jnp.where(
      keep, (queue.pointer + rank) % capacity, capacity
  )  # C: dropped
  new_embeddings = queue.embeddings.at[slot].set(
      embeddings.astype(queue.embeddings.dtype), mode="drop"
  )
  new_labels = queue.labels.at[slot].set(labels.astype(jnp.int32), mode="drop")
  return EmbeddingQueue(
      embeddings=new_embeddings,
      labels=new_labels,
      pointer=(queue.pointer + count) % capacity,
      num_filled=jnp.minimum(queue.num_filled + count, capacity),
  )


def push_embedding_queue(
    queue: EmbeddingQueue,
    *,
    embeddings: chex.Array,
    labels: chex.Array | None = None,
    mask: chex.Array | None = None,
) -> EmbeddingQueue:
  """Writes a batch of entries at the pointer, oldest first, wrapping around.

  Pure and jit-safe; with the queue sharded on its slot axis under `jax.jit`,
  each device scatters into its own slots (XLA gathers only the B new entries).
  Embeddings are stored under stop_gradient.

  Args:
    queue: a single queue ([C, D]) or a per-view stack ([V, C, D]).
    embeddings: [B, D] (single) or [V, B, D] (stack).
    labels: [B] int labels (shared by all views of a stack) or [V, B]; None
      (unlabelled entries, e.g. SimCLRv2's memory): `EMPTY_LABEL`.
    mask: optional [B] bool; only entries with True are written, in batch order
      (e.g. the labelled examples of a mixed batch). The pointer advances by
      their number, so the push size may vary from step to step under jit.

  Returns:
    The updated queue.
  """
  embeddings = jax.lax.stop_gradient(embeddings)
  batch = embeddings.shape[-2]
  if labels is None:
    labels = jnp.full((batch,), EMPTY_LABEL, jnp.int32)
  labels = jnp.asarray(labels)
  mask = jnp.ones((batch,), bool) if mask is None else jnp.asarray(mask)
  stacked = queue.embeddings.ndim == 3
  chex.assert_rank(embeddings, 3 if stacked else 2)
  chex.assert_shape(mask, (batch,))
  if not stacked:
    chex.assert_shape(labels, (batch,))
    return _push_single(queue, embeddings, labels, mask)
  num_views = queue.embeddings.shape[0]
  chex.assert_axis_dimension(embeddings, 0, num_views)
  labels = jnp.broadcast_to(labels, (num_views, batch))
  return jax.vmap(_push_single, in_axes=(0, 0, 0, None))(
      queue, embeddings, labels, mask
  )
