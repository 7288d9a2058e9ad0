"""Classic consistency losses (survey): Pi-model, temporal ensembling, Mean Teacher,
ICT, UDA, VAT, entropy minimisation, sharpening.

Targets (teacher outputs, the other pass, the clean prediction) are always under
`jax.lax.stop_gradient`; gradients flow into the student side only.
"""
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from semissl.losses import common
from semissl.losses import fixmatch


def sharpen(*, probs: jax.Array, temperature: float) -> jax.Array:
  """Sharpen(p, T)_c = p_c^(1/T) / sum_c' p_c'^(1/T) (MixMatch, UDA; survey).

  Computed as softmax(log p / T); zero probabilities stay exactly zero (an all-zero
  row, not a distribution, gives the uniform one instead of NaN).
  """
  positive = probs > 0
  log_probs = jnp.where(positive, jnp.log(jnp.where(positive, probs, 1.0)),
                        -jnp.inf)
  log_probs = jnp.where(jnp.any(positive, axis=-1, keepdims=True), log_probs, 0.0)
  return jax.nn.softmax(log_probs / temperature, axis=-1)


def entropy_minimization(*, logits: jax.Array,
                         reduction: str = "mean") -> jax.Array:
  """Entropy minimisation (Grandvalet & Bengio 2004; survey): H(softmax(logits))."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  per_example = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
  return common.reduce_loss(per_example=per_example, reduction=reduction)


def softmax_mse_consistency(*, logits: jax.Array, target_logits: jax.Array,
                            reduction: str = "mean") -> jax.Array:
  """1/C ||softmax(logits) - sg(softmax(target_logits))||^2 per example (survey MSE)."""
  target = jax.nn.softmax(jax.lax.stop_gradient(target_logits), axis=-1)
  per_example = jnp.mean(jnp.square(jax.nn.softmax(logits, axis=-1) - target),
                         axis=-1)
  return common.reduce_loss(per_example=per_example, reduction=reduction)


def pi_model_loss(*, logits: jax.Array, other_logits: jax.Array,
                  reduction: str = "mean") -> jax.Array:
  """Pi-model (Laine & Aila 2017; survey L_u^Pi): MSE between the softmaxes of two
  stochastic passes of the same network; the other pass is the (sg) target."""
  return softmax_mse_consistency(logits=logits, target_logits=other_logits,
                                 reduction=reduction)


def mean_teacher_loss(*, student_logits: jax.Array, teacher_logits: jax.Array,
                      reduction: str = "mean") -> jax.Array:
  """Mean Teacher (Tarvainen & Valpola 2017; survey): MSE to the EMA teacher's softmax.

  The teacher params follow `semissl.losses.ema.ema_update`.
  """
  return softmax_mse_consistency(logits=student_logits,
                                 target_logits=teacher_logits,
                                 reduction=reduction)


def temporal_ensemble_update(
    *, accumulated: jax.Array, predictions: jax.Array, alpha: float,
    num_updates: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Temporal ensembling (Laine & Aila 2017; survey), per-example prediction EMA.

  Z <- alpha Z + (1 - alpha) z; target z~ = Z / (1 - alpha^t) (start-up bias
  correction), t = number of updates including this one.

  Args:
    accumulated: Z, zeros initially (e.g. [num_examples, C] gathered by id).
    predictions: z, the current predictions (stop-gradient applied).
    alpha: ensemble momentum.
    num_updates: t >= 1.

  Returns:
    (new Z, bias-corrected targets z~).
  """
  new = alpha * accumulated + (1.0 - alpha) * jax.lax.stop_gradient(predictions)
  return new, temporal_ensemble_target(accumulated=new, num_updates=num_updates,
                                       alpha=alpha)[0]


def temporal_ensemble_target(*, accumulated: jax.Array, num_updates: jax.Array,
                             alpha: float) -> tuple[jax.Array, jax.Array]:
  """The bias-corrected target z~ = Z / (1 - alpha^t) of a prediction EMA Z after t
  updates (Laine & Aila 2017, Algorithm 2), and whether it exists (t >= 1).

  Args:
    accumulated: Z [..., C].
    num_updates: t [...] (integers >= 0).
    alpha: ensemble momentum.

  Returns:
    (z~ [..., C], valid [...] float: 1 where t >= 1; z~ = 0 where t = 0).
  """
  t = jnp.asarray(num_updates, accumulated.dtype)
  valid = (t >= 1).astype(accumulated.dtype)
  correction = 1.0 - jnp.power(alpha, jnp.maximum(t, 1.0))
  return accumulated / correction[..., None] * valid[..., None], valid


