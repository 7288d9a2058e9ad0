"""Optimizers: lr scaling rules, schedules, masks by param path, LARS, layer decay."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from semissl.training import optimizers, setup

PARAMS = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "bn": {"scale": jnp.ones(4),
          "bias": jnp.zeros(4)}, "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}


def _opt(**kw):
  base = dict(name="lars", base_lr=0.3, lr_scaling="linear", weight_decay=1e-6,
              schedule="cosine", warmup_steps=0, momentum=0.9)
  base.update(kw)
  return ml_collections.ConfigDict(base)


@pytest.mark.parametrize("rule,expected", [("linear", 0.3 * 4096 / 256),
                                           ("sqrt", 0.3 * math.sqrt(4096)), ("none", 0.3)])
def test_lr_scaling(rule, expected):
  assert optimizers.scaled_learning_rate(_opt(lr_scaling=rule), 4096) == pytest.approx(expected)


def test_unknown_names_list_known():
  with pytest.raises(ValueError, match="known: linear, sqrt, none"):
    optimizers.scaled_learning_rate(_opt(lr_scaling="cubic"), 256)
  with pytest.raises(ValueError, match="known: lars, sgd, adamw"):
    optimizers.make_optimizer(_opt(name="adam9"), batch_size=256, total_steps=10, steps_per_epoch=1)


def test_warmup_cosine_schedule():
  _, schedule = optimizers.make_optimizer(_opt(warmup_epochs=2, lr_scaling="none"),
                                          batch_size=256, total_steps=100, steps_per_epoch=5)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(0.3)
  assert float(schedule(5)) == pytest.approx(0.15)
  mid = 10 + 45
  assert float(schedule(mid)) == pytest.approx(0.15, rel=1e-4)
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)


def test_fixmatch_cosine_schedule():
  _, schedule = optimizers.make_optimizer(
      _opt(name="sgd", schedule="fixmatch_cosine", lr_scaling="none", base_lr=0.03),
      batch_size=64, total_steps=1000, steps_per_epoch=10)
  assert float(schedule(500)) == pytest.approx(0.03 * math.cos(7 * math.pi * 500 / 16000))


def test_weight_decay_mask_excludes_bias_and_norm():
  mask = optimizers.path_mask(PARAMS, optimizers.DEFAULT_NO_DECAY)
  assert mask == {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False},
                  "head": {"kernel": True, "bias": False}}


def test_lars_skips_trust_ratio_and_decay_for_bias_and_bn():
  """A masked leaf gets the plain momentum-SGD update; an unmasked one is LARS-scaled."""
  tx, schedule = optimizers.make_optimizer(_opt(lr_scaling="none", weight_decay=0.1,
                                                schedule="constant"),
                                           batch_size=256, total_steps=10, steps_per_epoch=1)
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), PARAMS)
  updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
  lr = 0.3
  np.testing.assert_allclose(updates["bn"]["bias"], -lr * 0.5 * np.ones(4), rtol=1e-6)
  np.testing.assert_allclose(updates["bn"]["scale"], -lr * 0.5 * np.ones(4), rtol=1e-6)
  # kernel: g + wd*w, then trust ratio 0.001 * ||w|| / ||g + wd*w||.
  w = np.ones((4, 2))
  g = 0.5 * w + 0.1 * w
  ratio = 0.001 * np.linalg.norm(w) / np.linalg.norm(g)
  np.testing.assert_allclose(updates["head"]["kernel"], -lr * ratio * g, rtol=1e-5)


def test_layer_decay_scales_lr_per_layer():
  params = {"embedding": {"kernel": jnp.ones((2,))}, "block0": {"kernel": jnp.ones((2,))},
            "head": {"kernel": jnp.ones((2,))}}
  layer_of = {"embedding": 0, "block0": 1, "head": 2}
  opt = _opt(name="adamw", lr_scaling="none", weight_decay=0.0, schedule="constant",
             layer_decay=0.5, layer_decay_num_layers=1, base_lr=1e-2)
  tx, _ = optimizers.make_optimizer(opt, batch_size=256, total_steps=10, steps_per_epoch=1,
                                    layer_id_fn=lambda path, n: layer_of[path[0]])
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step moves every leaf by ~lr; layer i is scaled by 0.5**(num_layers+1-i).
  for name, layer in layer_of.items():
    np.testing.assert_allclose(updates[name]["kernel"], -1e-2 * 0.5 ** (2 - layer), rtol=1e-4)


def test_byol_cosine_ema_ramp():
  config = ml_collections.ConfigDict({"ema": {"decay": 0.996, "schedule": "byol_cosine"}})
  decay = setup.ema_decay_fn(config, 100)
  assert float(decay(jnp.asarray(0))) == pytest.approx(0.996)
  assert float(decay(jnp.asarray(100))) == pytest.approx(1.0)
  assert float(decay(jnp.asarray(50))) == pytest.approx(0.998)
  with pytest.raises(ValueError, match=r"ema.schedule='cosine'; known: constant, byol_cosine"):
    setup.ema_decay_fn(ml_collections.ConfigDict({"ema": {"decay": 0.9,
                                                          "schedule": "cosine"}}), 100)
