"""SimCLRv2 on Fashion-MNIST, CPU-sized (tiny_resnet): pretrain -> fine-tune -> distill.

All three stages in one command (workdirs WORKDIR/pretrain, /finetune, /distill):
  scripts/simclrv2_pipeline.sh WORKDIR [variants]
or stage by stage, each stage reading the previous one's workdir:
  python experiments/main.py --config=configs/simclrv2_fmnist.py:stage=pretrain --workdir=W/pretrain
  python experiments/main.py --config=configs/simclrv2_fmnist.py:stage=finetune \
      --workdir=W/finetune --config.init_from=W/pretrain
  python experiments/main.py --config=configs/simclrv2_fmnist.py:stage=distill \
      --workdir=W/distill --config.method.teacher_workdir=W/finetune --config.init_from=W/finetune
Variants (comma-separated key=value after ':'):
  stage=pretrain (default) | finetune | distill
  labels=1pct (default) | 10pct | all | 40 | perclass4   (the common Fashion-MNIST split)
  dataset=fashion_mnist (default) | folder:/path/to/root | any TFDS name
  queue=0 (default; SimCLRv2 App. G: no memory on small data) | N (MoCo queue entries)
  teacher=simclrv2 (default) | semppl   (distill: the fine-tuned teacher's head; semppl:
         a configs/semppl_fmnist.py stage=finetune run, classifier on projector layer 1)
  protocol=auto (default: semppl with 40 / perclassN labels, simclr otherwise) | simclr
         | semppl (finetune: SemPPL App. A.1 fine-tuning, encoder_lr / classifier_lr
           base rates x B/256, default 0.001 / 0.04)
  Chosen on the validation split at 40 labels (seed 0, the 1500-step pretraining):
  SimCLRv2's fine-tune 62.5 val top-1; App. A.1 at rates 0.01 / 0.4: 65.3; at
  0.001 / 0.04: 66.8 (runs: docs/results/diagnostics/simclrv2_40_finetune). As for
  SemPPL (configs/semppl_fmnist.py), 40 images can only teach the read-out.
  runlocal  (a few steps, for tests)
The pretraining stage has no classifier: its eval is the k-NN monitor (eval_knn_top1).
"""
import ml_collections

from configs import common
from configs import protocols
from configs import semppl_fmnist
from semissl import training

STAGES = ("pretrain", "finetune", "distill")
# SimCLR's LARS skips the supervised head's weight decay and trust ratio too (stages 1-2).
NO_ADAPTATION = training.DEFAULT_NO_DECAY + "|^classifier/"


def simclr_view(**overrides):
  """SimCLR's augmentation for 28x28 gray images: crop, flip, brightness/contrast jitter
  (saturation, hue and grayscale are identities on one channel); no blur, as SimCLR on
  CIFAR."""
  spec = {"name": "simclr", "area_range": (0.2, 1.0), "brightness": 0.4, "contrast": 0.4,
          "jitter_prob": 0.8, "blur_prob": 0.0}
  spec.update(overrides)
  return spec


def get_config(arg=None):
  args = common.parse_arg(arg, stage="pretrain", labels="1pct", dataset="fashion_mnist",
                          queue=0, protocol="auto", runlocal=False, encoder_lr=0.001,
                          classifier_lr=0.04, teacher="simclrv2")
  if args.stage not in STAGES:
    raise ValueError(f"stage={args.stage!r}; use one of {', '.join(STAGES)}.")
  config = common.base_config()
  common.set_fmnist_data(config, dataset=args.dataset, labels=args.labels)
  common.set_tiny_resnet(config)
  config.eval_batch_size = 1000
  config.log_every_steps = 100
  opt = config.optimizer
  opt.name = "lars"
  opt.lr_scaling = "sqrt"
  opt.momentum = 0.9
  opt.schedule = "cosine"
  opt.exclude_from_weight_decay = NO_ADAPTATION
  head = dict(head_layers=3, head_hidden_dim=0, head_out_dim=64)

  if args.stage == "pretrain":
    config.method = ml_collections.ConfigDict(dict(
        name="simclr", temperature=0.2, queue_size=args.queue, **head))
    config.data.unlabelled_views = {"view1": simclr_view(), "view2": simclr_view()}
    config.batch_size = 256
    config.mu = 1
    config.num_train_steps = 1500  # ~0.6 CPU-s a step on 2 cores
    opt.base_lr = 0.1  # x sqrt(B)
    opt.weight_decay = 1e-4
    opt.warmup_steps = 75  # 5%
    config.ema.decay = 0.99  # the memory network (only used with a queue)
    config.knn_monitor = ml_collections.ConfigDict({"k": 20, "temperature": 0.07})
  elif args.stage == "finetune":
    config.method = ml_collections.ConfigDict(dict(
        name="simclr_finetune", finetune_layer=0 if args.labels == "all" else 1, **head))
    config.data.labelled_views = {"image": {"name": "crop_flip"}}
    config.batch_size = 64
    config.num_epochs = 60.0 if args.labels in ("1pct", "40", "perclass4") else 30.0
    opt.base_lr = 0.005  # x sqrt(B); no weight decay, no warm-up
    opt.weight_decay = 0.0
    opt.warmup_steps = 0
    config.ema.decay = 0.99
    protocol = args.protocol
    if protocol == "auto":
      few_labels = args.labels.isdigit() or args.labels.startswith("perclass")
      protocol = "semppl" if few_labels else "simclr"
    if protocol == "semppl":
      protocols.semppl_finetune_protocol(config, encoder_base_lr=args.encoder_lr,
                                          classifier_base_lr=args.classifier_lr)
    elif protocol != "simclr":
      raise ValueError(f"protocol={args.protocol!r}; use auto, simclr or semppl.")
  else:  # distill: self-distillation into the same encoder, without projection head
    if args.teacher == "simclrv2":
      teacher_head = dict(teacher_head_type="simclr", teacher_head_layers=head["head_layers"],
                          teacher_head_hidden_dim=0, teacher_head_out_dim=head["head_out_dim"],
                          teacher_finetune_layer=0 if args.labels == "all" else 1)
    elif args.teacher == "semppl":  # SemPPL App. A.1's fine-tune: projector layer 1
      teacher_head = dict(teacher_head_type="semppl", teacher_head_layers=1,
                          teacher_head_hidden_dim=semppl_fmnist.PROJECTOR_HIDDEN_DIM,
                          teacher_head_out_dim=128, teacher_finetune_layer=1)
    else:
      raise ValueError(f"teacher={args.teacher!r}; use simclrv2 or semppl.")
    config.method = ml_collections.ConfigDict(dict(
        name="simclr_distill", teacher_workdir="", temperature=0.1, alpha=1.0,
        head_layers=0, finetune_layer=0,
        teacher_model=ml_collections.ConfigDict({"name": ""}),  # "": config.model
        **teacher_head))
    config.data.unlabelled_views = {"image": {"name": "crop_flip"}}
    config.batch_size = 256
    config.mu = 1
    config.num_train_steps = 1000
    opt.base_lr = 0.1  # x sqrt(B), as pretraining
    # The student's classifier is LARS-adapted here: unadapted (SimCLR's code) at this
    # lr and temperature 0.1 it diverged (Fashion-MNIST run, 200 steps).
    opt.exclude_from_weight_decay = training.DEFAULT_NO_DECAY
    opt.weight_decay = 1e-4
    opt.warmup_steps = 50
    config.ema.decay = 0.99

  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  if args.runlocal:
    common.make_runlocal(config)
  return config
