"""FixMatch and EMA-Teacher / Semi-ViT (probabilistic pseudo mixup) as one method.

* FixMatch (Sohn et al. 2020; survey): `method.teacher='self'`; pseudo-labels are the
  sg(argmax) of the weak view, kept where the confidence >= tau, targets for the
  strong view.
* EMA-Teacher (Semi-ViT Eq. 1-2): `method.teacher='ema'` (registered alias
  'emateacher'); pseudo-labels from the engine's EMA `target_params` on the weak view.
* Probabilistic pseudo mixup (Semi-ViT Eq. 3-5, `pseudo_mixup=True`), labelled
  mixup / CutMix (`labelled_mixup=True`), ReMixMatch distribution alignment
  (`distribution_alignment=True`).
* FixMatch's CTAugment variant (FixMatch Sec. 2.3, "FixMatch (CTA)";
  `strong_augment='ctaugment'`): the pipeline's 'strong' view is only crop + flip and
  is made strong on device by CTAugment (`cta_depth` transformations from the bin
  weights in the method state) then Cutout; each step the labelled images, under
  uniformly drawn transformations, go through an eval-mode pass of the current weights
  and update the bins (semissl/methods/ctaugment.py, as ReMixMatch).
* Without unlabelled views (mu = 0) only the labelled loss is trained (Semi-ViT's
  supervised fine-tuning stage); ViT backbones get layer-wise lr decay.

Views: labelled 'image', unlabelled 'weak' and 'strong'. Options: `FixMatch.defaults`;
the choices the papers leave open (batching, teacher mode, per-example mixing, global
permutation): docs/DESIGN_CHOICES.md ("FixMatch, EMA-Teacher / Semi-ViT").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from semissl import losses
from semissl import models
from semissl.losses import mixing
from semissl.methods import base, ctaugment, networks, supervised

TEACHERS = ("self", "ema")
STRONG_AUGMENTS = ("pipeline", "ctaugment")
UNLABELLED_VIEWS = ("weak", "strong")


def choose_cutmix(*, rng: jax.Array, mixup_alpha: float, cutmix_alpha: float,
                  switch_prob: float, shape: tuple[int, ...] = ()) -> jax.Array:
  """Mode draws (timm Mixup): CutMix w.p. `switch_prob` if both are on, else the one
  that is on. shape () is one draw per batch, (B,) one per example."""
  if mixup_alpha > 0 and cutmix_alpha > 0:
    return jax.random.bernoulli(rng, switch_prob, shape)
  return jnp.full(shape, cutmix_alpha > 0)


def pseudo_mixup_draws(*, rng: jax.Array, batch_size: int, mixup_alpha: float,
                       cutmix_alpha: float,
                       switch_prob: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Semi-ViT ProbPseudoMixup's random draws for one batch.

  Returns:
    (permutation [B] int32: partner j of example i, a uniformly random permutation;
    use_cutmix [B] bool: CutMix instead of mixup, drawn per example; a PRNG key for
    the CutMix boxes).
  """
  perm_rng, mode_rng, box_rng = jax.random.split(rng, 3)
  permutation = jax.random.permutation(perm_rng, batch_size).astype(jnp.int32)
  use_cutmix = choose_cutmix(rng=mode_rng, mixup_alpha=mixup_alpha,
                             cutmix_alpha=cutmix_alpha, switch_prob=switch_prob,
                             shape=(batch_size,))
  return permutation, use_cutmix, box_rng


