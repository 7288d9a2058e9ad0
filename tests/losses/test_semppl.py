"""Tests of SemPPL: contrastive terms, invariance, total, k-NN, positives."""

import itertools
import re

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np
import pytest

from semissl import losses


def normalize64(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def reference_log_probs(anchor, positive, negatives, temperature):
  """log of Eq. 5/6 with the scoring function phi = tau * exp(<a, b> / tau)."""

  def phi(a, b):
    return temperature * np.exp(np.dot(a, b) / temperature)

  scores = [phi(anchor, positive)] + [phi(anchor, n) for n in negatives]
  return np.log(np.array(scores) / np.sum(scores))


def reference_semppl_loss(
    online,
    target,
    positives,
    mask,
    negative_indices,
    temperature,
    alpha,
    c,
    lam,
    entropy_online=None,
):
  """Eq. 10 with Listing 1's loops and normaliser, float64, term by term.

  `entropy_online` evaluates the sg[E_p log p] terms at other online embeddings:
  finite differences of this function in `online` (with `entropy_online` fixed)
  give the gradient the paper's stop-gradient prescribes.
  """
  o, t, z = normalize64(online), normalize64(target), normalize64(positives)
  o_sg = o if entropy_online is None else normalize64(entropy_online)
  num_all, batch, _ = o.shape
  num_large, num_positives = t.shape[0], z.shape[2]

  def kl(log_p, log_p_sg, log_q):
    return np.sum(np.exp(log_p_sg) * log_p_sg) - np.sum(np.exp(log_p) * log_q)

  total, count = 0.0, 0
  for i, j, m in itertools.product(
      range(num_all), range(num_large), range(batch)
  ):
    negatives_j = [t[j, n] for n in negative_indices[m]]
    negatives_i = (
        [t[i, n] for n in negative_indices[m]] if i < num_large else []
    )
    log_p = reference_log_probs(o[i, m], t[j, m], negatives_j, temperature)
    total += c * -log_p[0]
    count += 1
    if i < num_large and i != j:
      log_p_sg = reference_log_probs(
          o_sg[i, m], t[j, m], negatives_j, temperature
      )
      log_q = reference_log_probs(o[j, m], t[i, m], negatives_i, temperature)
      total += lam * kl(log_p, log_p_sg, log_q)
    for p in range(num_positives):
      if not mask[i, j, p, m]:
        continue
      log_p = reference_log_probs(
          o[i, m], z[i, j, p, m], negatives_j, temperature
      )
      total += c * alpha * -log_p[0]
      count += 1
      if i < num_large:
        log_p_sg = reference_log_probs(
            o_sg[i, m], z[i, j, p, m], negatives_j, temperature
        )
        log_q = reference_log_probs(
            z[i, j, p, m], t[i, m], negatives_i, temperature
        )
        total += lam * kl(log_p, log_p_sg, log_q)
  return total / count


def make_semppl_inputs(
    seed, num_large, num_small, batch, dim, num_positives, per_anchor
):
  rng = np.random.default_rng(seed)
  num_all = num_large + num_small
  online = rng.normal(size=(num_all, batch, dim)).astype(np.float32)
  target = rng.normal(size=(num_large, batch, dim)).astype(np.float32)
  lead = (num_all, num_large) if per_anchor else (num_large,)
  positives = rng.normal(size=lead + (num_positives, batch, dim)).astype(
      np.float32
  )
  mask = rng.random(size=lead + (num_positives, batch)) < 0.7
  return online, target, positives, mask


SEMPPL_HYPER = dict(
    temperature=0.2, alpha=0.2, contrastive_scale=0.3, invariance_scale=5.0
)


def semppl_loss_fn(online, target, positives, mask, rng, num_negatives):
  return losses.semppl_loss(
      online=online,
      target=target,
      semantic_positives=positives,
      semantic_positive_mask=mask,
      rng=rng,
      num_negatives=num_negatives,
      **SEMPPL_HYPER
  )


# --------------------------------------------------------------- negatives


def test_negative_indices_are_distinct_others_and_uniform():
  batch, num_negatives, num_draws = 5, 2, 4000
  draw = jax.jit(
      jax.vmap(
          lambda key: losses.sample_negative_indices(
              rng=key, batch_size=batch, num_negatives=num_negatives
          )
      )
  )
  indices = np.asarray(draw(jax.random.split(jax.random.key(0), num_draws)))
  own = np.arange(batch)[None, :, None]
  assert indices.shape == (num_draws, batch, num_negatives)
  assert np.all((indices >= 0) & (indices < batch)) and np.all(indices != own)
  assert np.all(indices[..., 0] != indices[..., 1])
  # Every unordered pair of the 4 other examples is equally likely (6 subsets).
  offsets = np.sort((indices - own) % batch, axis=-1).reshape(-1, 2)
  subsets = list(itertools.combinations(range(1, batch), 2))
  counts = np.array([np.sum(np.all(offsets == s, axis=1)) for s in subsets])
  n, prob = len(offsets), 1 / len(subsets)
  assert np.all(np.abs(counts - n * prob) < 5 * np.sqrt(n * prob * (1 - prob)))
  everyone = losses.sample_negative_indices(
      rng=jax.random.key(1), batch_size=4, num_negatives=3
  )
  for m in range(4):
    assert sorted(np.asarray(everyone[m])) == [x for x in range(4) if x != m]
  with pytest.raises(ValueError):
    losses.sample_negative_indices(
        rng=jax.random.key(1), batch_size=4, num_negatives=4
    )


# ------------------------------------------------------- contrastive terms


def test_semppl_contrastive_matches_reference_and_stops_target_gradients():
  rng = np.random.default_rng(0)
  batch, dim, num_negatives, temperature = 6, 5, 3, 0.2
  anchors, positives, pool = (
      rng.normal(size=(batch, dim)).astype(np.float32) for _ in range(3)
  )
  key = jax.random.key(4)

  def loss_fn(a, p, n):
    return losses.semppl_contrastive(
        anchors=a,
        positives=p,
        negatives_pool=n,
        rng=key,
        num_negatives=num_negatives,
        temperature=temperature,
    )

  (loss, extras), grads = jax.jit(
      jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)
  )(anchors, positives, pool)
  negative_indices = np.asarray(
      losses.sample_negative_indices(
          rng=key, batch_size=batch, num_negatives=num_negatives
      )
  )
  a, p, n = normalize64(anchors), normalize64(positives), normalize64(pool)
  log_probs = np.array(
      [
          reference_log_probs(a[m], p[m], n[negative_indices[m]], temperature)
          for m in range(batch)
      ]
  )
  np.testing.assert_allclose(loss, -np.mean(log_probs[:, 0]), rtol=1e-5)
  np.testing.assert_allclose(
      extras["contrastive_accuracy"], np.mean(np.argmax(log_probs, axis=1) == 0)
  )
  assert np.any(grads[0] != 0)
  np.testing.assert_array_equal(grads[1], np.zeros_like(positives))
  np.testing.assert_array_equal(grads[2], np.zeros_like(pool))
  direct = losses.semppl_log_probs(
      anchors=anchors,
      positives=positives,
      negatives_pool=pool,
      negative_indices=negative_indices,
      temperature=temperature,
  )
  np.testing.assert_allclose(direct, log_probs, atol=1e-5)


