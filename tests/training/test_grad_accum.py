"""Gradient accumulation (config.grad_accum_steps, optax.MultiSteps) on the toy method.

Expected values come from a separate forward pass, gradient and momentum-SGD
update written here (`_reference_*`), not from the step or the optimizer under test.
"""
import json
import math
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common, supervised_fmnist
from semissl.training import (checkpointing, optimizers, safety, setup, sharding,
                               train_loop, workdirs)
from tests.training import toy_method

B = 16  # micro-batch: 2 examples on each of the 8 devices
LR, MOMENTUM, WD, TOTAL_UPDATES = 0.1, 0.9, 1e-3, 4


def _config(*, batch_norm=False, ema_schedule="mean_teacher"):
  """Plain SGD + momentum, masked weight decay, cosine over 4 updates (no warm-up), Mean
  Teacher's EMA warm-up min(1 - 1/(u + 1), 0.99) (it depends on the step it is given)."""
  config = toy_method.toy_config()
  config.optimizer.update(name="sgd", base_lr=LR, lr_scaling="none", momentum=MOMENTUM,
                          nesterov=False, weight_decay=WD, warmup_steps=0, schedule="cosine")
  config.ema.update(decay=0.99, schedule=ema_schedule)
  config.toy = ml_collections.ConfigDict(dict(batch_norm=batch_norm, noise=0.0))
  return config


def _lr(update):
  return LR * 0.5 * (1.0 + math.cos(math.pi * update / TOTAL_UPDATES))


def _ema_decay(update):
  return min(1.0 - 1.0 / (update + 1.0), 0.99)


def _setup(k, **config_kw):
  return toy_method.toy_training_setup(total_steps=TOTAL_UPDATES, config=_config(**config_kw),
                                       grad_accum_steps=k, batch_size=B)


def _micro_batches(seeds):
  return [toy_method.toy_batch(seed, B) for seed in seeds]


def _concat(batches):
  return jax.tree.map(lambda *xs: np.concatenate(xs), *batches)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _run(mesh, state, train_step, batches):
  metrics = []
  for batch in batches:
    state, m = train_step(state, sharding.global_batch(batch, mesh))
    metrics.append(_host(m))
  return state, metrics


def _reference_conv(params, images):
  return jax.lax.conv_general_dilated(
      jnp.asarray(images), params["Conv_0"]["kernel"], (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["Conv_0"]["bias"]


def _reference_loss(params, batch):
  """The toy net without batch norm: conv, relu, spatial mean, dense; mean cross-entropy."""
  labelled = batch["labelled"]
  features = jax.nn.relu(_reference_conv(params, labelled["images"]["image"])).mean((1, 2))
  logits = features @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(log_probs, jnp.asarray(labelled["label"])[:, None], 1).mean()


def _reference_grad(params, batch):
  return _host(jax.grad(_reference_loss)(params, batch))


def _reference_sgd(params, batches):
  """Params after each update of SGD + momentum 0.9 (optax's trace) with weight decay
  added to the kernels' gradients, one update per batch, at lr(update)."""
  params = _host(params)
  trace = jax.tree.map(np.zeros_like, params)
  history = []
  for update, batch in enumerate(batches):
    grads = _reference_grad(params, batch)
    grads = {layer: {"kernel": g["kernel"] + WD * params[layer]["kernel"], "bias": g["bias"]}
             for layer, g in grads.items()}
    trace = jax.tree.map(lambda g, t: g + MOMENTUM * t, grads, trace)
    params = jax.tree.map(lambda p, t: p - _lr(update) * t, params, trace)
    history.append(params)
  return history


def _assert_trees_close(actual, expected, rtol=2e-5, atol=2e-6):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol),
               _host(actual), _host(expected))


