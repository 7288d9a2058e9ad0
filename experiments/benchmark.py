"""Train-step benchmark: time, images/s, FLOPs, memory, collective bytes.

  python experiments/benchmark.py --config=configs/supervised_fmnist.py [--devices=8] [--write]

Builds the config's method on a synthetic batch of the configured shapes (no
input pipeline, so only the step is measured), compiles the one train step,
and prints: median step time over repeated steps after compile, images/s,
XLA's FLOPs per step and achieved FLOP/s against a matmul peak measured in the
same run, the compiled step's memory, and the bytes moved by all-reduce /
all-gather / reduce-scatter in the compiled HLO relative to the gradient bytes.
--write puts the table into docs/PERFORMANCE.md (section per config).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import bench_utils  # noqa: E402

from absl import app, flags  # noqa: E402

_CONFIG = bench_utils.define_config_flag()
_DEVICES = flags.DEFINE_integer("devices", 0, "Simulated CPU devices (0 = as they are).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after compile.")
_WRITE = flags.DEFINE_bool("write", False, "Write the result into docs/PERFORMANCE.md.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 10, "Classes of the synthetic data.")


NOTES = (
    "FLOPs are XLA's cost analysis of the compiled step (summed over devices); the peak is "
    "a float32 2048x2048 matmul on one device measured in the same run. Simulated CPU "
    "devices share the same 2 cores, so 8 devices measure partitioning overhead, not "
    "speed-up. The all-reduce bytes should equal the gradient bytes (one all-reduce of the "
    "gradients, plus the small batch-norm statistics): more would mean extra communication.")


def main(argv):
  del argv
  row = bench_utils.benchmark_train_step(_CONFIG.value, steps=_STEPS.value,
                                         num_classes=_NUM_CLASSES.value)
  table = bench_utils.markdown_table([row])
  print(table)
  if _WRITE.value:
    bench_utils.write_section(f"Train step: {row['config']}, {row['devices']} device(s)",
                              table + "\n\n" + NOTES, sys.argv)


if __name__ == "__main__":
  bench_utils.set_simulated_devices_from_argv()
  app.run(main)
