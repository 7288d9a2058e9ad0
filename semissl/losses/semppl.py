"""SemPPL losses: scored contrastive terms, invariance, total (Eq. 1-10).

Notation of the paper: online predictions o (anchors), target projections t,
semantic positives z+ (target projections of labelled examples drawn from the
queue), all l2-normalised. The score is phi(a, b) = tau * exp(<a, b> / tau); in
the ratio p = phi(a, pos) / (phi(a, pos) + sum_n phi(a, n)) of Eq. 5/6 the
factor tau cancels, so p is the first entry of
softmax([<a, pos>, <a, n_1>, ..., <a, n_N>] / tau), computed here with
log-softmax (log-sum-exp), never by exponentiating scores.

Negatives N(x_m) are |N| other examples of the batch drawn uniformly without
replacement, once per example; the same draw serves every view pair and both
the augmentation and the semantic term, so the distributions compared by the
invariance KL (Appendix B) are over aligned candidates [pos, n_1, ..., n_N]
(docs/DESIGN_CHOICES.md, "SemPPL").
"""

from typing import Any

import chex
import jax
import jax.numpy as jnp

from semissl.losses.common import l2_normalize


def sample_negative_indices(
    *, rng: chex.PRNGKey, batch_size: int, num_negatives: int
) -> chex.Array:
  """N(x_m): for each m, `num_negatives` distinct indices != m, uniformly.

  Robert Floyd's algorithm over offsets 1..B-1, vectorised over the batch:
  O(B * N^2) work and no [B, B] array, so it stays cheap for large (sharded)
  batches.

  Args:
    rng: PRNG key.
    batch_size: B.
    num_negatives: N <= B - 1.

  Returns:
    [B, N] int32 indices into the batch.
  """
  population = batch_size - 1
  if not 0 <= num_negatives <= population:
    raise ValueError(
        f"num_negatives={num_negatives} must be in [0, {population}] "
        f"for batch_size={batch_size}."
    )
  keys = jax.random.split(rng, max(num_negatives, 1))
  chosen = jnp.zeros((batch_size, 0), jnp.int32)
  for step, limit in enumerate(range(population - num_negatives, population)):
    candidate = jax.random.randint(keys[step], (batch_size, 1), 0, limit + 1)
    taken = jnp.any(chosen == candidate, axis=1, keepdims=True)
    chosen = jnp.concatenate(
        [chosen, jnp.where(taken, limit, candidate).astype(jnp.int32)], axis=1
    )
  return (
      jnp.arange(batch_size, dtype=jnp.int32)[:, None] + 1 + chosen
  ) % batch_size


def semppl_log_probs(
    *,
    anchors: chex.Array,
    positives: chex.Array,
    negatives_pool: chex.Array,
    negative_indices: chex.Array,
    temperature: float,
) -> chex.Array:
  """log of the SemPPL candidate distribution (Eq. 5/6), per example.

  Entry 0 is log p(anchor; positive) of Eq. 5/6; entry 1 + n is the
  log-probability of the n-th negative negatives_pool[negative_indices[m, n]].
  Inputs are l2-normalised here; no stop_gradient is applied (callers decide).

  Args:
    anchors: [B, D].
    positives: [B, D].
    negatives_pool: [B, D] embeddings the negatives are taken from.
    negative_indices: [B, N] int indices into `negatives_pool`.
    temperature: tau.

  Returns:
    [B, 1 + N] log-probabilities.
  """
  anchors = l2_normalize(anchors)
  positive_scores = jnp.sum(anchors * l2_normalize(positives), axis=-1)
  negatives = jnp.take(l2_normalize(negatives_pool), negative_indices, axis=0)
  negative_scores = jnp.einsum("bd,bnd->bn", anchors, negatives)
  scores = jnp.concatenate([positive_scores[:, None], negative_scores], axis=1)
  return jax.nn.log_softmax(scores / temperature, axis=-1)


