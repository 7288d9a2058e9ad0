"""ICT (Verma et al. 2019) on Fashion-MNIST, CPU-sized.

  python experiments/main.py --config=configs/ict_fmnist.py --workdir=/tmp/ict
Variants: labels=, dataset=, runlocal (see configs/classic_fmnist_common.py).

The paper's CIFAR-10 recipe where it fits: mixup alpha = 1 (lambda ~ Beta(1, 1)),
teacher = the engine's EMA with decay 0.999 and Mean Teacher's warm-up, the sigmoid
ramp-up of the consistency weight (here over the first third of training). w_max = 10
(the paper's 100 with its 5000-example CIFAR-10 budget) and mu = 3 are the classic
family's Fashion-MNIST choices (configs/pimodel_fmnist.py, meanteacher_fmnist.py).
"""
from configs import classic_fmnist_common as classic


def get_config(arg=None):
  args = classic.parse_args(arg)
  config = classic.fmnist_config(args, method_name="ict",
                                 labelled_views={"image": classic.WEAK_VIEW},
                                 unlabelled_views={"image": classic.WEAK_VIEW}, mu=3)
  config.method.mixup_alpha = 1.0
  classic.sigmoid_consistency(config)
  classic.mean_teacher_ema(config)
  return classic.finish(config, args)
