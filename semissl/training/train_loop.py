"""train_and_evaluate: the one loop every method runs through.

Resume order: the latest checkpoint in `workdir` -> `config.init_from`
(another stage's workdir: matching variables only) -> scratch. The step in the
restored state is also the position of the data stream, and the step's rng is
`fold_in(state.rng, step)`, so a resumed run continues exactly.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from semissl import methods
from semissl.training import checkpointing, evaluation, optimizers, sharding, workdirs
from semissl.training.metrics import MetricLogger, StepTimer
from semissl.training.step import make_eval_step, make_train_step
from semissl.training.train_state import TrainState


def _dataset_info(info, config, labelled_labels=None) -> methods.DatasetInfo:
  per_epoch = steps_per_epoch(config, info)
  total_steps = int(config.get("num_train_steps") or round(config.num_epochs * per_epoch))
  return methods.DatasetInfo(num_classes=info.num_classes, image_shape=tuple(info.image_shape),
                             num_labelled=info.num_labelled, num_unlabelled=info.num_unlabelled,
                             steps_per_epoch=per_epoch, total_steps=total_steps,
                             labelled_labels=labelled_labels)


def validate_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """One-line errors for bad input, raised before any data is read or compiled."""
  methods.get_method(config.method.name)  # unknown names list the known ones
  if config.batch_size <= 0:
    raise ValueError(f"batch_size={config.batch_size} must be positive.")
  sharding.check_divisible("batch_size", config.batch_size, mesh)
  mu = config.get("mu", 0)
  if mu:
    sharding.check_divisible("mu*batch_size", int(mu * config.batch_size), mesh)
  sharding.check_divisible("eval_batch_size", config.eval_batch_size, mesh)
  if not (config.get("num_train_steps") or config.get("num_epochs")):
    raise ValueError("Set config.num_train_steps or config.num_epochs.")


def steps_per_epoch(config, info) -> int:
  """An epoch is a pass over the unlabelled stream if there is one, else the labelled."""
  mu = config.get("mu", 0)
  if mu and config.data.get("unlabelled_views"):
    return max(info.num_unlabelled // int(mu * config.batch_size), 1)
  return max(info.num_labelled // config.batch_size, 1)


def create_state(method, optimizer, *, rng, example_batch, mesh, extra_rules=()):
  """Initialises the TrainState directly into its shardings. Returns (state, shardings)."""
  init_rng, state_rng = jax.random.split(rng)

  def init_fn(batch):
    variables, method_state = method.init(init_rng, batch)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=optimizer.init(params), target_params=params,
                      target_batch_stats=batch_stats, method_state=method_state, rng=state_rng)

  abstract = jax.eval_shape(init_fn, example_batch)
  rules = list(extra_rules) + list(method.state_sharding_rules())
  state_shardings = sharding.tree_shardings(abstract, mesh, rules)
  state = jax.jit(init_fn, out_shardings=state_shardings)(example_batch)
  return state, state_shardings


def make_evaluator(method, *, config, mesh, state_shardings):
  """The eval step for `evaluate`: top-1/top-5 of the classifier, or for methods
  without one (`has_classifier=False`) the k-NN monitor of encoder features."""
  if method.has_classifier:
    return make_eval_step(method, mesh=mesh, state_shardings=state_shardings)
  return evaluation.KnnMonitor(method, mesh=mesh, state_shardings=state_shardings,
                               **dict(config.get("knn_monitor", None) or {}))


def evaluate(eval_step, state, data, mesh) -> dict[str, float]:
  """Eval metrics of `state`: `eval_top1`, `eval_top5` and their `eval_ema_*`, or,
  with a `KnnMonitor` as `eval_step`, `eval_knn_top1` and `eval_ema_knn_top1`; with
  a validation split (`data.validation_size`) the same on it as `val_*`."""
  if isinstance(eval_step, evaluation.KnnMonitor):
    return eval_step(state, data)
  sums_fn = lambda local_batch: eval_step(state, sharding.global_batch(local_batch, mesh))
  metrics: dict[str, float] = {}
  for prefix, batches in evaluation.eval_splits(data).items():
    metrics.update(evaluation.mean_over_batches(sums_fn, batches(), prefix=prefix))
  return metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.method` and returns the final metrics (also in results.json)."""
  from semissl import data as data_lib  # the only TensorFlow user, imported here

  mesh = sharding.make_mesh(config.get("mesh", None))
  validate_config(config, mesh)
  workdirs.resolve(workdir).mkdir(parents=True, exist_ok=True)
  manager = checkpointing.make_manager(
      workdir, max_to_keep=config.get("keep_checkpoints", 3),
      save_interval_steps=config.get("checkpoint_every_steps", 1000))
  latest = manager.latest_step()
  start_step = int(latest) if latest is not None else 0
  if latest is None and config.get("init_from"):
    checkpointing.require_checkpoint(config.init_from)  # fail before reading any data

  data = data_lib.build_input(
      config.data, batch_size=config.batch_size, mu=config.get("mu", 0),
      eval_batch_size=config.eval_batch_size, seed=config.seed, workdir=workdir,
      process_index=jax.process_index(), process_count=jax.process_count(),
      start_step=start_step)
  info = _dataset_info(data.info, config, labelled_labels=data.labelled_labels)
  method = methods.get_method(config.method.name)(config, info)
  method.validate()
  per_epoch, total_steps = info.steps_per_epoch, info.total_steps
  lr_batch = int(config.optimizer.get("lr_batch_size", 0) or config.batch_size)
  optimizer, schedule = optimizers.make_optimizer(
      config.optimizer, batch_size=lr_batch, total_steps=total_steps,
      steps_per_epoch=per_epoch, layer_id_fn=getattr(method, "layer_id_fn", None))

  train_iter = data.train_iter()
  first_batch = sharding.global_batch(next(train_iter), mesh)
  state, state_shardings = create_state(
      method, optimizer, rng=jax.random.PRNGKey(config.seed), example_batch=first_batch,
      mesh=mesh, extra_rules=config.get("sharding_rules", ()))

  if latest is not None:
    logging.info("Resuming from %s at step %d.", workdir, latest)
    state = checkpointing.restore(manager, state)
  elif config.get("init_from"):
    logging.info("Initialising variables from %s.", config.init_from)
    loaded = checkpointing.load_variables_from(
        config.init_from, {"params": state.params, "batch_stats": state.batch_stats})
    # The target gets its own buffers: the train step donates the whole state.
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    state = state.replace(params=loaded["params"], batch_stats=loaded["batch_stats"],
                          target_params=copy(loaded["params"]),
                          target_batch_stats=copy(loaded["batch_stats"]))
  if latest is None:
    state = state.replace(method_state=method.load_method_state(state.method_state))

  ema_fn = lambda step: optimizers.ema_decay(config, step, total_steps)
  train_step = make_train_step(method, optimizer, lr_schedule=schedule, ema_decay_fn=ema_fn,
                               mesh=mesh, state_shardings=state_shardings)
  eval_step = make_evaluator(method, config=config, mesh=mesh, state_shardings=state_shardings)
  logger = MetricLogger(workdir, total_steps=total_steps,
                        log_every=config.get("log_every_steps", 50))

  step = int(jax.device_get(state.step))
  first_step = step
  batch = first_batch
  eval_metrics: dict[str, float] = {}
  start_time = time.time()
  timer = StepTimer()  # train_step_ms / train_data_wait_ms: see StepTimer
  while step < total_steps:
    state, metrics = train_step(state, batch)  # dispatched; runs asynchronously
    if step == first_step:
      timer.restart()  # the first call blocks while compiling: not a train step's time
    step += 1
    # One batch of device prefetch: the next batch is read and sent to the devices
    # while the step just dispatched runs, before anything blocks on its results.
    if step < total_steps:
      with timer.waiting():
        batch = sharding.global_batch(next(train_iter), mesh)
    logger.record_train(step, metrics, timer)
    eval_every = config.get("eval_every_steps", 0)
    if eval_every and step % eval_every == 0 and step < total_steps:
      with timer.paused():
        eval_metrics = evaluate(eval_step, state, data, mesh)
        logger.write(step, eval_metrics)
    checkpointing.save(manager, state)
    if manager.reached_preemption(step):
      checkpointing.save(manager, state, force=True)
      manager.wait_until_finished()
      logging.warning("Preempted at step %d; checkpoint saved, exiting.", step)
      return {"preempted_at_step": step}

  eval_metrics = evaluate(eval_step, state, data, mesh)
  logger.write(step, eval_metrics)
  checkpointing.save(manager, state, force=True)
  manager.wait_until_finished()
  manager.close()
  results = dict(eval_metrics, step=step, train_seconds=time.time() - start_time,
                 num_labelled=info.num_labelled, num_unlabelled=info.num_unlabelled,
                 num_validation=data.info.num_validation, **logger.last_train_metrics())
  if jax.process_index() == 0:
    workdirs.write_json(workdirs.resolve(workdir) / "results.json",
                        {"metrics": results, "config": config.to_dict()})
  logger.close()
  return results