def semppl_contrastive(
    *,
    anchors: chex.Array,
    positives: chex.Array,
    negatives_pool: chex.Array,
    rng: chex.PRNGKey,
    num_negatives: int,
    temperature: float,
) -> tuple[chex.Array, dict[str, Any]]:
  """SemPPL Eq. 1 / Eq. 3 (= Eq. 9 / Eq. 8) for one view pair, batch mean.

  -log p(a_m; pos_m) with |N| = num_negatives negatives per anchor drawn from
  the batch by `sample_negative_indices`. Positives and the negatives pool are
  target embeddings (target network or queue): they are under stop_gradient.

  Args:
    anchors: [B, D] online predictions.
    positives: [B, D] augmentation positives (Eq. 1) or semantic positives
      (Eq. 3).
    negatives_pool: [B, D] target projections the negatives come from.
    rng: PRNG key for the negatives.
    num_negatives: |N|.
    temperature: tau.

  Returns:
    (loss, extras) with `contrastive_accuracy` (positive scored highest).
  """
  negative_indices = sample_negative_indices(
      rng=rng, batch_size=anchors.shape[0], num_negatives=num_negatives
  )
  log_probs = semppl_log_probs(
      anchors=anchors,
      positives=jax.lax.stop_gradient(positives),
      negatives_pool=jax.lax.stop_gradient(negatives_pool),
      negative_indices=negative_indices,
      temperature=temperature,
  )
  accuracy = jnp.mean((jnp.argmax(log_probs, axis=-1) == 0).astype(jnp.float32))
  return -jnp.mean(log_probs[:, 0]), {"contrastive_accuracy": accuracy}


def invariance_kl(*, log_p: chex.Array, log_q: chex.Array) -> chex.Array:
  """SemPPL Appendix B invariance penalty, KL(p || q) with the paper's sg.

  sg[E_p log p] - E_p log q over the last axis: only the entropy term is
  stopped, so gradients reach p through the cross-entropy term, and q.

  Args:
    log_p: [..., M] log-probabilities of p.
    log_q: [..., M] log-probabilities of q.

  Returns:
    [...] the per-example penalty.
  """
  p = jnp.exp(log_p)
  negative_entropy = jax.lax.stop_gradient(jnp.sum(p * log_p, axis=-1))
  return negative_entropy - jnp.sum(p * log_q, axis=-1)


