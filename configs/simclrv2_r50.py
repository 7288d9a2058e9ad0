"""SimCLRv2 on ImageNet with the paper's settings (SimCLRv2 §2, §3.1): TPU/GPU pods.

  scripts/simclrv2_pipeline.sh gs://bucket/simclrv2 labels=1pct,model=r50_1x configs/simclrv2_r50.py
or stage by stage (each stage reads the previous one's workdir):
  python experiments/main.py --config=configs/simclrv2_r50.py:stage=pretrain --workdir=W/pretrain
  python experiments/main.py --config=configs/simclrv2_r50.py:stage=finetune,labels=1pct \
      --workdir=W/finetune --config.init_from=W/pretrain
  python experiments/main.py --config=configs/simclrv2_r50.py:stage=distill,labels=1pct \
      --workdir=W/distill --config.method.teacher_workdir=W/finetune --config.init_from=W/finetune
Variants (comma-separated key=value after ':'):
  stage=pretrain (default) | finetune | distill
  labels=1pct (default) | 10pct | 100pct
  model=r50_1x (default) | r50_2x_sk | r101_2x_sk | r152_3x_sk | r<depth>_<w>x[_sk]
  teacher=<model>  (distill; default: model = self-distillation, temperature 0.1; another
                    model = big-to-small, temperature 1.0, student from scratch: no init_from)
  protocol=simclr (default) | semppl   (finetune: SemPPL App. A.1 fine-tuning)
  runlocal  (a few steps on tiny images, for tests)
Fine-tuning reads TFDS `imagenet2012_subset/1pct|10pct` (SimCLR's label lists);
distillation reads all of `imagenet2012` train as unlabelled images (Eq. 2, alpha=1). For
Eq. 3 (alpha < 1) set data.labelled_ids_file to SimCLR's 1percent.txt / 10percent.txt.
"""
import re

import ml_collections

from configs import common
from configs import protocols
from semissl import training

STAGES = ("pretrain", "finetune", "distill")
# SimCLR's LARS skips BN, biases and the supervised head for weight decay and trust ratio
# (stages 1-2; the distillation student's classifier is adapted, see below).
NO_ADAPTATION = training.DEFAULT_NO_DECAY + "|^classifier/"


def parse_model(spec: str) -> tuple[ml_collections.ConfigDict, bool]:
  """'r152_3x_sk' -> (config.model, whether it is a 'larger variant': wide and/or SK)."""
  match = re.fullmatch(r"r(\d+)_(\d+)x(_sk)?", spec)
  if not match:
    raise ValueError(f"model={spec!r}; use r<depth>_<width>x[_sk], e.g. r50_1x or r152_3x_sk.")
  depth, width, sk = int(match[1]), int(match[2]), bool(match[3])
  model = ml_collections.ConfigDict({"name": f"resnet{depth}", "width_multiplier": width,
                                     "sk": "simclrv2" if sk else None,
                                     "dtype": "bfloat16",
                                     "remat": False})  # True: nn.remat per block
  return model, width > 1 or sk


def simclr_view(size: int):
  """SimCLR's ImageNet augmentation (Chen et al. 2020a App. A): crop, flip, colour
  distortion of strength 1 (p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5)."""
  return {"name": "simclr", "size": size, "area_range": (0.08, 1.0), "flip_prob": 0.5,
          "jitter_prob": 0.8, "brightness": 0.8, "contrast": 0.8, "saturation": 0.8,
          "hue": 0.2, "grayscale_prob": 0.2, "blur_prob": 0.5, "blur_sigma_range": (0.1, 2.0),
          "solarize_prob": 0.0}


