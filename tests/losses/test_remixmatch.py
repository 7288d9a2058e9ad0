"""ReMixMatch's guess (distribution alignment + sharpening), MixUp targets and loss
against NumPy references of the paper's equations (Berthelot et al. 2020, Alg. 1)."""
import jax
import jax.numpy as jnp
import numpy as np

from semissl import losses
from semissl.losses import remixmatch

NUM_CLASSES, TEMPERATURE = 5, 0.5


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _cross_entropy(targets, logits):
  """1/N sum_i -sum_c t_ic log softmax(z_i)_c."""
  return float(np.mean(-(targets * np.log(_softmax(logits))).sum(-1)))


def _np_guess(logits, history, prior, temperature):
  """q~ = Normalize(q p(y) / p~(y)), p~ the mean of the window's batch means (this
  batch included), then Sharpen(q~, T) = q~^(1/T) / sum q~^(1/T)."""
  q = _softmax(logits)
  model_prior = np.mean([batch.mean(0) for batch in history + [q]], axis=0)
  aligned = q * prior / model_prior
  aligned /= aligned.sum(-1, keepdims=True)
  sharpened = aligned ** (1 / temperature)
  return sharpened / sharpened.sum(-1, keepdims=True)


def test_guess_aligns_to_the_labelled_prior_then_sharpens():
  rs = np.random.RandomState(0)
  prior = rs.dirichlet(np.ones(NUM_CLASSES))
  window = losses.init_distribution_alignment_window(num_classes=NUM_CLASSES,
                                                     window_size=3)
  history = []
  for step in range(5):  # wraps the 3-slot window: the oldest batches drop out
    logits = rs.normal(size=(6, NUM_CLASSES)) * 2
    got, window = remixmatch.remixmatch_guess(
        logits=jnp.asarray(logits, jnp.float32), window=window,
        target_prior=jnp.asarray(prior, jnp.float32), temperature=TEMPERATURE)
    want = _np_guess(logits, history[-2:], prior, TEMPERATURE)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7, err_msg=str(step))
    history.append(_softmax(logits))
  assert int(window.count) == 5


def test_guess_is_a_stop_gradient():
  window = losses.init_distribution_alignment_window(num_classes=NUM_CLASSES,
                                                     window_size=4)
  logits = jnp.asarray(np.random.RandomState(1).normal(size=(4, NUM_CLASSES)), jnp.float32)
  weights = jnp.arange(NUM_CLASSES, dtype=jnp.float32)
  grad = jax.grad(lambda z: jnp.sum(remixmatch.remixmatch_guess(
      logits=z, window=window, target_prior=jnp.full((NUM_CLASSES,), 1 / NUM_CLASSES),
      temperature=TEMPERATURE)[0] * weights))(logits)
  np.testing.assert_array_equal(grad, np.zeros_like(logits))


def test_mixup_targets_of_labels_and_k_views():
  """X' and U' targets: lambda' y_i + (1 - lambda') w_j over X ++ U^1..U^K, with the
  K views of an image all carrying its guess, lambda' = max(lambda, 1 - lambda)."""
  rs = np.random.RandomState(2)
  num_labelled, num_unlabelled, k = 3, 4, 2
  labels = rs.randint(0, NUM_CLASSES, num_labelled)
  guesses = rs.dirichlet(np.ones(NUM_CLASSES), num_unlabelled)
  images_x = rs.normal(size=(num_labelled, 4, 4, 1))
  images_u = rs.normal(size=(k * num_unlabelled, 4, 4, 1))
  total = num_labelled + k * num_unlabelled
  permutation = rs.permutation(total)
  ratio = rs.beta(0.75, 0.75, total)
  got = losses.mixmatch_mix(
      labelled_images=jnp.asarray(images_x, jnp.float32),
      labelled_targets=jax.nn.one_hot(labels, NUM_CLASSES),
      unlabelled_images=jnp.asarray(images_u, jnp.float32),
      unlabelled_targets=jnp.tile(jnp.asarray(guesses, jnp.float32), (k, 1)),
      permutation=jnp.asarray(permutation), mix_ratio=jnp.asarray(ratio, jnp.float32))
  targets = np.concatenate([np.eye(NUM_CLASSES)[labels]]
                           + [guesses] * k)  # view v of image i at row B + v N + i
  images = np.concatenate([images_x, images_u])
  kept = np.maximum(ratio, 1 - ratio)
  want_targets = kept[:, None] * targets + (1 - kept[:, None]) * targets[permutation]
  want_images = (kept[:, None, None, None] * images
                 + (1 - kept[:, None, None, None]) * images[permutation])
  np.testing.assert_allclose(got[1], want_targets[:num_labelled], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[3], want_targets[num_labelled:], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[0], want_images[:num_labelled], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[2], want_images[num_labelled:], rtol=1e-5, atol=1e-6)
  assert np.all(kept >= 0.5)


