"""train_and_evaluate: the one loop every method runs through.

Resume order: the latest checkpoint in `workdir` -> `config.init_from`
(another stage's workdir: matching variables only) -> scratch. The step in the
restored state is also the position of the data stream, and the step's rng is
`fold_in(state.rng, step)`, so a resumed run continues exactly. The workdir
remembers its config (`config.json`): a resume with another experiment's config is
refused before anything is written (`workdirs.check_and_record_config`). It also
records what building the model needs besides the config (`model_info.json`: image
shape, classes, normalisation), so `semissl.load` needs no data pipeline.

A run stops, without writing a non-finite checkpoint, at the first step whose loss,
gradient norm or parameter norm is not finite; SIGTERM / SIGINT (or a jax.distributed
preemption notice) save and raise `safety.Interrupted`; a failed checkpoint write
stops the run at the next step (`safety.SaveError`). See training/safety.py.

Gradient accumulation (`config.grad_accum_steps` = k): the loop runs k train steps
(micro-batches of `config.batch_size`) per optimizer update. Every step count of
the config (`num_train_steps`, `num_epochs` through updates per epoch, warm-up,
`log/eval/checkpoint_every_steps`, the methods' ramps) counts optimizer updates, as
metrics.jsonl, the progress line and results.json do; `state.step`, the data
position, the rng, the checkpoint directory names and non-finite-step errors count
micro-batches. A stop (signal, preemption) may land mid-accumulation: the partial
mean gradient is in the optimizer state, so the resume is exact.
"""
from __future__ import annotations

import os
import signal
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from semissl.training import (checkpointing, epoch_pass, evaluators, model_info, safety, setup,
                               sharding, workdirs)
from semissl.training.metrics import MetricLogger, StepTimer
from semissl.training.train_state import TrainState


def init_from(state: TrainState, workdir: str) -> TrainState:
  """`config.init_from`: `state` with the variables of `workdir`'s latest checkpoint
  whose path and shape match (`checkpointing.load_variables_from`) as its params /
  batch_stats and as the EMA target's; everything else (optimizer, step) as it was."""
  loaded = checkpointing.load_variables_from(
      workdir, {"params": state.params, "batch_stats": state.batch_stats})
  # The target gets its own buffers: the train step donates the whole state.
  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  return state.replace(params=loaded["params"], batch_stats=loaded["batch_stats"],
                       target_params=copy(loaded["params"]),
                       target_batch_stats=copy(loaded["batch_stats"]))


def _check_workdir(workdir: str) -> None:
  """A one-line ValueError unless `workdir` is (or can be made) a writable directory."""
  path = workdirs.resolve(workdir)
  if path.exists() and not path.is_dir():
    raise ValueError(f"workdir {workdir} is a file; point --workdir at a directory.")
  if "://" in os.fspath(path):
    return  # remote storage: its own errors name the bucket and the permission
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as error:
    raise ValueError(f"workdir {workdir} is not writable ({error.strerror}); point "
                     "--workdir at a directory this user can write.") from None


