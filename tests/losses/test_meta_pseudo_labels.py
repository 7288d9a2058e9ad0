"""Tests for semissl.losses.meta_pseudo_labels against closed forms written in NumPy:
a hand-computed two-parameter example (one-parameter teacher and student), a linear
softmax teacher and student, the routing of the teacher's gradient through the
student's step, and `loss_with_gradient`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semissl.losses import meta_pseudo_labels as mpl


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# Two classes; a one-parameter model theta has logits [theta * x, 0] on a scalar input
# x, so p(class 0 | x) = sigmoid(theta x).
U = np.array([0.5, -1.0, 2.0])  # unlabelled inputs
X = np.array([1.5, -0.5])  # labelled inputs
Y = np.array([0, 1])  # their classes
THETA_T, THETA_S, ETA = 0.7, -0.3, 0.4


def _scalar_logits(theta, x):
  return jnp.stack([theta * jnp.asarray(x, jnp.float32), jnp.zeros(len(x))], axis=-1)


def _scalar_loss(theta_t, theta_s, eta):
  return mpl.meta_pseudo_labels_teacher_loss(
      teacher_logits=_scalar_logits(theta_t, U), student_params=theta_s,
      student_unlabelled_apply=lambda s: (_scalar_logits(s, U), None),
      student_labelled_apply=lambda s: _scalar_logits(s, X),
      labels=jnp.asarray(Y), inner_lr=eta)


def test_two_parameter_example_by_hand():
  """p_i = sigmoid(theta_T u_i), q_i = sigmoid(theta_S u_i):
  L_u = mean_i -[p_i log q_i + (1 - p_i) log(1 - q_i)],
  dL_u/dtheta_S = mean_i (q_i - p_i) u_i,
  theta_S' = theta_S - eta dL_u/dtheta_S, r_j = sigmoid(theta_S' x_j), t_j = [y_j == 0]:
  L = mean_j -[t_j log r_j + (1 - t_j) log(1 - r_j)],
  dL/dtheta_T = dL/dtheta_S' dtheta_S'/dtheta_T = mean_j (r_j - t_j) x_j
                x eta mean_i p_i (1 - p_i) u_i^2."""
  p, q = np_sigmoid(THETA_T * U), np_sigmoid(THETA_S * U)
  student_loss = np.mean(-(p * np.log(q) + (1 - p) * np.log(1 - q)))
  student_grad = np.mean((q - p) * U)
  updated = THETA_S - ETA * student_grad
  r, t = np_sigmoid(updated * X), (Y == 0).astype(float)
  loss = np.mean(-(t * np.log(r) + (1 - t) * np.log(1 - r)))
  teacher_grad = np.mean((r - t) * X) * ETA * np.mean(p * (1 - p) * U ** 2)

  (got_loss, extras), got_grad = jax.value_and_grad(
      lambda a: _scalar_loss(a, jnp.float32(THETA_S), ETA), has_aux=True)(
          jnp.float32(THETA_T))
  np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
  np.testing.assert_allclose(got_grad, teacher_grad, rtol=1e-5)
  assert abs(teacher_grad) > 1e-3  # the example is not degenerate
  np.testing.assert_allclose(extras["student_loss"], student_loss, rtol=1e-6)
  np.testing.assert_allclose(extras["student_grads"], student_grad, rtol=1e-5)
  np.testing.assert_allclose(extras["updated_student_params"], updated, rtol=1e-6)
  np.testing.assert_allclose(extras["pseudo_labels"][:, 0], p, rtol=1e-6)
  # theta_S is under stop-gradient: the MPL term trains the teacher only.
  student_side = jax.grad(lambda s: _scalar_loss(jnp.float32(THETA_T), s, ETA)[0])(
      jnp.float32(THETA_S))
  assert float(student_side) == 0.0


def test_linear_softmax_teacher_and_student():
  """Linear models Z = X W on C = 3 classes. With P = softmax(U W_T),
  Q = softmax(U W_S): grad_{W_S} L_u = U^T (Q - P) / B_u, W_S' = W_S - eta that,
  G = dL/dW_S' = X^T (R - onehot(y)) / B_l with R = softmax(X W_S'); L depends on P
  through W_S' = ... + eta U^T P / B_u, so dL/dP = V = eta U G / B_u and
  dL/dW_T = U^T [P * (V - sum_c P V)] (the softmax Jacobian)."""
  rs = np.random.RandomState(0)
  d, c, b_u, b_l, eta = 4, 3, 5, 6, 0.7
  u, x = rs.normal(size=(b_u, d)), rs.normal(size=(b_l, d))
  w_t, w_s = rs.normal(size=(d, c)), rs.normal(size=(d, c))
  y = rs.randint(0, c, b_l)

  p, q = np_softmax(u @ w_t), np_softmax(u @ w_s)
  updated = w_s - eta * u.T @ (q - p) / b_u
  r = np_softmax(x @ updated)
  onehot = np.eye(c)[y]
  loss = np.mean(-np.sum(onehot * np.log(r), -1))
  g = x.T @ (r - onehot) / b_l
  v = eta * u @ g / b_u
  teacher_grad = u.T @ (p * (v - np.sum(p * v, -1, keepdims=True)))

  f = lambda a: jnp.asarray(a, jnp.float32)
  fn = lambda w: mpl.meta_pseudo_labels_teacher_loss(
      teacher_logits=f(u) @ w, student_params={"w": f(w_s)},
      student_unlabelled_apply=lambda s: (f(u) @ s["w"], None),
      student_labelled_apply=lambda s: f(x) @ s["w"], labels=jnp.asarray(y),
      inner_lr=eta)
  (got_loss, extras), got_grad = jax.value_and_grad(fn, has_aux=True)(f(w_t))
  np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
  np.testing.assert_allclose(got_grad, teacher_grad, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(extras["updated_student_params"]["w"], updated, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(extras["updated_labelled_logits"], x @ updated, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("theta_t", [0.7, -1.2])
def test_teacher_gradient_routes_through_the_student_step(theta_t):
  """eta_S = 0: theta_S' = theta_S does not depend on the teacher, so the MPL gradient
  is exactly zero; it grows linearly in eta_S for small eta_S."""
  grad = lambda eta: float(jax.grad(lambda a: _scalar_loss(a, jnp.float32(THETA_S), eta)[0])(
      jnp.float32(theta_t)))
  assert grad(0.0) == 0.0
  small, smaller = grad(1e-2), grad(5e-3)
  assert small != 0.0
  np.testing.assert_allclose(small / smaller, 2.0, rtol=2e-2)


def test_loss_with_gradient():
  """Value `value`, gradient `grads` w.r.t. params, nothing to what value/grads use."""
  params = {"a": jnp.asarray([1.0, -2.0]), "b": jnp.asarray(3.0)}
  grads = {"a": jnp.asarray([0.5, 0.25]), "b": jnp.asarray(-1.0)}

  def surrogate(params, scale):
    return mpl.loss_with_gradient(value=scale * 2.0,
                                  grads=jax.tree.map(lambda g: scale * g, grads),
                                  params=params)

  value, (d_params, d_scale) = jax.value_and_grad(surrogate, argnums=(0, 1))(
      params, jnp.float32(1.0))
  assert float(value) == 2.0
  np.testing.assert_array_equal(d_params["a"], [0.5, 0.25])
  assert float(d_params["b"]) == -1.0
  assert float(d_scale) == 0.0
