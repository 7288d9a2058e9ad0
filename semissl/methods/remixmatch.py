"""ReMixMatch (Berthelot et al. 2020; survey "ReMixMatch"), Algorithm 1.

Views (all crop + flip from the input pipeline): labelled 'image'; unlabelled 'weak'
and 'strong0' .. 'strong{K-1}', the latter made strong on device by CTAugment
(semissl/methods/ctaugment.py) followed by Cutout. Per step:
1. Guess: the weak view through a train-mode pass whose batch statistics are dropped;
   q = Sharpen(Normalize(q p(y) / p~(y)), T) under stop-gradient, p~ the mean of the
   last `da_window` (128) batch means of q (a ring buffer in the method state: the
   paper's running average over 128 batches, not the public code's EMA)
   (`losses.remixmatch_guess`).
2. Augmentation anchoring: the K strong views, each with `cta_depth` CTAugment
   transformations drawn from the bin weights, then Cutout; all K take q as target.
3. CTAugment update: the labelled images with uniformly drawn transformations (the
   probes) through an eval-mode pass of the current weights; the bin weights move by
   m <- rho m + (1 - rho)(1 - |p - onehot(y)|_1 / 2) (`ctaugment.update_weights`);
   the new weights are used from the next step on.
4. MixUp over X ++ U^ (labelled + all strong views), lambda' = max(lambda, 1 -
   lambda), lambda ~ Beta(0.75, 0.75) per example (`losses.mixmatch_mix`).
5. One train-mode pass over [X'; U'; U^_1; rot(U^_1)] (batch norm sees them
   together), a classifier head and a 4-way rotation head on the backbone features;
   L = H(X') + lambda_u(t) H(U') + lambda_u1 H(U^_1) + lambda_r H_rot
   (`losses.remixmatch_loss`), lambda_u(t) = `unlabelled_weight` (1.5) x a linear
   ramp-up (the public code warms lambda_u up over its first 1/64 of training).
Telemetry: 'pl_*' of the guesses; 'cta_*' of the bin weights; 'probe_proximity'.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from semissl import losses
from semissl import models
from semissl.methods import base, ctaugment, networks
from semissl.methods import semi_supervised_classifier as ssc

NUM_ROTATIONS = 4


def strong_view_names(num_strong: int) -> tuple[str, ...]:
  """The unlabelled views CTAugment makes strong: 'strong0' .. 'strong{K-1}'."""
  return tuple(f"strong{k}" for k in range(num_strong))


def rotate_quarter_turns(images: jax.Array, turns: jax.Array) -> jax.Array:
  """Image i [H, W, C] (H = W) rotated by turns[i] x 90 degrees counter-clockwise."""
  out = images
  for turn in range(1, NUM_ROTATIONS):
    rotated = jnp.rot90(images, turn, axes=(1, 2))
    out = jnp.where((turns == turn)[:, None, None, None], rotated, out)
  return out


class ReMixMatchNetwork(nn.Module):
  """Backbone, then a linear classifier ('head') and a 4-way rotation head
  ('rotation_head'): images -> (logits [B, C], rotation logits [B, 4])."""

  backbone: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    features = self.backbone(x, train=train)
    logits = models.LinearClassifier(self.num_classes, name="head")(features)
    rotation_logits = models.LinearClassifier(NUM_ROTATIONS, name="rotation_head")(features)
    return logits, rotation_logits


@base.register
class ReMixMatch(ssc.SemiSupervisedClassifier):
  """Distribution alignment + augmentation anchoring + CTAugment + MixUp (module doc)."""

  name = "remixmatch"
  labelled_view_names = ("image",)
  defaults = {**ssc.SemiSupervisedClassifier.defaults, "unlabelled_weight": 1.5,
              "rampup": "linear", "num_strong": 2, "temperature": 0.5,
              "mixup_alpha": 0.75, "pre_mixup_weight": 0.5, "rotation_weight": 0.5,
              "da_window": 128, "cta_depth": 2, "cta_decay": 0.99, "cta_threshold": 0.8}

  def __init__(self, config, info, **kwargs):
    super().__init__(config, info, **kwargs)
    self.model = ReMixMatchNetwork(backbone=networks.build_backbone(config.model),
                                   num_classes=info.num_classes)

  @property
  def num_strong(self) -> int:
    return self.option("num_strong")

  @property
  def unlabelled_view_names(self) -> tuple[str, ...]:
    return ("weak",) + strong_view_names(max(self.num_strong, 1))

  def validate(self):
    for key in ("num_strong", "cta_depth", "da_window"):
      value = self.option(key)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"method.{key}={value!r} must be an integer >= 1.")
    super().validate()
    for key in ("temperature", "mixup_alpha"):
      self.check_positive(key)
    for key in ("pre_mixup_weight", "rotation_weight"):
      self.check_non_negative(key)
    for key in ("cta_decay", "cta_threshold"):
      self.check_probability(key)
    if self.option("label_smoothing"):
      raise ValueError("method.label_smoothing: ReMixMatch's labelled targets are mixed "
                       "one-hot labels; leave it 0.")
    height, width = self.info.image_shape[:2]
    if height != width:
      raise ValueError(f"ReMixMatch's rotation loss needs square images; got "
                       f"{height}x{width}.")

  def init(self, rng, example_batch):
    variables, _ = super().init(rng, example_batch)
    return variables, {
        "da": losses.init_distribution_alignment_window(
            num_classes=self.info.num_classes, window_size=self.option("da_window")),
        "cta": ctaugment.init_weights()}

  def loss_fn(self, params, batch, *, state, rng):
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    (guess_rng, strong_rng, probe_rng, permutation_rng, ratio_rng, rotation_rng,
     train_rng) = jax.random.split(rng, 7)
    x, labels = labelled["images"]["image"], labelled["label"]
    num_labelled, num_classes = x.shape[0], self.info.num_classes
    weak = unlabelled["images"]["weak"]
    num_unlabelled = weak.shape[0]
    weights, depth = state.method_state["cta"], self.option("cta_depth")
    frozen = jax.lax.stop_gradient(params)

    # 1. The guess: train-mode pass of the weak view, its batch statistics dropped.
    (weak_logits, _), _ = self.apply_train(frozen, state.batch_stats, weak, rng=guess_rng)
    guesses, window = losses.remixmatch_guess(
        logits=weak_logits, window=state.method_state["da"],
        target_prior=networks.labelled_class_prior(self.info),
        temperature=self.option("temperature"))

    # 2. K CTAugment strong views of the unlabelled images.
    strong = jnp.concatenate([unlabelled["images"][name]
                              for name in strong_view_names(self.num_strong)])
    strong = ctaugment.strong_views(strong, weights=weights, rng=strong_rng, depth=depth,
                                    threshold=self.option("cta_threshold"),
                                    mean=self.info.mean, std=self.info.std)

    # 3. CTAugment's bin update from the probes (labelled images, uniform policies).
    def predict(probes):
      logits, _ = self.model.apply({"params": frozen, "batch_stats": state.batch_stats},
                                   probes, train=False)
      return jax.nn.softmax(logits)

    new_weights, proximity = ctaugment.probe_update(
        x, labels, weights=weights, rng=probe_rng, depth=depth,
        decay=self.option("cta_decay"), predict=predict, mean=self.info.mean,
        std=self.info.std)

    # 4. MixUp over the labelled batch and every strong view.
    total = num_labelled + strong.shape[0]
    mixed_x, x_targets, mixed_u, u_targets = losses.mixmatch_mix(
        labelled_images=x, labelled_targets=jax.nn.one_hot(labels, num_classes),
        unlabelled_images=strong,
        unlabelled_targets=jnp.tile(guesses, (self.num_strong, 1)),
        permutation=jax.random.permutation(permutation_rng, total),
        mix_ratio=losses.mixmatch_mix_ratio(rng=ratio_rng,
                                            alpha=self.option("mixup_alpha"),
                                            shape=(total,)))

    # 5. One train-mode pass: mixed batches, the first strong view and its rotation.
    first_strong = strong[:num_unlabelled]
    turns = jax.random.randint(rotation_rng, (num_unlabelled,), 0, NUM_ROTATIONS)
    parts = [mixed_x, mixed_u, first_strong, rotate_quarter_turns(first_strong, turns)]
    (logits, rotation_logits), batch_stats = self.apply_train(
        params, state.batch_stats, self.concat_examples(parts), rng=train_rng)
    sizes = [part.shape[0] for part in parts]
    labelled_logits, unlabelled_logits, strong_logits, _ = self.split_examples(logits,
                                                                               sizes)
    rotated_logits = self.split_examples(rotation_logits, sizes)[3]

    weight = self.unlabelled_weight(state.step)
    loss, extras = losses.remixmatch_loss(
        labelled_logits=labelled_logits, labelled_targets=x_targets,
        unlabelled_logits=unlabelled_logits, unlabelled_targets=u_targets,
        strong_logits=strong_logits, strong_targets=guesses,
        rotation_logits=rotated_logits, rotations=turns, unlabelled_weight=weight,
        pre_mixup_weight=self.option("pre_mixup_weight"),
        rotation_weight=self.option("rotation_weight"))
    metrics = ssc.target_telemetry(targets=guesses,
                                   true_labels=unlabelled.get("true_label"))
    metrics.update(
        extras, unsupervised_weight=weight,
        guess_confidence=jnp.mean(jnp.max(guesses, axis=-1)),
        probe_proximity=jnp.mean(proximity),
        cta_mean_weight=jnp.mean(new_weights),
        cta_kept_bins=jnp.mean(ctaugment.bin_probabilities(
            weights=new_weights, threshold=self.option("cta_threshold")) > 0),
        rotation_top1=jnp.mean(jnp.argmax(rotated_logits, -1) == turns),
        train_top1=jnp.mean(jnp.argmax(labelled_logits, -1) == labels))
    metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
    method_state = dict(state.method_state, da=window, cta=new_weights)
    return loss, base.StepAux(batch_stats, method_state, metrics)

  def eval_logits(self, variables, images):
    return self.model.apply(variables, images, train=False)[0]
