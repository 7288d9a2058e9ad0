"""ReMixMatch distribution alignment (Berthelot et al. 2020) on FixMatch,
Fashion-MNIST, CPU-sized.

  python experiments/main.py --config=configs/remixmatch_fmnist.py --workdir=/tmp/rmm
Variants: as configs/fixmatch_fmnist.py (labels=, dataset=, runlocal).

configs/fixmatch_fmnist.py unchanged (same split, model, views, optimizer and
steps, so the difference to it is DA alone) with the `fixmatch` method's
`distribution_alignment=True`: the weak-view pseudo-label distribution becomes
Normalize(p * p(y) / p~), p(y) the class prior of the labelled split and p~ the
mean prediction over the last 128 batches (ReMixMatch's window).
"""
from configs import fixmatch_fmnist


def get_config(arg=None):
  config = fixmatch_fmnist.get_config(arg)
  config.method.distribution_alignment = True
  config.method.da_window = 128
  return config
