"""What keeps a run from losing work or reporting success wrongly.

* `FiniteGuard`: the train loop stops at the first step whose loss, gradient
  norm or parameter norm is not finite (`NonFiniteError`), and a checkpoint is
  only written after its own step's metrics were checked, so no checkpoint ever
  holds non-finite state and retention never deletes the newest finite one.
* `StopSignals`: SIGTERM / SIGINT ask the loop to finish the current step, save
  and raise `Interrupted` (exit status 128 + signal: 143 / 130); a second SIGINT
  exits at once. With several processes every process stops at the same step
  (jax.distributed's preemption sync; a SIGINT is forwarded to it as SIGTERM).
* `RunError`: the base of the errors a user can act on; `experiments/main.py`
  prints their one line instead of a traceback.
"""
from __future__ import annotations

import math
import os
import signal
import threading
from typing import Any

import jax
import numpy as np

# The step metrics whose non-finite value stops a run (training/step.py makes them):
# the loss and gradient of the step, and the norm of the parameters it produced (a
# NaN learning rate or an overflowing update leaves the first two finite).
GUARDED_METRICS = ("loss", "grad_norm", "param_norm")


class RunError(Exception):
  """A failure the user can act on; its message is one line that says what to change."""

  exit_code = 1


class NonFiniteError(RunError):
  """The loss, gradient norm or parameter norm of a step is NaN or infinite."""


class SaveError(RunError):
  """A checkpoint could not be written (disk full, permissions)."""


class Interrupted(RunError):
  """SIGTERM / SIGINT / a jax.distributed preemption notice: saved, not finished."""

  def __init__(self, message: str, *, step: int, signum: int):
    super().__init__(message)
    self.step = step
    self.signum = signum
    self.exit_code = 128 + signum


class FiniteGuard:
  """Checks each step's guarded metrics one step late (so the host never waits
  for the step it just dispatched), or at once before a checkpoint (`check_now`)."""

  def __init__(self, workdir: str):
    self._workdir = workdir
    self._pending: tuple[int, dict[str, Any]] | None = None
    self.last_checked_step = -1

  def push(self, step: int, metrics: dict[str, Any]) -> None:
    """Checks the previously pushed step, then keeps `metrics` of `step`."""
    if self._pending is not None:
      self._check(*self._pending)
    self._pending = (step, metrics)

  def check_now(self, step: int, metrics: dict[str, Any]) -> None:
    """Blocks until `step` is done and raises `NonFiniteError` if it is not finite."""
    if self._pending is not None and self._pending[0] < step:
      self._check(*self._pending)
    self._check(step, metrics)
    self._pending = None

  def _check(self, step: int, metrics: dict[str, Any]) -> None:
    if step <= self.last_checked_step:
      return
    values = jax.device_get({k: metrics[k] for k in GUARDED_METRICS if k in metrics})
    for name, value in values.items():
      value = float(np.asarray(value))
      if not math.isfinite(value):
        raise NonFiniteError(
            f"train {name} is {value} at step {step}: stopped without saving that state "
            f"(the checkpoints in {os.fspath(self._workdir)} are all finite); lower "
            "optimizer.base_lr or check the data, then resume or start a new workdir.")
    self.last_checked_step = step


class StopSignals:
  """Context manager: SIGTERM and SIGINT set `received` instead of killing the run.

  Single process (main thread): both handled here; the loop stops once
  `stop_requested`. Several processes: every process must stop at the same step,
  which jax.distributed's preemption sync gives (the loop asks orbax's
  `manager.reached_preemption`). SIGTERM is left to that sync's own handler, and a
  SIGINT is recorded (for the exit status, 130) and re-sent to this process as
  SIGTERM so that it reaches the sync too; `stop_requested` stays False so that no
  process stops before the agreed step. A second SIGINT while a stop is pending
  raises KeyboardInterrupt at once.
  """

  def __init__(self, enabled: bool | None = None, *, multi_process: bool | None = None):
    if multi_process is None:
      multi_process = jax.process_count() > 1
    if enabled is None:
      enabled = threading.current_thread() is threading.main_thread()
    self.enabled = enabled
    self.multi_process = multi_process
    self.received: int | None = None
    self._previous: dict[int, Any] = {}

  @property
  def stop_requested(self) -> bool:
    """Whether to stop after this step without waiting for a preemption sync."""
    return self.received is not None and not self.multi_process

  def _handle(self, signum, frame):
    del frame
    if self.received == signal.SIGINT and signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
    self.received = signum
    if self.multi_process:  # hand the stop to jax.distributed's preemption sync
      os.kill(os.getpid(), signal.SIGTERM)

  def __enter__(self) -> "StopSignals":
    if self.enabled:
      signals = (signal.SIGINT,) if self.multi_process else (signal.SIGTERM, signal.SIGINT)
      for signum in signals:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}


def signal_name(signum: int) -> str:
  try:
    return signal.Signals(signum).name
  except ValueError:
    return f"signal {signum}"