def test_two_micro_batches_equal_one_double_batch_without_batch_norm():
  """k=2 micro-batches of B = one update on their 2B union: parameters after each of
  three updates (momentum, weight decay, lr at the update count), the EMA target
  and the optimizer state, against a separate computation; the same with k=1 on
  the 2B batches."""
  micro = _micro_batches(range(6))
  double = [_concat(micro[i:i + 2]) for i in (0, 2, 4)]
  mesh, state, train_step, _, _ = _setup(2)
  params0 = _host(state.params)
  expected = _reference_sgd(params0, double)
  for update in range(3):
    state, _ = _run(mesh, state, train_step, micro[2 * update:2 * update + 2])
    _assert_trees_close(state.params, expected[update])
  assert int(state.step) == 6  # micro-steps: the data position
  assert (int(state.opt_state.gradient_step), int(state.opt_state.mini_step)) == (3, 0)
  assert int(state.method_state["seen"]) == 6 * B  # method_state moves per micro-step
  # The EMA once per update, at the update's decay: 0 (the online params), 1/2, 2/3.
  target = expected[0]
  for update in (1, 2):
    target = jax.tree.map(lambda t, p, d=_ema_decay(update): d * t + (1 - d) * p,
                          target, expected[update])
  _assert_trees_close(state.target_params, target)

  mesh, state, train_step, _, _ = toy_method.toy_training_setup(
      total_steps=TOTAL_UPDATES, config=_config(), grad_accum_steps=1, batch_size=2 * B)
  state, _ = _run(mesh, state, train_step, double)
  _assert_trees_close(state.params, expected[2])


def test_parameters_and_target_do_not_move_mid_accumulation():
  """k=3, constant EMA decay 0.99: the non-final micro-steps of the first and second
  update leave parameters and target bit-identical (the target differs from the
  online parameters after the first update, so an EMA step would show)."""
  micro = _micro_batches(range(5))
  mesh, state, train_step, _, _ = toy_method.toy_training_setup(
      total_steps=TOTAL_UPDATES, config=_config(ema_schedule="constant"), grad_accum_steps=3,
      batch_size=B)
  params0 = _host(state.params)

  def accumulate(state, batches, expected_acc):
    params, target = _host(state.params), _host(state.target_params)
    for i, batch in enumerate(batches):  # the non-final micro-steps
      state, _ = _run(mesh, state, train_step, [batch])
      jax.tree.map(np.testing.assert_array_equal, _host(state.params), params)
      jax.tree.map(np.testing.assert_array_equal, _host(state.target_params), target)
      assert int(state.opt_state.mini_step) == i + 1
    # The accumulator holds the running mean of the micro-batch gradients.
    _assert_trees_close(state.opt_state.acc_grads, expected_acc)
    return state

  mean_grad = lambda params, batches: jax.tree.map(
      lambda *g: sum(g) / len(g), *[_reference_grad(params, b) for b in batches])
  state = accumulate(state, micro[:2], mean_grad(params0, micro[:2]))
  assert int(state.opt_state.gradient_step) == 0
  state, _ = _run(mesh, state, train_step, [micro[2]])
  params1 = _reference_sgd(params0, [_concat(micro[:3])])[0]
  _assert_trees_close(state.params, params1)
  _assert_trees_close(state.target_params,
                      jax.tree.map(lambda t, p: 0.99 * t + 0.01 * p, params0, params1))
  assert (int(state.opt_state.mini_step), int(state.opt_state.gradient_step)) == (0, 1)
  jax.tree.map(lambda a: np.testing.assert_array_equal(a, 0), _host(state.opt_state.acc_grads))
  accumulate(state, micro[3:], mean_grad(params1, micro[3:]))


class _StepProbe(toy_method.ToyMethod):
  """Reports the step the method sees in `loss_fn` (its ramps and warm-ups use it)."""

  def loss_fn(self, params, batch, *, state, rng):
    loss, aux = super().loss_fn(params, batch, state=state, rng=rng)
    return loss, aux._replace(metrics=dict(aux.metrics, method_step=state.step))


def test_learning_rate_ema_and_method_step_advance_per_update():
  mesh, state, train_step, _, _ = toy_method.toy_training_setup(
      total_steps=TOTAL_UPDATES, config=_config(), grad_accum_steps=2, batch_size=B,
      method_cls=_StepProbe)
  _, metrics = _run(mesh, state, train_step, _micro_batches(range(6)))
  updates = [0, 0, 1, 1, 2, 2]  # of micro-steps 0..5
  np.testing.assert_allclose([m["learning_rate"] for m in metrics],
                             [_lr(u) for u in updates], rtol=1e-6)
  np.testing.assert_allclose([m["ema_decay"] for m in metrics],
                             [_ema_decay(u) for u in updates], rtol=1e-6)
  assert [int(m["method_step"]) for m in metrics] == updates
  # Not what a schedule of micro-steps would give.
  assert not np.isclose(metrics[2]["learning_rate"], _lr(2))