def _loss_inputs(seed):
  rs = np.random.RandomState(seed)
  n, k = 4, 2
  soft = lambda m: rs.dirichlet(np.ones(NUM_CLASSES), m)  # noqa: E731
  return dict(
      labelled_logits=rs.normal(size=(3, NUM_CLASSES)), labelled_targets=soft(3),
      unlabelled_logits=rs.normal(size=(k * n, NUM_CLASSES)),
      unlabelled_targets=soft(k * n), strong_logits=rs.normal(size=(n, NUM_CLASSES)),
      strong_targets=soft(n), rotation_logits=rs.normal(size=(n, 4)),
      rotations=rs.randint(0, 4, n))


def test_loss_is_the_weighted_sum_of_four_cross_entropies():
  inputs = _loss_inputs(3)
  weights = dict(unlabelled_weight=1.5, pre_mixup_weight=0.5, rotation_weight=0.5)
  loss, extras = remixmatch.remixmatch_loss(
      **{key: jnp.asarray(value) for key, value in inputs.items()}, **weights)
  parts = {
      "supervised_loss": _cross_entropy(inputs["labelled_targets"],
                                        inputs["labelled_logits"]),
      "unsupervised_loss": _cross_entropy(inputs["unlabelled_targets"],
                                          inputs["unlabelled_logits"]),
      "pre_mixup_loss": _cross_entropy(inputs["strong_targets"], inputs["strong_logits"]),
      "rotation_loss": _cross_entropy(np.eye(4)[inputs["rotations"]],
                                      inputs["rotation_logits"]),
  }
  for key, value in parts.items():
    np.testing.assert_allclose(extras[key], value, rtol=1e-5, err_msg=key)
  want = (parts["supervised_loss"] + weights["unlabelled_weight"] * parts["unsupervised_loss"]
          + weights["pre_mixup_weight"] * parts["pre_mixup_loss"]
          + weights["rotation_weight"] * parts["rotation_loss"])
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_loss_targets_get_no_gradient():
  inputs = {key: jnp.asarray(value, jnp.float32) if key != "rotations" else
            jnp.asarray(value) for key, value in _loss_inputs(4).items()}
  target_keys = ("labelled_targets", "unlabelled_targets", "strong_targets")

  def loss_of(targets):
    return remixmatch.remixmatch_loss(**{**inputs, **targets}, unlabelled_weight=1.5,
                                      pre_mixup_weight=0.5, rotation_weight=0.5)[0]

  grads = jax.grad(loss_of)({key: inputs[key] for key in target_keys})
  for key in target_keys:
    np.testing.assert_array_equal(grads[key], np.zeros_like(inputs[key]), err_msg=key)
  logit_grad = jax.grad(lambda z: remixmatch.remixmatch_loss(
      **{**inputs, "strong_logits": z}, unlabelled_weight=1.5, pre_mixup_weight=0.5,
      rotation_weight=0.5)[0])(inputs["strong_logits"])
  assert np.any(np.asarray(logit_grad) != 0)
