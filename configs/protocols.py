"""The trained evaluation protocols as config edits: SemPPL's fine-tune (App. A.1) and
the linear protocol (App. A.2 / A.3). Each sets a pretraining config, in place, to a
stage that `init_from` the pretraining run and trains through the one train loop.
"""
from __future__ import annotations

import ml_collections


def semppl_finetune_protocol(config: ml_collections.ConfigDict, *,
                             encoder_base_lr: float = 0.0025,
                             classifier_base_lr: float = 0.2,
                             num_epochs: float = 30.0,
                             head_type: str | None = None) -> ml_collections.ConfigDict:
  """Sets `config` (in place; returned) to SemPPL's fine-tuning protocol (App. A.1).

  `simclr_finetune` with the classifier on the first projector layer (after its
  non-linearity); point `config.init_from` at the pretraining run to load the
  encoder and that layer. `head_type` 'semppl' (the default when `config` is a
  SemPPL config) keeps SemPPL's projector layer 1 (width
  `method.projector_hidden_dim`), 'simclr' SimCLRv2's head. Cross-entropy on
  crop + flip views of the labelled images; SGD with Nesterov momentum 0.9;
  base learning rates (x B/256) for the encoder (and projector layer) and for
  the classifier (their sweep: {0.001..0.005} and {0.025..0.5}) through an
  optax.multi_transform over parameter paths (`optimizer.lr_multipliers`); x0.2
  at 18 and 24 of 30 epochs; no weight decay, no warm-up.
  """
  method = config.method
  head_type = head_type or ("semppl" if method.get("name") == "semppl"
                            else method.get("head_type", "simclr"))
  if head_type == "semppl":
    head = dict(head_type="semppl", head_layers=1,
                head_hidden_dim=int(method.get("projector_hidden_dim", 4096)))
  else:
    head = dict(head_type="simclr", head_layers=int(method.get("head_layers", 3)),
                head_hidden_dim=int(method.get("head_hidden_dim", 0) or 0),
                head_out_dim=int(method.get("head_out_dim", 128)))
  config.method = ml_collections.ConfigDict(dict(name="simclr_finetune", finetune_layer=1,
                                                 **head))
  _labelled_sgd_stage(config, base_lr=encoder_base_lr, weight_decay=0.0,
                      lr_multipliers=((r"^classifier/", classifier_base_lr / encoder_base_lr),),
                      num_epochs=num_epochs, schedule="step")
  config.optimizer.step_decay_fractions = (18.0 / 30.0, 24.0 / 30.0)
  config.optimizer.step_decay_factor = 0.2
  return config


def _labelled_sgd_stage(config: ml_collections.ConfigDict, *, base_lr: float,
                        weight_decay: float, lr_multipliers: tuple, num_epochs: float,
                        schedule: str) -> None:
  """What the fine-tune and linear protocols share: cross-entropy on crop + flip views
  of the labelled images only, SGD with Nesterov momentum 0.9 at `base_lr` x B/256
  (this stage's batch), no warm-up, `num_epochs`, no k-NN monitor."""
  config.data.labelled_views = {"image": {"name": "crop_flip"}}
  config.data.unlabelled_views = {}
  config.mu = 0
  if "knn_monitor" in config:
    config.knn_monitor = None  # the stage has a classifier: top-1 is its eval
  opt = config.optimizer
  opt.name = "sgd"
  opt.momentum = 0.9
  opt.nesterov = True
  opt.weight_decay = weight_decay
  opt.base_lr = base_lr
  opt.lr_scaling = "linear"
  opt.lr_multipliers = lr_multipliers
  opt.schedule = schedule
  opt.warmup_epochs = type(opt.get("warmup_epochs", 0.0))(0)  # keeps a locked field's type
  opt.warmup_steps = 0
  if "lr_batch_size" in opt:
    opt.lr_batch_size = 0  # scale by this stage's batch, not the pretraining's
  config.num_epochs = num_epochs
  config.num_train_steps = 0


def linear_protocol(config: ml_collections.ConfigDict, *, base_lr: float,
                    num_epochs: float, weight_decay: float = 0.0,
                    schedule: str = "cosine") -> ml_collections.ConfigDict:
  """Sets `config` (in place; returned) to the linear evaluation protocol (SemPPL
  App. A.2 / A.3, after BYOL and SimCLR): a randomly initialised linear classifier
  on the frozen encoder's output (`simclr_finetune` with `frozen_encoder`: eval-mode
  batch norm, stop-gradient), cross-entropy on crop + flip views of the labelled
  images, SGD with Nesterov momentum 0.9, `base_lr` x B/256, no warm-up. Only the
  classifier's updates are kept (`optimizer.lr_multipliers` zero the rest, so weight
  decay cannot touch the encoder). Point `config.init_from` at the pretraining run.
  """
  config.method = ml_collections.ConfigDict(dict(
      name="simclr_finetune", head_layers=0, finetune_layer=0, frozen_encoder=True))
  config.knn_monitor = None
  _labelled_sgd_stage(config, base_lr=base_lr, weight_decay=weight_decay,
                      lr_multipliers=((r"^(?!classifier/)", 0.0),), num_epochs=num_epochs,
                      schedule=schedule)
  return config
