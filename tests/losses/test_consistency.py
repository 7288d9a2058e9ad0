"""Tests for semissl.losses.consistency (Pi, Mean Teacher, ICT, UDA, VAT, ...)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from semissl.losses import consistency


def f32(x):
  return jnp.asarray(x, jnp.float32)


def rand(seed, shape, scale=1.0):
  return np.random.default_rng(seed).normal(size=shape) * scale


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def np_kl(target, logits):
  log_t = np.log(np.where(target > 0, target, 1.0))
  return (target * (log_t - np_log_softmax(logits))).sum(-1)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sharpen_matches_reference(temperature):
  probs = np_softmax(rand(0, (4, 6)))
  probs[0, 2] = 0.0
  probs /= probs.sum(-1, keepdims=True)
  powered = probs ** (1 / temperature)
  want = powered / powered.sum(-1, keepdims=True)
  got = consistency.sharpen(probs=f32(probs), temperature=temperature)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert float(got[0, 2]) == 0.0
  grad = jax.grad(lambda p: jnp.sum(consistency.sharpen(
      probs=p, temperature=temperature) * jnp.arange(6.0)))(f32(probs))
  assert np.all(np.isfinite(grad))


def test_entropy_minimization_value_and_gradient():
  logits = rand(1, (5, 4), 2.0)
  p = np_softmax(logits)
  entropy = -(p * np.log(p)).sum(-1)
  loss, grad = jax.value_and_grad(
      lambda z: consistency.entropy_minimization(logits=z))(f32(logits))
  np.testing.assert_allclose(loss, entropy.mean(), rtol=1e-5)
  # dH/dz_k = -p_k (log p_k + H).
  want = -p * (np.log(p) + entropy[:, None]) / 5
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("loss_name", ["pi_model_loss", "mean_teacher_loss"])
@pytest.mark.parametrize("shape", [(3, 4), (8, 10)])
def test_softmax_mse_losses(loss_name, shape):
  student, teacher = rand(2, shape, 2.0), rand(3, shape, 2.0)
  fn = getattr(consistency, loss_name)
  keys = (("logits", "other_logits") if loss_name == "pi_model_loss"
          else ("student_logits", "teacher_logits"))
  loss_fn = lambda s, t: fn(**{keys[0]: s, keys[1]: t})  # noqa: E731
  loss = loss_fn(f32(student), f32(teacher))
  p, t = np_softmax(student), np_softmax(teacher)
  np.testing.assert_allclose(loss, np.mean((p - t) ** 2), rtol=1e-5)
  grad_s, grad_t = jax.grad(loss_fn, argnums=(0, 1))(f32(student), f32(teacher))
  np.testing.assert_array_equal(grad_t, 0.0)
  # chain rule through the softmax Jacobian diag(p) - p p^T.
  upstream = 2 * (p - t) / p.size
  want = p * upstream - p * (p * upstream).sum(-1, keepdims=True)
  np.testing.assert_allclose(grad_s, want, rtol=1e-4, atol=1e-8)


def test_temporal_ensemble_update():
  alpha, accumulated = 0.6, np.zeros((3, 4))
  acc = f32(accumulated)
  for step in range(1, 4):
    predictions = np_softmax(rand(10 + step, (3, 4)))
    accumulated = alpha * accumulated + (1 - alpha) * predictions
    acc, targets = consistency.temporal_ensemble_update(
        accumulated=acc, predictions=f32(predictions), alpha=alpha,
        num_updates=step)
    np.testing.assert_allclose(acc, accumulated, rtol=1e-5)
    np.testing.assert_allclose(targets, accumulated / (1 - alpha ** step),
                               rtol=1e-5)
    if step == 1:  # bias correction: the first target is the prediction
      np.testing.assert_allclose(targets, predictions, rtol=1e-5)


def test_interpolation_consistency_loss():
  mixed, teacher = rand(4, (6, 5)), rand(5, (6, 5))
  perm = np.random.default_rng(6).permutation(6)
  lam = 0.3
  target = lam * np_softmax(teacher) + (1 - lam) * np_softmax(teacher)[perm]
  want = np.mean((np_softmax(mixed) - target) ** 2)
  fn = lambda m, t: consistency.interpolation_consistency_loss(  # noqa: E731
      mixed_logits=m, teacher_logits=t, permutation=jnp.asarray(perm),
      mix_ratio=lam)
  np.testing.assert_allclose(fn(f32(mixed), f32(teacher)), want, rtol=1e-5)
  np.testing.assert_array_equal(
      jax.grad(fn, argnums=1)(f32(mixed), f32(teacher)), 0.0)


@pytest.mark.parametrize("reduction", ["mean", "masked_mean"])
def test_uda_loss_matches_reference(reduction):
  teacher, student = rand(7, (8, 5), 2.0), rand(8, (8, 5))
  conf = np.sort(np_softmax(teacher).max(-1))
  threshold = float(conf[3] + conf[4]) / 2
  mask = np_softmax(teacher).max(-1) > threshold
  per = np_kl(np_softmax(teacher / 0.4), student) * mask
  want = per.mean() if reduction == "mean" else per.sum() / mask.sum()
  fn = lambda t, s: consistency.uda_loss(  # noqa: E731
      teacher_logits=t, student_logits=s, threshold=threshold, temperature=0.4,
      reduction=reduction)
  loss, extras = fn(f32(teacher), f32(student))
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_array_equal(extras["mask"], mask)
  np.testing.assert_array_equal(
      jax.grad(lambda t: fn(t, f32(student))[0])(f32(teacher)), 0.0)


def test_uda_all_masked_and_threshold_at_confidence():
  teacher = jnp.zeros((4, 4))  # confidence exactly 0.25
  student = f32(rand(9, (4, 4)))
  for reduction in ("mean", "masked_mean"):
    loss, grad = jax.value_and_grad(lambda s, r=reduction: consistency.uda_loss(
        teacher_logits=teacher, student_logits=s, threshold=0.25,
        temperature=0.5, reduction=r)[0])(student)
    assert float(loss) == 0.0  # strict '>': confidence == tau is masked out
    assert np.all(np.isfinite(grad)) and not np.any(grad)


@pytest.mark.parametrize("schedule, alpha", [
    ("linear", lambda r: r), ("log", lambda r: 1 - np.exp(-5 * r)),
    ("exp", lambda r: np.exp(5 * (r - 1))), ("none", lambda r: 1.0)])
def test_tsa_threshold_matches_uda(schedule, alpha):
  """eta_t = alpha_t (1 - 1/K) + 1/K (UDA Sec. 3.5), from 1/K to 1 except 'exp'."""
  for step in (0, 25, 50, 100):
    got = consistency.tsa_threshold(step=jnp.asarray(step), total_steps=100,
                                    num_classes=10, schedule=schedule)
    np.testing.assert_allclose(got, alpha(step / 100) * 0.9 + 0.1, rtol=1e-6)
  with pytest.raises(ValueError, match="Unknown TSA schedule 'cosine'"):
    consistency.tsa_threshold(step=0, total_steps=1, num_classes=2, schedule="cosine")


def test_tsa_cross_entropy_drops_the_confident_correct_examples():
  logits, labels = rand(11, (8, 4), 2.0), np.arange(8) % 4
  correct = np_softmax(logits)[np.arange(8), labels]
  threshold = float(np.median(correct))
  keep = correct <= threshold
  assert 0 < keep.sum() < 8  # the test bites: some dropped, some kept
  want = -(np_log_softmax(logits)[np.arange(8), labels] * keep).sum() / keep.sum()
  fn = lambda z: consistency.tsa_cross_entropy(  # noqa: E731
      logits=z, labels=jnp.asarray(labels), threshold=threshold)
  (loss, extras), grad = jax.value_and_grad(fn, has_aux=True)(f32(logits))
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_array_equal(extras["mask"], keep)
  np.testing.assert_allclose(extras["kept_rate"], keep.mean())
  # Dropped rows get no gradient; kept rows the CE gradient / kept count.
  expected = (np_softmax(logits) - np.eye(4)[labels]) * keep[:, None] / keep.sum()
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
  # Nothing kept: loss 0, no NaN.
  loss = consistency.tsa_cross_entropy(logits=f32(logits), labels=jnp.asarray(labels),
                                       threshold=0.0)[0]
  assert float(loss) == 0.0


def linear_model(weights):
  return lambda x: x @ weights


def np_vat_direction(x, w, d0, xi, iterations):
  """Power iteration with the exact gradient of KL(p || softmax((x + xi d) W))."""
  p = np_softmax(x @ w)
  d = d0 / np.linalg.norm(d0, axis=-1, keepdims=True)
  for _ in range(iterations):
    grad = (np_softmax((x + xi * d) @ w) - p) @ w.T
    d = grad / np.linalg.norm(grad, axis=-1, keepdims=True)
  return d


@pytest.mark.parametrize("iterations", [1, 2])
def test_vat_direction_and_loss(iterations):
  x, w = rand(10, (4, 6)), rand(11, (6, 3))
  rng, xi, epsilon = jax.random.key(0), 1.0, 0.5
  d0 = np.asarray(jax.random.normal(rng, x.shape, jnp.float32), np.float64)
  apply_fn = linear_model(f32(w))
  logits = apply_fn(f32(x))
  r_adv = consistency.vat_adversarial_direction(
      apply_fn=apply_fn, x=f32(x), logits=logits, rng=rng, xi=xi,
      epsilon=epsilon, num_power_iterations=iterations)
  want = epsilon * np_vat_direction(x, w, d0, xi, iterations)
  np.testing.assert_allclose(r_adv, want, rtol=1e-4, atol=1e-6)

  def loss_fn(weights, clean_logits):
    return consistency.vat_loss(
        apply_fn=linear_model(weights), x=f32(x), logits=clean_logits, rng=rng,
        xi=xi, epsilon=epsilon, num_power_iterations=iterations)[0]

  loss, (grad_w, grad_logits) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
      f32(w), logits)
  p, adv = np_softmax(x @ w), x + want
  np.testing.assert_allclose(loss, np_kl(p, adv @ w).mean(), rtol=1e-4)
  np.testing.assert_array_equal(grad_logits, 0.0)  # the clean target is sg
  # With r_vadv and p constant: dKL/dW = (x + r)^T (softmax((x + r) W) - p) / B.
  np.testing.assert_allclose(grad_w, adv.T @ (np_softmax(adv @ w) - p) / 4,
                             rtol=1e-3, atol=1e-6)


def test_vat_power_iteration_finds_top_curvature_direction():
  x, w = rand(12, (3, 4)), rand(13, (4, 3), 2.0)
  r_adv = consistency.vat_adversarial_direction(
      apply_fn=linear_model(f32(w)), x=f32(x), logits=f32(x @ w),
      rng=jax.random.key(1), xi=1e-2, epsilon=1.0, num_power_iterations=40)
  for i, p in enumerate(np_softmax(x @ w)):
    hessian = w @ (np.diag(p) - np.outer(p, p)) @ w.T  # of the KL at r = 0
    eigenvalues, eigenvectors = np.linalg.eigh(hessian)
    assert eigenvalues[-1] > 1.5 * eigenvalues[-2]
    np.testing.assert_allclose(abs(np.dot(r_adv[i], eigenvectors[:, -1])), 1.0,
                               atol=1e-3)


def np_vat_hessian_direction(x, w, d0, iterations):
  """Power iteration with the exact Hessian of the KL at r = 0: W (diag p - p p^T) W^T."""
  d = d0 / np.linalg.norm(d0, axis=-1, keepdims=True)
  for _ in range(iterations):
    d = np.stack([w @ (np.diag(p) - np.outer(p, p)) @ w.T @ di
                  for p, di in zip(np_softmax(x @ w), d)])
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
  return d


@pytest.mark.parametrize("iterations", [1, 2])
def test_vat_hessian_power_iteration_matches_numpy(iterations):
  x, w = rand(18, (5, 6)), rand(19, (6, 4), 2.0)
  rng = jax.random.key(3)
  d0 = np.asarray(jax.random.normal(rng, x.shape, jnp.float32), np.float64)
  r_adv = consistency.vat_adversarial_direction(
      apply_fn=linear_model(f32(w)), x=f32(x), logits=f32(x @ w), rng=rng, xi=123.0,
      epsilon=0.7, num_power_iterations=iterations, power_iteration="hessian")
  np.testing.assert_allclose(r_adv, 0.7 * np_vat_hessian_direction(x, w, d0, iterations),
                             rtol=1e-4, atol=1e-6)


def _cosines(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_vat_finite_difference_at_paper_xi_is_float32_noise_but_hessian_is_exact():
  """Pixels near 1 (float32 step 1.2e-7): x + 1e-6 d loses most of d's digits."""
  x = 1.0 + 0.1 * rand(20, (8, 784))
  w = rand(21, (784, 10), 0.2)
  rng = jax.random.key(4)
  d0 = np.asarray(jax.random.normal(rng, x.shape, jnp.float32), np.float64)
  want = np_vat_hessian_direction(x, w, d0, 1)
  common = dict(apply_fn=linear_model(f32(w)), x=f32(x), logits=f32(x) @ f32(w), rng=rng,
                epsilon=1.0)
  exact = consistency.vat_adversarial_direction(**common, xi=1e-6,
                                                power_iteration="hessian")
  paper = consistency.vat_adversarial_direction(**common, xi=1e-6)
  assert _cosines(exact, want).min() > 0.9999
  assert _cosines(paper, want).min() < 0.9