def interpolation_consistency_loss(
    *, mixed_logits: jax.Array, teacher_logits: jax.Array,
    permutation: jax.Array, mix_ratio: jax.Array,
    reduction: str = "mean") -> jax.Array:
  """ICT (Verma et al. 2019; survey): MSE between p_theta(mixup(u_i, u_j)) and
  mixup(p_theta'(u_i), p_theta'(u_j)), teacher = EMA model, target under sg.

  Args:
    mixed_logits: [B, C] student logits on the mixed inputs.
    teacher_logits: [B, C] teacher logits on the unmixed inputs.
    permutation: [B] partner index j used to mix the inputs.
    mix_ratio: lambda (scalar or [B]) used to mix the inputs.
    reduction: see `common.reduce_loss`.
  """
  teacher = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits), axis=-1)
  ratio = jnp.broadcast_to(jnp.asarray(mix_ratio, teacher.dtype),
                           teacher.shape[:1])[:, None]
  target = jax.lax.stop_gradient(ratio * teacher
                                 + (1.0 - ratio) * teacher[permutation])
  per_example = jnp.mean(
      jnp.square(jax.nn.softmax(mixed_logits, axis=-1) - target), axis=-1)
  return common.reduce_loss(per_example=per_example, reduction=reduction)


def uda_loss(*, teacher_logits: jax.Array, student_logits: jax.Array,
             threshold: float, temperature: float,
             reduction: str = "mean") -> tuple[jax.Array, dict[str, Any]]:
  """UDA (Xie et al. 2020; survey L_u^UDA).

  1[max_y p_theta^(y|x) > tau] KL(softmax(z^/T) || p_theta(y|x_aug)), teacher = a
  fixed (sg) copy; the mask uses the unsharpened confidence.

  Args:
    teacher_logits: [B, C] logits z^ of the original example (no gradient).
    student_logits: [B, C] logits of the augmented example.
    threshold: tau (strict `>`).
    temperature: T of the sharpened target.
    reduction: see `common.reduce_loss` ('mean' = 1/N; UDA's code divides by the
      kept count, 'masked_mean').

  Returns:
    (loss, extras) with 'mask', 'mask_rate', 'confidences'.
  """
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  confidences = jnp.max(jax.nn.softmax(teacher_logits, axis=-1), axis=-1)
  mask = fixmatch.confidence_mask(confidences=confidences, threshold=threshold,
                                  strict=True)
  target = jax.nn.softmax(teacher_logits / temperature, axis=-1)
  per_example = common.kl_divergence_with_probs(logits=student_logits,
                                                target_probs=target)
  loss = common.reduce_loss(per_example=per_example, reduction=reduction,
                            mask=mask)
  return loss, {"mask": mask, "mask_rate": jnp.mean(mask),
                "confidences": confidences}


TSA_SCHEDULES = ("none", "linear", "log", "exp")


def tsa_threshold(*, step: jax.Array, total_steps: int, num_classes: int,
                  schedule: str) -> jax.Array:
  """UDA's training signal annealing threshold eta_t (Xie et al. 2020, Sec. 3.5).

  eta_t = alpha_t (1 - 1/K) + 1/K over the progress t/T, with alpha_t = t/T
  ('linear'), 1 - exp(-5 t/T) ('log') or exp(5 (t/T - 1)) ('exp'); 'none': 1
  (every labelled example kept). K classes, T = `total_steps`.
  """
  if schedule not in TSA_SCHEDULES:
    raise ValueError(f"Unknown TSA schedule {schedule!r}; known: {', '.join(TSA_SCHEDULES)}.")
  if schedule == "none":
    return jnp.ones((), jnp.float32)
  progress = jnp.asarray(step, jnp.float32) / float(max(total_steps, 1))
  alpha = {"linear": lambda: progress,
           "log": lambda: 1.0 - jnp.exp(-5.0 * progress),
           "exp": lambda: jnp.exp(5.0 * (progress - 1.0))}[schedule]()
  return alpha * (1.0 - 1.0 / num_classes) + 1.0 / num_classes


