"""Multi-host as several local processes (jax.distributed + gloo) equals one process."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(num_processes, workdir):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  procs = [subprocess.Popen([sys.executable, "-m", "tests.training.multiprocess_worker",
                             str(i), str(num_processes), str(port), str(workdir)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(num_processes)]
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
