"""Temporal Ensembling (Laine & Aila 2017) on Fashion-MNIST, CPU-sized.

  python experiments/main.py --config=configs/temporal_ensembling_fmnist.py --workdir=/tmp/te
Variants: labels=, dataset=, runlocal (see configs/classic_fmnist_common.py).

One crop+flip view of every labelled and unlabelled image; each unlabelled image's
softmax predictions are averaged over the times it was drawn (alpha = 0.6, the
paper's) and the bias-corrected average is its target (softmax MSE), weighted by
w_max x exp(-5 (1 - t)^2) over the first third of training. w_max = 10 and mu = 3 as
the Pi-model config (the paper's w_max = 30 M / N assumes 300 epochs). At this
budget (1000 steps x 192 unlabelled images, about 3.5 passes over the unlabelled
split) each image is drawn 3 to 4 times, so its ensemble averages few predictions.
"""
from configs import classic_fmnist_common as classic


def get_config(arg=None):
  args = classic.parse_args(arg)
  config = classic.fmnist_config(
      args, method_name="temporal_ensembling", labelled_views={"image": classic.WEAK_VIEW},
      unlabelled_views={"image": classic.WEAK_VIEW}, mu=3)
  config.method.alpha = 0.6
  classic.sigmoid_consistency(config)
  return classic.finish(config, args)
