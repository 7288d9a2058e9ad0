"""Progress line, step timer and the library-log filter of semissl.training.metrics."""
import logging

from semissl.training import metrics


def test_format_progress_semi_supervised():
  scalars = {"train_steps_per_sec": 2.9, "train_loss": 1.2341, "train_pl_accuracy": 0.7123,
             "train_pl_mask_rate": 0.4512, "train_data_wait_fraction": 0.041,
             "train_step_ms": 344.8, "train_learning_rate": 0.03}
  assert metrics.format_progress(300, 3000, scalars) == (
      "step 300/3000 (10%) | 2.9 steps/s | ETA 15m31s | loss 1.234 | pl_acc 0.712 | "
      "mask 0.45 | wait 4%")


def test_format_progress_supervised_and_slow():
  scalars = {"train_steps_per_sec": 0.25, "train_loss": 0.5, "train_data_wait_fraction": 0.0}
  assert metrics.format_progress(6, 1500, scalars) == (
      "step 6/1500 (0%) | 0.25 steps/s | ETA 1h39m | loss 0.5 | wait 0%")
  assert metrics.format_progress(1500, 1500, {"train_loss": 0.25}) == (
      "step 1500/1500 (100%) | loss 0.25")


def test_format_duration_and_scalars():
  assert [metrics.format_duration(s) for s in (0, 42.4, 932, 3600, 7501)] == [
      "0s", "42s", "15m32s", "1h00m", "2h05m"]
  assert metrics.format_scalars(1000, {"eval_top1": 0.71, "eval_ema_top1": 0.7123456}) == (
      "step 1000 | eval_ema_top1 0.7123 | eval_top1 0.71")


def test_step_timer_lap_keys_and_ranges():
  timer = metrics.StepTimer()
  with timer.waiting():
    pass
  with timer.paused():
    pass
  lap = timer.lap(4)
  assert set(lap) == {"data_wait_ms", "step_ms", "data_wait_fraction", "steps_per_sec"}
  assert 0.0 <= lap["data_wait_ms"] <= lap["step_ms"]
  assert 0.0 <= lap["data_wait_fraction"] <= 1.0


def _record(path, level):
  return logging.LogRecord("absl", level, path, 1, "message", None, None)


def test_quiet_library_logs_keeps_ours_and_warnings():
  metrics.quiet_library_logs()
  metrics.quiet_library_logs()  # idempotent: one filter
  absl_logger = logging.getLogger("absl")
  filters = [f for f in absl_logger.filters if isinstance(f, metrics._LibraryInfoFilter)]
  assert len(filters) == 1
  orbax = "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"
  clu = "/venv/site-packages/clu/metric_writers/logging_writer.py"
  ours = "/work/semissl/training/train_loop.py"
  assert not absl_logger.filter(_record(orbax, logging.INFO))
  assert not absl_logger.filter(_record(clu, logging.INFO))
  assert absl_logger.filter(_record(orbax, logging.WARNING))
  assert absl_logger.filter(_record(ours, logging.INFO))
  absl_logger.removeFilter(filters[0])
