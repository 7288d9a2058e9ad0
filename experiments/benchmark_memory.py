"""Memory growth of a long run: resident memory (RSS) of experiments/main.py at two steps.

Runs a runlocal config for --steps steps in a fresh workdir (logging every 50 steps,
checkpointing every 500, no periodic evaluation) and samples the process's VmRSS
when metrics.jsonl first shows step --early and step --late. A leak in the loop
(kept device metrics, growing host lists, checkpoint buffers) shows as late >> early.
With --write it replaces the section of docs/PERFORMANCE.md.

  python experiments/benchmark_memory.py [--config=configs/supervised_fmnist.py:runlocal]
      [--early=200] [--steps=2000] [--write]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import bench_utils  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLE = "Memory growth of a long run (RSS of experiments/main.py)"


def rss_mib(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024.0
  raise RuntimeError(f"no VmRSS for pid {pid}")


def last_step(path: str) -> int:
  if not os.path.exists(path):
    return 0
  steps = [json.loads(line).get("step", 0) for line in open(path) if line.strip()]
  return max(steps, default=0)


def measure(config: str, *, early: int, steps: int) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    command = [sys.executable, "experiments/main.py", f"--config={config}",
               f"--workdir={workdir}", f"--config.num_train_steps={steps}",
               "--config.log_every_steps=50", "--config.eval_every_steps=0",
               "--config.checkpoint_every_steps=500"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    late = steps - 50  # the last train log before the final one (then comes evaluation)
    samples, metrics = {}, os.path.join(workdir, "metrics.jsonl")
    start = time.time()
    while proc.poll() is None and len(samples) < 2:
      step = last_step(metrics)
      for target in (early, late):
        if target not in samples and step >= target:
          samples[target] = (step, rss_mib(proc.pid))
      time.sleep(0.1)
    _, stderr = proc.communicate()
    if proc.returncode or len(samples) < 2:
      raise SystemExit(f"run failed (exit {proc.returncode}): {stderr[-2000:]}")
  (early_step, early_rss), (late_step, late_rss) = samples[early], samples[late]
  return {"config": config, "early step": early_step, "RSS early (MiB)": early_rss,
          "late step": late_step, "RSS late (MiB)": late_rss,
          "growth (MiB)": late_rss - early_rss,
          "growth per 1000 steps (MiB)": (late_rss - early_rss) * 1000 / (late_step - early_step),
          "wall (s)": time.time() - start}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/supervised_fmnist.py:runlocal")
  parser.add_argument("--early", type=int, default=200)
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--write", action="store_true")
  args = parser.parse_args()
  row = measure(args.config, early=args.early, steps=args.steps)
  table = bench_utils.markdown_table([row])
  print(table)
  if args.write:
    body = (table + "\n\nRSS is sampled from /proc when metrics.jsonl first shows the "
            "step (polled every 0.1 s, so the step can be a little later); the late "
            "sample is the train log 50 steps before the end, before the final evaluation.")
    bench_utils.write_section(TITLE, body, sys.argv)


if __name__ == "__main__":
  main()
