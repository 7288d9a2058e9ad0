"""DivideMix (Li, Socher, Hoi, ICLR 2020), "DivideMix: Learning with Noisy Labels as
Semi-supervised Learning".

Each epoch, each network's per-example cross-entropy losses l_i (Eq. 1) are
min-max normalised and fit by a two-component 1-D Gaussian mixture (EM); the clean
probability w_i is the posterior of the low-mean component (`clean_probability`),
and it divides the data for the OTHER network (co-divide). In a step on the
labelled (w_i > tau) part, labels are co-refined (Eq. 3-4, `refine_labels`); on the
unlabelled part both networks co-guess (`co_guess`); the MixMatch mix (Eq. 5-6:
`mixmatch.mixmatch_mix`) is trained with L = L_X + lambda_u L_U + lambda_r L_reg
(Eq. 7-10, `dividemix_loss`). Warm-up uses plain CE (plus, for asymmetric noise,
the confidence penalty of Eq. 2, `negative_entropy`).
"""
from typing import Any

import jax
import jax.numpy as jnp

from semissl.losses import common
from semissl.losses import consistency
from semissl.losses import mixmatch

# Added to each component's responsibility mass, as sklearn's GaussianMixture does.
_MASS_EPS = 10 * float(jnp.finfo(jnp.float32).eps)


def normalise_losses(*, losses: jax.Array) -> jax.Array:
  """(l - min l) / (max l - min l), the normalisation before the GMM fit (DivideMix's
  code); all-equal losses give zeros."""
  losses = jnp.asarray(losses, jnp.float32)
  low, high = jnp.min(losses), jnp.max(losses)
  return (losses - low) / jnp.maximum(high - low, 1e-12)


def _gmm_e_step(x, weights, means, variances):
  """Responsibilities [N, 2] of the components for the points x [N]."""
  log_density = (-0.5 * jnp.log(2.0 * jnp.pi * variances)
                 - 0.5 * jnp.square(x[:, None] - means) / variances)
  return jax.nn.softmax(jnp.log(weights) + log_density, axis=-1)


def _gmm_m_step(x, resp, reg_covar):
  """(weights, means, variances) [2] from responsibilities [N, 2] (sklearn's M-step)."""
  mass = jnp.sum(resp, axis=0) + _MASS_EPS
  means = jnp.sum(resp * x[:, None], axis=0) / mass
  variances = jnp.sum(resp * jnp.square(x[:, None] - means), axis=0) / mass + reg_covar
  return mass / x.shape[0], means, variances


