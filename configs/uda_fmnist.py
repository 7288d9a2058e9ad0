"""UDA (Xie et al. 2020) on Fashion-MNIST, CPU-sized.

  python experiments/main.py --config=configs/uda_fmnist.py --workdir=/tmp/uda
Variants: labels=, dataset=, runlocal (see configs/classic_fmnist_common.py);
  tsa=none (default) | linear | log | exp: training signal annealing of the
  labelled loss (UDA Sec. 3.5: 'exp', which releases the labelled signal late, where
  the model overfits easily, e.g. with very few labels; 'log' where it does not).

UDA's image settings: confidence threshold 0.8, sharpening temperature 0.4,
unsupervised weight 1 without ramp-up; strong view = RandAugment + Cutout
('randaugment'), weak view = crop+flip. UDA uses 7 unlabelled images per
labelled one; mu = 3 here to fit the CPU budget.
"""
from configs import classic_fmnist_common as classic


def get_config(arg=None):
  args = classic.parse_args(arg, tsa="none")
  config = classic.fmnist_config(
      args, method_name="uda", labelled_views={"image": classic.WEAK_VIEW},
      unlabelled_views={"weak": classic.WEAK_VIEW, "strong": classic.STRONG_VIEW},
      mu=3)
  config.method.threshold = 0.8
  config.method.temperature = 0.4
  config.method.unlabelled_weight = 1.0
  config.method.rampup = "none"
  config.method.tsa = args.tsa
  return classic.finish(config, args)
