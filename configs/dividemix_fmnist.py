"""DivideMix (Li, Socher, Hoi, ICLR 2020) on Fashion-MNIST with symmetric label noise,
CPU-sized.

  python experiments/main.py --config=configs/dividemix_fmnist.py:noise=0.5 --workdir=/tmp/dm
Variants: noise=0.2 | 0.5 (default) (data.label_noise: that fraction of the training
labels redrawn uniformly over the 10 classes, true class included, as DivideMix's
code; seed noise_seed=0), labels= (default all: DivideMix trains on every training
label, noisy), dataset=, runlocal (see configs/classic_fmnist_common.py).

The paper's CIFAR-10 values: two crop+flip views, p_threshold 0.5, T = 0.5, MixUp
alpha = 4, lambda_r = 1, lambda_u = 0 at 20% and 25 at 50% symmetric noise, reached
by a linear ramp-up that starts after the CE warm-up; GMM: 10 EM iterations,
reg_covar 5e-4. Here (the classic family's tiny_resnet and SGD recipe, B = 64):
one warm-up epoch (~860 steps over the 55k labels left after the 5k validation
split), a ramp-up of one epoch, 4 epochs in all (the paper: 10 warm-up epochs of
300). Not yet run at this budget (no docs/RESULTS.md row).
"""
from configs import classic_fmnist_common as classic
from configs import common

NUM_EPOCHS = 4
WARMUP_EPOCHS = 1
# lambda_u per noise rate (the paper's CIFAR-10 symmetric-noise values).
UNLABELLED_WEIGHT = {0.2: 0.0, 0.5: 25.0}


def get_config(arg=None):
  args = common.parse_arg(arg, labels="all", runlocal=False, dataset="fashion_mnist",
                          noise=0.5, noise_seed=0, ce=False)
  if args.noise not in UNLABELLED_WEIGHT:
    raise ValueError(f"noise={args.noise}: use one of {sorted(UNLABELLED_WEIGHT)} (the "
                     "paper's lambda_u is set per noise rate).")
  views = {name: classic.WEAK_VIEW for name in ("augment0", "augment1")}
  if args.ce:
    views = {"image": classic.WEAK_VIEW}
  config = classic.fmnist_config(
      args, method_name="supervised" if args.ce else "dividemix", labelled_views=views,
      unlabelled_views={}, mu=0)
  config.data.label_noise = args.noise
  config.data.label_noise_seed = args.noise_seed
  steps_per_epoch = (60_000 - config.data.validation_size) // config.batch_size
  config.num_train_steps = NUM_EPOCHS * steps_per_epoch
  if args.ce:
    config.method.label_smoothing = 0.0
    return classic.finish(config, args)
  m = config.method
  m.warmup_epochs = WARMUP_EPOCHS
  m.p_threshold, m.temperature, m.mixup_alpha = 0.5, 0.5, 4.0
  m.unlabelled_weight = UNLABELLED_WEIGHT[args.noise]
  m.regularisation_weight = 1.0
  m.rampup = "linear"
  m.rampup_start_step = WARMUP_EPOCHS * steps_per_epoch
  m.rampup_steps = steps_per_epoch
  m.gmm_iterations, m.reg_covar = 10, 5e-4
  m.confidence_penalty = False
  return classic.finish(config, args)