def get_config(arg=None):
  args = common.parse_arg(arg, stage="pretrain", labels="1pct", model="r50_1x", teacher="",
                          protocol="simclr", runlocal=False)
  if args.stage not in STAGES:
    raise ValueError(f"stage={args.stage!r}; use one of {', '.join(STAGES)}.")
  if args.labels not in ("1pct", "10pct", "100pct"):
    raise ValueError(f"labels={args.labels!r}; use 1pct, 10pct or 100pct.")
  config = common.base_config()
  model, larger = parse_model(args.model)
  config.model = model
  head = dict(head_layers=3, head_hidden_dim=0, head_out_dim=128)  # 0: the encoder width
  finetune_layer = 0 if args.labels == "100pct" else 1

  data = config.data
  data.dataset = "imagenet2012"
  data.data_dir = None
  data.train_split = "train"
  data.eval_split = "validation"
  data.label_fraction = {"1pct": 0.01, "10pct": 0.1, "100pct": 1.0}[args.labels]
  data.labels_per_class = None
  data.labelled_ids_file = None
  data.split_seed = 0
  data.validation_size = 0  # > 0: held-out train images for val_* metrics
  data.labelled_in_unlabelled = True
  data.image_size = 224
  data.num_channels = 3
  data.mean = (0.485, 0.456, 0.406)
  data.std = (0.229, 0.224, 0.225)
  data.labelled_views = {}
  data.unlabelled_views = {}

  opt = config.optimizer
  opt.name = "lars"
  opt.momentum = 0.9
  opt.lr_scaling = "sqrt"
  opt.schedule = "cosine"
  opt.exclude_from_weight_decay = NO_ADAPTATION
  config.ema.decay = 0.999  # MoCo's momentum for the memory network
  config.eval_batch_size = 1024
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000

  if args.stage == "pretrain":
    # Labels are never used; the labelled subset is only the k-NN monitor's bank.
    config.method = ml_collections.ConfigDict(dict(
        name="simclr", temperature=0.1, queue_size=65536, **head))
    data.unlabelled_views = {"view1": simclr_view(224), "view2": simclr_view(224)}
    config.batch_size = 4096
    config.mu = 1
    config.num_epochs = 800.0
    opt.base_lr = 0.1  # x sqrt(4096) = 6.4
    opt.weight_decay = 1e-4
    opt.warmup_epochs = 40.0  # 5% of 800
    config.knn_monitor = ml_collections.ConfigDict({"k": 20, "temperature": 0.07})
    config.eval_every_steps = 10000
  elif args.stage == "finetune":
    config.method = ml_collections.ConfigDict(dict(
        name="simclr_finetune", finetune_layer=finetune_layer, **head))
    if args.labels != "100pct":  # the subset datasets hold only the labelled images
      data.dataset = f"imagenet2012_subset/{args.labels}"
      data.label_fraction = 1.0
    data.labelled_views = {"image": {"name": "crop_flip", "size": 224}}
    config.batch_size = 1024
    config.num_epochs = 60.0 if args.labels == "1pct" else 30.0
    opt.base_lr = 0.002 if larger else 0.005  # x sqrt(1024) = 0.064 / 0.16
    opt.weight_decay = 0.0
    opt.warmup_epochs = 0.0
    config.eval_every_steps = 1000
    if args.protocol == "semppl":
      protocols.semppl_finetune_protocol(config)
    elif args.protocol != "simclr":
      raise ValueError(f"protocol={args.protocol!r}; use simclr or semppl.")
  else:
    teacher_model, _ = parse_model(args.teacher or args.model)
    self_distillation = not args.teacher or args.teacher == args.model
    config.method = ml_collections.ConfigDict(dict(
        name="simclr_distill", teacher_workdir="", alpha=1.0,
        temperature=0.1 if self_distillation else 1.0,
        head_layers=0, finetune_layer=0, teacher_model=teacher_model,
        teacher_head_layers=head["head_layers"], teacher_head_hidden_dim=0,
        teacher_head_out_dim=head["head_out_dim"], teacher_finetune_layer=finetune_layer))
    data.unlabelled_views = {"image": {"name": "crop_flip", "size": 224}}
    config.batch_size = 4096
    config.mu = 1
    config.num_epochs = 400.0
    opt.base_lr = 0.1  # as pretraining: x sqrt(4096) = 6.4
    # The student's classifier is LARS-adapted here: unadapted (SimCLR's code) at this
    # lr and temperature 0.1 it diverged (Fashion-MNIST run, 200 steps).
    opt.exclude_from_weight_decay = training.DEFAULT_NO_DECAY
    opt.weight_decay = 1e-4
    opt.warmup_epochs = 20.0  # 5% of 400
    config.eval_every_steps = 10000

  if args.runlocal:
    common.make_runlocal(config)
    data.dataset = "fashion_mnist"  # tiny stand-in: the same code path on CPU
    data.eval_split = "test"
    data.num_channels = 3
    data.image_size = 32
    data.label_fraction = 0.01
    for views in (data.labelled_views, data.unlabelled_views):
      for spec in views.values():
        spec.size = 32
    for model_config in (config.model, config.method.get("teacher_model")):
      if model_config is not None:
        model_config.name = "resnet18" if model_config.name == "resnet50" else model_config.name
    if config.method.get("queue_size"):
      config.method.queue_size = 64
  return config
