"""Semi-ViT ViT-B on ImageNet 1% / 10% (Cai et al. 2022), the three-stage pipeline.

  1. (optional) self-supervised pretraining: any workdir whose checkpoint holds a
     'backbone/...' ViT-B, e.g. MAE's ViT-B/16 converted into one (decoder dropped):
     python experiments/convert_weights.py --from=timm_vit --checkpoint=mae_pretrain_vit_base.pth --workdir=$ROOT/mae
     then stage 2 with init_from=$ROOT/mae (or PRETRAINED=$ROOT/mae scripts/semivit_pipeline.sh).
     It loads the patch embedding, position table (patch rows: 196 at 224 / 16),
     blocks and final norm; this config's 'gap' ViT has no class token, so MAE's
     cls_token is not used (init_from skips it), and the pooled features are the mean
     of the normalised patch tokens (MAE's own fine-tuning keeps the class token in
     the sequence and puts a fresh LayerNorm after the pooling);
  2. supervised fine-tuning on the labelled subset (Table 12):
     python experiments/main.py --config=configs/semivit_vitb.py:stage=supervised,labels=10pct,init_from=<stage-1 workdir> --workdir=$ROOT/supervised
  3. semi-supervised fine-tuning, EMA-Teacher + probabilistic pseudo mixup (Table 13):
     python experiments/main.py --config=configs/semivit_vitb.py:stage=semi,labels=10pct,init_from=$ROOT/supervised --workdir=$ROOT/semi
  (scripts/semivit_pipeline.sh runs 2 and 3.) `init_from` copies every variable
  whose path and shape match; both stages use the `fixmatch` method's network
  (backbone + 'head'), so stage 3 starts from stage 2's encoder and classifier, and
  its EMA teacher from the same weights.
Variants: stage=semi (default) | supervised; labels=10pct (default) | 1pct;
init_from=<workdir>; runlocal (Fashion-MNIST, a 2-block ViT, a few steps).

Table 13 (ViT-B, MAE-pretrained): AdamW (0.9, 0.999), weight decay 0.05, layer-wise
lr decay 0.75, base lr 1e-3 (1% and 10%), lr = base * B_labelled / 256, labelled
batch 128, mu = 5 unlabelled per labelled and loss weight 5, cosine schedule with 5
warm-up epochs, 100 epochs, threshold 0.5 (10%) / 0.6 (1%), label smoothing 0.1,
mixup 0.8 / CutMix 1.0, drop path 0.1 (10%) / 0 (1%), random erasing 0.25 (10%) /
0 (1%), no mixup on labelled data at 1%, teacher EMA 0.9999. Table 12 (supervised,
ViT-B): base lr 2.5e-4 (10%) / 5e-5 (1%), layer decay 0.65, batch 512, 100 epochs,
label smoothing 0.1, mixup/CutMix/drop path/erasing as above at 10%, off at 1%.
Pseudo mixup as the official ProbPseudoMixup: partners from a random permutation of
the unlabelled batch, mixup or CutMix drawn per example (switch_prob 0.5).
Augmentations (App. A): labelled and strong = random resized crop + flip +
RandAugment 'm9-mstd0.5-inc1' + random erasing; weak = random resized crop + flip
+ ColorJitter(0.4); centre crop at test. Average-pooled features ('gap').
The 1% / 10% subsets are seeded stratified draws of 1% / 10% per class (the paper
samples its own subsets too).
"""
from configs import common

PATCH = 16


def strong_view(*, random_erasing: float) -> dict:
  """timm 'rand-m9-mstd0.5-inc1' after random resized crop + flip, then erasing."""
  return {"name": "randaugment", "mode": "resized_crop", "num_ops": 2, "magnitude": 9,
          "magnitude_mode": "gaussian", "magnitude_std": 0.5, "ops": "timm_increasing",
          "op_prob": 0.5, "translate_max": 0.45, "cutout": 0.0,
          "random_erasing": random_erasing}


