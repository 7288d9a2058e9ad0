"""SemPPL on ImageNet-1k with 1% / 10% labels (the flagship config): pretraining,
then the paper's fine-tuning (its headline number) or linear evaluation.

  # 1. pretraining (300 epochs; eval: the k-NN monitor on encoder features)
  python experiments/main.py --config=configs/semppl_r50.py:labels=1pct \
      --workdir=gs://bucket/semppl_r50_1pct
  # 2. App. A.1 fine-tuning on the same 1% subset (Table 1's top-1)
  python experiments/main.py \
      --config=configs/semppl_r50.py:labels=1pct,stage=finetune,init_from=gs://bucket/semppl_r50_1pct \
      --workdir=gs://bucket/semppl_r50_1pct_finetune
  # 2'. or the linear evaluation protocol (App. A.2 / A.3) on all labelled images
  python experiments/main.py \
      --config=configs/semppl_r50.py:stage=linear,init_from=gs://bucket/semppl_r50_1pct \
      --workdir=gs://bucket/semppl_r50_1pct_linear
Variants (comma-separated key=value after ':'):
  stage=pretrain (default) | finetune | linear   (finetune / linear need init_from=<the
        pretraining workdir>; they use the pretraining's model variants)
  encoder_lr=0.0025, classifier_lr=0.2 (finetune base rates x B/256; App. A.1 sweeps
        {0.001..0.005} and {0.025..0.5}); linear_lr=0.05 (x B/256: 0.2 at B = 1024)
  labels=1pct (default) | 10pct
  model=r50 (default) | r50x2 | r50x4 | r200x2 ; sk=True (selective kernels)
  label_dir=<dir holding SimCLR's 1percent.txt / 10percent.txt>
  ema=constant (default) | byol_cosine
  crop_prob=1.0 (default: every view random-cropped, App. E) | 0.5 (Table 12's
        figure: half the views, small ones included, are the whole image resized)
  runlocal  (tiny shapes; with dataset=fashion_mnist it runs on a CPU)

Every value SemPPL states (§2.1, App. D.1, App. E Table 12) is set here:
B = 4096, C = 20 B per large view, k = 1, view voting, tau = 0.2, |N| = 10
negatives, 4 large (224) + 2 small (96) views with Table 12's odd / even
parameters (odd: large views 1, 3 and small view 1), 3 semantic positives,
alpha = 1/5, lambda = 5, c = 0.3, LARS base lr 0.3 x B / 256, weight decay 1e-6
(biases and BN excluded from decay and adaptation), 10 warm-up epochs, cosine
decay, 300 epochs, target EMA 0.996, projector / predictor 4096 -> 256.

Choices the paper leaves open, made here:
* Labelled split: `imagenet2012` (all 1,281,167 train images) with SimCLR's
  id lists (`1percent.txt` / `10percent.txt` from github.com/google-research/
  simclr, imagenet_subsets/), given by file name through
  `data.labelled_ids_file`; download them into `label_dir` first. TFDS's
  `imagenet2012_subset/1pct` holds only the labelled images, so it cannot
  provide the unlabelled stream.
* Labelled share of a batch: not stated. A batch is 64 labelled + 4032
  unlabelled (1%) or 512 + 3584 (10%), close to sampling B uniformly from
  D = D_l u D_u (41 / 410 expected) with sizes that divide 64 devices; the
  unlabelled stream excludes the labelled images.
* Epochs are ImageNet epochs at B = 4096: 300 x 1,281,167 / 4096 steps.
* Target EMA: the paper states 0.996 and Listing 1 uses a fixed gamma, so the
  decay is constant; BYOL's cosine ramp to 1 is the `ema=byol_cosine` variant.
* Random crop on every view, large and small (App. E; BYOL crops always), not
  Table 12's 50% "probability of randomly cropping" (`crop_prob=0.5`), which would
  make half the 96 px small views whole-image thumbnails.
* The saliency-masking augmentation (App. E, p = 0.1 on large views) needs
  saliency masks that are not part of ImageNet; it is not implemented.
* Encoder: `models.ResNet` (v1, post-activation; §2.1 says "v1; pre-activation").
* Pretraining has no classifier; the k-NN monitor on encoder features is its eval
  metric.
* stage=finetune (App. A.1, `protocols.semppl_finetune_protocol`): the classifier
  on the projector's first layer (after its ReLU), encoder and that layer loaded
  from the pretraining by `init_from`; cross-entropy on crop + flip views of the
  labelled subset only; SGD-Nesterov 0.9, no weight decay, 30 epochs, x0.2 at 18
  and 24. The paper sweeps the batch and both rates without saying which won:
  B = 1024 (the middle of {512, 1024, 2048}), encoder 0.0025 and classifier 0.2
  (x B/256) here, middle values of its ranges.
* stage=linear (App. A.2 / A.3, `protocols.linear_protocol`): a linear
  classifier on the frozen encoder output, trained on all labelled train images
  (A.2: "the full labelled ImageNet training set"); SGD-Nesterov 0.9, B = 1024,
  no weight decay, cosine, 80 epochs (A.3's sweep: {20, 30, 60, 80, 100} epochs,
  lr {0.001 .. 2}); base rate 0.05 x B/256 = 0.2.
"""
from configs import common
from configs import protocols
from semissl import data as data_lib

