"""SimCLRv2 (Chen et al. 2020b) stages 1 and 2: contrastive pretraining and fine-tuning.

* `simclr` (stage 1, no labels): encoder f + 3-layer projection head g, NT-Xent
  over the two augmented views of every image (SimCLRv2 Eq. 1), negatives from
  the whole global batch (the step sees global arrays, so XLA gathers them from
  all devices), optionally a MoCo memory queue of EMA-encoder embeddings as
  extra negatives (SimCLRv2 §2 item 3; the engine's `target_params` is the EMA
  network, decay `config.ema.decay`). Following SimCLR's code the loss is the sum
  of the two directions, i.e. 2x `losses.nt_xent` (its mean over the 2N anchors).
* `simclr_finetune` (stage 2): the same encoder and head with a linear classifier
  on head layer k, `hiddens[k]` (SimCLRv2 §2 "fine-tuning"; k=1 for 1%/10%
  labels, 0 for 100%). As in SimCLR's code the whole head is kept and computed;
  layers above k get no gradient. Submodules are named as in stage 1
  ('backbone', 'projection'), so `config.init_from=<stage-1 workdir>` loads the
  encoder and the head and leaves the new 'classifier' at its initialisation.
* Stage 3, `simclr_distill`, is in `semissl.methods.distill`.

Options: `SimCLR.defaults` / `SimCLRFinetune.defaults` (the head keys:
`head_defaults`; head_hidden_dim 0 is the encoder width, SimCLRv2 footnote 2;
head_type 'semppl' fine-tunes a SemPPL run from its projector's first layer, SemPPL
App. A.1); choices: docs/DESIGN_CHOICES.md ("SimCLRv2").
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec as P

from semissl import losses
from semissl import models
from semissl.methods import base, networks, supervised


class ProjectorFirstLayer(nn.Module):
  """Layer 1 of a BYOL/SemPPL projector (`models.MLPHead`): dense -> BN -> ReLU, with
  MLPHead's parameter names, so that `init_from` a SemPPL run loads it (SemPPL
  App. A.1 fine-tunes from the projector's first layer, after the non-linearity)."""

  hidden_dim: int = 4096
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    h = nn.Dense(self.hidden_dim, name="dense1")(x)
    h = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, name="bn1")(h)
    return nn.relu(h)


HEAD_TYPES = ("simclr", "semppl")


class SimCLRNetwork(nn.Module):
  """Encoder f -> projection head g -> optional classifier on head layer k.

  Returns {'features': f(x), 'projection': g(f(x)) (SimCLR head with layers),
  'logits': classifier(hiddens[k]) (if num_classes)}.

  Attributes:
    backbone: encoder f, `__call__(x, *, train) -> [B, D]`.
    head_layers: projection head depth (0: no head).
    head_hidden_dim: width of the head's middle layers (None: D).
    head_out_dim: projection size.
    num_classes: classifier outputs (0: no classifier).
    classifier_layer: k, the head layer the classifier reads (0: f(x)).
    head_type: 'simclr' (SimCLRv2's `ProjectionHead`, named 'projection') or
      'semppl' (only the first layer of SemPPL's projector, named 'projector';
      head_layers 1, for fine-tuning SemPPL runs).
  """

  backbone: nn.Module
  head_layers: int = 3
  head_hidden_dim: int | None = None
  head_out_dim: int = 128
  num_classes: int = 0
  classifier_layer: int = 0
  head_type: str = "simclr"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    features = self.backbone(x, train=train)
    outputs = {"features": features}
    hiddens = (features,)
    if self.head_layers and self.head_type == "semppl":
      hiddens += (ProjectorFirstLayer(self.head_hidden_dim or 4096, name="projector")(
          features, train=train),)
    elif self.head_layers:
      outputs["projection"], hiddens = models.ProjectionHead(
          num_layers=self.head_layers, hidden_dim=self.head_hidden_dim,
          out_dim=self.head_out_dim, name="projection")(features, train=train)
    if self.num_classes:
      outputs["logits"] = models.LinearClassifier(self.num_classes, name="classifier")(
          hiddens[self.classifier_layer])
    return outputs


