"""Per-class accuracy and confusion of a trained run's classifier (its own config).

  python experiments/confusion.py --config=configs/fixmatch_fmnist.py:labels=40 \
      --workdir=workdirs/results/40/fixmatch/seed0/stage0 [--split=validation]
Prints, for the online and the EMA weights, each class's recall and the class it is
most often mistaken for, and writes <workdir>/confusion_<split>.json. The default split
is the validation split (diagnosis and choices); `--split=eval` reads the test split.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from semissl.training import offline_evaluation, workdirs  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir (its latest checkpoint).")
_SPLIT = flags.DEFINE_enum("split", "validation", ["validation", "eval"],
                           "validation (held-out train images) or eval (the test split).")
flags.mark_flags_as_required(["config", "workdir"])


def report(matrix: np.ndarray, class_names: list[str]) -> list[str]:
  """One line per class: recall, its share of the predictions, the top confusion."""
  totals = matrix.sum(1)
  predicted = matrix.sum(0)
  lines = [f"{'class':<12} {'recall':>6} {'predicted':>9}  most often taken for"]
  for k, name in enumerate(class_names):
    errors = matrix[k].copy()
    errors[k] = 0
    worst = int(np.argmax(errors))
    share = errors[worst] / max(totals[k], 1)
    lines.append(f"{name:<12} {matrix[k, k] / max(totals[k], 1):6.1%} "
                 f"{predicted[k] / max(matrix.sum(), 1):9.1%}  "
                 f"{class_names[worst]} ({share:.1%})")
  lines.append(f"{'top-1':<12} {np.trace(matrix) / max(matrix.sum(), 1):6.1%}")
  return lines


def main(argv):
  del argv
  matrices = offline_evaluation.classifier_confusion(_CONFIG.value, _WORKDIR.value,
                                             split=_SPLIT.value)
  if jax.process_index():
    return
  num_classes = next(iter(matrices.values())).shape[0]
  names = [str(k) for k in range(num_classes)]
  if _CONFIG.value.data.get("dataset") == "fashion_mnist":
    from semissl.data import idx_files  # TF-free: the Fashion-MNIST class names
    names = list(idx_files.FASHION_MNIST_CLASS_NAMES)
  for prefix, matrix in matrices.items():
    print(f"== {'EMA' if prefix else 'online'} weights, {_SPLIT.value} split")
    print("\n".join(report(matrix, names)))
  workdirs.write_json(workdirs.resolve(_WORKDIR.value) / f"confusion_{_SPLIT.value}.json",
                      {"class_names": names,
                       **{f"{prefix or 'online_'}confusion": m.tolist()
                          for prefix, m in matrices.items()}})


if __name__ == "__main__":
  app.run(main)
