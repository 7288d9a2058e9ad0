"""Supervised baseline on Fashion-MNIST (labelled subset only), CPU-sized.

  python experiments/main.py --config=configs/supervised_fmnist.py --workdir=/tmp/sup
Variants (comma-separated key=value after ':'):
  labels=1pct (default) | 10pct | all | 40 (labels in all) | perclass4
  dataset=fashion_mnist (default) | folder:/path/to/root | any TFDS name
  runlocal  (a few steps, for tests)
e.g. --config=configs/supervised_fmnist.py:labels=40
"""
from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, labels="1pct", runlocal=False, dataset="fashion_mnist")
  config = common.base_config()
  config.method.name = "supervised"
  config.method.label_smoothing = 0.0

  common.set_fmnist_data(config, dataset=args.dataset, labels=args.labels)
  config.data.labelled_views = {"image": {"name": "crop_flip"}}

  common.set_tiny_resnet(config)
  common.set_fmnist_sgd_training(config, base_lr=common.SUPERVISED_BASE_LR,
                                num_train_steps=1500)
  if args.runlocal:
    common.make_runlocal(config)
  return config