def head_defaults(*, prefix: str = "", head_layers: int = 3,
                  finetune_layer: int = 0) -> dict[str, Any]:
  """The `<prefix>head_*` / `<prefix>finetune_layer` option defaults (a `defaults` part)."""
  return {prefix + "head_layers": head_layers, prefix + "head_hidden_dim": 0,
          prefix + "head_out_dim": 128, prefix + "finetune_layer": finetune_layer,
          prefix + "head_type": "simclr"}


def head_settings(option: Callable[[str], Any], *, prefix: str = "") -> dict[str, Any]:
  """`build_network`'s head keyword arguments from the method's `option` (its
  `<prefix>head_*` / `<prefix>finetune_layer` keys, declared with `head_defaults`).

  Raises a one-line ValueError unless 0 <= finetune_layer <= head_layers (and
  head_layers <= 1 for head_type 'semppl').
  """
  get = lambda key: int(option(prefix + key) or 0)
  settings = {"head_layers": get("head_layers"), "head_hidden_dim": get("head_hidden_dim"),
              "head_out_dim": get("head_out_dim"), "finetune_layer": get("finetune_layer"),
              "head_type": option(prefix + "head_type")}
  layers, where = settings["head_layers"], f"method.{prefix}"
  if settings["head_type"] not in HEAD_TYPES:
    raise ValueError(f"{where}head_type={settings['head_type']!r}; use one of {HEAD_TYPES}.")
  if layers < 0 or (settings["head_type"] == "semppl" and layers > 1):
    raise ValueError(f"{where}head_layers={layers} must be >= 0 (at most 1 for head_type "
                     "'semppl': only the projector's first layer is kept).")
  if not 0 <= settings["finetune_layer"] <= layers:
    raise ValueError(
        f"{where}finetune_layer={settings['finetune_layer']} is outside the projection head "
        f"({where}head_layers={layers}); use 0..{layers}.")
  return settings


def build_network(*, model_config: ml_collections.ConfigDict, head_layers: int = 3,
                  head_hidden_dim: int = 0, head_out_dim: int = 128, num_classes: int = 0,
                  finetune_layer: int = 0, head_type: str = "simclr") -> SimCLRNetwork:
  """`SimCLRNetwork` with the backbone of `model_config` (a `config.model`).

  With `num_classes`, the classifier sits on head layer `finetune_layer`.
  """
  return SimCLRNetwork(
      backbone=networks.build_backbone(model_config), head_layers=head_layers,
      head_hidden_dim=head_hidden_dim or None, head_out_dim=head_out_dim,
      num_classes=num_classes, classifier_layer=finetune_layer if num_classes else 0,
      head_type=head_type)


def init_rngs(rng: jax.Array) -> dict[str, jax.Array]:
  params_rng, dropout_rng = jax.random.split(rng)
  return {"params": params_rng, "dropout": dropout_rng}


