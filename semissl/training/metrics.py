"""Metric logging: TensorBoard (clu), `metrics.jsonl` and one progress line per interval.

Every written scalar also goes, one JSON object per write, to
`<workdir>/metrics.jsonl` (process 0), so plots and tables need no TensorBoard.
Process 0 prints one line per log interval (`format_progress`) and one per other
write (e.g. evaluation), instead of clu's several log lines per interval.
clu's writers import TensorFlow, so they are imported lazily here: importing
`semissl.training` stays TensorFlow-free.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from semissl.training import workdirs


class StepTimer:
  """Wall time of the train loop per step, and the part of it spent waiting for input.

  `lap(num_steps)` covers the wall time since the previous lap (or `restart`)
  minus the `paused()` blocks (evaluation): dispatch, input, checkpoint saves
  and the host blocking on device results all count, so `step_ms` is the real
  throughput of training. `waiting()` wraps the fetch of the next batch
  (`next(train_iter)` + `global_batch`); the step dispatched before it runs on
  the devices meanwhile, so a wait fraction near 0 means the input keeps up and
  one near 1 means the devices idle waiting for input.
  """

  def __init__(self):
    self.restart()

  def restart(self) -> None:
    self._start = time.perf_counter()
    self._wait = 0.0
    self._paused = 0.0

  @contextlib.contextmanager
  def waiting(self):
    start = time.perf_counter()
    try:
      yield
    finally:
      self._wait += time.perf_counter() - start

  @contextlib.contextmanager
  def paused(self):
    start = time.perf_counter()
    try:
      yield
    finally:
      self._paused += time.perf_counter() - start

  def lap(self, num_steps: int) -> dict[str, float]:
    """Means per step since the last lap: `data_wait_ms`, `step_ms`, `data_wait_fraction`
    (wait / step) and `steps_per_sec`; then restarts."""
    elapsed = max(time.perf_counter() - self._start - self._paused, 1e-9)
    steps = num_steps if num_steps > 0 else 1  # a fraction: updates of accumulated steps
    out = {"data_wait_ms": 1e3 * self._wait / steps, "step_ms": 1e3 * elapsed / steps,
           "data_wait_fraction": min(self._wait / elapsed, 1.0),
           "steps_per_sec": steps / elapsed}
    self.restart()
    return out


def format_duration(seconds: float) -> str:
  """42s, 15m32s, 2h05m."""
  seconds = max(int(round(seconds)), 0)
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_progress(step: int, total_steps: int, scalars: dict[str, float]) -> str:
  """`step 300/3000 (10%) | 2.9 steps/s | ETA 15m32s | loss 1.234 | pl_acc 0.712 |
  mask 0.45 | wait 4%` from the logged train means (fields whose key is absent are
  left out: pl_acc / mask only for methods with pseudo-labels)."""
  parts = [f"step {step}/{total_steps} ({100 * step // max(total_steps, 1)}%)"]
  rate = scalars.get("train_steps_per_sec")
  if rate:
    parts.append(f"{rate:.1f} steps/s" if rate >= 1 else f"{rate:.2f} steps/s")
    parts.append(f"ETA {format_duration((total_steps - step) / rate)}")
  for key, label, fmt in (("train_loss", "loss", "{:.4g}"),
                          ("train_pl_accuracy", "pl_acc", "{:.3f}"),
                          ("train_pl_mask_rate", "mask", "{:.2f}"),
                          ("train_data_wait_fraction", "wait", "{:.0%}")):
    if key in scalars:
      parts.append(f"{label} {fmt.format(scalars[key])}")
  return " | ".join(parts)


def format_scalars(step: int, scalars: dict[str, float]) -> str:
  """`step 1000 | eval_ema_top1 0.7123 | eval_top1 0.7100` (evaluation lines)."""
  return " | ".join([f"step {step}"] + [f"{k} {v:.4g}" for k, v in sorted(scalars.items())])


class _LibraryInfoFilter(logging.Filter):
  """Drops the INFO lines of orbax (dozens per checkpoint save) and clu."""

  _DIRS = tuple(f"{os.sep}{name}{os.sep}" for name in ("orbax", "clu"))

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(
        d in record.pathname for d in self._DIRS)


def quiet_library_logs() -> None:
  """Keeps warnings and errors of orbax, clu and jax but none of their INFO lines
  (our own INFO lines stay). Both log through absl's logger, so filter by file."""
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _LibraryInfoFilter) for f in absl_logger.filters):
    absl_logger.addFilter(_LibraryInfoFilter())
  logging.getLogger("jax").setLevel(logging.WARNING)  # e.g. "Unable to initialize backend"


