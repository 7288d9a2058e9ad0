"""`pip install .` (not editable) gives the `semissl-train` command with the shipped
configs, usable outside a clone."""
import os
import subprocess
import sys

from tests import compile_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_installed_command_runs_a_shipped_config_outside_the_clone(tmp_path):
  site = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                  "--no-build-isolation", "--no-index", "--target", str(site), ROOT],
                 check=True, capture_output=True, timeout=600)
  assert (site / "configs" / "semppl_r50.py").exists() and (site / "bin" / "semissl-train").exists()
  assert not (site / "experiments").exists() and not (site / "tests").exists()
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env["XLA_FLAGS"] = compile_flags.FAST_COMPILE  # one CPU device, compiled as every test
  env["PYTHONPATH"] = str(site)  # the installed copy, not the clone
  run = lambda *args: subprocess.run(  # noqa: E731
      [sys.executable, str(site / "bin" / "semissl-train"), *args], cwd=outside, env=env,
      capture_output=True, text=True, timeout=600)

  where = subprocess.run([sys.executable, "-c", "import semissl, configs; "
                          "print(semissl.__file__); print(configs.__file__)"],
                         cwd=outside, env=env, capture_output=True, text=True, check=True)
  assert all(line.startswith(str(site)) for line in where.stdout.split())

  proc = run("--config=semppl_r5", f"--workdir={outside / 'bad'}")
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert "no shipped config 'semppl_r5'; known: " in lines[0] and "semppl_r50" in lines[0]

  proc = run("--config=supervised_fmnist:runlocal", f"--workdir={outside / 'run'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Final: eval_ema_top1=" in proc.stdout
  assert (outside / "run" / "results.json").exists()