@base.register
class SimCLR(base.Method):
  """SimCLRv2 stage 1: NT-Xent (Eq. 1) on two views, optional MoCo queue negatives."""

  name = "simclr"
  has_classifier = False
  defaults = {**head_defaults(), "temperature": 0.1, "queue_size": 0}

  def __init__(self, config, info, **kwargs):
    super().__init__(config, info, **kwargs)
    self.network = build_network(model_config=config.model, **head_settings(self.option))
    self.temperature = float(self.option("temperature"))
    self.queue_size = int(self.option("queue_size"))

  @property
  def view_names(self) -> tuple[str, ...]:
    """The two unlabelled views, in name order (x_{2k-1}, x_{2k} of Eq. 1)."""
    return tuple(sorted(self.unlabelled_views))

  def validate(self):
    if len(self.view_names) != 2:
      raise ValueError(f"simclr needs exactly two data.unlabelled_views (the two augmented "
                       f"views of Eq. 1), got {list(self.view_names)}.")
    if self.temperature <= 0:
      raise ValueError(f"method.temperature={self.temperature} must be positive.")
    if self.queue_size < 0:
      raise ValueError(f"method.queue_size={self.queue_size} must be >= 0 (0: no memory).")
    if self.network.head_type != "simclr":
      raise ValueError(f"simclr pretrains SimCLRv2's projection head; method.head_type="
                       f"{self.network.head_type!r} is for fine-tuning only.")

  def _embedding(self, outputs):
    return outputs["projection"] if self.network.head_layers else outputs["features"]

  def init(self, rng, example_batch):
    images = example_batch["unlabelled"]["images"][self.view_names[0]]
    init_rng, queue_rng = jax.random.split(rng)
    outputs, variables = self.network.init_with_output(init_rngs(init_rng), images, train=False)
    method_state = {}
    if self.queue_size:
      method_state["queue"] = losses.init_embedding_queue(
          rng=queue_rng, capacity=self.queue_size, dim=self._embedding(outputs).shape[-1])
    return dict(variables), method_state

  def loss_fn(self, params, batch, *, state, rng):
    views = batch["unlabelled"]["images"]
    first, second = (views[name] for name in self.view_names)
    num = first.shape[0]
    # One pass over both views: batch norm statistics span all 2N images.
    # Kept on their devices (networks.concat_examples); split back below.
    images = networks.concat_examples([first, second], mesh=self.mesh)
    outputs, batch_stats = networks.apply_train(self.network, params, state.batch_stats,
                                                images, rng=rng)
    z_first, z_second = networks.split_examples(self._embedding(outputs), (num, num),
                                                mesh=self.mesh)
    queue = state.method_state.get("queue")
    nt_xent, extras = losses.nt_xent(
        z_first, z_second, temperature=self.temperature,
        extra_negatives=None if queue is None else queue.embeddings)
    method_state = state.method_state
    if queue is not None:
      # The memory network is the EMA target; its embeddings enter the queue after the loss.
      target_outputs, _ = networks.apply_train(
          self.network, state.target_params, state.target_batch_stats, images, rng=rng)
      keys = losses.l2_normalize(jax.lax.stop_gradient(jnp.concatenate(networks.split_examples(
          self._embedding(target_outputs), (num, num), mesh=self.mesh))))
      method_state = dict(method_state,
                          queue=losses.push_embedding_queue(queue, embeddings=keys))
      extras["queue_filled"] = queue.num_filled / self.queue_size
    metrics = dict(extras, nt_xent=nt_xent)
    return 2.0 * nt_xent, base.StepAux(batch_stats, method_state, metrics)

  def eval_features(self, variables, images):
    return self.network.apply(variables, images, train=False)["features"]

  def state_sharding_rules(self):
    return ((r"method_state/queue/(embeddings|labels)$", P("data")),)


@base.register
class SimCLRFinetune(base.Method):
  """SimCLRv2 stage 2: cross-entropy with the classifier on projection-head layer k.

  With `method.frozen_encoder` it is the linear evaluation protocol (SemPPL App.
  A.2 / A.3, BYOL, SimCLR): the encoder and head run in eval mode (batch-norm
  statistics fixed) behind a stop-gradient, so only the classifier learns.
  """

  name = "simclr_finetune"
  defaults = {**head_defaults(), "frozen_encoder": False}

  def __init__(self, config, info, **kwargs):
    super().__init__(config, info, **kwargs)
    self.network = build_network(model_config=config.model, num_classes=info.num_classes,
                                 **head_settings(self.option))
    self.frozen_encoder = bool(self.option("frozen_encoder"))

  def validate(self):
    if "image" not in self.labelled_views:
      raise ValueError("simclr_finetune reads data.labelled_views['image']; name the view "
                       "'image' (crop + flip only, SimCLRv2 §3.1).")

  def init(self, rng, example_batch):
    images = example_batch["labelled"]["images"]["image"]
    return dict(self.network.init(init_rngs(rng), images, train=False)), {}

  def loss_fn(self, params, batch, *, state, rng):
    labelled = batch["labelled"]
    images = labelled["images"]["image"]
    if self.frozen_encoder:
      params = {name: value if name == "classifier" else jax.lax.stop_gradient(value)
                for name, value in params.items()}
      outputs = self.network.apply({"params": params, "batch_stats": state.batch_stats},
                                   images, train=False)
      batch_stats = state.batch_stats
    else:
      outputs, batch_stats = networks.apply_train(self.network, params, state.batch_stats,
                                                  images, rng=rng)
    logits = outputs["logits"]
    loss = losses.softmax_cross_entropy(logits=logits, labels=labelled["label"])
    metrics = supervised.classification_metrics(logits, labelled["label"])
    return loss, base.StepAux(batch_stats, state.method_state, metrics)

  def eval_logits(self, variables, images):
    return self.network.apply(variables, images, train=False)["logits"]

  def eval_features(self, variables, images):
    return self.network.apply(variables, images, train=False)["features"]
