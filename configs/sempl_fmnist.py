"""SemPPL on Fashion-MNIST, CPU-sized, plus the fine-tune stage that reports top-1.

  # 1. SemPPL pretraining (k-NN monitor top-1 on the test split at the end)
  python experiments/main.py --config=configs/sempl_fmnist.py --workdir=/tmp/sempl
  # 2. fine-tune the encoder on the labelled subset (supervised method,
  #    `init_from` copies every backbone/... variable of the SemPPL run)
  python experiments/main.py \
      --config=configs/sempl_fmnist.py:stage=finetune,init_from=/tmp/sempl \
      --workdir=/tmp/sempl_ft
  # 3. the same fine-tune recipe from random init (the baseline to beat)
  python experiments/main.py --config=configs/sempl_fmnist.py:stage=scratch \
      --workdir=/tmp/sempl_scratch

Variants (comma-separated key=value after ':'):
  labels=1pct (default) | 10pct | all | 40 | perclassN   (common.set_labels)
  dataset=fashion_mnist (default) | folder:/path | any TFDS name
  stage=pretrain (default) | finetune (needs init_from=<pretrain workdir>)
        | scratch (the fine-tune recipe from random init: the baseline)
  large=2 (large views; the paper uses 4) ; small=0 (small views; paper: 2)
  runlocal  (a few steps, for tests)

What differs from configs/sempl_r50.py and why (CPU budget, 28x28 gray images):
tiny_resnet encoder (stride-2 stages), 28 px large views (20 px small views
with small=N) with Table 12's photometric parameters and crop areas scaled up
for 28 px images; 2 large views and no small views by default (4 votes
instead of 16; every view is another encoder pass per example),
large=4,small=2 gives the paper's view structure; projector/predictor
512 -> 128; batch 16 labelled + 80
unlabelled; queue 1024 slots per view; EMA 0.99; 300 steps. LARS with lr 2.0,
not 0.3 x B/256: at B = 96 the paper's rule moves weights by ~1e-4 of their
norm per step (trust ratio 1e-3 x lr 0.11), far too slow for 300 steps.
The fine-tune stage puts the classifier on the encoder output (SemPPL App. A.1
puts it on the projector's first layer) and trains everything with the
supervised_fmnist recipe, so stage=scratch is the like-for-like baseline.
"""
from configs import common
from semissl.data import augment_simclr

LARGE_AREA = {"even": (0.2, 1.0), "odd": (0.3, 1.0)}
SMALL_AREA = (0.1, 0.4)
LARGE_SIZE, SMALL_SIZE = 28, 20


def model_config(config, *, runlocal: bool = False):
  """The encoder both stages share (init_from needs identical backbone shapes)."""
  config.model.name = "tiny_resnet"
  config.model.stem_width = 8 if runlocal else 32
  config.model.stage_widths = (8, 16) if runlocal else (32, 64, 128)
  config.model.stage_strides = (2, 2) if runlocal else (2, 2, 2)


def semppl_views(num_large: int, num_small: int) -> dict:
  """large1..N, small1..M; odd views use Table 12's odd column, even the even."""
  views = {}
  for i in range(1, num_large + 1):
    parity = "odd" if i % 2 else "even"
    views[f"large{i}"] = augment_simclr.semppl_view_spec(
        parity=parity, scale="large", size=LARGE_SIZE, area_range=LARGE_AREA[parity])
  for i in range(1, num_small + 1):
    parity = "odd" if i % 2 else "even"
    views[f"small{i}"] = augment_simclr.semppl_view_spec(
        parity=parity, scale="small", size=SMALL_SIZE, area_range=SMALL_AREA)
  return views


def _pretrain(config, args):
  views = semppl_views(args.large, args.small)
  config.data.labelled_views = views
  config.data.unlabelled_views = views
  config.data.labelled_in_unlabelled = False  # the batch mixes D_l and D_u (SemPPL §2)
  m = config.method
  m.name = "semppl"
  m.large_views = tuple(v for v in views if v.startswith("large"))
  m.small_views = tuple(v for v in views if v.startswith("small"))
  m.queue_capacity = 1024
  m.num_neighbours = 1
  m.view_voting = True
  m.temperature = 0.2
  m.num_negatives = 10
  m.num_semantic_positives = 3
  m.alpha = 0.2
  m.contrastive_scale = 0.3
  m.invariance_scale = 5.0
  m.projector_hidden_dim = 512
  m.projection_dim = 128
  m.predictor_hidden_dim = 512
  m.use_pseudo_labels = True
  m.vote_thresholds = (0.25, 0.5, 0.75, 1.0)
  config.knn_monitor = {"k": 20, "temperature": 0.07}

  config.batch_size = 16  # labelled per step
  config.mu = 5  # unlabelled per step = 80
  config.optimizer.name = "lars"
  config.optimizer.base_lr = 2.0
  config.optimizer.lr_scaling = "none"
  config.optimizer.weight_decay = 1e-6
  config.optimizer.momentum = 0.9
  config.optimizer.trust_coefficient = 1e-3
  config.optimizer.warmup_steps = 30
  config.optimizer.schedule = "cosine"
  config.ema.decay = 0.99
  config.ema.schedule = "constant"
  config.num_train_steps = 300
  config.log_every_steps = 25
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 300


def _finetune(config, args):
  """Supervised fine-tuning of the whole network on the labelled subset."""
  if args.stage == "finetune" and not args.init_from:
    raise ValueError("stage=finetune needs init_from=<the SemPPL pretraining workdir>.")
  if args.stage == "scratch" and args.init_from:
    raise ValueError("stage=scratch trains from random init; drop init_from.")
  config.init_from = args.init_from
  config.data.labelled_views = {"image": {"name": "crop_flip"}}
  config.method.name = "supervised"
  config.method.label_smoothing = 0.0
  # The supervised baseline's recipe (supervised_fmnist), so stage=scratch is it.
  common.set_fmnist_sgd_training(config)


def get_config(arg=None):
  args = common.parse_arg(arg, labels="1pct", runlocal=False, dataset="fashion_mnist",
                          stage="pretrain", init_from="", large=2, small=0)
  config = common.base_config()
  common.set_fmnist_data(config, dataset=args.dataset, labels=args.labels)
  model_config(config, runlocal=args.runlocal)
  config.eval_batch_size = 1000
  if args.stage == "pretrain":
    _pretrain(config, args)
  elif args.stage in ("finetune", "scratch"):
    _finetune(config, args)
  else:
    raise ValueError(f"stage={args.stage!r}; use pretrain, finetune or scratch.")
  if args.runlocal:
    common.make_runlocal(config)
    config.eval_every_steps = 0  # one evaluation at the end (10k test images)
    config.eval_batch_size = 1000
    if args.stage == "pretrain":
      config.batch_size = 8  # + 40 unlabelled
      config.method.queue_capacity = 64
      config.method.projector_hidden_dim = 32
      config.method.projection_dim = 16
      config.method.predictor_hidden_dim = 32
  return config
