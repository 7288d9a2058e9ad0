"""ReMixMatch (Berthelot et al. 2020) on Fashion-MNIST, CPU-sized.

  python experiments/main.py --config=configs/remixmatch_fmnist.py --workdir=/tmp/rmm
Variants (comma-separated key=value after ':'):
  labels=, dataset=, runlocal  as configs/fixmatch_fmnist.py
  k=N       strong views per unlabelled image (K; default 4, the paper's 8 costs
            about 3x a FixMatch step here)
  da_only   FixMatch + ReMixMatch's distribution alignment only: configs/
            fixmatch_fmnist.py unchanged (same split, model, views, optimizer and
            steps, so the difference to it is DA alone) with the `fixmatch` method's
            `distribution_alignment=True`, the weak-view pseudo-label distribution
            becoming Normalize(p * p(y) / p~), p(y) the class prior of the labelled
            split and p~ the mean prediction over the last 128 batches. (The stored
            'remixmatch_da (fixmatch + DA)' results are this variant.)

The full method (method `remixmatch`, semissl/methods/remixmatch.py): the paper's
values (T = 0.5, Beta(0.75, 0.75) MixUp, lambda_u = 1.5 on the mixed strong views with
cross-entropy, 0.5 for the pre-mixup loss and for the rotation loss, DA over 128
batches, CTAugment with 17 bins, rho = 0.99, threshold 0.8, 2 transformations + Cutout
per strong view), labelled and unlabelled batches of the same size (mu = 1, as the
paper's code), K = 4 strong views instead of 8 for two CPU cores (measured on 2 busy
cores: a step of 32 labelled + 32 unlabelled images with K = 4 takes 1.0-1.6x a
configs/fixmatch_fmnist.py step of 32 + 96, K = 2 0.7-1.1x, K = 8 2.2-3.4x), lambda_u
warmed up linearly over the first 1/64 of the run (the public code: 1024 of 65536
kimg).
Model, optimizer (FixMatch's SGD + cosine), EMA and steps are those of
configs/fixmatch_fmnist.py. Every view comes from the pipeline as crop + flip; the
strong views get CTAugment on device.
"""
from configs import common
from configs import fixmatch_cifar
from configs import fixmatch_fmnist
from semissl.methods import remixmatch

NUM_STRONG = 4
RAMPUP_FRACTION = 1 / 64


def _fixmatch_arg(arg):
  """`arg` less the variants fixmatch_fmnist does not know."""
  own = ("da_only", "k")
  return ",".join(item for item in (arg or "").split(",")
                  if item and item.partition("=")[0] not in own) or None


def get_config(arg=None):
  args = common.parse_arg(arg, labels="1pct", runlocal=False, dataset="fashion_mnist",
                          da_only=False, k=NUM_STRONG)
  if args.da_only:
    config = fixmatch_fmnist.get_config(_fixmatch_arg(arg))
    config.method.distribution_alignment = True
    config.method.da_window = 128
    return config

  config = common.base_config()
  m = config.method
  m.name = "remixmatch"
  m.num_strong = args.k
  m.temperature = 0.5
  m.mixup_alpha = 0.75
  m.unlabelled_weight = 1.5
  m.pre_mixup_weight = 0.5
  m.rotation_weight = 0.5
  m.da_window = 128
  m.cta_depth = 2
  m.cta_decay = 0.99
  m.cta_threshold = 0.8
  common.set_fmnist_data(config, dataset=args.dataset, labels=args.labels)
  weak = fixmatch_cifar.weak_view()
  config.data.labelled_views = {"image": dict(weak)}
  config.data.unlabelled_views = {
      "weak": dict(weak), **{name: dict(weak)
                             for name in remixmatch.strong_view_names(args.k)}}
  fixmatch_fmnist.set_fmnist_training(config, args)
  config.mu = 1
  m.rampup = "linear"
  m.rampup_steps = max(round(config.num_train_steps * RAMPUP_FRACTION), 1)
  return config