@base.register
class FixMatch(base.Method):
  """FixMatch (teacher='self') or EMA-Teacher (teacher='ema'), see the module doc."""

  name = "fixmatch"
  defaults = {"teacher": "self", "teacher_train_mode": False, "threshold": 0.95,
              "lambda_u": 1.0, "soft_targets": False, "temperature": 1.0,
              "label_smoothing": 0.0, "distribution_alignment": False, "da_window": 128,
              "pseudo_mixup": False, "labelled_mixup": False, "mixup_alpha": 0.8,
              "cutmix_alpha": 1.0, "switch_prob": 0.5, "strong_augment": "pipeline",
              "cta_depth": 2, "cta_decay": 0.99, "cta_threshold": 0.8}

  def __init__(self, config, info, **kwargs):
    super().__init__(config, info, **kwargs)
    self.model = supervised.build_classifier(config, info.num_classes)
    self.teacher = self.option("teacher")
    self.layer_id_fn = (models.vit_layer_id
                        if config.model.name.startswith("vit") else None)

  @property
  def ctaugment(self) -> bool:
    return self.option("strong_augment") == "ctaugment"

  @property
  def semi_supervised(self) -> bool:
    return bool(self.config.get("mu", 0) and self.unlabelled_views)

  def validate(self):
    if self.teacher not in TEACHERS:
      raise ValueError(f"method.teacher={self.teacher!r}; known: {TEACHERS}.")
    threshold = self.option("threshold")
    if not 0.0 <= threshold <= 1.0:
      raise ValueError(f"method.threshold={threshold} must be in [0, 1].")
    if not 0.0 <= self.option("label_smoothing") < 1.0:
      raise ValueError(f"method.label_smoothing={self.option('label_smoothing')} must be in "
                       "[0, 1).")
    if self.option("temperature") <= 0:
      raise ValueError(f"method.temperature={self.option('temperature')} must be > 0.")
    if self.option("strong_augment") not in STRONG_AUGMENTS:
      raise ValueError(f"method.strong_augment={self.option('strong_augment')!r}; known: "
                       f"{STRONG_AUGMENTS}.")
    if self.ctaugment:
      depth = self.option("cta_depth")
      if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"method.cta_depth={depth!r} must be an integer >= 1.")
      for key in ("cta_decay", "cta_threshold"):
        if not 0.0 <= self.option(key) <= 1.0:
          raise ValueError(f"method.{key}={self.option(key)} must be in [0, 1].")
    if not 0.0 <= self.option("switch_prob") <= 1.0:
      raise ValueError(f"method.switch_prob={self.option('switch_prob')} must be in [0, 1].")
    mixing_on = self.option("pseudo_mixup") or self.option("labelled_mixup")
    alphas = (self.option("mixup_alpha"), self.option("cutmix_alpha"))
    if mixing_on and (min(alphas) < 0 or max(alphas) <= 0):
      raise ValueError(f"method.mixup_alpha, cutmix_alpha={alphas}: both >= 0 and one > 0 "
                       "when pseudo_mixup or labelled_mixup is on.")
    if self.option("pseudo_mixup") and self.option("soft_targets"):
      raise ValueError("method.pseudo_mixup mixes one-hot pseudo-labels (Semi-ViT Eq. 3); "
                       "set soft_targets=False.")
    if "image" not in self.labelled_views:
      raise ValueError("FixMatch needs data.labelled_views['image']; got "
                       f"{sorted(self.labelled_views)}.")
    missing = [v for v in UNLABELLED_VIEWS if v not in self.unlabelled_views]
    if self.semi_supervised and missing:
      raise ValueError(f"FixMatch needs data.unlabelled_views {list(UNLABELLED_VIEWS)}; "
                       f"got {sorted(self.unlabelled_views)}.")

  def init(self, rng, example_batch):
    images = example_batch["labelled"]["images"]["image"]
    variables = self.model.init({"params": rng, "dropout": rng}, images, train=False)
    method_state = {}
    if self.option("distribution_alignment"):
      method_state["da"] = losses.init_distribution_alignment_window(
          num_classes=self.info.num_classes,
          window_size=int(self.option("da_window")))
    if self.ctaugment:
      method_state["cta"] = ctaugment.init_weights()
    return dict(variables), method_state

  def _student(self, params, batch_stats, images, rng):
    return networks.apply_train(self.model, params, batch_stats, images, rng=rng)

  def _teacher_logits(self, params, batch_stats, images, rng):
    if self.option("teacher_train_mode"):
      logits, _ = networks.apply_train(self.model, params, batch_stats, images, rng=rng)
    else:
      logits = self.model.apply({"params": params, "batch_stats": batch_stats}, images,
                                train=False)
    return jax.lax.stop_gradient(logits)

  def _mix(self, *, images, targets, rng):
    """Labelled mixup / CutMix with lambda ~ Beta(alpha) (timm, batch-wise)."""
    mixup_alpha, cutmix_alpha = self.option("mixup_alpha"), self.option("cutmix_alpha")
    mode_rng, mixup_rng, cutmix_rng, box_rng = jax.random.split(rng, 4)
    permutation = jnp.arange(images.shape[0])[::-1]
    use_cutmix = choose_cutmix(rng=mode_rng, mixup_alpha=mixup_alpha,
                               cutmix_alpha=cutmix_alpha,
                               switch_prob=self.option("switch_prob"))
    mixed_up = mixing.mixup(
        images=images, targets=targets, permutation=permutation,
        mix_ratio=mixing.sample_mix_ratio(rng=mixup_rng, alpha=max(mixup_alpha, 1e-3)))
    cut = mixing.cutmix(
        images=images, targets=targets, permutation=permutation,
        mix_ratio=mixing.sample_mix_ratio(rng=cutmix_rng, alpha=max(cutmix_alpha, 1e-3)),
        rng=box_rng)
    return (jnp.where(use_cutmix, cut[0], mixed_up[0]),
            jnp.where(use_cutmix, cut[1], mixed_up[1]))

  def _pseudo_mixup(self, *, images, probs, rng):
    """Semi-ViT Eq. 3-5: random partners, mixup / CutMix chosen per example."""
    permutation, use_cutmix, box_rng = pseudo_mixup_draws(
        rng=rng, batch_size=images.shape[0], mixup_alpha=self.option("mixup_alpha"),
        cutmix_alpha=self.option("cutmix_alpha"), switch_prob=self.option("switch_prob"))
    return losses.probabilistic_pseudo_mixup(
        images=images, probs=probs, permutation=permutation,
        threshold=self.option("threshold"), use_cutmix=use_cutmix, rng=box_rng)

  def _ctaugment(self, params, state, *, images, labels, strong, rng):
    """CTAugment strong views of `strong` and the bins updated from labelled probes."""
    strong_rng, probe_rng = jax.random.split(rng)
    weights, depth = state.method_state["cta"], self.option("cta_depth")
    norm = dict(mean=self.info.mean, std=self.info.std)
    strong = ctaugment.strong_views(strong, weights=weights, rng=strong_rng, depth=depth,
                                    threshold=self.option("cta_threshold"), **norm)
    variables = {"params": jax.lax.stop_gradient(params), "batch_stats": state.batch_stats}
    new_weights, proximity = ctaugment.probe_update(
        images, labels, weights=weights, rng=probe_rng, depth=depth,
        decay=self.option("cta_decay"),
        predict=lambda probes: jax.nn.softmax(self.model.apply(variables, probes,
                                                               train=False)), **norm)
    metrics = {"probe_proximity": jnp.mean(proximity),
               "cta_kept_bins": jnp.mean(ctaugment.bin_probabilities(
                   weights=new_weights, threshold=self.option("cta_threshold")) > 0)}
    return strong, dict(state.method_state, cta=new_weights), metrics

  def loss_fn(self, params, batch, *, state, rng):
    smoothing = self.option("label_smoothing")
    cta_rng = None
    if self.ctaugment and self.semi_supervised:  # other variants keep their streams
      rng, cta_rng = jax.random.split(rng)
    student_rng, teacher_rng, labelled_rng, unlabelled_rng = jax.random.split(rng, 4)
    x_l = batch["labelled"]["images"]["image"]
    labels = batch["labelled"]["label"]
    targets_l = jax.nn.one_hot(labels, self.info.num_classes)
    if self.option("labelled_mixup"):
      x_l, targets_l = self._mix(images=x_l, targets=targets_l, rng=labelled_rng)
    metrics, method_state = {}, state.method_state
    if not self.semi_supervised:
      logits_l, batch_stats = self._student(params, state.batch_stats, x_l, student_rng)
      loss = losses.softmax_cross_entropy(logits=logits_l, labels=targets_l,
                                          label_smoothing=smoothing)
      metrics["train_top1"] = jnp.mean(jnp.argmax(logits_l, -1) == labels)
      return loss, base.StepAux(batch_stats, method_state, metrics)

    unlabelled = batch["unlabelled"]
    u_w, u_s = unlabelled["images"]["weak"], unlabelled["images"]["strong"]
    if cta_rng is not None:
      u_s, method_state, cta_metrics = self._ctaugment(
          params, state, images=batch["labelled"]["images"]["image"], labels=labels,
          strong=u_s, rng=cta_rng)
      metrics.update(cta_metrics)
    n_l, n_u = x_l.shape[0], u_w.shape[0]
    pseudo_mixup = self.option("pseudo_mixup")
    one_pass = self.teacher == "self" and not pseudo_mixup
    if one_pass:  # FixMatch: labelled + weak + strong in one batch.
      logits, batch_stats = self._student(
          params, state.batch_stats,
          networks.concat_examples([x_l, u_w, u_s], mesh=self.mesh), student_rng)
      logits_l, weak_logits, logits_s = networks.split_examples(logits, (n_l, n_u, n_u),
                                                                mesh=self.mesh)
      weak_logits = jax.lax.stop_gradient(weak_logits)
    else:
      if self.teacher == "ema":
        teacher_vars = (state.target_params, state.target_batch_stats)
      else:
        teacher_vars = (params, state.batch_stats)
      weak_logits = self._teacher_logits(*teacher_vars, u_w, teacher_rng)

    probs = jax.nn.softmax(weak_logits / self.option("temperature"), axis=-1)
    if self.option("distribution_alignment"):
      probs, window = losses.push_and_align(
          probs=probs, window=method_state["da"], target_prior=networks.labelled_class_prior(self.info))
      method_state = dict(method_state, da=window)
    threshold = self.option("threshold")

    if pseudo_mixup:
      u_s, mixed_targets, mixed_mask = self._pseudo_mixup(images=u_s, probs=probs,
                                                          rng=unlabelled_rng)
    if not one_pass:
      logits, batch_stats = self._student(
          params, state.batch_stats, networks.concat_examples([x_l, u_s], mesh=self.mesh),
          student_rng)
      logits_l, logits_s = networks.split_examples(logits, (n_l, u_s.shape[0]),
                                                   mesh=self.mesh)

    if pseudo_mixup:
      loss_u, _ = losses.pseudo_mixup_loss(logits=logits_s, mixed_targets=mixed_targets,
                                           mask=mixed_mask, label_smoothing=smoothing)
      metrics["mixed_mask_rate"] = jnp.mean(mixed_mask)
      mask = (jnp.max(probs, -1) >= threshold).astype(jnp.float32)
    else:
      loss_u, extras = losses.thresholded_cross_entropy(
          pseudo_probs=probs, logits=logits_s, threshold=threshold,
          hard_targets=not self.option("soft_targets"), label_smoothing=smoothing)
      mask = extras["mask"]
    loss_l = losses.softmax_cross_entropy(logits=logits_l, labels=targets_l,
                                          label_smoothing=smoothing)
    loss = loss_l + self.option("lambda_u") * loss_u
    metrics.update(train_top1=jnp.mean(jnp.argmax(logits_l, -1) == labels),
                   loss_l=loss_l, loss_u=loss_u)
    if "true_label" in unlabelled:
      metrics.update(networks.pseudo_label_telemetry(
          pseudo_labels=jnp.argmax(probs, -1), true_labels=unlabelled["true_label"],
          mask=mask))
    return loss, base.StepAux(batch_stats, method_state, metrics)

  def eval_logits(self, variables, images):
    return self.model.apply(variables, images, train=False)

  def eval_features(self, variables, images):
    return self.model.apply(variables, images, train=False,
                            method=lambda module, x, train: module.backbone(x, train=train))


@base.register
class EMATeacher(FixMatch):
  """Alias: FixMatch with `method.teacher='ema'` by default (Semi-ViT)."""

  name = "emateacher"
  defaults = {**FixMatch.defaults, "teacher": "ema"}