def test_invariance_kl_value_and_stop_gradient_placement():
  rng = np.random.default_rng(1)
  u, v = rng.normal(size=(2, 4, 6))
  log_p = jax.nn.log_softmax(u.astype(np.float32))
  log_q = jax.nn.log_softmax(v.astype(np.float32))
  value = losses.invariance_kl(log_p=log_p, log_q=log_q)
  p, q = np.exp(u) / np.exp(u).sum(-1, keepdims=True), np.exp(v) / np.exp(
      v
  ).sum(-1, keepdims=True)
  np.testing.assert_allclose(
      value, np.sum(p * np.log(p / q), axis=-1), rtol=1e-5, atol=1e-6
  )

  def total(logits_p, logits_q):
    return jnp.sum(
        losses.invariance_kl(
            log_p=jax.nn.log_softmax(logits_p),
            log_q=jax.nn.log_softmax(logits_q),
        )
    )

  grad_u, grad_v = jax.grad(total, argnums=(0, 1))(
      u.astype(np.float32), v.astype(np.float32)
  )
  # Only sg[E_p log p] is stopped: d/du of -sum p log q is
  # -p * (log q - E_p log q); d/dv is q - p.
  cross = np.sum(p * np.log(q), axis=-1, keepdims=True)
  np.testing.assert_allclose(grad_u, -p * (np.log(q) - cross), atol=1e-5)
  np.testing.assert_allclose(grad_v, q - p, atol=1e-6)


