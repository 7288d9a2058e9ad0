"""FixMatch on Fashion-MNIST, CPU-sized (same label split as supervised_fmnist).

  python experiments/main.py --config=configs/fixmatch_fmnist.py --workdir=/tmp/fm
Variants (comma-separated key=value after ':'):
  labels=1pct (default) | 10pct | all | 40 (labels in all) | perclass4
  dataset=fashion_mnist (default) | folder:/path/to/root | any TFDS name
  strong=randaugment (default) | cta: the strong view's augmentation; `cta` is the
            paper's CTAugment variant, "FixMatch (CTA)": the pipeline gives crop + flip
            and the method applies CTAugment (2 transformations, 17 bins, decay 0.99,
            threshold 0.8, as configs/remixmatch_fmnist.py) + Cutout on device
  runlocal  (a few steps, for tests)

FixMatch's recipe (configs/fixmatch_cifar.py: tau = 0.95, lambda_u = 1, hard
pseudo-labels, SGD Nesterov lr 0.03 cos(7 pi k / 16 K), weak flip + crop, strong
RandAugment + Cutout, the EMA model evaluated) scaled to two CPU cores: tiny_resnet,
B = 32 labelled + mu = 3 -> 96 unlabelled images, EMA 0.99, a few thousand steps.
"""
from configs import common
from configs import fixmatch_cifar

STRONG = ("randaugment", "cta")


def set_fmnist_semi_data(config, args) -> None:
  """Fashion-MNIST data keys + FixMatch's weak / strong views (shared by the
  fixmatch / simmatch / emateacher CPU configs)."""
  common.set_fmnist_data(config, dataset=args.dataset, labels=args.labels)
  config.data.labelled_views = {"image": fixmatch_cifar.weak_view()}
  config.data.unlabelled_views = {"weak": fixmatch_cifar.weak_view(),
                                  "strong": fixmatch_cifar.strong_view()}


def set_fmnist_training(config, args) -> None:
  """tiny_resnet, B = 32, mu = 3, SGD Nesterov 0.03 with the FixMatch cosine."""
  common.set_tiny_resnet(config)
  config.batch_size = 32
  config.mu = 3
  config.eval_batch_size = 1000
  opt = config.optimizer
  opt.name = "sgd"
  opt.base_lr = 0.03
  opt.lr_scaling = "none"
  opt.momentum = 0.9
  opt.nesterov = True
  opt.weight_decay = 5e-4
  opt.warmup_steps = 0
  opt.schedule = "fixmatch_cosine"
  config.ema.decay = 0.99
  config.num_train_steps = 3000
  config.log_every_steps = 100
  config.eval_every_steps = 500  # test + validation curves for docs/RESULTS.md
  config.checkpoint_every_steps = 500
  if args.runlocal:
    common.make_runlocal(config)


def get_config(arg=None):
  args = common.parse_arg(arg, labels="1pct", runlocal=False, dataset="fashion_mnist",
                          strong="randaugment")
  if args.strong not in STRONG:
    raise ValueError(f"strong={args.strong!r}; known: {STRONG}.")
  config = common.base_config()
  m = config.method
  m.name = "fixmatch"
  m.teacher = "self"
  m.threshold = 0.95
  m.lambda_u = 1.0
  m.soft_targets = False
  m.temperature = 1.0
  m.label_smoothing = 0.0
  m.distribution_alignment = False
  m.pseudo_mixup = False
  m.labelled_mixup = False
  set_fmnist_semi_data(config, args)
  if args.strong == "cta":
    m.strong_augment = "ctaugment"
    m.cta_depth = 2
    m.cta_decay = 0.99
    m.cta_threshold = 0.8
    config.data.unlabelled_views["strong"] = fixmatch_cifar.weak_view()
  set_fmnist_training(config, args)
  return config
