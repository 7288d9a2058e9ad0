"""SimMatch on CIFAR-10 / CIFAR-100 (SimMatch Sec. 4.1), temporal-ensemble bank.

  python experiments/main.py --config=configs/simmatch_cifar.py:labels=40 --workdir=/tmp/sm
Variants: dataset=cifar10 (default) | cifar100; labels=<total labelled> (CIFAR-10:
40 | 250 | 4000; CIFAR-100: 400 | 2500 | 10000); runlocal.

Paper values (identical for both datasets): lambda_u = 1, lambda_in = 1, t = 0.1,
alpha = 0.9, tau = 0.95, mu = 7, m = 0.7 (bank temporal ensemble, Eq. 12), B = 64,
S = 2^20 steps, lr 0.03 cos(7 pi s / 16 S), SGD Nesterov, DA over the past 32
steps, the EMA of the parameters is what is reported. Everything else follows
FixMatch (the paper says so): WRN-28-2 / WRN-28-8, weight decay 5e-4 / 1e-3, weak
flip + crop and RandAugment + Cutout strong views (configs/fixmatch_cifar.py).
From the public implementation (its TorchSSL / USB CIFAR code), not the paper:
projection head Linear(D, D)-ReLU-Linear(D, 128) without batch norm
(`embedding_batch_norm=False`; True gives the BN head runs before this option
used); the instance terms (label propagation and L_in) are off for the first epoch
(`instance_warmup_epochs=1`: the code's `epoch == 0` gate; the paper describes no
warm-up, 0 is the paper).
"""
from configs import common
from configs import fixmatch_cifar


def set_simmatch_method(config) -> None:
  """The SimMatch CIFAR hyper-parameters of Sec. 4.1."""
  m = config.method
  m.name = "simmatch"
  m.variant = "temporal_ensemble"
  m.lambda_u = 1.0
  m.lambda_in = 1.0
  m.temperature = 0.1
  m.alpha = 0.9
  m.threshold = 0.95
  m.bank_momentum = 0.7
  m.distribution_alignment = True
  m.da_window = 32
  m.p_strategy = "smoothing"
  m.q_strategy = "scaling"
  m.embedding_dim = 128
  m.embedding_hidden_dim = 0  # the encoder width
  m.embedding_batch_norm = False  # official head: Linear-ReLU-Linear
  m.instance_warmup_epochs = 1.0  # official code (epoch > 0), not the paper
  m.teacher_train_mode = True


def get_config(arg=None):
  args = common.parse_arg(arg, dataset="cifar10", labels=40, runlocal=False)
  config = common.base_config()
  set_simmatch_method(config)
  fixmatch_cifar.set_cifar_data(config, dataset=args.dataset, labels=args.labels)
  fixmatch_cifar.set_fixmatch_optimizer(config, dataset=args.dataset)
  if args.runlocal:
    common.make_runlocal(config)
    config.mu = 1
  return config