# --------------------------------------------------------------- total loss


@pytest.mark.parametrize(
    "num_large,num_small,per_anchor", [(2, 1, False), (3, 0, True)]
)
def test_semppl_loss_matches_listing_reference(
    num_large, num_small, per_anchor
):
  batch, dim, num_positives, num_negatives = 5, 4, 2, 3
  online, target, positives, mask = make_semppl_inputs(
      10 + num_large,
      num_large,
      num_small,
      batch,
      dim,
      num_positives,
      per_anchor,
  )
  key = jax.random.key(7)
  value_and_grad = jax.jit(
      jax.value_and_grad(semppl_loss_fn, argnums=(0, 1, 2), has_aux=True),
      static_argnums=5,
  )
  (loss, extras), grads = value_and_grad(
      online, target, positives, mask, key, num_negatives
  )
  negative_indices = np.asarray(
      losses.sample_negative_indices(
          rng=key, batch_size=batch, num_negatives=num_negatives
      )
  )
  num_all = num_large + num_small
  full_positives = np.broadcast_to(
      positives, (num_all, num_large, num_positives, batch, dim)
  )
  full_mask = np.broadcast_to(mask, full_positives.shape[:-1])
  hyper = (
      SEMPPL_HYPER["temperature"],
      SEMPPL_HYPER["alpha"],
      SEMPPL_HYPER["contrastive_scale"],
      SEMPPL_HYPER["invariance_scale"],
  )

  def reference(x):
    return reference_semppl_loss(
        x,
        target,
        full_positives,
        full_mask,
        negative_indices,
        *hyper,
        entropy_online=online
    )

  np.testing.assert_allclose(loss, reference(online), rtol=1e-5)
  np.testing.assert_allclose(
      extras["semantic_positive_fraction"], np.mean(full_mask)
  )
  # Targets and semantic positives are constants; the gradient w.r.t. the online
  # predictions is the paper's (sg on the entropy terms): directional
  # derivatives.
  np.testing.assert_array_equal(grads[1], np.zeros_like(target))
  np.testing.assert_array_equal(grads[2], np.zeros_like(positives))
  rng = np.random.default_rng(0)
  step = 1e-5
  for _ in range(2):
    direction = rng.normal(size=online.shape)
    numeric = (
        reference(online + step * direction)
        - reference(online - step * direction)
    ) / (2 * step)
    np.testing.assert_allclose(
        np.sum(grads[0] * direction), numeric, rtol=1e-4, atol=1e-6
    )


def test_semppl_loss_without_valid_positives_is_augmentation_only():
  online, target, positives, _ = make_semppl_inputs(3, 2, 1, 4, 3, 2, False)
  mask = np.zeros(positives.shape[:-1], bool)
  key = jax.random.key(0)
  loss, extras = jax.jit(semppl_loss_fn, static_argnums=5)(
      online, target, positives, mask, key, 2
  )
  negative_indices = np.asarray(
      losses.sample_negative_indices(rng=key, batch_size=4, num_negatives=2)
  )
  want = reference_semppl_loss(
      online,
      target,
      np.broadcast_to(positives, (3,) + positives.shape),
      np.zeros((3,) + mask.shape, bool),
      negative_indices,
      SEMPPL_HYPER["temperature"],
      SEMPPL_HYPER["alpha"],
      SEMPPL_HYPER["contrastive_scale"],
      SEMPPL_HYPER["invariance_scale"],
  )
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert all(np.isfinite(v) for v in jax.tree.leaves(extras))
  assert float(extras["semantic_positive_fraction"]) == 0.0