def weak_view() -> dict:
  """Random resized crop + flip + ColorJitter(0.4) (brightness/contrast/saturation)."""
  return {"name": "simclr", "crop_prob": 1.0, "area_range": (0.08, 1.0),
          "flip_prob": 0.5, "jitter_prob": 1.0, "brightness": 0.4, "contrast": 0.4,
          "saturation": 0.4, "hue": 0.0, "grayscale_prob": 0.0, "blur_prob": 0.0,
          "solarize_prob": 0.0}


def _set_imagenet(data, labels: str) -> None:
  data.dataset = "imagenet2012"
  data.train_split = "train"
  data.eval_split = "validation"
  common.set_labels(data, labels)
  data.labelled_ids_file = None
  data.split_seed = 0
  data.validation_size = 0  # > 0: held-out train images for val_* metrics
  data.labelled_in_unlabelled = True
  data.image_size = 224
  data.num_channels = 3
  data.mean = (0.485, 0.456, 0.406)
  data.std = (0.229, 0.224, 0.225)
  data.eval_view = {"name": "identity", "crop_fraction": 0.875}


def get_config(arg=None):
  args = common.parse_arg(arg, stage="semi", labels="10pct", init_from="",
                          runlocal=False)
  if args.stage not in ("semi", "supervised") or args.labels not in ("1pct", "10pct"):
    raise ValueError(f"stage={args.stage!r}, labels={args.labels!r}: use stage=semi|"
                     "supervised and labels=1pct|10pct.")
  ten = args.labels == "10pct"
  semi = args.stage == "semi"
  config = common.base_config()
  m = config.method
  m.name = "fixmatch"
  m.teacher = "ema"
  m.teacher_train_mode = False
  m.threshold = 0.5 if ten else 0.6
  m.lambda_u = 5.0
  m.soft_targets = False
  m.temperature = 1.0
  m.label_smoothing = 0.1
  m.distribution_alignment = False
  m.pseudo_mixup = True
  m.labelled_mixup = ten
  m.mixup_alpha = 0.8
  m.cutmix_alpha = 1.0
  m.switch_prob = 0.5

  _set_imagenet(config.data, args.labels)
  erasing = 0.25 if ten else 0.0
  config.data.labelled_views = {"image": strong_view(random_erasing=erasing)}
  config.data.unlabelled_views = ({"weak": weak_view(),
                                   "strong": strong_view(random_erasing=erasing)}
                                  if semi else {})

  config.model.name = "vit_b"
  config.model.dtype = "bfloat16"  # activations; parameters and losses stay float32
  config.model.remat = False  # True: nn.remat per block (memory for FLOPs; docs/PERFORMANCE.md)
  config.model.patch_size = PATCH
  config.model.posemb = "learn"
  config.model.pool = "gap"
  config.model.drop_path_rate = 0.1 if ten else 0.0

  opt = config.optimizer
  opt.name = "adamw"
  opt.b1, opt.b2 = 0.9, 0.999
  opt.weight_decay = 0.05
  opt.lr_scaling = "linear"  # base * (labelled batch) / 256
  opt.layer_decay = 0.75 if semi else 0.65
  opt.layer_decay_num_layers = 12
  opt.warmup_epochs = 5.0
  opt.schedule = "cosine"
  opt.end_lr = 0.0
  if semi:
    opt.base_lr = 1e-3
    config.batch_size = 128
    config.mu = 5
  else:
    opt.base_lr = 2.5e-4 if ten else 5e-5
    config.batch_size = 512
    config.mu = 0
  config.ema.decay = 0.9999
  config.num_epochs = 100.0
  config.eval_batch_size = 1000
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 5000
  config.init_from = args.init_from

  if args.runlocal:
    common.set_fmnist_data(config, dataset="fashion_mnist", labels="1pct")
    config.data.labelled_views = {"image": strong_view(random_erasing=erasing)}
    config.data.unlabelled_views = ({"weak": weak_view(),
                                     "strong": strong_view(random_erasing=erasing)}
                                    if semi else {})
    config.model.update(name="vit_ti", width=32, depth=2, num_heads=2, mlp_dim=64,
                        patch_size=7)
    opt.layer_decay_num_layers = 2
    common.make_runlocal(config)
    config.mu = 1 if semi else 0
  return config
