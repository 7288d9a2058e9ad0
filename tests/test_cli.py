"""`--config` name resolution of the training command (semissl/cli.py).

Run in a subprocess: semissl.cli defines the absl flags `--config` / `--workdir`, which
other experiment modules imported by the test session define too."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_path(spec: str) -> subprocess.CompletedProcess:
  code = f"from semissl import cli; print(cli.config_path({spec!r}))"
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))


def test_shipped_name_becomes_the_config_path():
  path = _config_path("semppl_r50:labels=1pct").stdout.strip()
  assert path.endswith(os.path.join("configs", "semppl_r50.py") + ":labels=1pct")
  assert _config_path("configs/semppl_fmnist.py:runlocal").stdout.strip() == (
      "configs/semppl_fmnist.py:runlocal")


@pytest.mark.parametrize("spec,use", [
    ("sempl_r50:labels=1pct", "--config=semppl_r50:labels=1pct"),
    ("sempl_fmnist", "--config=semppl_fmnist"),
    ("configs/sempl_fmnist.py:stage=finetune",
     "--config=configs/semppl_fmnist.py:stage=finetune"),
])
def test_renamed_config_fails_with_one_line_naming_the_new_name(spec, use):
  proc = _config_path(spec)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and lines[0].startswith(f"error: --config={spec}: ")
  assert lines[0].endswith(f"use {use}")
