"""Supervised ResNet-50 on the ImageNet 1% / 10% subsets (TPU), the labelled-only baseline.

  python experiments/main.py --config=configs/supervised_r50.py:labels=10pct --workdir=gs://...
Variants: labels=1pct (default) | 10pct | 100pct; width=1|2|4; depth=50|101|152|200; runlocal.
The subsets are TFDS's `imagenet2012_subset/1pct` and `/10pct` (SimCLR's split lists).
"""
from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, labels="1pct", width=1, depth=50, runlocal=False)
  config = common.base_config()
  config.method.name = "supervised"
  config.method.label_smoothing = 0.1

  data = config.data
  data.dataset = ("imagenet2012" if args.labels == "100pct"
                  else f"imagenet2012_subset/{args.labels}")
  data.data_dir = None
  data.train_split = "train"
  data.eval_split = "validation"
  # The subset datasets hold only the labelled images: use all of them.
  data.label_fraction = 1.0
  data.labels_per_class = None
  data.labelled_ids_file = None
  data.split_seed = 0
  data.validation_size = 0  # > 0: held-out train images for val_* metrics
  data.labelled_in_unlabelled = True
  data.image_size = 224
  data.num_channels = 3
  data.mean = (0.485, 0.456, 0.406)
  data.std = (0.229, 0.224, 0.225)
  data.labelled_views = {"image": {"name": "crop_flip"}}
  data.unlabelled_views = {}

  config.model.name = f"resnet{args.depth}"
  config.model.dtype = "bfloat16"  # activations; parameters and losses stay float32
  config.model.remat = False  # True: nn.remat per block (memory for FLOPs; docs/PERFORMANCE.md)
  config.model.width_multiplier = args.width
  config.batch_size = 1024
  config.eval_batch_size = 1024
  config.optimizer.name = "sgd"
  config.optimizer.base_lr = 0.1
  config.optimizer.lr_scaling = "linear"
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 1e-4 if args.labels == "100pct" else 5e-4
  config.optimizer.warmup_epochs = 5.0
  config.optimizer.schedule = "cosine"
  config.ema.decay = 0.9999
  config.num_epochs = {"1pct": 200.0, "10pct": 100.0, "100pct": 90.0}[args.labels]
  config.log_every_steps = 100
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 2000
  if args.runlocal:
    common.make_runlocal(config)
    config.data.image_size = 32
    config.model.name = "resnet18"
  return config
