"""Meta Pseudo Labels (Pham et al. 2021; survey, "Meta Pseudo Labels").

The teacher theta_T is trained on the student's labelled loss after one SGD step of
the student on the teacher's pseudo-labels (the survey's MAML-style one-step
approximation of theta_S^PL(theta_T)):

  theta_S' = theta_S - eta_S grad_{theta_S} CE(T(x_u; theta_T), S(x_u; theta_S))
  min_{theta_T} L_s(theta_S') = E_{(x_l, y)} CE(y, S(x_l; theta_S'))

With soft pseudo-labels T(x_u; theta_T) = softmax(teacher logits) the objective is
differentiable in theta_T, so its gradient is JAX's autodiff through the student's
update (a second-order term: d theta_S' / d theta_T = -eta_S d/d theta_T of the
student's gradient), not the paper's REINFORCE estimate for hard labels.

* `meta_pseudo_labels_teacher_loss`: L_s(theta_S'), differentiable in the teacher's
  logits only (theta_S is under stop-gradient), plus the student's step in extras.
* `loss_with_gradient`: a scalar with a given value and a given gradient, so a
  method trains the student on the gradient already computed for theta_S' (one
  student backward pass, not two).
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp

from semissl.losses import common

PyTree = Any


def meta_pseudo_labels_teacher_loss(
    *, teacher_logits: jax.Array, student_params: PyTree,
    student_unlabelled_apply: Callable[[PyTree], tuple[jax.Array, Any]],
    student_labelled_apply: Callable[[PyTree], jax.Array], labels: jax.Array,
    inner_lr: float) -> tuple[jax.Array, dict[str, Any]]:
  """The teacher's MPL objective CE(y_l, S(x_l; theta_S')) (survey's teacher update).

  Args:
    teacher_logits: [B_u, C] teacher logits on the unlabelled images x_u the student
      learns from; the gradient reaches theta_T through them.
    student_params: theta_S (any pytree); taken under stop-gradient here: the MPL
      term trains the teacher only.
    student_unlabelled_apply: theta -> (logits [B_u, C], aux): the student's
      forward on x_u (aux: e.g. its updated batch statistics).
    student_labelled_apply: theta -> logits [B_l, C]: the student's forward on x_l.
    labels: [B_l] integer labels y_l.
    inner_lr: eta_S of the one-step update (0: theta_S' = theta_S, no MPL gradient).

  Returns:
    (loss, extras): loss = mean_l CE(y_l, S(x_l; theta_S')); extras
    'pseudo_labels' [B_u, C] softmax(teacher_logits), 'student_loss' (L_u =
    mean_u CE(pseudo-labels, S(x_u; theta_S))), 'student_grads' (grad_{theta_S} L_u,
    like theta_S), 'student_logits' [B_u, C], 'student_aux', 'updated_student_params'
    (theta_S') and 'updated_labelled_logits' [B_l, C]. The student entries depend on
    theta_T through the pseudo-labels: callers reusing them for the student's own
    step put them under stop-gradient (`loss_with_gradient` does).
  """
  student_params = jax.lax.stop_gradient(student_params)
  pseudo_labels = jax.nn.softmax(teacher_logits, axis=-1)

  def student_loss_fn(params):
    logits, aux = student_unlabelled_apply(params)
    loss = common.softmax_cross_entropy(logits=logits, labels=pseudo_labels)
    return loss, (logits, aux)

  (student_loss, (student_logits, student_aux)), student_grads = jax.value_and_grad(
      student_loss_fn, has_aux=True)(student_params)
  updated = jax.tree.map(lambda p, g: p - inner_lr * g, student_params, student_grads)
  updated_logits = student_labelled_apply(updated)
  loss = common.softmax_cross_entropy(logits=updated_logits, labels=labels)
  return loss, {"pseudo_labels": pseudo_labels, "student_loss": student_loss,
                "student_grads": student_grads, "student_logits": student_logits,
                "student_aux": student_aux, "updated_student_params": updated,
                "updated_labelled_logits": updated_logits}


def loss_with_gradient(*, value: jax.Array, grads: PyTree, params: PyTree) -> jax.Array:
  """sg(value) + sum_leaves <sg(grads), params - sg(params)>: equals `value`, and its
  gradient is `grads` with respect to `params` and zero with respect to anything
  `value` or `grads` depend on.

  Args:
    value: scalar loss value.
    grads: its gradient with respect to `params` (same structure).
    params: the live parameters the gradient is for.
  """
  value, grads = jax.lax.stop_gradient((value, grads))
  offsets = jax.tree.map(lambda g, p: jnp.sum(g * (p - jax.lax.stop_gradient(p))),
                         grads, params)
  return value + sum(jax.tree.leaves(offsets), jnp.zeros((), value.dtype))
