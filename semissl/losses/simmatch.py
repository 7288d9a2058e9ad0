"""SimMatch (Zheng et al. 2022): instance similarity, label propagation, labelled bank.

* Eq. 3/4 `instance_similarity`: q = softmax_k(sim(z, bank_k) / t), cosine similarity.
* Eq. 5 `simmatch_instance_loss`: H(q_hat, q_s) with q_hat under stop-gradient.
* Eq. 7-10 `simmatch_propagate`: unfold p_w to the bank and scale q_w (Eq. 7-8);
  aggregate q_w to classes and smooth p_w (Eq. 9-10); Table 6's other strategies too.
* Eq. 2 `simmatch_unlabelled_loss`: [max p_hat > tau] H(p_hat, p_s), soft targets.
  DA(p_w) is `semissl.losses.distribution_alignment.push_and_align` (uniform p_target).
* Eq. 12 `update_labelled_bank`: slot-by-id write of the labelled memory bank, either
  overwritten with the teacher embedding (student-teacher variant, Eq. 11 for the
  teacher) or temporal-ensembled, normalize(m * old + (1 - m) * new).

The bank is a pure pytree (`LabelledBank`); it may be sharded on its slot axis under
jit (gathers and scatters only, no [K, L] one-hot). Label -1 marks an empty slot: it
gets no class mass when unfolding and adds none when aggregating. Choices the paper
leaves open (Table 6's q smoothing, empty slots): docs/DESIGN_CHOICES.md ("SimMatch").
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from semissl.losses import common
from semissl.losses import distribution_alignment
from semissl.losses import fixmatch

_normalize_or_keep = distribution_alignment.normalize_or_keep

P_STRATEGIES = ("smoothing", "scaling")
Q_STRATEGIES = ("scaling", "smoothing")


class LabelledBank(NamedTuple):
  """SimMatch's labelled memory buffer (Sec. 3.4), one slot per labelled image.

  Attributes:
    embeddings: [K, D] L2-normalised embeddings Q_f.
    labels: [K] int32 class ids Q_l; -1 = empty slot.
  """
  embeddings: jax.Array
  labels: jax.Array


def init_labelled_bank(*, rng: jax.Array, num_slots: int, dim: int,
                       labels: jax.Array | None = None,
                       dtype: jnp.dtype = jnp.float32) -> LabelledBank:
  """Bank of normalised Gaussian noise; labels given (the labelled split) or all -1."""
  embeddings = common.l2_normalize(jax.random.normal(rng, (num_slots, dim), dtype))
  if labels is None:
    labels = jnp.full((num_slots,), -1, jnp.int32)
  return LabelledBank(embeddings=embeddings, labels=jnp.asarray(labels, jnp.int32))


def update_labelled_bank(*, bank: LabelledBank, ids: jax.Array,
                         embeddings: jax.Array, labels: jax.Array | None = None,
                         momentum: float = 0.0) -> LabelledBank:
  """Writes labelled embeddings into their slots (SimMatch Sec. 3.4, Eq. 12).

  slot[ids] <- normalize(m * slot[ids] + (1 - m) * normalize(sg(embeddings))).
  momentum = 0 overwrites (student-teacher variant, with teacher embeddings);
  momentum > 0 is the temporal ensemble of Eq. 12 (online embeddings, small K).

  Args:
    bank: the current bank.
    ids: [B] int slot indices in [0, K) (the index of each image in the labelled
      split, not its dataset-wide id); ids < 0 are ignored (padding). With repeated
      ids one of the writes wins.
    embeddings: [B, D] new embeddings (stop-gradient is applied).
    labels: optional [B] class ids written alongside.
    momentum: m of Eq. 12.

  Returns:
    The updated bank.
  """
  num_slots = bank.embeddings.shape[0]
  ids = jnp.asarray(ids, jnp.int32)
  slot_ids = jnp.where(ids >= 0, ids, num_slots)  # out of range: dropped
  new = common.l2_normalize(jax.lax.stop_gradient(embeddings).astype(
      bank.embeddings.dtype))
  if not (isinstance(momentum, (int, float)) and momentum == 0):
    old = bank.embeddings.at[slot_ids].get(mode="fill", fill_value=0)
    new = common.l2_normalize(momentum * old + (1.0 - momentum) * new)
  new_embeddings = bank.embeddings.at[slot_ids].set(new, mode="drop")
  new_labels = bank.labels
  if labels is not None:
    new_labels = bank.labels.at[slot_ids].set(
        jnp.asarray(labels, bank.labels.dtype), mode="drop")
  return LabelledBank(embeddings=new_embeddings, labels=new_labels)


def instance_similarity_logits(*, embeddings: jax.Array,
                               bank_embeddings: jax.Array,
                               temperature: float) -> jax.Array:
  """sim(z_b, z_k) / t with cosine similarity: [B, D] x [K, D] -> [B, K]."""
  z = common.l2_normalize(embeddings)
  bank = common.l2_normalize(bank_embeddings)
  return jnp.einsum("bd,kd->bk", z, bank) / temperature


def instance_similarity(*, embeddings: jax.Array, bank_embeddings: jax.Array,
                        temperature: float) -> jax.Array:
  """SimMatch Eq. 3 (weak view, q_w) / Eq. 4 (strong view, q_s): softmax over the bank.

  Differentiable; for the weak-view target use teacher embeddings and stop-gradient
  (`simmatch_propagate` applies it).
  """
  return jax.nn.softmax(instance_similarity_logits(
      embeddings=embeddings, bank_embeddings=bank_embeddings,
      temperature=temperature), axis=-1)


def _valid_labels(bank_labels: jax.Array, num_classes: int) -> jax.Array:
  return (bank_labels >= 0) & (bank_labels < num_classes)


def unfold_class_probs(*, probs: jax.Array, bank_labels: jax.Array) -> jax.Array:
  """SimMatch Eq. 7: p_unfold_k = p_{class(k)}; [B, L] -> [B, K] (0 for empty slots)."""
  valid = _valid_labels(bank_labels, probs.shape[-1])
  unfolded = jnp.take(probs, jnp.where(valid, bank_labels, 0), axis=-1)
  return jnp.where(valid, unfolded, 0.0)


def aggregate_instance_probs(*, probs: jax.Array, bank_labels: jax.Array,
                             num_classes: int) -> jax.Array:
  """SimMatch Eq. 9: q_agg_c = sum_{k: class(k) = c} q_k; [B, K] -> [B, L] (scatter-add)."""
  valid = _valid_labels(bank_labels, num_classes)
  buckets = jnp.where(valid, bank_labels, num_classes)  # empty slots: extra bucket
  aggregated = jnp.zeros(probs.shape[:-1] + (num_classes + 1,), probs.dtype)
  aggregated = aggregated.at[..., buckets].add(probs)
  return aggregated[..., :num_classes]


def simmatch_propagate(
    *, p_weak: jax.Array, q_weak: jax.Array, bank_labels: jax.Array,
    num_classes: int, alpha: float, p_strategy: str = "smoothing",
    q_strategy: str = "scaling") -> tuple[jax.Array, jax.Array]:
  """SimMatch label propagation, Eq. 7-10 and Table 6; outputs under stop-gradient.

  Default (the paper's choice, Table 6 best):
    q_hat = Normalize(q_w * p_unfold)          (scaling, Eq. 7-8)
    p_hat = alpha * p_w + (1 - alpha) * q_agg  (smoothing, Eq. 9-10)
  Table 6's alternatives: p scaling, p_hat = Normalize(p_w * q_agg); q smoothing,
  q_hat = alpha * q_w + (1 - alpha) * u, where u spreads each class's p_w mass evenly
  over that class's bank slots (u aggregates back to p_w; the paper gives no formula).
  A class with no bank slot contributes nothing; empty slots (label -1) are left out
  (q_agg is renormalised over the labelled slots, which changes nothing for a fully
  labelled bank); without any labelled slot p_hat = p_w and q_hat = q_w.

  Args:
    p_weak: [B, L] semantic similarity of the weak view (after DA).
    q_weak: [B, K] instance similarity of the weak view (Eq. 3).
    bank_labels: [K] int class of each bank slot (-1 = empty).
    num_classes: L.
    alpha: smoothing weight of Eq. 10 (0.9 in the paper).
    p_strategy: 'smoothing' (default) or 'scaling'.
    q_strategy: 'scaling' (default) or 'smoothing'.

  Returns:
    (p_hat [B, L], q_hat [B, K]).
  """
  if p_strategy not in P_STRATEGIES:
    raise ValueError(f"Unknown p_strategy {p_strategy!r}; known: {P_STRATEGIES}.")
  if q_strategy not in Q_STRATEGIES:
    raise ValueError(f"Unknown q_strategy {q_strategy!r}; known: {Q_STRATEGIES}.")
  p_weak = jax.lax.stop_gradient(p_weak)
  q_weak = jax.lax.stop_gradient(q_weak)
  p_unfold = unfold_class_probs(probs=p_weak, bank_labels=bank_labels)
  q_agg = aggregate_instance_probs(probs=q_weak, bank_labels=bank_labels,
                                   num_classes=num_classes)
  if q_strategy == "scaling":
    q_hat = _normalize_or_keep(values=q_weak * p_unfold, fallback=q_weak)
  else:
    valid = _valid_labels(bank_labels, num_classes).astype(p_weak.dtype)
    slots_per_class = aggregate_instance_probs(
        probs=valid, bank_labels=bank_labels, num_classes=num_classes)
    slots_per_slot = unfold_class_probs(probs=slots_per_class,
                                        bank_labels=bank_labels)
    spread = p_unfold / jnp.maximum(slots_per_slot, 1.0)
    q_hat = alpha * q_weak + (1.0 - alpha) * _normalize_or_keep(
        values=spread, fallback=q_weak)
  if p_strategy == "smoothing":
    # q_agg sums to 1 for a fully labelled bank (the paper's case); with empty
    # slots it is renormalised over the labelled ones; with none, p_hat = p_w.
    q_agg = _normalize_or_keep(values=q_agg, fallback=p_weak)
    p_hat = alpha * p_weak + (1.0 - alpha) * q_agg
  else:
    p_hat = _normalize_or_keep(values=p_weak * q_agg, fallback=p_weak)
  return p_hat, q_hat


def simmatch_instance_loss(
    *, q_target: jax.Array, strong_embeddings: jax.Array,
    bank_embeddings: jax.Array, temperature: float,
    reduction: str = "mean") -> tuple[jax.Array, dict[str, Any]]:
  """SimMatch Eq. 5: L_in = 1/(mu B) sum H(q_hat, q_s), q_s from Eq. 4.

  Args:
    q_target: [B, K] q_hat (or q_w); stop-gradient applied.
    strong_embeddings: [B, D] student embeddings of the strong view.
    bank_embeddings: [K, D] labelled bank (a buffer: stop-gradient applied).
    temperature: t of Eq. 4.
    reduction: see `common.reduce_loss`.

  Returns:
    (loss, extras) with 'target_entropy' (mean entropy of q_target).
  """
  q_target = jax.lax.stop_gradient(q_target)
  logits = instance_similarity_logits(
      embeddings=strong_embeddings,
      bank_embeddings=jax.lax.stop_gradient(bank_embeddings),
      temperature=temperature)
  per_example = common.cross_entropy_with_probs(logits=logits,
                                                target_probs=q_target)
  loss = common.reduce_loss(per_example=per_example, reduction=reduction)
  safe_log_q = jnp.log(jnp.where(q_target > 0, q_target, 1.0))
  target_entropy = jnp.mean(-jnp.sum(q_target * safe_log_q, axis=-1))
  return loss, {"target_entropy": target_entropy}


def simmatch_unlabelled_loss(
    *, p_hat: jax.Array, strong_logits: jax.Array, threshold: float,
    reduction: str = "mean") -> tuple[jax.Array, dict[str, Any]]:
  """SimMatch Eq. 2 (Alg. 1): L_u = 1/(mu B) sum 1(max p_hat > tau) H(p_hat, p_s).

  Soft targets (no sharpening, no argmax) and a strict `>`, as written in the paper.
  Returns (loss, extras) as `fixmatch.thresholded_cross_entropy`.
  """
  return fixmatch.thresholded_cross_entropy(
      pseudo_probs=p_hat, logits=strong_logits, threshold=threshold,
      hard_targets=False, strict=True, reduction=reduction)