def test_vat_unknown_power_iteration_fails():
  with pytest.raises(ValueError, match="power_iteration='exact'; use one of"):
    consistency.vat_adversarial_direction(
        apply_fn=lambda v: v, x=jnp.ones((2, 3)), logits=jnp.ones((2, 3)),
        rng=jax.random.key(0), xi=1.0, epsilon=1.0, power_iteration="exact")


def test_sharded_equals_unsharded(mesh8):
  x, w = f32(rand(14, (16, 6))), f32(rand(15, (6, 5)))
  teacher, student = f32(rand(16, (16, 5), 2.0)), f32(rand(17, (16, 5)))

  def fn(x, teacher, student):
    uda, _ = consistency.uda_loss(teacher_logits=teacher, student_logits=student,
                                  threshold=0.5, temperature=0.4)
    vat, extras = consistency.vat_loss(
        apply_fn=linear_model(w), x=x, logits=x @ w, rng=jax.random.key(2),
        xi=1.0, epsilon=1.0)
    mse = consistency.mean_teacher_loss(student_logits=student,
                                        teacher_logits=teacher)
    return uda, vat, mse, extras["perturbation"]

  sharding = NamedSharding(mesh8, P("data"))
  sharded = jax.jit(fn, in_shardings=(sharding,) * 3)(x, teacher, student)
  unsharded = jax.jit(fn)(x, teacher, student)
  for a, b in zip(sharded, unsharded):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
