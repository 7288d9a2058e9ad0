"""Pi-model (Laine & Aila 2017) on Fashion-MNIST, CPU-sized.

  python experiments/main.py --config=configs/pimodel_fmnist.py --workdir=/tmp/pi
Variants: labels=, dataset=, runlocal (see configs/classic_fmnist_common.py).

Two crop+flip views of every labelled and unlabelled image; softmax-MSE
consistency weighted by w_max x exp(-5 (1 - t)^2), the paper's sigmoid ramp-up
(here over the first third of training). w_max = 10 and mu = 3 are our
Fashion-MNIST choices (the MSE is averaged over the 10 classes).
"""
from configs import classic_fmnist_common as classic


def get_config(arg=None):
  args = classic.parse_args(arg)
  views = {"first": classic.WEAK_VIEW, "second": classic.WEAK_VIEW}
  config = classic.fmnist_config(args, method_name="pi_model", labelled_views=views,
                                 unlabelled_views=views, mu=3)
  classic.sigmoid_consistency(config)
  return classic.finish(config, args)