def _bn_mean(params, images):
  return np.asarray(_reference_conv(params, images)).mean(axis=(0, 1, 2))


def test_batch_norm_sees_micro_batches_so_accumulation_differs():
  """The documented caveat: with batch norm, k x B is not one batch of k*B. The running
  mean is updated once per micro-batch from that micro-batch alone, and the update
  (normalised by micro-batch statistics) differs from the 2B step's."""
  micro = _micro_batches(range(2))
  mesh, state, train_step, _, _ = _setup(2, batch_norm=True)
  params0 = _host(state.params)
  accumulated, _ = _run(mesh, state, train_step, micro)
  mesh, state, train_step, _, _ = toy_method.toy_training_setup(
      total_steps=TOTAL_UPDATES, config=_config(batch_norm=True), grad_accum_steps=1,
      batch_size=2 * B)
  double, _ = _run(mesh, state, train_step, [_concat(micro)])

  images = [b["labelled"]["images"]["image"] for b in micro]
  m0, m1 = _bn_mean(params0, images[0]), _bn_mean(params0, images[1])  # params still 0
  np.testing.assert_allclose(accumulated.batch_stats["BatchNorm_0"]["mean"],
                             0.9 * 0.1 * m0 + 0.1 * m1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(double.batch_stats["BatchNorm_0"]["mean"],
                             0.1 * _bn_mean(params0, np.concatenate(images)),
                             rtol=1e-5, atol=1e-6)
  moved = lambda s: jax.tree.map(lambda a, b: np.abs(a - b).max(), _host(s.params), params0)
  difference = jax.tree.map(lambda a, b: np.abs(a - b).max(), _host(accumulated.params),
                            _host(double.params))
  # The updates differ by far more than float error (about 1e-7 here).
  assert difference["Conv_0"]["kernel"] > 1e-2 * moved(double)["Conv_0"]["kernel"]
  assert difference["Conv_0"]["kernel"] > 1e-5


def test_resume_mid_accumulation_is_exact(tmp_path):
  """A checkpoint after 1 of 2 micro-batches holds the accumulator (optax.MultiSteps's
  `acc_grads` in opt_state); restored into a fresh state the run continues exactly."""
  micro = _micro_batches(range(5))
  mesh, state, train_step, _, _ = _setup(2)
  uninterrupted, _ = _run(mesh, state, train_step, micro)
  uninterrupted = _host(uninterrupted)

  mesh, state, train_step, _, _ = _setup(2)
  state, _ = _run(mesh, state, train_step, micro[:3])
  saved_acc = _host(state.opt_state.acc_grads)
  assert int(state.opt_state.mini_step) == 1
  assert max(np.abs(a).max() for a in jax.tree.leaves(saved_acc)) > 0
  manager = checkpointing.make_manager(str(tmp_path), save_interval_steps=1)
  checkpointing.save(manager, state)
  manager.wait_until_finished()
  mesh, fresh, train_step, _, _ = _setup(2)
  restored = checkpointing.restore(manager, fresh)
  manager.close()
  assert (int(restored.step), int(restored.opt_state.mini_step)) == (3, 1)
  jax.tree.map(np.testing.assert_array_equal, _host(restored.opt_state.acc_grads), saved_acc)
  resumed, _ = _run(mesh, restored, train_step, micro[3:])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               _host(resumed), uninterrupted)


@pytest.mark.parametrize("value", [0, -2, True, 2.0])
def test_invalid_grad_accum_steps_is_a_one_line_error(value):
  opt = _config().optimizer
  with pytest.raises(ValueError, match=r"^config\.grad_accum_steps=.* must be an integer >= 1"
                     ) as info:
    optimizers.make_optimizer(opt, batch_size=B, total_steps=4, steps_per_epoch=1,
                              grad_accum_steps=value)
  assert "\n" not in str(info.value)


def test_train_loop_rejects_invalid_value_before_reading_data():
  config = supervised_fmnist.get_config("runlocal")
  config.grad_accum_steps = 0
  with pytest.raises(ValueError, match=r"config\.grad_accum_steps=0 must be"):
    setup.validate_config(config, sharding.make_mesh({"data": -1}))


def test_config_key_is_a_typed_int_defaulting_to_one():
  config = common.base_config()
  assert config.grad_accum_steps == 1
  with pytest.raises(TypeError):
    config.grad_accum_steps = 2.5
  config.grad_accum_steps = 4  # what --config.grad_accum_steps=4 sets


