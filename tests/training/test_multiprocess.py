"""Multi-host as several local processes (jax.distributed + gloo) equals one process."""
import json
import os
import socket
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import compile_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(num_processes, workdir, *extra):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env["XLA_FLAGS"] = compile_flags.FAST_COMPILE  # the worker adds its device count
  return [subprocess.Popen([sys.executable, "-m", "tests.training.multiprocess_worker",
                            str(i), str(num_processes), str(port), str(workdir), *extra],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
          for i in range(num_processes)]


def _launch(num_processes, workdir):
  procs = _start(num_processes, workdir)
  outputs = [p.communicate(timeout=600)[0].decode()[-3000:] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out
  return [json.load(open(os.path.join(workdir, f"process{i}.json")))
          for i in range(num_processes)]


def test_two_processes_equal_one(tmp_path):
  (single,) = _launch(1, tmp_path / "one")
  two = _launch(2, tmp_path / "two")
  for key in ("eval_top1", "eval_ema_top1", "train_loss", "train_grad_norm"):
    np.testing.assert_allclose(two[0][key], single[key], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(two[1][key], single[key], rtol=1e-4, atol=1e-5)
  assert os.path.exists(tmp_path / "two" / "results.json")


@pytest.mark.parametrize("signum, codes", [(signal.SIGTERM, [143, 143]),
                                           (signal.SIGINT, [143, 130])])
def test_signal_to_one_process_stops_every_process_at_one_step(tmp_path, signum, codes):
  """SIGTERM (a preemption notice) or Ctrl-C to one process of two: jax.distributed's
  preemption sync makes both stop at the same step, save it, mark results.json
  interrupted and exit 128 + signal (the process without a signal: 143)."""
  procs = _start(2, tmp_path, "100000")
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
    assert all(p.poll() is None for p in procs) and time.time() < deadline
    time.sleep(0.5)
  procs[1].send_signal(signum)
  outputs = [p.communicate(timeout=300)[0].decode()[-3000:] for p in procs]
  assert [p.returncode for p in procs] == codes, outputs
  steps = {json.load(open(tmp_path / f"interrupted{i}.json"))["step"] for i in range(2)}
  assert len(steps) == 1, steps
  (step,) = steps
  written = json.load(open(tmp_path / "results.json"))
  assert written["status"] == "interrupted" and written["metrics"]["step"] == step
  saved = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
  assert saved[-1] == step
