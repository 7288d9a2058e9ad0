"""Label Propagation for deep semi-supervised learning (Iscen et al. 2019, Sec. 3).

Once per epoch, from the descriptors v_i of every training image (labelled and
unlabelled, n nodes):

* k-NN graph (Sec. 3.2): a_ij = [v_i . v_j]_+^gamma if i != j and v_j in NN_k(v_i),
  cosine similarity; `knn_search` finds NN_k block by block (never n x n), its
  columns travelling around the devices of a mesh axis in a ring.
* W = A + A^T and W_n = D^{-1/2} W D^{-1/2}, D = diag(W 1) (`knn_affinity`,
  `normalize_affinity`), kept as an edge list (rows, cols, weights): `edge_matvec`.
* Diffusion: Z = (I - alpha W_n)^{-1} Y, Y the one-hot labels of the labelled rows
  (zero elsewhere), solved by conjugate gradient (`diffuse`; the paper's solver).
* Pseudo-labels y_hat_i = argmax_j z_ij; certainty w_i = 1 - H(z_hat_i) / log c of
  the row-normalised z_hat; class weights zeta_j = (|L_j| + |U_j|)^{-1}
  (`pseudo_label_weights`).
* Loss: sum_i zeta_{y_hat_i} w_i CE(f(x_i), y_hat_i) (`weighted_cross_entropy`).

jax only (no flax, no TensorFlow); every function is pure.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from semissl.losses.common import l2_normalize


def _merge_top_k(best_s, best_i, new_s, new_i, k):
  """The k largest of two candidate lists [b, k1] and [b, k2] (values, ids)."""
  scores = jnp.concatenate([best_s, new_s], axis=1)
  ids = jnp.concatenate([best_i, new_i], axis=1)
  top_s, where = jax.lax.top_k(scores, k)
  return top_s, jnp.take_along_axis(ids, where, axis=1)


def _blocked_top_k(queries, query_ids, columns, column_ids, best_s, best_i, *, k,
                   block_size, num_nodes):
  """Merges each query's top-k among `columns` into (best_s, best_i), `block_size`
  query rows at a time (a [block_size, len(columns)] similarity block at most).
  Self pairs and padded columns (id >= num_nodes) never count."""
  m, dim = queries.shape
  blocks = m // block_size
  kk = min(k, columns.shape[0])

  def one_block(args):
    q, q_ids, b_s, b_i = args
    s = q @ columns.T  # [block_size, columns]
    invalid = (column_ids[None, :] == q_ids[:, None]) | (column_ids[None, :] >= num_nodes)
    s = jnp.where(invalid, -jnp.inf, s)
    top_s, where = jax.lax.top_k(s, kk)
    return _merge_top_k(b_s, b_i, top_s, column_ids[where], k)

  shaped = lambda a: a.reshape(blocks, block_size, *a.shape[1:])
  out_s, out_i = jax.lax.map(one_block, (shaped(queries), shaped(query_ids),
                                         shaped(best_s), shaped(best_i)))
  return out_s.reshape(m, k), out_i.reshape(m, k)


def knn_search(features: jax.Array, *, k: int, block_size: int = 1024,
               mesh: jax.sharding.Mesh | None = None,
               axis_name: str = "data") -> tuple[jax.Array, jax.Array]:
  """NN_k of every row among the other rows by cosine similarity (Sec. 3.2's graph).

  Rows are searched `block_size` at a time, so at most a [block_size, n / d] block
  of similarities exists per device. With `mesh`, rows and columns are split over
  its `axis_name` (d devices): each device searches its own rows against the column
  shard it holds, then passes the shard to the next device (a ring of d steps,
  `ppermute`), merging top-k lists as it goes; no device holds all columns.

  Args:
    features: [n, D] descriptors (normalised here).
    k: neighbours per row, 1 <= k < n.
    block_size: query rows per similarity block.
    mesh: the mesh to shard over; None: one device.
    axis_name: the mesh axis rows and columns are split over.

  Returns:
    (similarities float32 [n, k], descending; indices int32 [n, k]).
  """
  n = features.shape[0]
  if not 1 <= k < n:
    raise ValueError(f"k={k} neighbours need 1 <= k < {n} (the number of nodes).")
  if block_size < 1:
    raise ValueError(f"block_size={block_size} must be >= 1.")
  x = l2_normalize(features.astype(jnp.float32))
  devices = 1 if mesh is None else int(dict(mesh.shape)[axis_name])
  per_device = -(-n // devices)
  block = min(block_size, per_device)
  per_device = -(-per_device // block) * block
  padded = per_device * devices
  x = jnp.pad(x, ((0, padded - n), (0, 0)))
  ids = jnp.arange(padded, dtype=jnp.int32)
  best_s = jnp.full((padded, k), -jnp.inf, jnp.float32)
  best_i = jnp.full((padded, k), -1, jnp.int32)
  search = lambda q, q_ids, c, c_ids, b_s, b_i: _blocked_top_k(
      q, q_ids, c, c_ids, b_s, b_i, k=k, block_size=block, num_nodes=n)
  if devices == 1:
    sims, idx = search(x, ids, x, ids, best_s, best_i)
    return sims[:n], idx[:n]

  ring = [(j, (j + 1) % devices) for j in range(devices)]

  def shard_fn(q, q_ids, b_s, b_i):
    def step(_, carry):
      columns, column_ids, b_s, b_i = carry
      b_s, b_i = search(q, q_ids, columns, column_ids, b_s, b_i)
      columns = jax.lax.ppermute(columns, axis_name, ring)
      column_ids = jax.lax.ppermute(column_ids, axis_name, ring)
      return columns, column_ids, b_s, b_i
    _, _, b_s, b_i = jax.lax.fori_loop(0, devices, step, (q, q_ids, b_s, b_i))
    return b_s, b_i

  spec = P(axis_name)
  sims, idx = jax.shard_map(shard_fn, mesh=mesh, in_specs=(spec, spec, spec, spec),
                            out_specs=(spec, spec))(x, ids, best_s, best_i)
  return sims[:n], idx[:n]


def knn_affinity(similarities: jax.Array, indices: jax.Array, *,
                 gamma: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """W = A + A^T as an edge list, a_ij = [s_ij]_+^gamma on the k-NN edges (Sec. 3.2).

  Args:
    similarities, indices: [n, k] from `knn_search` (row i's neighbours j).

  Returns:
    (rows, cols, weights), each [2 n k]: the edges i -> j of A and their transposes;
    an edge present in both directions appears twice, so summing duplicates gives
    W's entry.
  """
  n, k = similarities.shape
  rows = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)
  cols = indices.reshape(-1).astype(jnp.int32)
  weights = jnp.maximum(similarities.reshape(-1).astype(jnp.float32), 0.0) ** gamma
  return (jnp.concatenate([rows, cols]), jnp.concatenate([cols, rows]),
          jnp.concatenate([weights, weights]))


def normalize_affinity(rows: jax.Array, cols: jax.Array, weights: jax.Array, *,
                       num_nodes: int) -> jax.Array:
  """Edge weights of W_n = D^{-1/2} W D^{-1/2}, D = diag(W 1) (Sec. 3.2); a node of
  degree 0 keeps no edges."""
  degree = jax.ops.segment_sum(weights, rows, num_segments=num_nodes)
  inv_sqrt = jnp.where(degree > 0, jax.lax.rsqrt(jnp.where(degree > 0, degree, 1.0)), 0.0)
  return weights * inv_sqrt[rows] * inv_sqrt[cols]


def edge_matvec(rows: jax.Array, cols: jax.Array, weights: jax.Array, x: jax.Array, *,
                num_nodes: int) -> jax.Array:
  """W x for the edge list of W ([E] each) and x [n, c]: (W x)_i = sum_e w_e x_{col_e}
  over the edges with row_e = i."""
  return jax.ops.segment_sum(weights[:, None] * x[cols], rows, num_segments=num_nodes)


def diffuse(rows: jax.Array, cols: jax.Array, normalized_weights: jax.Array,
            labels_one_hot: jax.Array, *, alpha: float, num_iterations: int = 20,
            tolerance: float = 1e-6) -> jax.Array:
  """Z = (I - alpha W_n)^{-1} Y by conjugate gradient, one system per class (Sec. 3.2).

  I - alpha W_n is symmetric positive definite for 0 <= alpha < 1. Each column stops
  moving once its residual norm is below `tolerance` x |Y_col|; at most
  `num_iterations` iterations (the paper's solver runs 20).

  Args:
    rows, cols, normalized_weights: W_n's edge list (`normalize_affinity`).
    labels_one_hot: Y [n, c]: one-hot rows for labelled nodes, zero rows otherwise.

  Returns:
    Z float32 [n, c].
  """
  y = labels_one_hot.astype(jnp.float32)
  n = y.shape[0]
  apply = lambda v: v - alpha * edge_matvec(rows, cols, normalized_weights, v, num_nodes=n)
  threshold = (tolerance ** 2) * jnp.sum(y * y, axis=0)
  z = jnp.zeros_like(y)
  r = y  # Y - A Z_0 with Z_0 = 0
  rs = jnp.sum(r * r, axis=0)

  def cond(carry):
    i, _, _, _, rs = carry
    return (i < num_iterations) & jnp.any(rs > threshold)

  def body(carry):
    i, z, r, p, rs = carry
    ap = apply(p)
    active = rs > threshold
    denom = jnp.sum(p * ap, axis=0)
    step = jnp.where(active & (denom > 0), rs / jnp.where(denom > 0, denom, 1.0), 0.0)
    z = z + step * p
    r = r - step * ap
    rs_new = jnp.sum(r * r, axis=0)
    beta = jnp.where(active & (rs > 0), rs_new / jnp.where(rs > 0, rs, 1.0), 0.0)
    p = r + beta * p
    return i + 1, z, r, p, jnp.where(active, rs_new, rs)

  _, z, _, _, _ = jax.lax.while_loop(cond, body, (0, z, r, r, rs))
  return z


def pseudo_label_weights(z: jax.Array, *, labelled: jax.Array | None = None,
                         labels: jax.Array | None = None
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Pseudo-labels, certainty and class weights of the diffusion Z [n, c] (Sec. 3.2-3.3).

  y_hat_i = argmax_j z_ij; z_hat_i = [z_i]_+ / sum_j [z_ij]_+ (uniform when the row
  has no mass); w_i = 1 - H(z_hat_i) / log c. Labelled nodes (`labelled` [n] bool,
  `labels` [n] int) keep their label with w_i = 1. Class weights zeta_j =
  (|L_j| + |U_j|)^{-1}, the inverse count of nodes labelled or pseudo-labelled j,
  scaled by n / c so that balanced classes weigh 1 (the official code's
  normalisation); a class no node carries gets 0.

  Returns:
    (pseudo_labels int32 [n], certainty float32 [n], class_weights float32 [c]).
  """
  z = z.astype(jnp.float32)
  n, c = z.shape
  pseudo = jnp.argmax(z, axis=-1).astype(jnp.int32)
  mass = jnp.maximum(z, 0.0)
  total = jnp.sum(mass, axis=-1, keepdims=True)
  z_hat = jnp.where(total > 0, mass / jnp.where(total > 0, total, 1.0), 1.0 / c)
  entropy = -jnp.sum(jnp.where(z_hat > 0, z_hat * jnp.log(jnp.where(z_hat > 0, z_hat, 1.0)),
                               0.0), axis=-1)
  certainty = 1.0 - entropy / math.log(c)
  if labelled is not None:
    pseudo = jnp.where(labelled, labels.astype(jnp.int32), pseudo)
    certainty = jnp.where(labelled, 1.0, certainty)
  counts = jnp.zeros((c,), jnp.float32).at[pseudo].add(1.0)
  class_weights = jnp.where(counts > 0, (n / c) / jnp.maximum(counts, 1.0), 0.0)
  return pseudo, certainty, class_weights


def weighted_cross_entropy(*, logits: jax.Array, pseudo_labels: jax.Array,
                           certainty: jax.Array, class_weights: jax.Array,
                           mask: jax.Array | None = None
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_w = 1/B sum_i zeta_{y_hat_i} w_i CE(f(x_i), y_hat_i) over a batch (Sec. 3.3; the
  mean over the mini-batch, as the official code). `mask` [B] (0 or 1) drops examples
  (e.g. before the first propagation), still dividing by B.

  Returns:
    (loss, {'weights': zeta_{y_hat} w [B], 'per_example': CE [B]}).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -jnp.take_along_axis(log_probs, pseudo_labels[:, None].astype(jnp.int32),
                            axis=-1)[:, 0]
  weights = class_weights[pseudo_labels] * certainty
  if mask is not None:
    weights = weights * mask
  weights = jax.lax.stop_gradient(weights)
  return jnp.mean(weights * ce), {"weights": weights, "per_example": ce}


def propagate_labels(features: jax.Array, labels: jax.Array, *, num_classes: int,
                     k: int = 50, gamma: float = 3.0, alpha: float = 0.99,
                     num_iterations: int = 20, block_size: int = 1024,
                     mesh: jax.sharding.Mesh | None = None, axis_name: str = "data"
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The whole of Sec. 3.2: graph, diffusion, pseudo-labels and weights.

  Args:
    features: [n, D] descriptors of every node.
    labels: int [n]: the label of labelled nodes, -1 for unlabelled ones.

  Returns:
    `pseudo_label_weights`' (pseudo_labels [n], certainty [n], class_weights [c]).
  """
  n = features.shape[0]
  sims, idx = knn_search(features, k=k, block_size=block_size, mesh=mesh,
                         axis_name=axis_name)
  rows, cols, weights = knn_affinity(sims, idx, gamma=gamma)
  weights = normalize_affinity(rows, cols, weights, num_nodes=n)
  labelled = labels >= 0
  y = jax.nn.one_hot(jnp.where(labelled, labels, 0), num_classes) * labelled[:, None]
  z = diffuse(rows, cols, weights, y, alpha=alpha, num_iterations=num_iterations)
  return pseudo_label_weights(z, labelled=labelled, labels=labels)