class MetricLogger:
  """Averages train metrics over `log_every` steps, writes them (TensorBoard +
  metrics.jsonl) and prints the progress line.

  With gradient accumulation (`grad_accum_steps` = k > 1) `record_train` is called
  once per micro-step with the micro-step count; `total_steps`, `log_every`,
  `start_step` and every written step count optimizer updates (micro-steps // k),
  the train means average all micro-steps of the interval and the timings are per
  update."""

  def __init__(self, workdir: str, *, total_steps: int, log_every: int, start_step: int = 0,
               grad_accum_steps: int = 1):
    """`start_step`: the step a resumed run continues from. Records of later steps
    (logged before a crash, after the last checkpoint) are dropped from
    metrics.jsonl, so they are not written twice, and the last train record up to
    `start_step` is kept for `last_train_metrics`."""
    from clu import metric_writers  # lazy: imports TensorFlow

    self._main = jax.process_index() == 0
    # TensorBoard on process 0 only; no clu LoggingWriter (the progress line replaces it).
    summaries = [metric_writers.SummaryWriter(os.fspath(workdir))] if self._main else []
    self.writer = metric_writers.AsyncMultiWriter(summaries)
    self.log_every = max(int(log_every), 1)
    self.total_steps = total_steps
    self._k = max(int(grad_accum_steps), 1)
    self._pending: list[dict[str, Any]] = []
    self._last: dict[str, float] = {}
    path = workdirs.resolve(workdir) / "metrics.jsonl"
    if self._main and path.exists():
      self._last = workdirs.truncate_json_lines(path, max_step=start_step,
                                                last_with_prefix="train_")
    self._jsonl = workdirs.JsonLinesWriter(path) if self._main else None

  def record_train(self, step: int, metrics: dict[str, Any],
                   timer: StepTimer | None = None) -> None:
    """Keeps the step's (device) metrics; every `log_every` steps fetches them and
    writes their means with `timer`'s lap as `train_data_wait_ms`, `train_step_ms`,
    `train_data_wait_fraction` and `train_steps_per_sec`."""
    self._pending.append(metrics)
    if step % (self.log_every * self._k) == 0 or step == self.total_steps * self._k:
      fetched = jax.device_get(self._pending)  # blocks until these steps are done
      means = {f"train_{k}" if not k.startswith("train_") else k:
               float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      if timer is not None:
        lap = timer.lap(len(fetched) / self._k if self._k > 1 else len(fetched))
        means.update({f"train_{k}": v for k, v in lap.items()})
      self._pending = []
      self._last = means
      update = step // self._k
      self._write(update, means)
      if self._main:
        print(format_progress(update, self.total_steps, means), flush=True)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    """Writes and prints other scalars (evaluation)."""
    self._write(step, scalars)
    if self._main and scalars:
      print(format_scalars(step, scalars), flush=True)

  def _write(self, step: int, scalars: dict[str, float]) -> None:
    self.writer.write_scalars(step, scalars)
    self.writer.flush()
    if self._jsonl is not None:
      self._jsonl.write({"step": int(step), **scalars})

  def last_train_metrics(self) -> dict[str, float]:
    return dict(self._last)

  def close(self) -> None:
    self.writer.close()
    if self._jsonl is not None:
      self._jsonl.close()
