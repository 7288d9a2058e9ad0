"""The train engine with a toy method: sharding invariance, global BN, resume."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semissl.training import checkpointing, sharding
from tests.training import toy_method


def _setup(devices, total_steps=10):
  return toy_method.toy_training_setup(devices, total_steps)


def _run(mesh, state, train_step, seeds):
  for seed in seeds:
    state, metrics = train_step(state, sharding.global_batch(toy_method.toy_batch(seed), mesh))
  return state, metrics


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def test_eight_devices_equal_one_device():
  mesh8, state8, step8, _, _ = _setup(jax.devices())
  mesh1, state1, step1, _, _ = _setup(jax.devices()[:1])
  state8, m8 = _run(mesh8, state8, step8, range(3))
  state1, m1 = _run(mesh1, state1, step1, range(3))
  assert state8.params["Conv_0"]["kernel"].sharding.num_devices == 8
  for name in ("params", "batch_stats", "target_params", "target_batch_stats", "method_state"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
                 _host(getattr(state8, name)), _host(getattr(state1, name)))
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  assert int(state8.method_state["seen"]) == 3 * 16


def test_batch_norm_statistics_are_global():
  """Under jit on a data-sharded batch BN uses the global batch mean (no axis_name)."""
  mesh, state, train_step, _, method = _setup(jax.devices())
  batch = toy_method.toy_batch(7)
  before = _host(state.batch_stats)
  state, _ = train_step(state, sharding.global_batch(batch, mesh))
  # Recompute the conv output on the whole batch with the initial params.
  params0 = _setup(jax.devices()[:1])[1].params
  conv = jax.lax.conv_general_dilated(
      jnp.asarray(batch["labelled"]["images"]["image"]), params0["Conv_0"]["kernel"],
      (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + params0["Conv_0"]["bias"]
  global_mean = np.asarray(conv).mean(axis=(0, 1, 2))
  expected = 0.9 * before["BatchNorm_0"]["mean"] + 0.1 * global_mean
  np.testing.assert_allclose(np.asarray(state.batch_stats["BatchNorm_0"]["mean"]), expected,
                             rtol=1e-5, atol=1e-6)
  # A per-device BN would differ: the first device's 2 examples have another mean.
  local_mean = np.asarray(conv)[:2].mean(axis=(0, 1, 2))
  assert not np.allclose(0.9 * before["BatchNorm_0"]["mean"] + 0.1 * local_mean, expected)


def test_ema_target_follows_decay():
  mesh, state, train_step, _, _ = _setup(jax.devices())
  target0 = _host(state.target_params)
  state, _ = train_step(state, sharding.global_batch(toy_method.toy_batch(0), mesh))
  expected = jax.tree.map(lambda t, p: 0.9 * t + 0.1 * p, target0, _host(state.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               _host(state.target_params), expected)


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
  mesh, state, train_step, _, _ = _setup(jax.devices())
  uninterrupted, _ = _run(mesh, state, train_step, range(4))
  uninterrupted = _host(uninterrupted)

  mesh, state, train_step, _, _ = _setup(jax.devices())
  state, _ = _run(mesh, state, train_step, range(2))
  manager = checkpointing.make_manager(str(tmp_path), save_interval_steps=1)
  checkpointing.save(manager, state)
  manager.wait_until_finished()
  # A fresh process: new state from scratch, then restore onto the current mesh.
  mesh, fresh, train_step, _, _ = _setup(jax.devices())
  restored = checkpointing.restore(manager, fresh)
  assert int(restored.step) == 2
  assert restored.params["Dense_0"]["kernel"].sharding == fresh.params["Dense_0"]["kernel"].sharding
  resumed, _ = _run(mesh, restored, train_step, range(2, 4))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               _host(resumed), uninterrupted)
  manager.close()


def test_init_from_loads_matching_variables(tmp_path):
  mesh, state, train_step, _, _ = _setup(jax.devices())
  state, _ = _run(mesh, state, train_step, range(2))
  manager = checkpointing.make_manager(str(tmp_path), save_interval_steps=1)
  checkpointing.save(manager, state)
  manager.wait_until_finished()
  manager.close()
  _, fresh, _, _, _ = _setup(jax.devices())
  loaded = checkpointing.load_variables_from(
      str(tmp_path), {"params": fresh.params, "batch_stats": fresh.batch_stats})
  jax.tree.map(np.testing.assert_array_equal, _host(loaded["params"]), _host(state.params))
  with pytest.raises(ValueError, match="has no checkpoint"):
    checkpointing.load_variables_from(str(tmp_path / "nothing"), {"params": fresh.params})
  wrong = {"params": {"Dense_0": {"kernel": jnp.zeros((5, 5))}}}
  with pytest.raises(ValueError, match="has shape"):
    checkpointing.load_variables_from(str(tmp_path), wrong)
  with pytest.raises(ValueError, match="no variable"):
    checkpointing.load_variables_from(str(tmp_path), {"params": {"Other": jnp.zeros(3)}})
