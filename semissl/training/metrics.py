"""Metric logging through clu (TensorBoard + log) and ReportProgress.

Every written scalar also goes, one JSON object per write, to
`<workdir>/metrics.jsonl` (process 0), so plots and tables need no TensorBoard.
clu's writers import TensorFlow, so they are imported lazily here: importing
`semissl.training` stays TensorFlow-free.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from semissl.training import workdirs


class MetricLogger:
  """Averages train metrics over `log_every` steps and writes them with clu."""

  def __init__(self, workdir: str, *, total_steps: int, log_every: int):
    from clu import metric_writers, periodic_actions  # lazy: imports TensorFlow

    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0)
    self.progress = periodic_actions.ReportProgress(num_train_steps=total_steps,
                                                    writer=self.writer, every_secs=None,
                                                    every_steps=log_every)
    self.log_every = max(int(log_every), 1)
    self.total_steps = total_steps
    self._jsonl = (workdirs.JsonLinesWriter(workdirs.resolve(workdir) / "metrics.jsonl")
                   if jax.process_index() == 0 else None)
    self._pending: list[dict[str, Any]] = []
    self._last: dict[str, float] = {}

  def record_train(self, step: int, metrics: dict[str, Any]) -> None:
    """Keeps the step's (device) metrics; fetches and writes them every `log_every`."""
    self._pending.append(metrics)
    self.progress(step)
    if step % self.log_every == 0 or step == self.total_steps:
      fetched = jax.device_get(self._pending)
      self._pending = []
      means = {f"train_{k}" if not k.startswith("train_") else k:
               float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      self._last = means
      self.write(step, means)

  def write(self, step: int, scalars: dict[str, float]) -> None:
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
