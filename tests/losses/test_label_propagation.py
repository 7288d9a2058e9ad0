"""Tests for semissl.losses.label_propagation against dense NumPy references (float64):
argsort k-NN, dense W / W_n matrices and np.linalg.solve for the diffusion."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semissl.losses import label_propagation as lp


def np_knn(x, k):
  """Dense cosine similarities, self excluded, argsort descending."""
  v = x / np.linalg.norm(x, axis=1, keepdims=True)
  s = v @ v.T
  np.fill_diagonal(s, -np.inf)
  idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(s, idx, axis=1), idx


def np_affinity(x, k, gamma):
  """W = A + A^T with a_ij = [s_ij]_+^gamma on the k-NN edges (dense)."""
  s, idx = np_knn(x, k)
  n = len(x)
  a = np.zeros((n, n))
  for i in range(n):
    for j, sim in zip(idx[i], s[i]):
      a[i, j] = max(sim, 0.0) ** gamma
  return a + a.T


def np_normalized(w):
  d = w.sum(1)
  inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
  return inv[:, None] * w * inv[None, :]


def np_weights(z, labels):
  """y_hat, w = 1 - H(z_hat)/log c, zeta_j = (n/c) / count_j (labelled keep theirs)."""
  n, c = z.shape
  pseudo = z.argmax(1)
  mass = np.maximum(z, 0)
  z_hat = mass / mass.sum(1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    ent = -np.nansum(np.where(z_hat > 0, z_hat * np.log(z_hat), 0.0), axis=1)
  w = 1 - ent / np.log(c)
  labelled = labels >= 0
  pseudo = np.where(labelled, labels, pseudo)
  w = np.where(labelled, 1.0, w)
  counts = np.bincount(pseudo, minlength=c)
  zeta = np.where(counts > 0, (n / c) / np.maximum(counts, 1), 0.0)
  return pseudo, w, zeta


def clustered(rng, n=96, dim=16, classes=4):
  centres = rng.normal(size=(classes, dim)) * 3
  truth = rng.integers(0, classes, size=n)
  x = centres[truth] + rng.normal(size=(n, dim))
  return x.astype(np.float32), truth


@pytest.mark.parametrize("block_size", [1, 7, 32, 1000])
def test_knn_search_matches_dense_argsort(block_size):
  x, _ = clustered(np.random.default_rng(0), n=50)
  sims, idx = lp.knn_search(jnp.asarray(x), k=6, block_size=block_size)
  ref_s, ref_i = np_knn(x.astype(np.float64), 6)
  np.testing.assert_array_equal(np.asarray(idx), ref_i)
  np.testing.assert_allclose(np.asarray(sims), ref_s, atol=1e-5)


@pytest.mark.parametrize("n,block_size,k", [(64, 4, 5), (61, 3, 10), (20, 16, 7)])
def test_knn_search_8_devices_equals_1(mesh8, n, block_size, k):
  """The ring over 8 devices (rows and columns sharded, padding when n does not
  divide, shards smaller than k) equals the dense reference and 1 device."""
  x, _ = clustered(np.random.default_rng(n), n=n)
  one_s, one_i = lp.knn_search(jnp.asarray(x), k=k, block_size=block_size)
  run = jax.jit(lambda v: lp.knn_search(v, k=k, block_size=block_size, mesh=mesh8))
  eight_s, eight_i = run(jnp.asarray(x))
  ref_s, ref_i = np_knn(x.astype(np.float64), k)
  np.testing.assert_array_equal(np.asarray(eight_i), ref_i)
  np.testing.assert_array_equal(np.asarray(eight_i), np.asarray(one_i))
  np.testing.assert_allclose(np.asarray(eight_s), np.asarray(one_s), atol=1e-6)
  np.testing.assert_allclose(np.asarray(eight_s), ref_s, atol=1e-5)


def test_knn_search_bad_k():
  with pytest.raises(ValueError, match="k=10"):
    lp.knn_search(jnp.ones((10, 3)), k=10)


def test_affinity_and_normalisation_match_dense():
  x, _ = clustered(np.random.default_rng(1), n=40)
  k, gamma = 5, 3.0
  sims, idx = lp.knn_search(jnp.asarray(x), k=k)
  rows, cols, w = lp.knn_affinity(sims, idx, gamma=gamma)
  dense = np.zeros((40, 40))
  np.add.at(dense, (np.asarray(rows), np.asarray(cols)), np.asarray(w))
  ref_w = np_affinity(x.astype(np.float64), k, gamma)
  np.testing.assert_allclose(dense, ref_w, atol=1e-5)
  wn = lp.normalize_affinity(rows, cols, w, num_nodes=40)
  dense_n = np.zeros((40, 40))
  np.add.at(dense_n, (np.asarray(rows), np.asarray(cols)), np.asarray(wn))
  np.testing.assert_allclose(dense_n, np_normalized(ref_w), atol=1e-5)
  v = np.random.default_rng(2).normal(size=(40, 3)).astype(np.float32)
  np.testing.assert_allclose(
      np.asarray(lp.edge_matvec(rows, cols, wn, jnp.asarray(v), num_nodes=40)),
      np_normalized(ref_w) @ v, atol=1e-4)


def test_negative_similarities_have_zero_weight():
  x = np.array([[1.0, 0.0], [-1.0, 0.1], [-1.0, -0.1]], np.float32)
  sims, idx = lp.knn_search(jnp.asarray(x), k=2)
  _, _, w = lp.knn_affinity(sims, idx, gamma=3.0)
  ref = np.maximum(np_knn(x.astype(np.float64), 2)[0], 0) ** 3
  np.testing.assert_allclose(np.asarray(w)[:6], ref.reshape(-1), atol=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 0.9, 0.99])
def test_diffusion_solves_the_linear_system(alpha):
  x, truth = clustered(np.random.default_rng(3), n=60)
  k, gamma, classes = 6, 3.0, 4
  labels = np.full(60, -1)
  labels[:12] = truth[:12]
  sims, idx = lp.knn_search(jnp.asarray(x), k=k)
  rows, cols, w = lp.knn_affinity(sims, idx, gamma=gamma)
  wn = lp.normalize_affinity(rows, cols, w, num_nodes=60)
  y = np.zeros((60, classes))
  y[np.arange(12), labels[:12]] = 1
  z = lp.diffuse(rows, cols, wn, jnp.asarray(y), alpha=alpha, num_iterations=200,
                 tolerance=1e-7)
  w_n = np_normalized(np_affinity(x.astype(np.float64), k, gamma))
  ref = np.linalg.solve(np.eye(60) - alpha * w_n, y)
  np.testing.assert_allclose(np.asarray(z), ref, atol=2e-3 * np.abs(ref).max())


def test_diffusion_fixed_iterations_is_conjugate_gradient():
  """With a cap of 3 iterations the result is 3 steps of textbook CG (NumPy)."""
  x, truth = clustered(np.random.default_rng(4), n=30)
  sims, idx = lp.knn_search(jnp.asarray(x), k=4)
  rows, cols, w = lp.knn_affinity(sims, idx, gamma=2.0)
  wn = lp.normalize_affinity(rows, cols, w, num_nodes=30)
  y = np.zeros((30, 3))
  y[np.arange(6), truth[:6] % 3] = 1
  z = lp.diffuse(rows, cols, wn, jnp.asarray(y), alpha=0.99, num_iterations=3,
                 tolerance=0.0)
  a = np.eye(30) - 0.99 * np_normalized(np_affinity(x.astype(np.float64), 4, 2.0))
  ref = np.zeros_like(y)
  for j in range(3):
    zj, r = np.zeros(30), y[:, j].copy()
    p, rs = r.copy(), r @ r
    for _ in range(3):
      if rs == 0:
        break
      ap = a @ p
      step = rs / (p @ ap)
      zj, r = zj + step * p, r - step * ap
      rs_new = r @ r
      p, rs = r + rs_new / rs * p, rs_new
    ref[:, j] = zj
  np.testing.assert_allclose(np.asarray(z), ref, atol=1e-4)


def test_pseudo_label_weights_match_numpy():
  rng = np.random.default_rng(5)
  z = rng.uniform(0, 1, size=(20, 4)) ** 3
  z[3] = [0.0, 0.0, 1.0, 0.0]  # certain
  z[4] = 0.25  # uniform
  labels = np.full(20, -1)
  labels[[0, 7]] = [1, 3]
  pseudo, w, zeta = lp.pseudo_label_weights(
      jnp.asarray(z, jnp.float32), labelled=jnp.asarray(labels >= 0),
      labels=jnp.asarray(labels))
  ref_p, ref_w, ref_zeta = np_weights(z, labels)
  np.testing.assert_array_equal(np.asarray(pseudo), ref_p)
  np.testing.assert_allclose(np.asarray(w), ref_w, atol=1e-5)
  np.testing.assert_allclose(np.asarray(zeta), ref_zeta, rtol=1e-6)
  assert abs(float(w[3]) - 1.0) < 1e-6 and abs(float(w[4])) < 1e-6


def test_weighted_cross_entropy_matches_numpy():
  rng = np.random.default_rng(6)
  logits = rng.normal(size=(8, 5)).astype(np.float32)
  pseudo = rng.integers(0, 5, size=8)
  certainty = rng.uniform(size=8).astype(np.float32)
  zeta = rng.uniform(0.5, 2, size=5).astype(np.float32)
  mask = np.array([1, 1, 0, 1, 1, 1, 0, 1], np.float32)
  loss, extras = lp.weighted_cross_entropy(
      logits=jnp.asarray(logits), pseudo_labels=jnp.asarray(pseudo),
      certainty=jnp.asarray(certainty), class_weights=jnp.asarray(zeta),
      mask=jnp.asarray(mask))
  lg = logits.astype(np.float64)
  log_p = lg - lg.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  ce = -log_p[np.arange(8), pseudo]
  ref = np.mean(zeta[pseudo] * certainty * mask * ce)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(extras["per_example"]), ce, rtol=1e-5)


def test_propagate_labels_end_to_end_matches_dense_pipeline():
  """Graph + diffusion + weights against the dense NumPy pipeline (well separated
  clusters: every pseudo-label is the cluster's)."""
  x, truth = clustered(np.random.default_rng(7), n=80)
  labels = np.full(80, -1)
  for c in range(4):
    labels[np.flatnonzero(truth == c)[:2]] = c
  pseudo, w, zeta = jax.jit(lambda f, l: lp.propagate_labels(
      f, l, num_classes=4, k=8, gamma=3.0, alpha=0.99, num_iterations=100))(
          jnp.asarray(x), jnp.asarray(labels))
  w_n = np_normalized(np_affinity(x.astype(np.float64), 8, 3.0))
  y = np.zeros((80, 4))
  y[labels >= 0, labels[labels >= 0]] = 1
  z = np.linalg.solve(np.eye(80) - 0.99 * w_n, y)
  ref_p, ref_w, ref_zeta = np_weights(z, labels)
  np.testing.assert_array_equal(np.asarray(pseudo), ref_p)
  np.testing.assert_allclose(np.asarray(w), ref_w, atol=2e-3)
  np.testing.assert_allclose(np.asarray(zeta), ref_zeta, rtol=1e-6)
  assert np.mean(ref_p == truth) > 0.95
