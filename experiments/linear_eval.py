"""Linear evaluation of a trained run's encoder on frozen features (its own config).

  python experiments/linear_eval.py --config=configs/simclrv2_fmnist.py:stage=pretrain \
      --workdir=W/pretrain [--config.data.label_fraction=1.0] [--l2_penalty=1e-4,1e-2,1]
Extracts `eval_features` (online and EMA) of the labelled train images and of the eval
split with the eval view, fits a softmax-regression probe with L-BFGS and writes
<workdir>/linear_eval.json (semissl.training.offline_evaluation.linear_evaluation). With
several --l2_penalty values the run's validation split chooses one.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from semissl.training import offline_evaluation  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (its latest checkpoint).")
_L2 = flags.DEFINE_list("l2_penalty", ["1e-4"],
                        "L2 penalty of the linear probe's weights; several: chosen on the "
                        "validation split.")
_STEPS = flags.DEFINE_integer("max_steps", 500, "L-BFGS iterations at most.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  results = offline_evaluation.linear_evaluation(_CONFIG.value, _WORKDIR.value,
                                         l2_penalty=[float(v) for v in _L2.value], max_steps=_STEPS.value)
  if jax.process_index() == 0:
    print("Linear evaluation: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(results.items())),
          flush=True)


if __name__ == "__main__":
  app.run(main)
