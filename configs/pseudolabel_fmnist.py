"""Pseudo-label (Lee 2013) on Fashion-MNIST, CPU-sized.

  python experiments/main.py --config=configs/pseudolabel_fmnist.py --workdir=/tmp/pl
Variants: labels=, dataset=, runlocal (see configs/classic_fmnist_common.py).

Hard argmax pseudo-labels of the crop+flip unlabelled view, kept above a 0.95
confidence threshold (Lee 2013 keeps all; the threshold is the usual modern
guard against confirmation bias), weight alpha(t) of Lee 2013: 0 until T1, linear
to alpha_f, then constant. Lee's alpha_f = 3 with T1 / T2 at 100 / 600 epochs
are scaled here to 10% / 40% of the run; mu = 3.
"""
from configs import classic_fmnist_common as classic


def get_config(arg=None):
  args = classic.parse_args(arg)
  config = classic.fmnist_config(
      args, method_name="pseudo_label",
      labelled_views={"image": classic.WEAK_VIEW},
      unlabelled_views={"weak": classic.WEAK_VIEW}, mu=3)
  config.method.threshold = 0.95
  config.method.unlabelled_weight = 3.0
  config.method.rampup = "linear"
  config.method.rampup_start_step = classic.NUM_TRAIN_STEPS // 10
  config.method.rampup_steps = 3 * classic.NUM_TRAIN_STEPS // 10
  return classic.finish(config, args)