def semppl_loss(
    *,
    online: chex.Array,
    target: chex.Array,
    semantic_positives: chex.Array,
    semantic_positive_mask: chex.Array,
    rng: chex.PRNGKey,
    num_negatives: int,
    temperature: float,
    alpha: float,
    contrastive_scale: float,
    invariance_scale: float,
) -> tuple[chex.Array, dict[str, Any]]:
  """SemPPL total loss, Eq. 10, normalised as in Listing 1.

  c * (L_augm + alpha * L_sempos) + lambda * (I_augm + I_sempos), where,
  following Listing 1, every anchor view i (V_large large views first, then the
  small views) is paired with every large view j:
    L_augm   -log p(o_i; t_j)        Eq. 9, negatives t_j[N(m)];
    L_sempos -log p(o_i; z+_{j,p})   Eq. 8, p = 1..P positives from queue j,
                                     negatives t_j[N(m)];
  and, for large anchor views only (the reverse distributions need t_i, which
  small views do not have, Listing 1 line 27):
    I_augm   KL(p(o_i; t_j) || p(o_j; t_i)) for i != j (for i = j both sides
             coincide and the KL is identically zero);
    I_sempos KL(p(o_i; z+_{j,p}) || p(z+_{j,p}; t_i)) (the reverse side has
             no gradient: z+ and t are target embeddings).
  The sum of all terms over examples and pairs is divided by the number of
  contrastive terms, B * (V_large + V_small) * V_large * (1 + P) when every
  semantic positive is valid (Listing 1's normaliser times B); invalid semantic
  positives (label absent from the queue) drop their L_sempos and I_sempos
  terms and are not counted. t and z+ are under stop_gradient.

  Args:
    online: [V_all, B, D] online predictions, the V_large large views first.
    target: [V_large, B, D] target projections of the large views.
    semantic_positives: [V_large, P, B, D] draws from queue j, shared by all
      anchor views, or [V_all, V_large, P, B, D], separate draws per anchor.
    semantic_positive_mask: [V_large, P, B] or [V_all, V_large, P, B] bool.
    rng: PRNG key for the negatives.
    num_negatives: |N| per anchor (10 in SemPPL).
    temperature: tau (0.2 in SemPPL).
    alpha: weight of L_sempos (1/5 in SemPPL).
    contrastive_scale: c (0.3).
    invariance_scale: lambda (5).

  Returns:
    (loss, extras); extras hold the per-term means `augmentation_contrastive`,
    `semantic_contrastive`, `augmentation_invariance`, `semantic_invariance`,
    `augmentation_accuracy` and `semantic_positive_fraction`.
  """
  num_all, batch, dim = online.shape
  num_large = target.shape[0]
  chex.assert_shape(target, (num_large, batch, dim))
  shared = semantic_positives.ndim == 4  # one draw per (j, p), for every i
  lead = (num_large,) if shared else (num_all, num_large)
  chex.assert_shape(semantic_positives, lead + (None, batch, dim))
  num_positives = semantic_positives.shape[-3]
  chex.assert_shape(semantic_positive_mask, lead + (num_positives, batch))
  mask = jnp.broadcast_to(
      semantic_positive_mask.astype(jnp.float32),
      (num_all, num_large, num_positives, batch),
  )

  online = l2_normalize(online)
  target = l2_normalize(jax.lax.stop_gradient(target))
  positives = l2_normalize(jax.lax.stop_gradient(semantic_positives))
  negative_indices = sample_negative_indices(
      rng=rng, batch_size=batch, num_negatives=num_negatives
  )
  target_negatives = jnp.take(target, negative_indices, axis=1)  # [Vl, B, N, D]

  # Scores <o_i, .>; the negatives' scores are shared by Eq. 5 and Eq. 6.
  negative_scores = jnp.einsum("ibd,jbnd->ijbn", online, target_negatives)
  augm_scores = jnp.einsum("ibd,jbd->ijb", online, target)
  sempos_scores = jnp.einsum(
      "ibd,jpbd->ijpb" if shared else "ibd,ijpbd->ijpb", online, positives
  )
  augm_log_p = jax.nn.log_softmax(
      jnp.concatenate([augm_scores[..., None], negative_scores], axis=-1)
      / temperature
  )
  sempos_log_p = jax.nn.log_softmax(
      jnp.concatenate(
          [
              sempos_scores[..., None],
              jnp.broadcast_to(
                  negative_scores[:, :, None],
                  sempos_scores.shape + (num_negatives,),
              ),
          ],
          axis=-1,
      )
      / temperature
  )  # [V_all, V_large, P, B, 1 + N]

  augm_contrastive = -augm_log_p[..., 0]  # [V_all, V_large, B]
  sempos_contrastive = -sempos_log_p[..., 0] * mask  # [V_all, V_large, P, B]

  # Invariance, large anchors only. The augmentation reverse of (i, j) is
  # (j, i).
  large_augm = augm_log_p[:num_large]
  off_diagonal = 1.0 - jnp.eye(num_large, dtype=jnp.float32)
  augm_invariance = invariance_kl(
      log_p=large_augm, log_q=jnp.swapaxes(large_augm, 0, 1)
  )
  augm_invariance *= off_diagonal[:, :, None]  # [V_large, V_large, B]
  if shared:
    reverse_positive = jnp.einsum("jpbd,ibd->ijpb", positives, target)
    reverse_negative = jnp.einsum(
        "jpbd,ibnd->ijpbn", positives, target_negatives
    )
  else:
    large_positives = positives[:num_large]
    reverse_positive = jnp.einsum("ijpbd,ibd->ijpb", large_positives, target)
    reverse_negative = jnp.einsum(
        "ijpbd,ibnd->ijpbn", large_positives, target_negatives
    )
  reverse_log_q = jax.nn.log_softmax(
      jnp.concatenate([reverse_positive[..., None], reverse_negative], axis=-1)
      / temperature
  )
  sempos_invariance = (
      invariance_kl(log_p=sempos_log_p[:num_large], log_q=reverse_log_q)
      * mask[:num_large]
  )

  num_augm_terms = augm_contrastive.size
  num_sempos_terms = jnp.sum(mask)
  normaliser = num_augm_terms + num_sempos_terms
  augm_sum = jnp.sum(augm_contrastive)
  sempos_sum = jnp.sum(sempos_contrastive)
  augm_invariance_sum = jnp.sum(augm_invariance)
  sempos_invariance_sum = jnp.sum(sempos_invariance)
  loss = (
      contrastive_scale * (augm_sum + alpha * sempos_sum)
      + invariance_scale * (augm_invariance_sum + sempos_invariance_sum)
  ) / normaliser

  safe_sempos_terms = jnp.maximum(num_sempos_terms, 1.0)
  extras = {
      "augmentation_contrastive": augm_sum / num_augm_terms,
      "semantic_contrastive": sempos_sum / safe_sempos_terms,
      "augmentation_invariance": augm_invariance_sum
      / max(num_large * (num_large - 1) * batch, 1),
      "semantic_invariance": sempos_invariance_sum
      / jnp.maximum(jnp.sum(mask[:num_large]), 1.0),
      "augmentation_accuracy": jnp.mean(
          (jnp.argmax(augm_log_p, axis=-1) == 0).astype(jnp.float32)
      ),
      "semantic_positive_fraction": num_sempos_terms / mask.size,
  }
  return loss, extras