STAGES = ("pretrain", "finetune", "linear")
IMAGENET_TRAIN_SIZE = 1_281_167
BATCH_SIZE = 4096
EPOCHS = 300
WARMUP_EPOCHS = 10
# Labelled examples per batch of 4096 (the rest is unlabelled).
LABELLED_PER_BATCH = {"1pct": 64, "10pct": 512}
MODELS = {"r50": (50, 1), "r50x2": (50, 2), "r50x4": (50, 4), "r200x2": (200, 2)}
VIEW_PARITY = {"large1": "odd", "large2": "even", "large3": "odd", "large4": "even",
               "small1": "odd", "small2": "even"}


def semppl_views(crop_prob: float = 1.0) -> dict:
  """SemPPL's 4 large + 2 small views with Table 12's parameters, every view cropped
  (App. E) unless `crop_prob` < 1."""
  return {name: data_lib.semppl_view_spec(parity=parity,
                                                scale=name.rstrip("0123456789"),
                                                crop_prob=crop_prob)
          for name, parity in VIEW_PARITY.items()}


def get_config(arg=None):
  args = common.parse_arg(arg, labels="1pct", model="r50", sk=False,
                          label_dir="imagenet_subsets", ema="constant", runlocal=False,
                          dataset="imagenet2012", stage="pretrain", init_from="",
                          encoder_lr=0.0025, classifier_lr=0.2, linear_lr=0.05,
                          crop_prob=1.0)
  if args.stage not in STAGES:
    raise ValueError(f"stage={args.stage!r}; use one of {', '.join(STAGES)}.")
  if args.stage != "pretrain" and not args.init_from:
    raise ValueError(f"stage={args.stage} needs init_from=<the pretraining workdir>.")
  if args.labels not in LABELLED_PER_BATCH:
    raise ValueError(f"labels={args.labels!r}; use 1pct or 10pct.")
  if args.model not in MODELS:
    raise ValueError(f"model={args.model!r}; use one of {sorted(MODELS)}.")
  config = common.base_config()

  data = config.data
  data.dataset = args.dataset
  data.data_dir = None
  data.train_split = "train"
  data.eval_split = "validation"
  data.label_fraction = None
  data.labels_per_class = None
  data.labelled_ids_file = (
      f"{args.label_dir}/{args.labels.removesuffix('pct')}percent.txt")
  data.split_seed = 0
  data.validation_size = 0  # > 0: held-out train images for val_* metrics
  data.labelled_in_unlabelled = False
  data.image_size = 224
  data.num_channels = 3
  data.mean = (0.485, 0.456, 0.406)
  data.std = (0.229, 0.224, 0.225)
  views = semppl_views(args.crop_prob)
  data.labelled_views = views
  data.unlabelled_views = views
  data.eval_view = {"name": "identity", "crop_fraction": 224 / 256}

  m = config.method
  m.name = "semppl"
  m.large_views = ("large1", "large2", "large3", "large4")
  m.small_views = ("small1", "small2")
  m.queue_capacity = 20 * BATCH_SIZE
  m.num_neighbours = 1
  m.view_voting = True
  m.temperature = 0.2
  m.num_negatives = 10
  m.num_semantic_positives = 3
  m.alpha = 1 / 5
  m.contrastive_scale = 0.3
  m.invariance_scale = 5.0
  m.projector_hidden_dim = 4096
  m.projection_dim = 256
  m.predictor_hidden_dim = 4096
  m.use_pseudo_labels = True
  m.vote_thresholds = (0.25, 0.5, 0.75, 1.0)

  depth, width = MODELS[args.model]
  config.model.name = f"resnet{depth}"
  config.model.dtype = "bfloat16"  # activations; parameters and losses stay float32
  config.model.remat = False  # True: nn.remat per block (memory for FLOPs; docs/PERFORMANCE.md)
  config.model.width_multiplier = width
  config.model.sk = "semppl" if args.sk else None

  config.batch_size = LABELLED_PER_BATCH[args.labels]
  config.mu = (BATCH_SIZE - config.batch_size) // config.batch_size
  config.eval_batch_size = 1024
  opt = config.optimizer
  opt.name = "lars"
  opt.base_lr = 0.3
  opt.lr_scaling = "linear"
  opt.lr_batch_size = BATCH_SIZE
  opt.reference_batch_size = 256
  opt.weight_decay = 1e-6
  opt.momentum = 0.9
  opt.trust_coefficient = 1e-3
  opt.exclude_from_weight_decay = r"(bias|scale)$"  # biases and BN scale / offset
  opt.schedule = "cosine"
  opt.warmup_steps = WARMUP_EPOCHS * IMAGENET_TRAIN_SIZE // BATCH_SIZE
  config.num_train_steps = EPOCHS * IMAGENET_TRAIN_SIZE // BATCH_SIZE
  config.ema.decay = 0.996
  if args.ema not in ("constant", "byol_cosine"):
    raise ValueError(f"ema={args.ema!r}; use constant or byol_cosine.")
  config.ema.schedule = args.ema
  config.knn_monitor = {"k": 20, "temperature": 0.07}
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 2000

  if args.runlocal:
    common.make_runlocal(config)
    config.eval_every_steps = 0  # one evaluation, at the end
    if args.dataset != "imagenet2012":  # e.g. fashion_mnist: a CPU smoke run
      common.set_labels(data, args.labels)
      data.labelled_ids_file = None
      data.eval_split = "test"
    data.image_size = 32
    for name in views:
      for stream in (data.labelled_views, data.unlabelled_views):
        stream[name].size = 32 if name.startswith("large") else 16
    data.eval_view = {"name": "identity"}
    config.model.name = "resnet18"
    config.model.sk = None
    config.model.width_multiplier = 1
    config.batch_size = 8
    config.mu = 3
    opt.lr_batch_size = 32
    m.queue_capacity = 64
    m.projector_hidden_dim = 64
    m.projection_dim = 32
    m.predictor_hidden_dim = 64
  if args.stage != "pretrain":
    _evaluation_stage(config, args)
  return config


def _evaluation_stage(config, args):
  """stage=finetune / linear on top of the pretraining config (same model, data)."""
  config.init_from = args.init_from
  data = config.data
  data.labelled_in_unlabelled = True
  if args.stage == "finetune":
    protocols.semppl_finetune_protocol(config, encoder_base_lr=args.encoder_lr,
                                        classifier_base_lr=args.classifier_lr)
  else:
    protocols.linear_protocol(config, base_lr=args.linear_lr, num_epochs=80.0)
    data.labelled_ids_file = None  # every labelled train image (App. A.2)
    data.label_fraction = 1.0
  config.batch_size = 1024
  config.ema.decay = 0.999
  config.ema.schedule = "constant"
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  if args.runlocal:
    common.make_runlocal(config)
    config.batch_size = 16
    config.eval_every_steps = 0
