"""SemPPL pseudo-labels and semantic positives from the labelled queue.

SemPPL Eq. 2 (k-NN pseudo-label, mode of the neighbours' labels) with the view
voting of Appendix D (every (queue view, query view) pair votes), and the
uniform sampling of semantic positives among queue entries sharing a
(pseudo-)label (§2).

Both functions work on a queue sharded over its slot axis C under `jax.jit`:
the k-NN runs the V*V pairs one after another (`lax.map`), so a device holds one
[B, C / num_devices] similarity block at a time, and it finds neighbours with
`argmax`/`max` reductions, which XLA partitions (local reduction, then a tiny
all-gather of per-device winners). `lax.top_k` is avoided on purpose: XLA's SPMD
partitioner all-gathers its operand, i.e. the full [B, C] similarity block.
"""

import chex
import jax
import jax.numpy as jnp

from semissl.losses.common import l2_normalize
from semissl.losses.common import NORM_EPSILON


def _as_views(x: chex.Array, rank: int) -> chex.Array:
  """Adds a leading view axis to a single-view array."""
  return x[None] if x.ndim == rank - 1 else x


def _pair_neighbour_labels(
    queries: chex.Array,
    queue_embeddings: chex.Array,
    queue_labels: chex.Array,
    k: int,
) -> tuple[chex.Array, chex.Array]:
  """Labels and validity, [B, k] each, of the k nearest entries (cosine)."""
  squared_norm = jnp.sum(
      jnp.square(queue_embeddings.astype(jnp.float32)), axis=-1
  )
  inverse_norm = jax.lax.rsqrt(jnp.maximum(squared_norm, NORM_EPSILON**2))
  similarity = (
      queries @ queue_embeddings.T.astype(queries.dtype)
  ) * inverse_norm
  similarity = jnp.where(queue_labels[None, :] >= 0, similarity, -jnp.inf)
  slots = jnp.arange(similarity.shape[1])
  labels, valid = [], []
  for neighbour in range(k):
    best = jnp.max(similarity, axis=1)
    best_slot = jnp.argmax(similarity, axis=1)  # ties: lowest slot index
    labels.append(jnp.take(queue_labels, best_slot, axis=0))
    valid.append(best > -jnp.inf)  # fewer than k non-empty slots
    if neighbour + 1 < k:
      similarity = jnp.where(
          slots[None, :] == best_slot[:, None], -jnp.inf, similarity
      )
  return jnp.stack(labels, axis=1), jnp.stack(valid, axis=1)


def knn_pseudo_labels(
    *,
    queries: chex.Array,
    queue_embeddings: chex.Array,
    queue_labels: chex.Array,
    num_classes: int,
    k: int = 1,
    view_voting: bool = True,
) -> tuple[chex.Array, chex.Array]:
  """SemPPL Eq. 2 with view voting (Appendix D): k-NN pseudo-labels.

  Every (queue view i, query view j) pair contributes the labels of the k
  entries of queue i nearest to query j in cosine similarity: V*V*k votes per
  example (16 for SemPPL's 4 large views and k = 1). The pseudo-label is the
  mode of all votes. Empty slots (label < 0) never vote. Everything is under
  stop_gradient.

  Args:
    queries: [V, B, D] online predictions of the V large views (or [B, D]).
    queue_embeddings: [V, C, D] one queue per view (or [C, D]).
    queue_labels: [V, C] int labels, negative for empty slots (or [C]).
    num_classes: K, the number of classes.
    k: neighbours per pair.
    view_voting: if False only the pairs (view i, queue i) vote (Table 9 "Off").

  Returns:
    (pseudo_labels, votes): [B] int32, the most voted class (ties: the smallest
    class index; -1 where no vote was cast, e.g. an all-empty queue), and [B, K]
    int32 vote counts.
  """
  queries = jax.lax.stop_gradient(_as_views(jnp.asarray(queries), 3))
  queue_embeddings = jax.lax.stop_gradient(
      _as_views(jnp.asarray(queue_embeddings), 3)
  )
  queue_labels = _as_views(jnp.asarray(queue_labels), 2)
  num_query_views = queries.shape[0]
  num_queue_views = queue_embeddings.shape[0]
  chex.assert_axis_dimension(queue_labels, 0, num_queue_views)
  if view_voting:
    queue_view = jnp.repeat(jnp.arange(num_queue_views), num_query_views)
    query_view = jnp.tile(jnp.arange(num_query_views), num_queue_views)
  else:
    if num_queue_views != num_query_views:
      raise ValueError(
          "view_voting=False needs one queue per query view, got "
          f"{num_queue_views} queues and {num_query_views} views."
      )
    queue_view = query_view = jnp.arange(num_query_views)
  queries = l2_normalize(queries.astype(jnp.float32))

  def pair_votes(pair):
    i, j = pair
    return _pair_neighbour_labels(
        queries[j], queue_embeddings[i], queue_labels[i], k
    )

  labels, valid = jax.lax.map(pair_votes, (queue_view, query_view))
  labels = jnp.moveaxis(labels, 1, 0).reshape(queries.shape[1], -1)  # [B, P*k]
  valid = jnp.moveaxis(valid, 1, 0).reshape(queries.shape[1], -1)
  valid &= labels < num_classes
  votes = jnp.sum(
      jax.nn.one_hot(
          jnp.where(valid, labels, num_classes), num_classes, dtype=jnp.int32
      ),
      axis=1,
  )
  pseudo_labels = jnp.where(
      jnp.any(valid, axis=1), jnp.argmax(votes, axis=1), -1
  ).astype(jnp.int32)
  return pseudo_labels, votes


