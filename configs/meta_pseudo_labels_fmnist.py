"""Meta Pseudo Labels (Pham et al. 2021) on Fashion-MNIST, CPU-sized.

  python experiments/main.py --config=configs/meta_pseudo_labels_fmnist.py --workdir=/tmp/mpl
Variants: labels=, dataset=, runlocal (see configs/classic_fmnist_common.py);
  tsa=none (default) | linear | log | exp: training signal annealing of the
  teacher's labelled loss (as configs/uda_fmnist.py).

Teacher and student are both the classic family's tiny_resnet, trained together by
its SGD recipe (peak lr 0.4 x 64/256 = 0.1). The teacher's UDA term takes UDA's image
settings (threshold 0.8, temperature 0.4, weight 1; configs/uda_fmnist.py) and the
MPL feedback weight 1 (the paper's teacher loss adds L_s, the UDA term and the MPL
term). eta_S (`method.inner_lr`) = 0.1, the student's peak learning rate, as the
paper's code uses the student's learning rate in the teacher's update. mu = 3 as UDA.
No final fine-tune of the student on the labelled data (the paper's last stage).
"""
from configs import classic_fmnist_common as classic

INNER_LR = 0.1  # = optimizer base_lr 0.4 x batch 64 / 256


def get_config(arg=None):
  args = classic.parse_args(arg, tsa="none")
  config = classic.fmnist_config(
      args, method_name="meta_pseudo_labels", labelled_views={"image": classic.WEAK_VIEW},
      unlabelled_views={"weak": classic.WEAK_VIEW, "strong": classic.STRONG_VIEW},
      mu=3)
  config.method.threshold = 0.8
  config.method.temperature = 0.4
  config.method.unlabelled_weight = 1.0
  config.method.rampup = "none"
  config.method.tsa = args.tsa
  config.method.inner_lr = INNER_LR
  config.method.mpl_weight = 1.0
  return classic.finish(config, args)