def _write_results(workdir: str, config, metrics: dict, *, status: str, **extra) -> None:
  if jax.process_index() == 0:
    workdirs.write_json(workdirs.resolve(workdir) / "results.json",
                        {"status": status, "metrics": metrics, **extra,
                         "config": config.to_dict()})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: tuple[str, ...] = ()) -> dict[str, Any]:
  """Trains `config.method` and returns the final metrics (also in results.json).

  `allow_config_change`: config keys (or key prefixes) a resume may change
  although they make the continuation another experiment (e.g. `num_train_steps`).
  Raises `safety.NonFiniteError`, `safety.Interrupted` (saved; rerun to resume),
  `safety.SaveError`, or ValueError (bad input, before anything is written).
  """
  from semissl import data as data_lib  # the only TensorFlow user, imported here

  mesh = setup.make_mesh(config)
  setup.validate_config(config, mesh)
  _check_workdir(workdir)
  if config.get("init_from") and not checkpointing.has_checkpoint(workdir):
    checkpointing.require_checkpoint(config.init_from)  # before anything is written
  accepted = workdirs.check_and_record_config(workdir, config, allowed=allow_config_change,
                                              write=jax.process_index() == 0)
  if accepted:
    logging.warning("Resuming with changed config: %s", "; ".join(accepted))
  k = setup.grad_accum_steps(config)
  manager = checkpointing.make_manager(  # orbax counts micro-steps (state.step)
      workdir, max_to_keep=config.get("keep_checkpoints", 3),
      save_interval_steps=config.get("checkpoint_every_steps", 1000) * k)
  latest = manager.latest_step()
  start_step = int(latest) if latest is not None else 0

  data = data_lib.build_input(
      config.data, batch_size=config.batch_size, mu=config.get("mu", 0),
      eval_batch_size=config.eval_batch_size, seed=config.seed, workdir=workdir,
      process_index=jax.process_index(), process_count=jax.process_count(),
      start_step=start_step)
  info = setup.dataset_info_of(data, config)
  train_iter = data.train_iter()
  first_batch = sharding.global_batch(next(train_iter), mesh)
  run = setup.build(config, info, example_batch=first_batch, mesh=mesh)
  method, state = run.method, run.state
  if jax.process_index() == 0:  # what `semissl.load` needs besides config.json
    model_info.write(workdir, model_info.make_record(
        config=config, info=info, mean=data.info.mean, std=data.info.std,
        class_names=data.info.class_names, has_classifier=method.has_classifier))
  total_steps = info.total_steps

  if latest is not None:
    logging.info("Resuming from %s at step %d.", workdir, latest)
    state = checkpointing.restore(manager, state)
  elif config.get("init_from"):
    logging.info("Initialising variables from %s.", config.init_from)
    state = init_from(state, config.init_from)
  if latest is None:
    state = state.replace(method_state=method.load_method_state(
        state.method_state, load_variables=checkpointing.load_variables_from))

  evaluator = evaluators.make_evaluator(config, method, mesh=mesh,
                                        state_shardings=run.state_shardings)
  epoch_hook = epoch_pass.make_epoch_pass(
      method, data=data, mesh=mesh, state_shardings=run.state_shardings,
      steps_per_epoch=info.steps_per_epoch * k)
  logger = MetricLogger(workdir, total_steps=total_steps,
                        log_every=config.get("log_every_steps", 50),
                        start_step=int(jax.device_get(state.step)) // k, grad_accum_steps=k)

  with safety.StopSignals() as signals:
    try:
      outcome = _train(state, first_batch, train_step=run.train_step, train_iter=train_iter,
                       evaluator=evaluator, data=data, mesh=mesh, manager=manager,
                       logger=logger, signals=signals, config=config, workdir=workdir,
                       total_steps=total_steps, grad_accum_steps=k, epoch_hook=epoch_hook)
    except safety.Interrupted as interrupted:
      _write_results(workdir, config, dict(logger.last_train_metrics(), step=interrupted.step),
                     status="interrupted", signal=safety.signal_name(interrupted.signum))
      raise
    finally:
      _close(manager, workdir)
      logger.close()
  step, eval_metrics, train_seconds = outcome
  results = dict(eval_metrics, step=step, train_seconds=train_seconds,
                 num_labelled=info.num_labelled, num_unlabelled=info.num_unlabelled,
                 num_validation=data.info.num_validation, **logger.last_train_metrics())
  _write_results(workdir, config, results, status="complete")
  return results


def _close(manager, workdir: str) -> None:
  """Finishes the async save in flight (a failure there is reported, never hidden)."""
  try:
    manager.wait_until_finished()
    manager.check_for_errors()
  except Exception as error:  # noqa: BLE001  (re-raised as one line)
    raise safety.SaveError(_save_error_line(workdir, error)) from error
  finally:
    manager.close()


def _save_error_line(workdir: str, error: BaseException) -> str:
  cause = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
  return (f"checkpoint write to {workdirs.resolve(workdir) / 'checkpoints'} failed "
          f"({type(error).__name__}: {cause}); free space or fix permissions, then rerun "
          "the same command to resume from the last good checkpoint.")


def _train(state, batch, *, train_step, train_iter, evaluator, data, mesh, manager, logger,
           signals, config, workdir, total_steps, grad_accum_steps=1, epoch_hook=None):
  """The loop proper; returns (final update count, final eval metrics, train seconds).

  `epoch_hook` (training/epoch_pass.py, methods with `needs_epoch_pass`) may replace
  the method state before the step that starts an epoch.

  `step` counts train steps (micro-batches, = state.step); with k = `grad_accum_steps`
  the run ends after `total_steps` (updates) x k of them, evaluates every
  `eval_every_steps` x k, and reports optimizer updates (step // k)."""
  k = grad_accum_steps
  step = int(jax.device_get(state.step))
  first_step = step
  start_time = time.time()
  timer = StepTimer()  # train_step_ms / train_data_wait_ms: see StepTimer
  guard = safety.FiniteGuard(workdir)
  eval_every = config.get("eval_every_steps", 0) * k
  total_updates, total_steps = total_steps, total_steps * k

  metrics = None  # the last step's (device) metrics

  def save(force: bool = False) -> None:
    try:
      manager.check_for_errors()  # a failed async save stops the run at the next step
      if force or manager.should_save(step):
        if metrics is not None:
          guard.check_now(step, metrics)  # never a checkpoint of non-finite state
        checkpointing.save(manager, state, force=force)
    except safety.NonFiniteError:
      raise
    except Exception as error:  # noqa: BLE001  (re-raised as one line)
      raise safety.SaveError(_save_error_line(workdir, error)) from error

  while step < total_steps:
    if epoch_hook is not None:
      with timer.paused():
        state = epoch_hook.maybe_update(state, step)
    state, metrics = train_step(state, batch)  # dispatched; runs asynchronously
    if step == first_step:
      timer.restart()  # the first call blocks while compiling: not a train step's time
    step += 1
    # One batch of device prefetch: the next batch is read and sent to the devices
    # while the step just dispatched runs, before anything blocks on its results.
    if step < total_steps:
      with timer.waiting():
        batch = sharding.global_batch(next(train_iter), mesh)
    guard.push(step, metrics)  # checks the step before this one
    logger.record_train(step, metrics, timer)
    if eval_every and step % eval_every == 0 and step < total_steps:
      guard.check_now(step, metrics)  # no evaluation of a diverged state
      with timer.paused():
        eval_metrics = evaluator(state, data)
        logger.write(step // k, eval_metrics)
    save()
    preempted = manager.reached_preemption(step)
    if signals.stop_requested or preempted:
      save(force=True)
      manager.wait_until_finished()
      signum = signals.received if signals.received is not None else signal.SIGTERM
      cause = (safety.signal_name(signum) if signals.received is not None
               else "a preemption notice")
      where = f"{step // k} of {total_updates}"
      if step % k:
        where += f" (+{step % k} of {k} micro-batches accumulated)"
      raise safety.Interrupted(
          f"stopped by {cause} at step {where}; checkpoint saved in "
          f"{workdir}; rerun the same command to resume.", step=step // k, signum=signum)

  if metrics is not None:
    guard.check_now(step, metrics)
  eval_metrics = evaluator(state, data)
  logger.write(step // k, eval_metrics)
  save(force=True)
  return step // k, eval_metrics, time.time() - start_time