def tsa_cross_entropy(*, logits: jax.Array, labels: jax.Array,
                      threshold: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
  """The labelled cross-entropy under training signal annealing (UDA Sec. 3.5).

  An example whose correct-class probability p(y*|x) exceeds eta_t (strict `>`)
  is removed from the loss (mask under sg); the sum is divided by the number of
  kept examples, as UDA's code does (0 when none is kept).

  Args:
    logits: [B, C] labelled logits.
    labels: [B] integer classes.
    threshold: eta_t (scalar, `tsa_threshold`).

  Returns:
    (loss, extras) with 'mask' [B] (1 = kept) and 'kept_rate'.
  """
  chex.assert_rank(logits, 2)
  chex.assert_shape(labels, logits.shape[:1])
  per_example = common.softmax_cross_entropy(logits=logits, labels=labels,
                                             reduction="none")  # -log p(y*|x)
  mask = jax.lax.stop_gradient((jnp.exp(-per_example) <= threshold).astype(logits.dtype))
  loss = common.reduce_loss(per_example=per_example, reduction="masked_mean", mask=mask)
  return loss, {"mask": mask, "kept_rate": jnp.mean(mask)}


def _normalize_per_example(d: jax.Array) -> jax.Array:
  """d / ||d||_2 per example (all non-batch axes), pre-scaled by max|d| for range."""
  axes = tuple(range(1, d.ndim))
  d = d / (1e-12 + jnp.max(jnp.abs(d), axis=axes, keepdims=True))
  return d * jax.lax.rsqrt(1e-12 + jnp.sum(jnp.square(d), axis=axes,
                                            keepdims=True))


VAT_POWER_ITERATIONS = ("finite_difference", "hessian")


def vat_adversarial_direction(
    *, apply_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
    logits: jax.Array, rng: jax.Array, xi: float, epsilon: float,
    num_power_iterations: int = 1,
    power_iteration: str = "finite_difference") -> jax.Array:
  """VAT's r_vadv (Miyato et al. 2018; survey), by power iteration.

  d_0 = normalize(jax.random.normal(rng, x.shape)), then repeatedly d <- normalize(H d)
  towards the top eigenvector of H, the Hessian of D(r) = KL(p(x) || p(x + r)) at
  r = 0; r_vadv = epsilon d. 'finite_difference' is the paper's H d ~ grad_d D(xi d)
  (up to a positive factor). Its step x + xi d must stay above the input's float
  resolution: at the paper's xi = 1e-6, float32 pixels near 1 (resolution 1.2e-7)
  keep only part of xi d and the direction is mostly rounding noise. 'hessian'
  computes H d exactly by forward-over-reverse autodiff (the xi -> 0 limit; xi
  unused), at the cost of a forward-mode pass through the backward pass.

  Args:
    apply_fn: inputs [B, ...] -> logits [B, C] (params closed over).
    x: [B, ...] inputs.
    logits: [B, C] logits at x (the fixed target p_theta^; stop-gradient applied).
    rng: PRNG key for d_0.
    xi: finite-difference step of the power iteration.
    epsilon: norm of the perturbation (per example).
    num_power_iterations: number of power iterations (VAT uses 1).
    power_iteration: 'finite_difference' (paper) or 'hessian' (exact H d).

  Returns:
    r_vadv [B, ...] under stop-gradient.
  """
  if power_iteration not in VAT_POWER_ITERATIONS:
    raise ValueError(f"power_iteration={power_iteration!r}; use one of "
                     f"{VAT_POWER_ITERATIONS}.")
  target = jax.nn.softmax(jax.lax.stop_gradient(logits), axis=-1)
  x = jax.lax.stop_gradient(x)

  def divergence(perturbation):
    return jnp.sum(common.kl_divergence_with_probs(logits=apply_fn(x + perturbation),
                                                   target_probs=target))

  if power_iteration == "hessian":
    def curvature_times(direction):
      return jax.jvp(jax.grad(divergence), (jnp.zeros_like(x),), (direction,))[1]
  else:
    def curvature_times(direction):
      return jax.grad(lambda d: divergence(xi * d))(direction)

  direction = _normalize_per_example(jax.random.normal(rng, x.shape, x.dtype))
  # A static Python loop (usually 1 iteration): unrolled, it runs several times
  # faster on CPU than an XLA while loop around the network.
  for _ in range(num_power_iterations):
    direction = _normalize_per_example(curvature_times(direction))
  return jax.lax.stop_gradient(epsilon * direction)


def vat_loss(*, apply_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
             logits: jax.Array, rng: jax.Array, xi: float, epsilon: float,
             num_power_iterations: int = 1, reduction: str = "mean",
             direction_apply_fn: Callable[[jax.Array], jax.Array] | None = None,
             power_iteration: str = "finite_difference",
             ) -> tuple[jax.Array, dict[str, Any]]:
  """VAT loss (survey L_u^VAT): KL(p_theta^(y|x) || p_theta(y|x + r_vadv)).

  Gradients flow through `apply_fn` at x + r_vadv only (the clean prediction and
  r_vadv are constants). Arguments as `vat_adversarial_direction`;
  `direction_apply_fn` (default `apply_fn`) is the one the power iteration uses:
  pass one closing over stop-gradient params so that an outer gradient with
  respect to the params does not trace (and pay for) the derivative of the power
  iteration, which r_vadv's stop-gradient discards anyway.

  Returns:
    (loss, extras) with 'perturbation' r_vadv.
  """
  perturbation = vat_adversarial_direction(
      apply_fn=direction_apply_fn or apply_fn, x=x, logits=logits, rng=rng, xi=xi,
      epsilon=epsilon, num_power_iterations=num_power_iterations,
      power_iteration=power_iteration)
  target = jax.nn.softmax(jax.lax.stop_gradient(logits), axis=-1)
  per_example = common.kl_divergence_with_probs(
      logits=apply_fn(x + perturbation),
      target_probs=target)
  loss = common.reduce_loss(per_example=per_example, reduction=reduction)
  return loss, {"perturbation": perturbation}
