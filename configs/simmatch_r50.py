"""SimMatch ResNet-50 on ImageNet-1k with 1% / 10% labels (SimMatch Sec. 4.2), TPU/GPU.

  python experiments/main.py --config=configs/simmatch_r50.py:labels=1pct --workdir=gs://...
Variants: labels=1pct (default, 13 per class) | 10pct (128 per class);
labelled_ids_file=<path> (a given list instead, e.g. the CoMatch/SimMatch lists);
runlocal.

Paper values: lambda_u = 10, lambda_in = 5, t = 0.1, alpha = 0.9, tau = 0.7, mu = 5,
m = 0.999 (EMA teacher, Eq. 11), B = 64, DA over the past 256 steps, student-teacher
bank, SGD Nesterov lr 0.03 (not batch-scaled) with 5 warm-up epochs then cosine to
0, 400 epochs (an epoch = one pass over the unlabelled set), the student is
reported (`eval_top1`; the teacher is `eval_ema_top1`). Strong view: MoCo v2's
(random resized crop 0.2-1, colour jitter 0.4/0.4/0.4/0.1 w.p. 0.8, grayscale
w.p. 0.2, blur w.p. 0.5, flip) as a preset of the 'simclr' augmentation.

Split: the paper follows CoMatch's 13 / 128 images per class; here a seeded
stratified draw of 13 / 128 per class (not the official lists, nor SimCLR's
`imagenet2012_subset` lists): report which split a number uses.
From the public implementation, not the paper: weight decay 1e-4, weak view =
random resized crop (0.2, 1) + flip, 2048-2048-128 projection MLP without batch norm
(Linear-ReLU-Linear, `embedding_batch_norm=False`; True gives the BN head runs
before this option used); the instance terms (label propagation and L_in) start
after the first epoch (`instance_warmup_epochs=1`: the official `start_unlabel=
epoch>0`; the paper describes no warm-up, 0 is the paper).
"""
from configs import common

LABELS_PER_CLASS = {"1pct": 13, "10pct": 128}


def mocov2_strong_view() -> dict:
  """MoCo v2 augmentation (Chen et al. 2020c) as a 'simclr' spec."""
  return {"name": "simclr", "crop_prob": 1.0, "area_range": (0.2, 1.0),
          "aspect_ratio_range": (3 / 4, 4 / 3), "flip_prob": 0.5, "jitter_prob": 0.8,
          "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1,
          "grayscale_prob": 0.2, "blur_prob": 0.5, "blur_sigma_range": (0.1, 2.0),
          "solarize_prob": 0.0}


def weak_view() -> dict:
  return {"name": "crop_flip", "mode": "resized_crop", "area_range": (0.2, 1.0)}


def get_config(arg=None):
  args = common.parse_arg(arg, labels="1pct", labelled_ids_file="", runlocal=False)
  if args.labels not in LABELS_PER_CLASS:
    raise ValueError(f"labels={args.labels!r}; use 1pct or 10pct.")
  config = common.base_config()
  m = config.method
  m.name = "simmatch"
  m.variant = "student_teacher"
  m.lambda_u = 10.0
  m.lambda_in = 5.0
  m.temperature = 0.1
  m.alpha = 0.9
  m.threshold = 0.7
  m.bank_momentum = 0.0  # unused by the student-teacher bank (overwritten)
  m.distribution_alignment = True
  m.da_window = 256
  m.p_strategy = "smoothing"
  m.q_strategy = "scaling"
  m.embedding_dim = 128
  m.embedding_hidden_dim = 2048
  m.embedding_batch_norm = False  # official head: Linear-ReLU-Linear
  m.instance_warmup_epochs = 1.0  # official code (epoch > 0), not the paper
  m.teacher_train_mode = True

  data = config.data
  data.dataset = "imagenet2012"
  data.train_split = "train"
  data.eval_split = "validation"
  data.label_fraction = None
  data.labels_per_class = None if args.labelled_ids_file else LABELS_PER_CLASS[args.labels]
  data.labelled_ids_file = args.labelled_ids_file or None
  data.split_seed = 0
  data.validation_size = 0  # > 0: held-out train images for val_* metrics
  data.labelled_in_unlabelled = True
  data.image_size = 224
  data.num_channels = 3
  data.mean = (0.485, 0.456, 0.406)
  data.std = (0.229, 0.224, 0.225)
  data.labelled_views = {"image": weak_view()}
  data.unlabelled_views = {"weak": weak_view(), "strong": mocov2_strong_view()}

  config.model.name = "resnet50"
  config.model.dtype = "bfloat16"  # activations; parameters and losses stay float32
  config.model.remat = False  # True: nn.remat per block (memory for FLOPs; docs/PERFORMANCE.md)
  config.batch_size = 64
  config.mu = 5
  config.eval_batch_size = 1024
  opt = config.optimizer
  opt.name = "sgd"
  opt.base_lr = 0.03
  opt.lr_scaling = "none"
  opt.momentum = 0.9
  opt.nesterov = True
  opt.weight_decay = 1e-4
  opt.warmup_epochs = 5.0
  opt.schedule = "cosine"
  opt.end_lr = 0.0
  config.ema.decay = 0.999  # m of Eq. 11: the teacher
  config.num_epochs = 400.0
  config.log_every_steps = 100
  config.eval_every_steps = 20_000
  config.checkpoint_every_steps = 5_000
  if args.runlocal:
    common.make_runlocal(config)
    config.data.image_size = 32
    config.model.name = "resnet18"
    config.method.embedding_hidden_dim = 64
  return config
