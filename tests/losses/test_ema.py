"""Tests for semissl.losses.ema (EMA teacher update, decay schedules)."""
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from semissl.losses import ema


def make_tree(seed):
  rng = np.random.default_rng(seed)
  return {"dense": {"kernel": rng.normal(size=(8, 3)), "bias": rng.normal(size=3)},
          "blocks": [rng.normal(size=(2, 2)), rng.normal(size=5)]}


@pytest.mark.parametrize("decay", [0.0, 0.9, 0.9999])
def test_ema_update_matches_reference_and_optax(decay):
  target, online = make_tree(0), make_tree(1)
  got = ema.ema_update(target_params=jax.tree.map(jnp.asarray, target),
                       online_params=jax.tree.map(jnp.asarray, online),
                       decay=decay)
  want = jax.tree.map(lambda t, o: decay * t + (1 - decay) * o, target, online)
  via_optax = optax.incremental_update(
      jax.tree.map(jnp.asarray, online), jax.tree.map(jnp.asarray, target),
      1 - decay)
  for a, b, c in zip(jax.tree.leaves(got), jax.tree.leaves(want),
                     jax.tree.leaves(via_optax)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)


def test_ema_update_dtypes_traced_decay_and_no_gradient():
  target = {"w": jnp.ones((3,), jnp.bfloat16), "count": jnp.asarray(2, jnp.int32)}
  online = {"w": jnp.zeros((3,), jnp.bfloat16), "count": jnp.asarray(7, jnp.int32)}
  out = jax.jit(lambda t, o, d: ema.ema_update(
      target_params=t, online_params=o, decay=d))(target, online,
                                                  jnp.float32(0.75))
  assert out["w"].dtype == jnp.bfloat16
  np.testing.assert_allclose(out["w"].astype(np.float32), 0.75)
  assert int(out["count"]) == 7  # non-float leaves follow the online tree
  grad = jax.grad(lambda o: jnp.sum(ema.ema_update(
      target_params={"w": jnp.ones(3)}, online_params={"w": o},
      decay=0.5)["w"]))(jnp.zeros(3))
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("step", [0, 250, 500, 999, 1000, 1500])
def test_byol_cosine_ema_decay(step):
  total, base = 1000, 0.996
  k = min(step, total)
  want = 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2
  got = jax.jit(lambda s: ema.byol_cosine_ema_decay(
      step=s, total_steps=total, base_decay=base))(jnp.asarray(step))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  if step == 0:
    np.testing.assert_allclose(got, base, rtol=1e-7)
  if step >= total:
    np.testing.assert_allclose(got, 1.0, rtol=1e-7)


def test_mean_teacher_ema_decay():
  for step in (0, 1, 9, 50, 5000):
    want = min(1 - 1 / (step + 1), 0.99)
    np.testing.assert_allclose(
        ema.mean_teacher_ema_decay(step=step, decay=0.99), want, rtol=1e-6)


def test_sharded_equals_unsharded(mesh8):
  target = {"kernel": jnp.asarray(make_tree(2)["dense"]["kernel"], jnp.float32)}
  online = {"kernel": jnp.asarray(make_tree(3)["dense"]["kernel"], jnp.float32)}
  fn = lambda t, o: ema.ema_update(target_params=t, online_params=o,  # noqa: E731
                                   decay=0.99)
  sharding = {"kernel": NamedSharding(mesh8, P("data", None))}
  sharded = jax.jit(fn, in_shardings=(sharding, sharding))(target, online)
  np.testing.assert_allclose(sharded["kernel"], jax.jit(fn)(target, online)["kernel"],
                             rtol=1e-6)
  assert sharded["kernel"].sharding.spec[0] == "data"


def test_pseudo_label_losses_do_not_import_tensorflow_or_flax():
  code = ("import sys; import semissl.losses; "
          "bad = [m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'tensorflow_datasets', 'flax')]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)
