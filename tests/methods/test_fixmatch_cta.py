"""FixMatch's CTAugment variant ("FixMatch (CTA)", `method.strong_augment='ctaugment'`):
the step is pipeline FixMatch on CTAugment strong views plus ReMixMatch's bin update
from labelled probes, gradients untouched by the probes; config variant and errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fixmatch_cifar, fixmatch_fmnist
from semissl.methods import ctaugment
from semissl.training import sharding
from tests.methods import test_fixmatch as tf


@pytest.fixture(scope="module")
def cta_setup(mesh8):
  state, batch = tf.setup.__wrapped__(mesh8)
  # Bins that are not all equal, so the strong-view policy depends on them.
  weights = jnp.asarray(np.random.RandomState(0).uniform(0.5, 1.0, (len(ctaugment.OPS),
                                                                   ctaugment.NUM_BINS)),
                        jnp.float32)
  return state.replace(method_state={"cta": weights}), batch


def test_step_is_fixmatch_on_ctaugment_views_plus_the_bin_update(cta_setup):
  state, batch = cta_setup
  cta = tf._method(strong_augment="ctaugment")
  plain = tf._method()
  rng = jax.random.PRNGKey(4)
  plain_rng, cta_rng = jax.random.split(rng)  # FixMatch._ctaugment's documented order
  strong_rng, probe_rng = jax.random.split(cta_rng)
  weights = state.method_state["cta"]
  x_l, _, u_s, labels = tf._parts(batch)
  strong = ctaugment.strong_views(jnp.asarray(u_s), weights=weights, rng=strong_rng,
                                  depth=2, threshold=0.8)
  assert not np.allclose(strong, u_s)
  augmented = jax.tree.map(lambda x: x, batch)
  augmented["unlabelled"]["images"]["strong"] = strong

  def predict(probes):
    return jax.nn.softmax(cta.model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, probes, train=False))

  expected_weights, proximity = ctaugment.probe_update(
      jnp.asarray(x_l), jnp.asarray(labels), weights=weights, rng=probe_rng, depth=2,
      decay=0.99, predict=predict)

  loss_fn = lambda method, b, r: jax.jit(jax.value_and_grad(
      lambda p: method.loss_fn(p, b, state=state, rng=r), has_aux=True))(state.params)
  (loss, aux), grads = loss_fn(cta, batch, rng)
  (plain_loss, plain_aux), plain_grads = loss_fn(plain, augmented, plain_rng)
  np.testing.assert_allclose(float(loss), float(plain_loss), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(aux.method_state["cta"], expected_weights, rtol=1e-6)
  moved = ~np.isclose(np.asarray(aux.method_state["cta"]), np.asarray(weights))
  assert 1 <= moved.sum() <= len(x_l) * 2
  np.testing.assert_allclose(float(aux.metrics["probe_proximity"]), np.mean(proximity),
                             rtol=1e-6)
  # The pipeline variant carries a state it does not use through unchanged.
  np.testing.assert_array_equal(plain_aux.method_state["cta"], weights)


def test_init_puts_the_bins_in_the_method_state(mesh8):
  method = tf._method(strong_augment="ctaugment")
  batch = sharding.global_batch(tf._batch(), mesh8)
  _, method_state = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  np.testing.assert_array_equal(method_state["cta"], ctaugment.init_weights())
  assert "cta" not in jax.jit(tf._method().init)(jax.random.PRNGKey(0), batch)[1]


@pytest.mark.parametrize("change,match", [
    ({"strong_augment": "cta"}, r"strong_augment='cta'; known: \('pipeline', 'ctaugment'\)"),
    ({"strong_augment": "ctaugment", "cta_depth": 0}, r"cta_depth=0 must be an integer"),
    ({"strong_augment": "ctaugment", "cta_decay": 1.5}, r"cta_decay=1.5 must be in"),
])
def test_bad_options_are_one_line_errors(change, match):
  with pytest.raises(ValueError, match=match):
    tf._method(**change)


def test_config_variant():
  config = fixmatch_fmnist.get_config("labels=40,strong=cta")
  m = config.method
  assert (m.strong_augment, m.cta_depth, m.cta_decay, m.cta_threshold) == (
      "ctaugment", 2, 0.99, 0.8)
  views = config.data.unlabelled_views
  assert views["strong"].to_dict() == views["weak"].to_dict() == fixmatch_cifar.weak_view()
  default = fixmatch_fmnist.get_config("labels=40")
  assert default.method.get("strong_augment", "pipeline") == "pipeline"
  assert default.data.unlabelled_views["strong"].to_dict() == fixmatch_cifar.strong_view()
  with pytest.raises(ValueError, match=r"strong='ra'; known: \('randaugment', 'cta'\)"):
    fixmatch_fmnist.get_config("strong=ra")
