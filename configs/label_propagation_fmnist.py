"""Label Propagation (Iscen et al. 2019) on Fashion-MNIST, CPU-sized.

  python experiments/main.py --config=configs/label_propagation_fmnist.py --workdir=/tmp/lp
Variants: labels=, dataset=, runlocal (see configs/classic_fmnist_common.py);
init_from=<workdir> starts from a pretrained encoder (e.g. SemPPL's pretraining run:
the `semppl -> label propagation` pipeline): its variables by name, no labelled-only
warm-up (the first propagation is at step 0, on the pretrained features), and the
encoder's learning rate scaled by encoder_lr (the linear head keeps the full rate).
encoder_lr = 1 (the whole network at the classic rate) was chosen on validation at 40
labels (seed 0, SemPPL's pretraining): top-1 75.0 against 73.0 for 0.1, the rate
that protects the encoder in SemPPL's own fine-tune on 40 images; with ~55k
propagated pseudo-labels the encoder has more than 40 images to learn from.

At the start of every epoch after the first (`warmup_epochs` = 1: labelled-only
training first, as the paper starts from a network trained on the labelled images),
the eval-mode encoder's features of all training images give a k-NN graph (k = 50,
gamma = 3), labels diffuse over it (alpha = 0.99, 20 conjugate-gradient iterations:
the paper's values) and each unlabelled image gets a pseudo-label with a certainty
and a class weight; the crop+flip view of the unlabelled stream is trained on them
with weight 1 (no ramp-up, as the paper). mu = 3: an epoch of the ~59k unlabelled
images is ~310 steps, so the 1000-step run propagates three times. From SemPPL's
pretraining: the `semppl -> label propagation` row of docs/RESULTS.md (75.5% at 40
labels, 3 seeds); from scratch not yet run at this budget.
"""
from configs import classic_fmnist_common as classic


def get_config(arg=None):
  args = classic.parse_args(arg, init_from="", encoder_lr=1.0)
  config = classic.fmnist_config(
      args, method_name="label_propagation", labelled_views={"image": classic.WEAK_VIEW},
      unlabelled_views={"image": classic.WEAK_VIEW}, mu=3)
  m = config.method
  m.k, m.gamma, m.alpha, m.cg_iterations = 50, 3.0, 0.99, 20
  m.block_size = 1024
  m.warmup_epochs = 1
  m.unlabelled_weight = 1.0
  m.rampup = "none"
  if args.init_from:
    config.init_from = args.init_from
    m.warmup_epochs = 0
    if args.encoder_lr != 1.0:
      config.optimizer.lr_multipliers = ((r"^(?!head/)", args.encoder_lr),)
  config = classic.finish(config, args)
  if args.runlocal:
    m.k, m.block_size = 10, 32  # a tiny split: fewer neighbours than images, blocks
  return config
