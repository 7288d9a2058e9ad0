"""SimCLRv2 self-training / distillation (SimCLRv2 Eq. 2 and Eq. 3)."""

from typing import Any

import chex
import jax
import jax.numpy as jnp

from semissl.losses import common


def distillation(
    *,
    student_logits: chex.Array,
    teacher_logits: chex.Array,
    temperature: float,
) -> chex.Array:
  """SimCLRv2 Eq. 2: -sum_y P_T(y|x; tau) log P_S(y|x; tau), batch mean.

  P(y|x; tau) = softmax(logits / tau). The teacher is fixed (stop_gradient);
  only the student is trained. As in the paper there is no tau^2 factor.

  Args:
    student_logits: [B, K].
    teacher_logits: [B, K].
    temperature: tau, shared by teacher and student.

  Returns:
    The scalar loss.
  """
  chex.assert_equal_shape([student_logits, teacher_logits])
  teacher_probs = jax.nn.softmax(
      jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1
  )
  return jnp.mean(common.cross_entropy_with_probs(
      logits=student_logits / temperature, target_probs=teacher_probs))


def distillation_with_labels(
    *,
    student_logits: chex.Array,
    teacher_logits: chex.Array,
    labels: chex.Array,
    temperature: float,
    alpha: float,
) -> tuple[chex.Array, dict[str, Any]]:
  """SimCLRv2 Eq. 3: (1 - alpha) * label cross-entropy + alpha * distillation.

  As in the paper, `alpha` weights the distillation term (Eq. 2, at temperature
  tau, averaged over all B examples) and `1 - alpha` weights the supervised term
  -log P_S(y_i|x_i) at temperature 1, averaged over the labelled examples only
  (those with `labels >= 0`; a batch without any contributes 0 to that term).

  Args:
    student_logits: [B, K].
    teacher_logits: [B, K] (stop_gradient).
    labels: [B] int; negative entries mark unlabelled examples.
    temperature: tau of the distillation term.
    alpha: weight of the distillation term.

  Returns:
    (loss, extras) with the unweighted terms `distillation` and
    `label_cross_entropy`.
  """
  chex.assert_rank(labels, 1)
  distill = distillation(
      student_logits=student_logits,
      teacher_logits=teacher_logits,
      temperature=temperature,
  )
  labelled = labels >= 0
  per_example = common.softmax_cross_entropy(
      logits=student_logits, labels=jnp.maximum(labels, 0), reduction="none"
  )
  label_ce = common.reduce_loss(
      per_example=per_example, reduction="masked_mean",
      mask=labelled.astype(per_example.dtype),
  )
  loss = (1.0 - alpha) * label_ce + alpha * distill
  return loss, {"distillation": distill, "label_cross_entropy": label_ce}
