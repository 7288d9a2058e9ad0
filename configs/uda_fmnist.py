"""UDA (Xie et al. 2020) on Fashion-MNIST, CPU-sized.

  python experiments/main.py --config=configs/uda_fmnist.py --workdir=/tmp/uda
Variants: labels=, dataset=, runlocal (see configs/classic_fmnist_common.py).

UDA's image settings: confidence threshold 0.8, sharpening temperature 0.4,
unsupervised weight 1 without ramp-up; strong view = RandAugment + Cutout
('randaugment'), weak view = crop+flip. UDA uses 7 unlabelled images per
labelled one; mu = 3 here to fit the CPU budget. TSA is not implemented.
"""
from configs import classic_fmnist_common as classic


def get_config(arg=None):
  args = classic.parse_args(arg)
  config = classic.fmnist_config(
      args, method_name="uda", labelled_views={"image": classic.WEAK_VIEW},
      unlabelled_views={"weak": classic.WEAK_VIEW, "strong": classic.STRONG_VIEW},
      mu=3)
  config.method.threshold = 0.8
  config.method.temperature = 0.4
  config.method.unlabelled_weight = 1.0
  config.method.rampup = "none"
  return classic.finish(config, args)