def test_semppl_loss_sharded_batch_equals_single_device(mesh8):
  online, target, positives, mask = make_semppl_inputs(5, 2, 1, 16, 4, 2, False)
  key = jax.random.key(3)
  shardings = (NamedSharding(mesh8, PartitionSpec(None, "data")),) * 2 + (
      NamedSharding(mesh8, PartitionSpec(None, None, "data")),
      NamedSharding(mesh8, PartitionSpec(None, None, "data")),
  )
  value_and_grad = jax.value_and_grad(
      lambda o, t, p, m: semppl_loss_fn(o, t, p, m, key, 4)[0], argnums=(0,)
  )
  single = jax.jit(value_and_grad)(online, target, positives, mask)
  args = [
      jax.device_put(x, s)
      for x, s in zip((online, target, positives, mask), shardings)
  ]
  sharded = jax.jit(value_and_grad, in_shardings=shardings)(*args)
  np.testing.assert_allclose(sharded[0], single[0], rtol=1e-6)
  np.testing.assert_allclose(sharded[1][0], single[1][0], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------- k-NN


def reference_knn(
    queries, queue, queue_labels, num_classes, k, view_voting=True
):
  """Eq. 2 + view voting: stable sort by cosine, ties to the lowest slot."""
  queries, queue = normalize64(queries), normalize64(queue)
  num_queue_views, num_query_views = queue.shape[0], queries.shape[0]
  batch = queries.shape[1]
  votes = np.zeros((batch, num_classes), np.int64)
  pairs = (
      itertools.product(range(num_queue_views), range(num_query_views))
      if view_voting
      else [(i, i) for i in range(num_query_views)]
  )
  for i, j in pairs:
    for b in range(batch):
      filled = [c for c in range(queue.shape[1]) if queue_labels[i, c] >= 0]
      ranked = sorted(filled, key=lambda c: (-(queries[j, b] @ queue[i, c]), c))
      for c in ranked[:k]:
        votes[b, queue_labels[i, c]] += 1
  labels = np.where(votes.sum(1) > 0, np.argmax(votes, axis=1), -1)
  return labels, votes


def make_knn_inputs(seed, views, batch, capacity, dim, num_classes):
  rng = np.random.default_rng(seed)
  queries = rng.normal(size=(views, batch, dim)).astype(np.float32)
  queue = rng.normal(size=(views, capacity, dim)).astype(np.float32)
  labels = rng.integers(-1, num_classes, size=(views, capacity)).astype(
      np.int32
  )
  return queries, queue, labels


def knn_fn(queries, queue, labels, num_classes, k, view_voting=True):
  return losses.knn_pseudo_labels(
      queries=queries,
      queue_embeddings=queue,
      queue_labels=labels,
      num_classes=num_classes,
      k=k,
      view_voting=view_voting,
  )


knn_jit = jax.jit(knn_fn, static_argnums=(3, 4, 5))


@pytest.mark.parametrize("k,view_voting", [(1, True), (3, True), (2, False)])
def test_knn_pseudo_labels_match_reference(k, view_voting):
  queries, queue, labels = make_knn_inputs(k, 3, 6, 20, 5, 4)
  queries[0, 0] = 0.0  # a zero-norm query: all similarities 0, no NaN
  got_labels, got_votes = knn_jit(queries, queue, labels, 4, k, view_voting)
  want_labels, want_votes = reference_knn(
      queries, queue, labels, 4, k, view_voting
  )
  np.testing.assert_array_equal(got_votes, want_votes)
  np.testing.assert_array_equal(got_labels, want_labels)
  assert got_labels.dtype == jnp.int32
  num_pairs = 9 if view_voting else 3
  np.testing.assert_array_equal(np.sum(got_votes, axis=1), num_pairs * k)


def test_knn_edge_cases_ties_few_entries_empty_queue():
  eye = np.eye(4, dtype=np.float32)
  # Two views; queue slots 0/1: identical vectors (a similarity tie), labels
  # 3 and 1.
  queue = np.stack([eye[[0, 0, 1, 2]], eye[[0, 0, 1, 2]]])
  labels = np.array([[3, 1, 1, -1], [3, 1, 1, -1]], np.int32)
  queries = np.stack([eye[[0, 1]], eye[[1, 0]]])
  got_labels, got_votes = knn_jit(queries, queue, labels, 4, 1, True)
  want_labels, want_votes = reference_knn(queries, queue, labels, 4, 1)
  np.testing.assert_array_equal(got_votes, want_votes)
  np.testing.assert_array_equal(got_labels, want_labels)
  # Example 0 gets two votes each for classes 1 and 3: the smallest tied class.
  tied = np.flatnonzero(want_votes[0] == want_votes[0].max())
  assert len(tied) == 2 and got_labels[0] == tied.min()
  # k larger than the number of filled slots: only filled slots vote.
  got_labels, got_votes = knn_jit(queries, queue, labels, 4, 4, True)
  np.testing.assert_array_equal(
      got_votes, reference_knn(queries, queue, labels, 4, 4)[1]
  )
  np.testing.assert_array_equal(np.sum(got_votes, axis=1), 4 * 3)
  # An all-empty queue casts no vote: pseudo-label -1.
  empty = np.full_like(labels, -1)
  got_labels, got_votes = knn_jit(queries, queue, empty, 4, 1, True)
  np.testing.assert_array_equal(got_labels, [-1, -1])
  np.testing.assert_array_equal(got_votes, np.zeros((2, 4)))
  # Single view (no leading axis) and no gradient.
  single_labels, _ = knn_jit(queries[0], queue[0], labels[0], 4, 1, True)
  np.testing.assert_array_equal(
      single_labels, reference_knn(queries[:1], queue[:1], labels[:1], 4, 1)[0]
  )
  grad = jax.grad(
      lambda q: jnp.sum(knn_fn(q, queue, labels, 4, 1)[1].astype(jnp.float32))
  )(queries)
  np.testing.assert_array_equal(grad, np.zeros_like(queries))


def test_knn_with_queue_sharded_over_slots(mesh8):
  queries, queue, labels = make_knn_inputs(11, 2, 8, 64, 6, 5)
  labels[:, :40] = -1  # some devices hold only empty slots
  slots = NamedSharding(mesh8, PartitionSpec(None, "data"))
  fn = jax.jit(
      knn_fn, static_argnums=(3, 4, 5), in_shardings=(slots, slots, slots)
  )
  for k in (1, 2):
    got_labels, got_votes = fn(queries, queue, labels, 5, k)
    want_labels, want_votes = reference_knn(queries, queue, labels, 5, k)
    np.testing.assert_array_equal(got_votes, want_votes)
    np.testing.assert_array_equal(got_labels, want_labels)
  # Neither the queue nor a [B, C] similarity block is all-gathered.
  hlo = fn.lower(queries, queue, labels, 5, 2).compile().as_text()
  gathered = re.findall(
      r"=\s*\w+\[([\d,]*)\][^=]*?\sall-gather(?:-done)?\(", hlo
  )
  assert gathered, "expected the (small) queries to be all-gathered"
  capacity = queue.shape[1]
  assert all(
      str(capacity) not in dims.split(",") for dims in gathered
  ), gathered


# ------------------------------------------------------- semantic positives


def test_semantic_positives_share_the_label_and_are_uniform():
  rng = np.random.default_rng(2)
  queue = rng.normal(size=(8, 3)).astype(np.float32)
  queue_labels = np.array([2, 0, 2, -1, 1, 2, 0, -1], np.int32)
  labels = np.array([2, 0, 5, -1, 1], np.int32)  # 5 absent, -1 = no label
  num_positives = 3000
  sample = jax.jit(
      losses.sample_semantic_positives, static_argnames="num_positives"
  )
  positives, valid = sample(
      rng=jax.random.key(0),
      labels=labels,
      queue_embeddings=queue,
      queue_labels=queue_labels,
      num_positives=num_positives,
  )
  assert positives.shape == (num_positives, 5, 3) and valid.shape == (
      num_positives,
      5,
  )
  np.testing.assert_array_equal(
      valid, np.broadcast_to([True, True, False, False, True], valid.shape)
  )
  np.testing.assert_array_equal(positives[:, 2:4], 0.0)
  slot = np.argmin(
      np.linalg.norm(
          np.asarray(positives)[:, :, None] - queue[None, None], axis=-1
      ),
      axis=-1,
  )
  for b in (0, 1, 4):
    np.testing.assert_array_equal(queue_labels[slot[:, b]], labels[b])
    matching = np.flatnonzero(queue_labels == labels[b])
    counts = np.array([np.sum(slot[:, b] == s) for s in matching])
    prob = 1 / len(matching)
    sigma = np.sqrt(num_positives * prob * (1 - prob))
    assert np.all(np.abs(counts - num_positives * prob) < 5 * sigma + 1e-9)


def test_semantic_positives_stacked_views_empty_queue_and_no_gradient():
  rng = np.random.default_rng(3)
  queue = rng.normal(size=(2, 6, 3)).astype(np.float32)
  queue_labels = np.array([[0, 1, 1, -1, -1, -1], [1, 1, 1, 1, 1, 1]], np.int32)
  labels = np.array([0, 1], np.int32)

  def sample(q, ql):
    return losses.sample_semantic_positives(
        rng=jax.random.key(1),
        labels=labels,
        queue_embeddings=q,
        queue_labels=ql,
        num_positives=4,
    )

  positives, valid = jax.jit(sample)(queue, queue_labels)
  assert positives.shape == (2, 4, 2, 3)
  np.testing.assert_array_equal(valid[0], True)
  np.testing.assert_array_equal(valid[1], [[False, True]] * 4)
  for view in range(2):
    for p, b in itertools.product(range(4), range(2)):
      if valid[view, p, b]:
        matches = np.all(queue[view] == positives[view, p, b], axis=1)
        assert np.any(matches & (queue_labels[view] == labels[b]))
  empty_positives, empty_valid = sample(queue, np.full_like(queue_labels, -1))
  assert not np.any(empty_valid) and not np.any(empty_positives)
  grad = jax.grad(lambda q: jnp.sum(sample(q, queue_labels)[0]))(queue)
  np.testing.assert_array_equal(grad, np.zeros_like(queue))


def test_semantic_positives_with_queue_sharded_over_slots(mesh8):
  rng = np.random.default_rng(4)
  queue = rng.normal(size=(2, 32, 4)).astype(np.float32)
  queue_labels = rng.integers(-1, 6, size=(2, 32)).astype(np.int32)
  labels = rng.integers(-1, 7, size=8).astype(np.int32)
  slots = NamedSharding(mesh8, PartitionSpec(None, "data"))
  batch = NamedSharding(mesh8, PartitionSpec("data"))

  def sample(y, q, ql):
    return losses.sample_semantic_positives(
        rng=jax.random.key(5),
        labels=y,
        queue_embeddings=q,
        queue_labels=ql,
        num_positives=3,
    )

  single = jax.jit(sample)(labels, queue, queue_labels)
  sharded = jax.jit(sample, in_shardings=(batch, slots, slots))(
      labels, queue, queue_labels
  )
  for got, want in zip(sharded, single):
    np.testing.assert_array_equal(got, want)
