"""A run never loses work or reports success wrongly (training/safety.py, the loop).

In process: a non-finite step stops the run before its state is saved and the
newest finite checkpoint survives retention; a resume with another experiment's
config is refused before anything is written; SIGTERM saves, marks results.json
interrupted and the rerun finishes; a failed async save stops the run. Through
experiments/main.py (subprocesses): exit statuses and one-line errors.
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.path import atomicity

from configs import supervised_fmnist
from semissl.training import checkpointing, safety, setup, train_and_evaluate
from tests import compile_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**overrides):
  config = supervised_fmnist.get_config("runlocal")
  config.data.image_size = 16
  for key, value in overrides.items():
    config[key] = value
  return config


def _strict_json_lines(path):
  """metrics.jsonl parsed with NaN / Infinity tokens rejected (they are not JSON)."""
  def reject(token):
    raise ValueError(f"non-JSON token {token} in {path}")
  return [json.loads(line, parse_constant=reject) for line in open(path)]


def _checkpoint_steps(workdir):
  return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def _wrap_train_step(monkeypatch, after_step):
  """make_train_step whose steps call `after_step(new_step, metrics)` on the host."""
  real = setup.make_train_step

  def make(*args, **kwargs):
    step_fn = real(*args, **kwargs)

    def wrapped(state, batch):
      state, metrics = step_fn(state, batch)
      return state, after_step(int(state.step), metrics)
    return wrapped
  monkeypatch.setattr(setup, "make_train_step", make)


def test_non_finite_step_stops_before_saving_it(tmp_path, monkeypatch):
  """Step 3's loss is NaN: the run stops there, checkpoints 1 and 2 (keep 1 -> 2)
  are the only ones ever finalised, metrics.jsonl stays JSON."""
  poison = lambda step, m: dict(m, loss=jnp.float32(np.nan)) if step >= 3 else m
  _wrap_train_step(monkeypatch, poison)
  config = _config(checkpoint_every_steps=1, keep_checkpoints=1, log_every_steps=1)
  with pytest.raises(safety.NonFiniteError, match=r"train loss is nan at step 3"):
    train_and_evaluate(config, str(tmp_path))
  assert _checkpoint_steps(tmp_path) == [2]
  assert not (tmp_path / "results.json").exists()
  logged = _strict_json_lines(tmp_path / "metrics.jsonl")
  assert [r["train_loss"] for r in logged if r["step"] == 3] == [None]
  assert not [r for r in logged if "eval_top1" in r]  # the step-3 state was not evaluated


def _snapshot(workdir):
  return {p: (os.path.getmtime(os.path.join(d, p)), os.path.getsize(os.path.join(d, p)))
          for d, _, files in os.walk(workdir) for p in files}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("finished")
  results = train_and_evaluate(_config(), str(workdir))
  return workdir, results


@pytest.mark.parametrize("change,key", [
    (lambda c: c.data.update(label_fraction=0.1), "data.label_fraction"),
    (lambda c: c.update(batch_size=32), "batch_size"),
    (lambda c: c.optimizer.update(base_lr=0.5), "optimizer.base_lr"),
    (lambda c: c.update(num_train_steps=8), "num_train_steps"),
    (lambda c: c.model.update(name="resnet18"), "model.name"),
])
def test_resume_with_another_experiment_is_refused_before_writing(finished_run, change, key):
  workdir, _ = finished_run
  before = _snapshot(workdir)
  config = _config()
  change(config)
  with pytest.raises(ValueError, match=rf"started with another config: changed {key} "):
    train_and_evaluate(config, str(workdir))
  assert _snapshot(workdir) == before


def test_allowed_change_continues_and_is_recorded(tmp_path):
  workdir = tmp_path / "run"
  train_and_evaluate(_config(), str(workdir))
  # How often it logs, evaluates and saves may change freely, the rest if allowed.
  results = train_and_evaluate(
      _config(num_train_steps=8, log_every_steps=1, eval_every_steps=0), str(workdir),
      allow_config_change=("num_train_steps",))
  assert results["step"] == 8
  assert json.load(open(workdir / "config.json"))["num_train_steps"] == 8
  assert json.load(open(workdir / "results.json"))["status"] == "complete"


def test_labelled_ids_are_never_overwritten(tmp_path):
  from semissl.data import splits
  path = str(tmp_path / "labelled_ids.txt")
  splits.write_labelled_ids(path, np.array([3, 1, 2]))
  splits.write_labelled_ids(path, np.array([3, 1, 2]))  # the same ids: kept
  with pytest.raises(ValueError, match="ids of an earlier run"):
    splits.write_labelled_ids(path, np.arange(10))
  assert open(path).read() == "3\n1\n2\n"


def test_sigterm_saves_marks_interrupted_and_resumes(tmp_path, monkeypatch):
  def terminate(step, metrics):
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return metrics
  _wrap_train_step(monkeypatch, terminate)
  previous = signal.getsignal(signal.SIGTERM)
  with pytest.raises(safety.Interrupted, match="SIGTERM at step 2 of 6") as info:
    train_and_evaluate(_config(), str(tmp_path))
  assert info.value.exit_code == 143
  assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
  assert _checkpoint_steps(tmp_path)[-1] == 2
  written = json.load(open(tmp_path / "results.json"))
  assert written["status"] == "interrupted" and written["signal"] == "SIGTERM"
  assert written["metrics"]["step"] == 2 and np.isfinite(written["metrics"]["train_loss"])
  monkeypatch.undo()
  results = train_and_evaluate(_config(), str(tmp_path))
  assert results["step"] == 6
  assert json.load(open(tmp_path / "results.json"))["status"] == "complete"
  steps = [r["step"] for r in _strict_json_lines(tmp_path / "metrics.jsonl")
           if "train_loss" in r]
  assert steps == [2, 4, 6]


def test_second_sigint_stops_at_once():
  with safety.StopSignals(enabled=True) as signals:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)
    assert signals.received == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1.0)


def test_failed_async_save_stops_the_run(tmp_path, monkeypatch):
  """The write of step 2 fails in orbax's background thread: the run stops with
  one line naming the checkpoint directory; step 1 stays restorable."""
  real_finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self, *args, **kwargs):
    if os.path.basename(os.fspath(self.get_final())) == "2":
      raise OSError(28, "No space left on device")
    return await real_finalize(self, *args, **kwargs)
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", finalize)
  config = _config(checkpoint_every_steps=1, keep_checkpoints=1)
  with pytest.raises(safety.SaveError, match=r"checkpoint write to .*checkpoints failed "
                     r"\(.*No space left on device\)"):
    train_and_evaluate(config, str(tmp_path))
  monkeypatch.undo()
  assert 1 in _checkpoint_steps(tmp_path)
  manager = checkpointing.make_manager(str(tmp_path), max_to_keep=1)
  assert manager.latest_step() == 1
  manager.close()


# experiments/main.py: exit statuses and one-line errors.

def _main(workdir, *args, wait=True):
  command = [sys.executable, "experiments/main.py", f"--workdir={workdir}", *args]
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", XLA_FLAGS=compile_flags.FAST_COMPILE)
  if not wait:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)


def _error_line(proc):
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


CONFIG = "--config=configs/supervised_fmnist.py:runlocal"


def test_main_exit_statuses_and_one_line_errors(tmp_path):
  # Bad input: exit 2, one line, nothing written.
  proc = _main(tmp_path / "a", "--config=configs/supervised_fmnist.py:labels=7")
  assert proc.returncode == 2 and "multiple of the 10 classes" in _error_line(proc)
  proc = _main(tmp_path / "a", CONFIG, "--config.optimizer.bas_lr=0.1")
  assert proc.returncode == 2 and "no key 'bas_lr'" in _error_line(proc)
  proc = _main(tmp_path / "a", "--config=configs/supervised_fmnist.py:runlocal,"
               "dataset=no_such_dataset")
  line = _error_line(proc)
  assert proc.returncode == 2 and "Unknown dataset 'no_such_dataset'" in line
  assert len(proc.stderr.splitlines()) < 20, proc.stderr[-3000:]  # no TFDS catalogue
  assert not (tmp_path / "a" / "labelled_ids.txt").exists()

  a_file = tmp_path / "a_file"
  a_file.write_text("")
  proc = _main(a_file, CONFIG)
  assert proc.returncode == 2 and "is a file" in _error_line(proc)
  # Read-only even for root: sysfs refuses new directories and files.
  for read_only in ("/sys/kernel", "/sys/kernel/semissl_run"):
    proc = _main(read_only, CONFIG)
    assert proc.returncode == 2 and f"workdir {read_only} is not writable" in _error_line(proc)
  proc = _main(tmp_path / "c", CONFIG, "--config.evaluator=top1")
  assert proc.returncode == 2 and "evaluator='top1'; known: classifier, knn" in _error_line(proc)
  assert not (tmp_path / "c").exists()
  proc = _main(tmp_path / "b", CONFIG, "--config.init_from=/no/such/run")
  assert proc.returncode == 2 and "has no checkpoint" in _error_line(proc)
  assert not (tmp_path / "b").exists() or not os.listdir(tmp_path / "b")

  # A real divergence: a NaN rate makes the step-1 parameters NaN (loss and gradient
  # of step 1 are still finite): stopped on the parameter norm; exit 1, one line, no
  # checkpoint.
  proc = _main(tmp_path / "nan", CONFIG, "--config.optimizer.base_lr=nan")
  assert proc.returncode == 1 and "param_norm is nan at step 1" in _error_line(proc)
  assert not [n for n in os.listdir(tmp_path / "nan" / "checkpoints") if n.isdigit()]


def test_main_sigterm_exits_143_then_refuses_another_config(tmp_path):
  workdir = tmp_path / "run"
  proc = _main(workdir, CONFIG, "--config.num_train_steps=100000",
               "--config.log_every_steps=1", wait=False)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 143, stderr[-3000:]
  assert "rerun the same command to resume" in stderr and "Traceback" not in stderr
  written = json.load(open(workdir / "results.json"))
  assert written["status"] == "interrupted" and written["metrics"]["step"] >= 2
  assert _checkpoint_steps(workdir)[-1] == written["metrics"]["step"]

  # Ctrl-C on the resumed run: saved again, exit 130.
  proc = _main(workdir, CONFIG, "--config.num_train_steps=100000",
               "--config.log_every_steps=1", wait=False)
  step = written["metrics"]["step"]
  deadline = time.time() + 300
  while max([r["step"] for r in _strict_json_lines(metrics)], default=0) <= step + 1:
    assert proc.poll() is None and time.time() < deadline, proc.communicate()
    time.sleep(0.5)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 130 and "stopped by SIGINT" in stderr, stderr[-3000:]
  assert json.load(open(workdir / "results.json"))["signal"] == "SIGINT"

  ids_before = (workdir / "labelled_ids.txt").read_text()
  proc = _main(workdir, "--config=configs/supervised_fmnist.py:runlocal,labels=10pct",
               "--config.num_train_steps=100000")
  line = _error_line(proc)
  assert proc.returncode == 2 and "changed data.label_fraction (0.01 -> 0.1)" in line
  assert (workdir / "labelled_ids.txt").read_text() == ids_before


def test_override_of_a_none_default_parses():
  """`--config.data.labels_per_class=3` (default None) and friends parse on the
  command line (typed placeholders, configs/common.py)."""
  from absl import flags
  from ml_collections import config_flags
  argv = ["main", "--config=configs/supervised_fmnist.py", "--config.data.labels_per_class=3",
          "--config.data.label_fraction=0.5", "--config.data.data_dir=/data",
          "--config.data.num_channels=3"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  data = values.config.data
  assert (data.labels_per_class, data.label_fraction, data.data_dir, data.num_channels) == (
      3, 0.5, "/data", 3)
  assert data.to_dict()["labelled_ids_file"] is None
