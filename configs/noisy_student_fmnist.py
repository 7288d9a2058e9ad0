"""Noisy Student (Xie et al. 2020) on Fashion-MNIST, CPU-sized: teacher -> student ->
next student, each iteration reading the previous one's workdir.

All iterations in one command (workdirs WORKDIR/iteration0, /iteration1, ...):
  scripts/noisy_student_pipeline.sh WORKDIR [iterations] [variants]
or one by one:
  python experiments/main.py --config=configs/noisy_student_fmnist.py:iteration=0 \
      --workdir=W/iteration0
  python experiments/main.py --config=configs/noisy_student_fmnist.py:iteration=1 \
      --config.method.teacher_workdir=W/iteration0 --workdir=W/iteration1
  python experiments/main.py --config=configs/noisy_student_fmnist.py:iteration=2 \
      --config.method.teacher_workdir=W/iteration1 --workdir=W/iteration2
Variants (comma-separated key=value after ':'):
  iteration=0: the teacher: configs/supervised_fmnist.py's label-only recipe (noise=True
      adds stochastic depth and trains on the RandAugment view, as the paper's noised
      teacher; default off: the plain baseline of docs/RESULTS.md)
  iteration=k >= 1: a noised student (RandAugment views, dropout 0.5 before the
      classifier, stochastic depth 0.2 at the last block) on labelled CE + the teacher's
      soft pseudo-labels (threshold 0.3, class-balanced), from scratch
  teacher=<workdir of iteration k-1> (or --config.method.teacher_workdir=...)
  growth=1 (default: equal-size students) | g: iteration k's tiny_resnet stage widths are
      g^k times iteration 0's (an equal or larger student; its teacher_model is
      iteration k-1's)
  labels=1pct (default) | 10pct | all | 40 | perclass4   (the common Fashion-MNIST split)
  dataset=fashion_mnist (default) | folder:/path/to/root | any TFDS name
  runlocal  (a few steps, for tests)
The student's budget and optimizer are FixMatch's CPU recipe (configs/fixmatch_fmnist.py:
B = 32 labelled + 96 unlabelled, SGD Nesterov 0.03, 3000 steps); not tuned here.
"""
import ml_collections

from configs import common
from configs import fixmatch_cifar
from configs import fixmatch_fmnist
from configs import supervised_fmnist

DROPOUT = 0.5  # before the classifier (paper §3.1: 0.5 for the largest models)
DROP_PATH = 0.2  # stochastic depth of the last block (paper: survival 0.8)
THRESHOLD = 0.3  # paper §3.1: images with max teacher probability < 0.3 are filtered
BASE_WIDTHS = (32, 64, 128)  # tiny_resnet's stage widths (iteration 0)


def _widths(growth: int, iteration: int) -> tuple[int, ...]:
  return tuple(w * growth**iteration for w in BASE_WIDTHS)


def get_config(arg=None):
  args = common.parse_arg(arg, iteration=0, teacher="", growth=1, noise=False,
                          labels="1pct", runlocal=False, dataset="fashion_mnist")
  if args.iteration < 0 or args.growth < 1:
    raise ValueError(f"iteration={args.iteration}, growth={args.growth}: use iteration >= 0 "
                     "and growth >= 1.")
  if args.iteration == 0:
    config = supervised_fmnist.get_config(
        f"labels={args.labels},dataset={args.dataset}{',runlocal' if args.runlocal else ''}")
    if args.noise:
      config.model.drop_path_rate = DROP_PATH
      config.data.labelled_views = {"image": fixmatch_cifar.strong_view()}
    return config

  config = common.base_config()
  config.method = ml_collections.ConfigDict(dict(
      name="noisy_student", teacher_workdir=args.teacher, threshold=THRESHOLD,
      temperature=1.0, class_balance=True, hard_targets=False, dropout_rate=DROPOUT,
      unlabelled_weight=1.0, rampup="none",
      teacher_model=ml_collections.ConfigDict({"name": ""})))  # "": config.model
  fixmatch_fmnist.set_fmnist_semi_data(config, args)
  # The student's noise covers every input it sees (paper §2): RandAugment on both.
  config.data.labelled_views = {"image": fixmatch_cifar.strong_view()}
  fixmatch_fmnist.set_fmnist_training(config, args)
  config.model.drop_path_rate = DROP_PATH
  if args.growth > 1:
    config.model.stage_widths = _widths(args.growth, args.iteration)
    teacher = {"name": "tiny_resnet", "stem_stride": config.model.stem_stride,
               "stage_strides": tuple(config.model.stage_strides),
               "stage_widths": _widths(args.growth, args.iteration - 1)}
    config.method.teacher_model = ml_collections.ConfigDict(teacher)
  return config
