"""FixMatch on CIFAR-10 / CIFAR-100, the FixMatch paper's RA protocol (GPU/TPU).

  python experiments/main.py --config=configs/fixmatch_cifar.py:labels=250 --workdir=/tmp/fm
Variants: dataset=cifar10 (default) | cifar100; labels=<total labelled> (CIFAR-10:
40 | 250 | 4000; CIFAR-100: 400 | 2500 | 10000; split evenly over the classes);
teacher=self (FixMatch, default) | ema; runlocal.

Sohn et al. 2020 (FixMatch) Sec. 4 / App. B.1: WRN-28-2 (CIFAR-10) / WRN-28-8
(CIFAR-100); B = 64, mu = 7, lambda_u = 1, tau = 0.95, hard pseudo-labels, T = 1;
SGD Nesterov momentum 0.9, lr 0.03 * cos(7 pi k / 16 K), weight decay 5e-4
(CIFAR-100: 1e-3), K = 2^20 steps; the EMA model (0.999) is evaluated. Weak view:
flip + 4 px (12.5%) reflect-padded translation; strong: RandAugment with random
magnitude (2 ops) + Cutout (half the side).
"""
from configs import common

NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def weak_view() -> dict:
  """FixMatch's weak augmentation: flip + pad-and-crop (4 px at 32)."""
  return {"name": "crop_flip"}


def strong_view() -> dict:
  """FixMatch RA: crop + flip, 2 ops with magnitude ~ U[0, 10], op prob 0.5, Cutout 0.5."""
  return {"name": "randaugment", "num_ops": 2, "magnitude": 10,
          "magnitude_mode": "uniform", "ops": "fixmatch", "op_prob": 0.5,
          "cutout": 0.5}


def set_cifar_data(config, *, dataset: str, labels: int) -> None:
  """CIFAR data keys: `labels` in all, the same number per class (seeded split)."""
  if dataset not in NUM_CLASSES:
    raise ValueError(f"dataset={dataset!r}; use cifar10 or cifar100.")
  if labels % NUM_CLASSES[dataset]:
    raise ValueError(f"labels={labels} must be a multiple of {NUM_CLASSES[dataset]}.")
  data = config.data
  data.dataset = dataset
  data.train_split = "train"
  data.eval_split = "test"
  data.label_fraction = None
  data.labels_per_class = labels // NUM_CLASSES[dataset]
  data.labelled_ids_file = None
  data.split_seed = 0
  data.validation_size = 0  # > 0: held-out train images for val_* metrics
  data.labelled_in_unlabelled = True  # FixMatch: U is the whole training set
  data.image_size = 32
  data.num_channels = 3
  data.labelled_views = {"image": weak_view()}
  data.unlabelled_views = {"weak": weak_view(), "strong": strong_view()}


def set_fixmatch_optimizer(config, *, dataset: str) -> None:
  """SGD Nesterov, lr 0.03 cos(7 pi k / 16 K), 2^20 steps, EMA 0.999 for evaluation."""
  config.model.name = "wrn28_2" if dataset == "cifar10" else "wrn28_8"
  config.batch_size = 64
  config.mu = 7
  config.eval_batch_size = 1000
  opt = config.optimizer
  opt.name = "sgd"
  opt.base_lr = 0.03
  opt.lr_scaling = "none"
  opt.momentum = 0.9
  opt.nesterov = True
  opt.weight_decay = 5e-4 if dataset == "cifar10" else 1e-3
  opt.warmup_steps = 0
  opt.schedule = "fixmatch_cosine"
  config.ema.decay = 0.999
  config.num_train_steps = 2 ** 20
  config.log_every_steps = 200
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 10_000


def get_config(arg=None):
  args = common.parse_arg(arg, dataset="cifar10", labels=250, teacher="self",
                          runlocal=False)
  config = common.base_config()
  m = config.method
  m.name = "fixmatch"
  m.teacher = args.teacher
  m.threshold = 0.95
  m.lambda_u = 1.0
  m.soft_targets = False
  m.temperature = 1.0
  m.label_smoothing = 0.0
  m.distribution_alignment = False
  m.pseudo_mixup = False
  m.labelled_mixup = False
  set_cifar_data(config, dataset=args.dataset, labels=args.labels)
  set_fixmatch_optimizer(config, dataset=args.dataset)
  if args.runlocal:
    common.make_runlocal(config)
    config.mu = 1
  return config
