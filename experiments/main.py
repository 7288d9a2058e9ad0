"""Entry point: flags -> config -> semissl.training.train_and_evaluate.

  python experiments/main.py --config=configs/supervised_fmnist.py --workdir=/tmp/run
  python experiments/main.py --config=configs/sempl_r50.py:labels=1pct --workdir=gs://...
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from semissl.training import train_and_evaluate  # noqa: E402
from semissl.training.metrics import quiet_library_logs  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results.json go here.")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False,
    "Call jax.distributed.initialize() (multi-host TPU/GPU, or several local CPU processes).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if logging.get_verbosity() <= logging.INFO:
    quiet_library_logs()  # orbax logs dozens of INFO lines per save; --verbosity=1 shows them
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("JAX processes: %d, local devices: %d, global devices: %d",
               jax.process_count(), jax.local_device_count(), jax.device_count())
  results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    summary = ", ".join(f"{k}={v:.4f}" for k, v in sorted(results.items())
                        if k.startswith("eval_") and isinstance(v, float))
    print(f"Final: {summary}", flush=True)


if __name__ == "__main__":
  app.run(main)