def _sample_from_one_queue(
    rng: chex.PRNGKey,
    labels: chex.Array,
    queue_embeddings: chex.Array,
    queue_labels: chex.Array,
    num_positives: int,
) -> tuple[chex.Array, chex.Array]:
  """Semantic positives [P, B, D] and validity [P, B] from one [C, D] queue."""
  capacity = queue_labels.shape[0]
  sorted_labels, order = jax.lax.sort_key_val(
      queue_labels, jnp.arange(capacity, dtype=jnp.int32), is_stable=True
  )
  first = jnp.searchsorted(sorted_labels, labels, side="left")
  count = jnp.searchsorted(sorted_labels, labels, side="right") - first
  valid = (labels >= 0) & (count > 0)  # empty slots (-1) never match a label
  offset = jax.random.randint(
      rng, (num_positives,) + labels.shape, 0, jnp.maximum(count, 1)
  )
  slot = jnp.take(order, jnp.minimum(first + offset, capacity - 1), axis=0)
  positives = jnp.take(queue_embeddings, slot, axis=0)
  valid = jnp.broadcast_to(valid, slot.shape)
  positives = jnp.where(valid[..., None], positives, 0).astype(
      queue_embeddings.dtype
  )
  return positives, valid


def sample_semantic_positives(
    *,
    rng: chex.PRNGKey,
    labels: chex.Array,
    queue_embeddings: chex.Array,
    queue_labels: chex.Array,
    num_positives: int,
) -> tuple[chex.Array, chex.Array]:
  """SemPPL §2: semantic positives, uniform among same-label queue entries.

  For every example, `num_positives` independent draws (with replacement) from
  the queue entries whose label equals the example's (pseudo-)label. Where no
  entry has that label (or the label is negative, e.g. "no pseudo-label") the
  draw is invalid: its embedding is zeros and its mask False, so losses drop
  the term.

  Args:
    rng: PRNG key.
    labels: [B] int (pseudo-)labels; negative means none.
    queue_embeddings: [C, D], or [V, C, D] for one queue per view.
    queue_labels: [C] or [V, C] int, negative for empty slots.
    num_positives: draws per example (and per view).

  Returns:
    (positives, valid): [P, B, D] and [P, B] bool, or [V, P, B, D] and [V, P, B]
    for a stack of queues; positives under stop_gradient.
  """
  queue_embeddings = jax.lax.stop_gradient(queue_embeddings)
  labels = jax.lax.stop_gradient(labels).astype(jnp.int32)
  if queue_embeddings.ndim == 2:
    return _sample_from_one_queue(
        rng, labels, queue_embeddings, queue_labels, num_positives
    )
  rngs = jax.random.split(rng, queue_embeddings.shape[0])
  return jax.vmap(_sample_from_one_queue, in_axes=(0, None, 0, 0, None))(
      rngs, labels, queue_embeddings, queue_labels, num_positives
  )
