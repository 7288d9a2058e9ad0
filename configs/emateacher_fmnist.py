"""EMA-Teacher with probabilistic pseudo mixup (Semi-ViT's SSL recipe) on
Fashion-MNIST, CPU-sized (same label split as supervised_fmnist).

  python experiments/main.py --config=configs/emateacher_fmnist.py --workdir=/tmp/emat
Variants (comma-separated key=value after ':'):
  labels=1pct (default) | 10pct | all | 40 (labels in all) | perclass4
  dataset=fashion_mnist (default) | folder:/path/to/root | any TFDS name
  mixup=1 (default: probabilistic pseudo mixup) | 0 (plain EMA-Teacher)
  runlocal  (a few steps, for tests)

Semi-ViT's semi-supervised stage (Sec. 2.2-3.3, Table 13) on a CNN: pseudo-labels
from the EMA teacher (eval mode), label smoothing 0.1, mixup 0.8 / CutMix 1.0
chosen per example with probability 1/2 and partners from a random permutation of
the batch (the official ProbPseudoMixup), the mixing ratio from the confidences
(Eq. 4-5). Training as configs/fixmatch_fmnist.py (tiny_resnet, SGD, B = 32,
mu = 3) for a like-for-like comparison; tau = 0.7 (Semi-ViT Table 4: probabilistic
pseudo mixup is insensitive to tau, 0.5-0.7 best), lambda_u = 1 (Semi-ViT's 5 is
tied to its mu = 5 and AdamW recipe), teacher EMA 0.99 (a short run; the paper's
0.9999 is for 100 ImageNet epochs).
"""
from configs import common
from configs import fixmatch_fmnist


def get_config(arg=None):
  args = common.parse_arg(arg, labels="1pct", runlocal=False, dataset="fashion_mnist",
                          mixup=True)
  config = common.base_config()
  m = config.method
  m.name = "emateacher"
  m.teacher = "ema"
  m.teacher_train_mode = False
  m.threshold = 0.7
  m.lambda_u = 1.0
  m.soft_targets = False
  m.temperature = 1.0
  m.label_smoothing = 0.1
  m.distribution_alignment = False
  m.pseudo_mixup = args.mixup
  m.labelled_mixup = False
  m.mixup_alpha = 0.8
  m.cutmix_alpha = 1.0
  m.switch_prob = 0.5
  fixmatch_fmnist.set_fmnist_semi_data(config, args)
  fixmatch_fmnist.set_fmnist_training(config, args)
  return config
