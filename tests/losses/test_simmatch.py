"""Tests for semissl.losses.simmatch and its distribution alignment (float64 refs)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from semissl.losses import distribution_alignment as da
from semissl.losses import simmatch


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def np_normalize(x):
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  return np.where(norm > 0, x / np.where(norm > 0, norm, 1), 0.0)


def np_similarity(z, bank, t):
  """SimMatch Eq. 3/4: softmax_k(z . bank_k / (|z| |bank_k|) / t)."""
  return np_softmax(np_normalize(z) @ np_normalize(bank).T / t)


def np_propagate(p, q, labels, num_classes, alpha, p_strategy, q_strategy):
  """Eq. 7-10 written out with loops; Table 6 alternatives as documented."""
  batch, slots = q.shape
  unfold = np.zeros((batch, slots))
  agg = np.zeros((batch, num_classes))
  counts = np.zeros(num_classes)
  for k, c in enumerate(labels):
    if c >= 0:
      counts[c] += 1
  for b in range(batch):
    for k, c in enumerate(labels):
      if c >= 0:
        unfold[b, k] = p[b, c]          # Eq. 7
        agg[b, c] += q[b, k]            # Eq. 9
  if q_strategy == "scaling":           # Eq. 8
    q_hat = q * unfold / (q * unfold).sum(-1, keepdims=True)
  else:
    spread = np.array([[unfold[b, k] / counts[c] if c >= 0 else 0.0
                        for k, c in enumerate(labels)] for b in range(batch)])
    q_hat = alpha * q + (1 - alpha) * spread / spread.sum(-1, keepdims=True)
  if p_strategy == "smoothing":         # Eq. 10, over the labelled slots
    p_hat = alpha * p + (1 - alpha) * agg / agg.sum(-1, keepdims=True)
  else:
    p_hat = p * agg / (p * agg).sum(-1, keepdims=True)
  return p_hat, q_hat


def rand(seed, shape, scale=1.0):
  return np.random.default_rng(seed).normal(size=shape) * scale


def f32(x):
  return jnp.asarray(x, jnp.float32)


@pytest.mark.parametrize("batch,slots,dim", [(3, 8, 4), (6, 20, 16)])
def test_instance_similarity_matches_reference(batch, slots, dim):
  z, bank = rand(0, (batch, dim)), rand(1, (slots, dim))
  z[0] = 0.0  # zero-norm embedding: uniform similarity, no NaN
  got = simmatch.instance_similarity(embeddings=f32(z), bank_embeddings=f32(bank),
                                     temperature=0.1)
  np.testing.assert_allclose(got, np_similarity(z, bank, 0.1), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(got[0], np.full(slots, 1 / slots), rtol=1e-6)


# Class 3 has no bank slot, slots 2 and 7 are empty (-1).
LABELS = np.array([0, 1, -1, 2, 0, 4, 1, -1, 2, 2])


@pytest.mark.parametrize("p_strategy", ["smoothing", "scaling"])
@pytest.mark.parametrize("q_strategy", ["scaling", "smoothing"])
def test_propagate_matches_reference(p_strategy, q_strategy):
  num_classes, batch = 5, 4
  p = np_softmax(rand(2, (batch, num_classes), 2.0))
  q = np_softmax(rand(3, (batch, len(LABELS)), 2.0))
  p_hat, q_hat = simmatch.simmatch_propagate(
      p_weak=f32(p), q_weak=f32(q), bank_labels=jnp.asarray(LABELS),
      num_classes=num_classes, alpha=0.9, p_strategy=p_strategy,
      q_strategy=q_strategy)
  want_p, want_q = np_propagate(p, q, LABELS, num_classes, 0.9, p_strategy,
                                q_strategy)
  np.testing.assert_allclose(p_hat, want_p, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(q_hat, want_q, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(q_hat.sum(-1), 1.0, rtol=1e-5)
  if q_strategy == "scaling":  # empty slots get no class mass (Eq. 7)
    np.testing.assert_array_equal(np.asarray(q_hat)[:, LABELS < 0], 0.0)


def test_propagate_default_is_paper_choice_and_sums_to_one():
  labels = np.array([0, 1, 2, 0, 1, 2])
  p = np_softmax(rand(4, (2, 3)))
  q = np_softmax(rand(5, (2, 6)))
  p_hat, q_hat = simmatch.simmatch_propagate(
      p_weak=f32(p), q_weak=f32(q), bank_labels=jnp.asarray(labels),
      num_classes=3, alpha=0.9)
  want_p, want_q = np_propagate(p, q, labels, 3, 0.9, "smoothing", "scaling")
  np.testing.assert_allclose(p_hat, want_p, rtol=1e-5)
  np.testing.assert_allclose(q_hat, want_q, rtol=1e-5)
  np.testing.assert_allclose(p_hat.sum(-1), 1.0, rtol=1e-5)


def test_propagate_with_no_labelled_slot_is_finite_and_falls_back():
  p = f32(np_softmax(rand(6, (2, 3))))
  q = f32(np_softmax(rand(7, (2, 4))))
  empty = jnp.full((4,), -1)
  for p_strategy in ("smoothing", "scaling"):
    for q_strategy in ("scaling", "smoothing"):
      p_hat, q_hat = simmatch.simmatch_propagate(
          p_weak=p, q_weak=q, bank_labels=empty, num_classes=3, alpha=0.9,
          p_strategy=p_strategy, q_strategy=q_strategy)
      assert np.all(np.isfinite(p_hat)) and np.all(np.isfinite(q_hat))
      np.testing.assert_allclose(q_hat, q, rtol=1e-6)
      np.testing.assert_allclose(p_hat, p, rtol=1e-6)
  with pytest.raises(ValueError, match="known"):
    simmatch.simmatch_propagate(p_weak=p, q_weak=q, bank_labels=empty,
                                num_classes=3, alpha=0.9, p_strategy="mixing")


def np_instance_loss(q_target, z, bank, t):
  return np.mean(-(q_target * np.log(np_similarity(z, bank, t))).sum(-1))


def test_instance_loss_value_and_gradients():
  q_target = np_softmax(rand(8, (4, 10), 2.0))
  z, bank = rand(9, (4, 6)), rand(10, (10, 6))
  t = 0.1

  def fn(q, zs, b):
    return simmatch.simmatch_instance_loss(q_target=q, strong_embeddings=zs,
                                           bank_embeddings=b, temperature=t)[0]

  loss = fn(f32(q_target), f32(z), f32(bank))
  np.testing.assert_allclose(loss, np_instance_loss(q_target, z, bank, t),
                             rtol=1e-5)
  grads = jax.jit(jax.grad(fn, argnums=(0, 1, 2)))(f32(q_target), f32(z),
                                                   f32(bank))
  np.testing.assert_array_equal(grads[0], 0.0)  # target: stop-gradient
  np.testing.assert_array_equal(grads[2], 0.0)  # bank: a buffer
  # Central differences of the float64 reference w.r.t. the strong embeddings.
  h, numeric = 1e-6, np.zeros_like(z)
  for idx in np.ndindex(z.shape):
    step = np.zeros_like(z)
    step[idx] = h
    numeric[idx] = (np_instance_loss(q_target, z + step, bank, t)
                    - np_instance_loss(q_target, z - step, bank, t)) / (2 * h)
  np.testing.assert_allclose(grads[1], numeric, rtol=2e-3, atol=2e-5)


def test_unlabelled_loss_is_strict_and_soft():
  p_hat = np.array([[0.5, 0.25, 0.25], [0.75, 0.125, 0.125], [0.25, 0.5, 0.25]])
  strong = rand(11, (3, 3))
  loss, extras = simmatch.simmatch_unlabelled_loss(
      p_hat=f32(p_hat), strong_logits=f32(strong), threshold=0.5)
  keep = np.array([0.0, 1.0, 0.0])  # Eq. 2: max p_hat > tau, strictly
  expected = np.mean(keep * -(p_hat * np_log_softmax(strong)).sum(-1))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_array_equal(extras["mask"], keep)
  grad = jax.grad(lambda p: simmatch.simmatch_unlabelled_loss(
      p_hat=p, strong_logits=f32(strong), threshold=0.5)[0])(f32(p_hat))
  np.testing.assert_array_equal(grad, 0.0)
  loss, _ = simmatch.simmatch_unlabelled_loss(
      p_hat=f32(p_hat), strong_logits=f32(strong), threshold=0.9)
  assert float(loss) == 0.0


def test_bank_init_and_updates():
  bank = simmatch.init_labelled_bank(rng=jax.random.key(0), num_slots=8, dim=5)
  np.testing.assert_allclose(np.linalg.norm(bank.embeddings, axis=-1), 1.0,
                             rtol=1e-5)
  np.testing.assert_array_equal(bank.labels, -1)
  old = np.asarray(bank.embeddings, np.float64)
  new = rand(12, (3, 5))
  new[1] = 0.0  # zero-norm embedding: stored as zeros, no NaN
  ids = np.array([6, 2, -1])  # -1: padding, ignored
  over = simmatch.update_labelled_bank(bank=bank, ids=jnp.asarray(ids),
                                       embeddings=f32(new),
                                       labels=jnp.asarray([3, 1, 4]))
  want = old.copy()
  want[6], want[2] = np_normalize(new[0]), 0.0
  np.testing.assert_allclose(over.embeddings, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(over.labels, [-1, -1, 1, -1, -1, -1, 3, -1])
  ensemble = simmatch.update_labelled_bank(bank=bank, ids=jnp.asarray(ids),
                                           embeddings=f32(new), momentum=0.7)
  want = old.copy()
  for row, slot in ((0, 6), (1, 2)):  # Eq. 12: normalize(m old + (1 - m) new)
    want[slot] = np_normalize(0.7 * old[slot] + 0.3 * np_normalize(new[row]))
  np.testing.assert_allclose(ensemble.embeddings, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(ensemble.labels, bank.labels)
  grad = jax.grad(lambda e: jnp.sum(simmatch.update_labelled_bank(
      bank=bank, ids=jnp.asarray(ids), embeddings=e,
      momentum=0.7).embeddings))(f32(new))
  np.testing.assert_array_equal(grad, 0.0)


def test_distribution_alignment_window():
  probs = [np_softmax(rand(13 + i, (4, 3))) for i in range(5)]
  window = da.init_distribution_alignment_window(num_classes=3, window_size=3)
  # Empty window: p passes through unchanged (no division by the zero init).
  aligned = da.align_with_window(probs=f32(probs[0]), window=window)
  np.testing.assert_allclose(aligned, probs[0], rtol=1e-6)
  for step, batch in enumerate(probs):
    aligned, window = da.push_and_align(probs=f32(batch), window=window)
    means = [p.mean(0) for p in probs[max(0, step - 2):step + 1]]
    p_avg = np.mean(means, axis=0)  # only the filled slots, last 3 batches
    want = batch / p_avg
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(aligned, want, rtol=1e-5)
  assert int(window.count) == 5
  # A never-predicted class does not divide by zero.
  one_hot = np.eye(3)[[0, 0, 1, 1]]
  aligned, _ = da.push_and_align(
      probs=f32(one_hot), window=da.init_distribution_alignment_window(
          num_classes=3, window_size=2))
  np.testing.assert_allclose(aligned, one_hot, atol=1e-6)


def test_sharded_pipeline_equals_unsharded(mesh8):
  num_classes, slots, dim, batch = 5, 32, 8, 16
  labels = np.random.default_rng(20).integers(-1, num_classes - 1, slots)
  bank = simmatch.LabelledBank(embeddings=f32(np_normalize(rand(21, (slots, dim)))),
                               labels=jnp.asarray(labels, jnp.int32))
  z_weak, z_strong = f32(rand(22, (batch, dim))), f32(rand(23, (batch, dim)))
  p_weak = f32(np_softmax(rand(24, (batch, num_classes), 2.0)))
  strong_logits = f32(rand(25, (batch, num_classes)))
  ids = jnp.asarray(np.random.default_rng(26).permutation(slots)[:batch])

  def step(bank, z_weak, z_strong, p_weak, strong_logits, ids):
    q_weak = simmatch.instance_similarity(
        embeddings=z_weak, bank_embeddings=bank.embeddings, temperature=0.1)
    p_hat, q_hat = simmatch.simmatch_propagate(
        p_weak=p_weak, q_weak=q_weak, bank_labels=bank.labels,
        num_classes=num_classes, alpha=0.9)
    loss_in, _ = simmatch.simmatch_instance_loss(
        q_target=q_hat, strong_embeddings=z_strong,
        bank_embeddings=bank.embeddings, temperature=0.1)
    loss_u, _ = simmatch.simmatch_unlabelled_loss(
        p_hat=p_hat, strong_logits=strong_logits, threshold=0.5)
    new_bank = simmatch.update_labelled_bank(
        bank=bank, ids=ids, embeddings=z_weak, labels=jnp.argmax(p_weak, -1),
        momentum=0.7)
    return loss_in, loss_u, p_hat, q_hat, new_bank

  slot_sharding = NamedSharding(mesh8, P("data"))
  bank_sharding = simmatch.LabelledBank(
      embeddings=NamedSharding(mesh8, P("data", None)), labels=slot_sharding)
  batch_sharding = NamedSharding(mesh8, P("data"))
  sharded = jax.jit(step, in_shardings=(bank_sharding,) + (batch_sharding,) * 5,
                    out_shardings=(None, None, None, None, bank_sharding))(
                        bank, z_weak, z_strong, p_weak, strong_logits, ids)
  unsharded = jax.jit(step)(bank, z_weak, z_strong, p_weak, strong_logits, ids)
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(unsharded)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert sharded[4].embeddings.sharding.spec[0] == "data"
  # The sharded write hit exactly the rows named by ids.
  written = np.zeros(slots, bool)
  written[np.asarray(ids)] = True
  changed = np.any(np.asarray(sharded[4].embeddings) != np.asarray(bank.embeddings),
                   axis=-1)
  np.testing.assert_array_equal(changed, written)