def fit_two_component_gmm(*, values: jax.Array, num_iterations: int = 10,
                          reg_covar: float = 5e-4
                          ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Two-component 1-D Gaussian mixture fit by EM (sklearn's E and M steps).

  Deterministic start: hard responsibilities splitting the points at their median
  (lower half: component 0), one M-step, then `num_iterations` E+M steps.
  reg_covar is added to each variance (DivideMix's code: 5e-4).

  Args:
    values: float [N] points (DivideMix: normalised losses).
    num_iterations: EM iterations (DivideMix's code: max_iter=10).
    reg_covar: variance floor added in every M-step.

  Returns:
    (weights [2], means [2], variances [2]).
  """
  x = jnp.asarray(values, jnp.float32)
  upper = (x > jnp.median(x)).astype(jnp.float32)
  params = _gmm_m_step(x, jnp.stack([1.0 - upper, upper], axis=-1), reg_covar)

  def body(_, params):
    return _gmm_m_step(x, _gmm_e_step(x, *params), reg_covar)

  return jax.lax.fori_loop(0, int(num_iterations), body, params)


def clean_probability(*, losses: jax.Array, num_iterations: int = 10,
                      reg_covar: float = 5e-4) -> tuple[jax.Array, dict[str, Any]]:
  """DivideMix's co-divide: w_i = p(g | l_i), the posterior of the low-mean component g
  of a two-component GMM fit to the min-max normalised per-example losses l_i (Eq. 1).

  Args:
    losses: float [N] per-example cross-entropy losses of one network (Eq. 1).
    num_iterations: EM iterations.
    reg_covar: variance floor.

  Returns:
    (w float [N] in [0, 1], extras with the fit's 'weights', 'means', 'variances'
    [2], component order as fit).
  """
  x = normalise_losses(losses=losses)
  weights, means, variances = fit_two_component_gmm(
      values=x, num_iterations=num_iterations, reg_covar=reg_covar)
  resp = _gmm_e_step(x, weights, means, variances)
  clean = jnp.take(resp, jnp.argmin(means), axis=-1)
  return clean, {"weights": weights, "means": means, "variances": variances}


def refine_labels(*, labels_onehot: jax.Array, clean_prob: jax.Array,
                  logits_per_augmentation: jax.Array, temperature: float) -> jax.Array:
  """Label co-refinement (Eq. 3-4): y_bar = w y + (1 - w) p, p the mean prediction of
  the network being trained over the M augmentations; y_hat = Sharpen(y_bar, T).
  Stop-gradient (a target).

  Args:
    labels_onehot: [B, C] (noisy) given labels y.
    clean_prob: [B] w of each example (from the other network's GMM).
    logits_per_augmentation: [M, B, C] logits of M augmentations.
    temperature: T (DivideMix: 0.5).

  Returns:
    [B, C] refined labels y_hat.
  """
  probs = jnp.mean(jax.nn.softmax(jax.lax.stop_gradient(logits_per_augmentation), -1), 0)
  w = jnp.asarray(clean_prob, probs.dtype)[:, None]
  mixed = w * jnp.asarray(labels_onehot, probs.dtype) + (1.0 - w) * probs
  return jax.lax.stop_gradient(consistency.sharpen(probs=mixed, temperature=temperature))


def co_guess(*, logits_per_augmentation: jax.Array,
             other_logits_per_augmentation: jax.Array, temperature: float) -> jax.Array:
  """Co-guessing for the unlabelled set: q = Sharpen(1/(2M) sum_m (p_m^(1) + p_m^(2)), T),
  the average over M augmentations of both networks' predictions. Stop-gradient.

  Args:
    logits_per_augmentation: [M, B, C] logits of the network being trained.
    other_logits_per_augmentation: [M, B, C] logits of the other network.
    temperature: T.

  Returns:
    [B, C] guessed labels q.
  """
  both = jnp.concatenate([logits_per_augmentation, other_logits_per_augmentation], 0)
  return mixmatch.mixmatch_guess_labels(logits_per_augmentation=both,
                                        temperature=temperature)


def prior_regulariser(*, logits: jax.Array, prior: jax.Array | None = None) -> jax.Array:
  """L_reg (Eq. 9) = sum_c pi_c log(pi_c / mean_x p_c(x)) over the mixed batch X' + U';
  pi uniform (1/C) unless given. Gradients flow through the mean prediction."""
  mean_probs = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)
  if prior is None:
    prior = jnp.full(mean_probs.shape, 1.0 / mean_probs.shape[-1], mean_probs.dtype)
  return jnp.sum(prior * jnp.log(prior / mean_probs))


def negative_entropy(*, logits: jax.Array, reduction: str = "mean") -> jax.Array:
  """-H(p) = sum_c p_c log p_c, the warm-up confidence penalty for asymmetric noise
  (Eq. 2: the warm-up loss is CE - H)."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  per_example = jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
  return common.reduce_loss(per_example=per_example, reduction=reduction)


def dividemix_loss(*, labelled_logits: jax.Array, labelled_targets: jax.Array,
                   unlabelled_logits: jax.Array, unlabelled_targets: jax.Array,
                   unlabelled_weight: float, regularisation_weight: float = 1.0,
                   prior: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any]]:
  """DivideMix L = L_X + lambda_u L_U + lambda_r L_reg (Eq. 10) on the mixed batches.

  L_X (Eq. 7): soft-target CE on X'. L_U (Eq. 8): squared error on U', averaged over
  the C classes as in DivideMix's (and MixMatch's) code, i.e. Eq. 8 / C; the paper's
  lambda_u values are for this form. L_reg (Eq. 9): `prior_regulariser` on the
  predictions of X' and U' together.

  Returns:
    (loss, extras) with 'supervised_loss', 'unsupervised_loss', 'regulariser'.
  """
  supervised = mixmatch.mixmatch_labelled_loss(logits=labelled_logits,
                                               targets=labelled_targets)
  unsupervised = mixmatch.mixmatch_unlabelled_loss(logits=unlabelled_logits,
                                                   targets=unlabelled_targets)
  regulariser = prior_regulariser(
      logits=jnp.concatenate([labelled_logits, unlabelled_logits], axis=0), prior=prior)
  loss = supervised + unlabelled_weight * unsupervised + regularisation_weight * regulariser
  return loss, {"supervised_loss": supervised, "unsupervised_loss": unsupervised,
                "regulariser": regulariser}


def dividemix_masked_loss(*, logits: jax.Array, targets: jax.Array,
                          clean_mask: jax.Array, unlabelled_weight: float,
                          regularisation_weight: float = 1.0,
                          prior: jax.Array | None = None) -> tuple[jax.Array, dict[str, Any]]:
  """`dividemix_loss` on one mixed batch whose rows are X' (clean_mask 1) or U' (0):
  L_X is the soft-target CE averaged over the X' rows, L_U the squared error (mean
  over classes) averaged over the U' rows (each 0 when it has no row), L_reg over
  all rows (Eq. 7-10).

  Args:
    logits: [N, C] logits of the mixed batch.
    targets: [N, C] mixed targets.
    clean_mask: [N] 1 for rows of the labelled (clean) division, 0 for unlabelled.
    unlabelled_weight: lambda_u.
    regularisation_weight: lambda_r.
    prior: [C] pi (default uniform).

  Returns:
    (loss, extras) with 'supervised_loss', 'unsupervised_loss', 'regulariser'.
  """
  clean = jnp.asarray(clean_mask, jnp.float32)
  targets = jax.lax.stop_gradient(targets)
  supervised = common.reduce_loss(
      per_example=common.cross_entropy_with_probs(logits=logits, target_probs=targets),
      reduction="masked_mean", mask=clean)
  squared = jnp.mean(jnp.square(targets - jax.nn.softmax(logits, axis=-1)), axis=-1)
  unsupervised = common.reduce_loss(per_example=squared, reduction="masked_mean",
                                    mask=1.0 - clean)
  regulariser = prior_regulariser(logits=logits, prior=prior)
  loss = supervised + unlabelled_weight * unsupervised + regularisation_weight * regulariser
  return loss, {"supervised_loss": supervised, "unsupervised_loss": unsupervised,
                "regulariser": regulariser}