def test_effective_batch_scales_lr_and_epochs_count_updates():
  config = common.base_config()
  config.batch_size, config.grad_accum_steps = 64, 4
  config.optimizer.lr_scaling = "linear"
  assert setup.lr_batch_size(config) == 256
  config.optimizer.lr_batch_size = 4096  # an explicit paper batch wins
  assert setup.lr_batch_size(config) == 4096
  assert setup.steps_per_epoch(config, num_labelled=2560,
                               num_unlabelled=0) == 10  # 2560 / (64 x 4) updates


def test_resume_may_not_change_grad_accum_steps():
  recorded = {"batch_size": 64, "seed": 0}  # a config.json from before the key existed
  assert workdirs.config_changes(recorded, dict(recorded, grad_accum_steps=1)) == []
  assert workdirs.config_changes(recorded, dict(recorded, grad_accum_steps=2)) == [
      "grad_accum_steps (1 -> 2)"]
  assert workdirs.config_changes(dict(recorded, grad_accum_steps=2),
                                 dict(recorded, grad_accum_steps=4)) == [
      "grad_accum_steps (2 -> 4)"]


def _loop_config(**overrides):
  config = supervised_fmnist.get_config("runlocal")  # 6 steps, eval / save every 3
  config.data.image_size = 16
  config.grad_accum_steps = 2
  config.log_every_steps = 2
  config.update(overrides)
  return config


def _jsonl(path):
  return [json.loads(line) for line in open(path)]


def _checkpoint_steps(workdir):
  return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("accum")
  return workdir, train_loop.train_and_evaluate(_loop_config(), str(workdir))


def test_train_loop_counts_updates(loop_run):
  """num_train_steps, log / eval / checkpoint intervals and the logged steps count
  updates (12 micro-batches for 6 updates); checkpoints are named by micro-step; the
  learning rate is scaled by the effective batch 2 x 16 and follows the updates."""
  workdir, results = loop_run
  assert results["step"] == 6
  # orbax's first save (micro-step 1, mid-accumulation), then every 3 updates.
  assert _checkpoint_steps(workdir) == [1, 6, 12]
  records = _jsonl(workdir / "metrics.jsonl")
  assert [r["step"] for r in records if "train_loss" in r] == [2, 4, 6]
  assert [r["step"] for r in records if "eval_top1" in r] == [3, 6]
  # base_lr 1.6 x 32/256 after 1 warm-up update, cosine to 0 over 6 updates.
  peak = 1.6 * 32 / 256
  lr = lambda u: 0.0 if u == 0 else peak * 0.5 * (1 + math.cos(math.pi * (u - 1) / 5))
  logged = [r["train_learning_rate"] for r in records if "train_loss" in r]
  # Each record is the mean over its 4 micro-steps: 2 of each of its 2 updates.
  np.testing.assert_allclose(logged, [(lr(u) + lr(u + 1)) / 2 for u in (0, 2, 4)],
                             rtol=1e-5)


def test_train_loop_stop_mid_accumulation_resumes_exactly(loop_run, tmp_path, monkeypatch):
  """SIGTERM after micro-step 5 (update 3 half accumulated): the checkpoint at 5 holds
  the partial gradient, and the resumed run ends where the uninterrupted one did."""
  real = setup.make_train_step

  def make(*args, **kwargs):
    step_fn = real(*args, **kwargs)

    def wrapped(state, batch):
      state, metrics = step_fn(state, batch)
      if int(state.step) == 5:  # update 2 done, 1 of 2 micro-batches of update 3
        os.kill(os.getpid(), signal.SIGTERM)
      return state, metrics
    return wrapped
  monkeypatch.setattr(setup, "make_train_step", make)
  with pytest.raises(safety.Interrupted, match=r"at step 2 of 6 \(\+1 of 2 micro-batches "
                     r"accumulated\)"):
    train_loop.train_and_evaluate(_loop_config(), str(tmp_path))
  assert _checkpoint_steps(tmp_path)[-1] == 5
  monkeypatch.undo()
  results = train_loop.train_and_evaluate(_loop_config(), str(tmp_path))
  _, uninterrupted = loop_run
  for key in ("step", "train_param_norm", "train_loss", "eval_top1", "eval_ema_top1"):
    np.testing.assert_allclose(results[key], uninterrupted[key], rtol=1e-6, err_msg=key)
