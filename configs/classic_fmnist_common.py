"""What the classic-family Fashion-MNIST CPU configs share (pimodel_fmnist.py,
meanteacher_fmnist.py, pseudolabel_fmnist.py, uda_fmnist.py, vat_fmnist.py,
mixmatch_fmnist.py, meta_pseudo_labels_fmnist.py, label_propagation_fmnist.py;
remixmatch_fmnist.py builds on fixmatch_fmnist.py instead).

The model, optimizer, label split and data keys are those of
configs/supervised_fmnist.py (tiny_resnet, SGD-Nesterov lr 0.1 x B/256, weight
decay 5e-4, cosine, labelled batch 64), so every method is compared with the
supervised baseline on the same 1pct split. Each method adds mu x 64 unlabelled
images per step, for 1000 steps (the baseline runs 1500 labelled-only steps):
measured on 2 busy CPU cores, a step takes about 0.2 s (MixMatch, mu = 1),
0.3 s (Mean Teacher, pseudo-label) and 0.55-0.7 s (VAT, UDA, Pi-model),
i.e. 3-12 minutes a run.
Variants (comma-separated key=value after ':'):
  labels=1pct (default) | 10pct | all | 40 (labels in all) | perclassN
  dataset=fashion_mnist (default) | folder:/path/to/root | any TFDS name
  runlocal  (a few steps on a smaller tiny_resnet, for tests and smoke runs)
"""
from __future__ import annotations

import ml_collections

from configs import common

WEAK_VIEW = {"name": "crop_flip"}
# FixMatch's RandAugment variant + Cutout (semissl/data/augment_strong.py).
STRONG_VIEW = {"name": "randaugment"}
NUM_TRAIN_STEPS = 1000


def parse_args(arg: str | None, **extra) -> ml_collections.ConfigDict:
  """The family's variants (labels, runlocal, dataset) plus a config's `extra` ones."""
  return common.parse_arg(arg, labels="1pct", runlocal=False, dataset="fashion_mnist",
                          **extra)


def fmnist_config(args: ml_collections.ConfigDict, *, method_name: str,
                  labelled_views: dict, unlabelled_views: dict,
                  mu: int) -> ml_collections.ConfigDict:
  """supervised_fmnist's model / optimizer / data with the method's views and mu."""
  config = common.base_config()
  config.method.name = method_name
  common.set_fmnist_data(config, dataset=args.dataset, labels=args.labels)
  config.data.labelled_views = {k: dict(v) for k, v in labelled_views.items()}
  config.data.unlabelled_views = {k: dict(v) for k, v in unlabelled_views.items()}
  config.mu = mu

  common.set_tiny_resnet(config)
  common.set_fmnist_sgd_training(config, num_train_steps=NUM_TRAIN_STEPS)
  return config


def sigmoid_consistency(config: ml_collections.ConfigDict, *, weight: float = 10.0) -> None:
  """The consistency family's weight: w_max x exp(-5 (1 - t)^2) over the first third
  of training (Laine & Aila's sigmoid ramp-up); w_max = 10 is our Fashion-MNIST choice
  (the softmax MSE is averaged over the 10 classes)."""
  config.method.unlabelled_weight = weight
  config.method.rampup = "sigmoid"
  config.method.rampup_steps = NUM_TRAIN_STEPS // 3


def mean_teacher_ema(config: ml_collections.ConfigDict) -> None:
  """The EMA teacher of Mean Teacher and ICT: decay 0.999 (the papers' late-training
  value) with the warm-up min(1 - 1/(k + 1), 0.999)."""
  config.ema.decay = 0.999
  config.ema.schedule = "mean_teacher"


def finish(config: ml_collections.ConfigDict,
           args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Applies `runlocal`: a few steps, a smaller network, ramp-ups of 2 steps."""
  if args.runlocal:
    common.make_runlocal(config)
    config.model.stem_width = 8
    config.model.stage_widths = (16,)
    config.model.stage_strides = (2,)
    for key in ("rampup_steps", "rampup_start_step"):
      if key in config.method:
        config.method[key] = min(config.method[key], 2)
  return config
