"""SimMatch (Zheng et al. 2022): semantic + instance similarity with a labelled bank.

One network: encoder F -> linear classifier phi ('head', logits p) and an MLP
projection head g ('embedding_head', embeddings z). Per step (SimMatch Alg. 1):

* L_s (Eq. 1): cross-entropy of the weakly augmented labelled images.
* p_w = DA(softmax(weak logits)) (Eq. 2); q_w (Eq. 3) against the labelled bank;
  label propagation (Eq. 7-10, Table 6) gives p_hat and q_hat.
* L_u (Eq. 2): [max p_hat > tau] H(p_hat, p_s) on the strong view.
* L_in (Eq. 5): H(q_hat, q_s), q_s (Eq. 4) of the strong view's embedding.
* Total (Eq. 6): L_s + lambda_u L_u + lambda_in L_in, after an instance warm-up.
* The bank (Sec. 3.4), one slot per labelled image, is written after the losses:
  'student_teacher' (EMA teacher embeddings, Eq. 11) or 'temporal_ensemble' (Eq. 12).

Views: labelled 'image' (weak), unlabelled 'weak' and 'strong'. Options:
`SimMatch.defaults`; the choices taken from the official code rather than the paper
(projection head, instance warm-up, teacher BN, bank variants and initialisation):
docs/DESIGN_CHOICES.md ("SimMatch").
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from semissl import losses
from semissl import models
from semissl.losses import simmatch as simmatch_losses
from semissl.methods import base, networks

VARIANTS = ("student_teacher", "temporal_ensemble")
UNLABELLED_VIEWS = ("weak", "strong")


class SimMatchNetwork(nn.Module):
  """Encoder -> (classifier logits [B, C], embeddings [B, embedding_dim]).

  Attributes:
    backbone: encoder F, `__call__(x, *, train) -> [B, D]`.
    num_classes: classifier outputs.
    embedding_dim: projection output width (SimMatch: 128).
    embedding_hidden_dim: projection hidden width (0: D).
    embedding_batch_norm: BN in the projection head (official SimMatch: none).
  """

  backbone: nn.Module
  num_classes: int
  embedding_dim: int = 128
  embedding_hidden_dim: int = 0
  embedding_batch_norm: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    features = self.backbone(x, train=train)
    logits = models.LinearClassifier(self.num_classes, name="head")(features)
    embeddings = models.MLPHead(
        hidden_dim=self.embedding_hidden_dim or features.shape[-1],
        out_dim=self.embedding_dim, batch_norm=self.embedding_batch_norm,
        name="embedding_head")(features, train=train)
    return logits, embeddings


@base.register
class SimMatch(base.Method):
  """SimMatch, both memory-bank variants of Sec. 3.4."""

  name = "simmatch"
  defaults = {"variant": "student_teacher", "lambda_u": 1.0, "lambda_in": 1.0,
              "temperature": 0.1, "alpha": 0.9, "threshold": 0.95, "bank_momentum": 0.7,
              "da_window": 32, "distribution_alignment": True,
              "p_strategy": simmatch_losses.P_STRATEGIES[0],
              "q_strategy": simmatch_losses.Q_STRATEGIES[0], "embedding_dim": 128,
              "embedding_hidden_dim": 0, "embedding_batch_norm": False,
              "instance_warmup_epochs": 1, "teacher_train_mode": True}

  def __init__(self, config, info, **kwargs):
    super().__init__(config, info, **kwargs)
    self.model = SimMatchNetwork(
        backbone=networks.build_backbone(config.model), num_classes=info.num_classes,
        embedding_dim=int(self.option("embedding_dim")),
        embedding_hidden_dim=int(self.option("embedding_hidden_dim") or 0),
        embedding_batch_norm=bool(self.option("embedding_batch_norm")))
    self.variant = self.option("variant")
    self.num_slots = int(info.num_labelled)

  def validate(self):
    info = self.info
    if self.variant not in VARIANTS:
      raise ValueError(f"method.variant={self.variant!r}; known: {VARIANTS}.")
    if self.num_slots < info.num_classes:
      raise ValueError(
          f"SimMatch's labelled bank has one slot per labelled image ({self.num_slots}) "
          f"but there are {info.num_classes} classes; label at least one image per class.")
    threshold = self.option("threshold")
    if not 0.0 <= threshold <= 1.0:
      raise ValueError(f"method.threshold={threshold} must be in [0, 1].")
    if not 0.0 <= self.option("alpha") <= 1.0:
      raise ValueError(f"method.alpha={self.option('alpha')} must be in [0, 1].")
    if not 0.0 <= self.option("bank_momentum") < 1.0:
      raise ValueError(f"method.bank_momentum={self.option('bank_momentum')} must be in [0, 1).")
    if self.option("temperature") <= 0:
      raise ValueError(f"method.temperature={self.option('temperature')} must be > 0.")
    if int(self.option("da_window")) < 1:
      raise ValueError(f"method.da_window={self.option('da_window')} must be >= 1.")
    for key, known in (("p_strategy", simmatch_losses.P_STRATEGIES),
                       ("q_strategy", simmatch_losses.Q_STRATEGIES)):
      if self.option(key) not in known:
        raise ValueError(f"method.{key}={self.option(key)!r}; known: {known}.")
    missing = [v for v in UNLABELLED_VIEWS if v not in self.unlabelled_views]
    if missing or "image" not in self.labelled_views or not self.config.get("mu", 0):
      raise ValueError("SimMatch needs mu > 0, data.labelled_views['image'] (weak) and "
                       f"data.unlabelled_views {list(UNLABELLED_VIEWS)}; got labelled "
                       f"{sorted(self.labelled_views)}, unlabelled "
                       f"{sorted(self.unlabelled_views)}, mu={self.config.get('mu', 0)}.")
    labels = info.labelled_labels
    if labels is not None and len(labels) != self.num_slots:
      raise ValueError(f"info.labelled_labels has {len(labels)} entries for "
                       f"{self.num_slots} labelled images.")

  def init(self, rng, example_batch):
    params_rng, bank_rng = jax.random.split(rng)
    images = example_batch["labelled"]["images"]["image"]
    variables = self.model.init({"params": params_rng, "dropout": params_rng}, images,
                                train=False)
    labels = self.info.labelled_labels
    bank = losses.init_labelled_bank(
        rng=bank_rng, num_slots=self.num_slots, dim=self.model.embedding_dim,
        labels=None if labels is None else jnp.asarray(labels, jnp.int32))
    window = losses.init_distribution_alignment_window(
        num_classes=self.info.num_classes,
        window_size=int(self.option("da_window")))
    return dict(variables), {"bank": bank, "da": window}

  def state_sharding_rules(self):
    return networks.rows_over_data(
        self, num_rows=self.num_slots, what="SimMatch bank",
        paths=(r"method_state/bank/embeddings", r"method_state/bank/labels"))

  def _apply(self, params, batch_stats, images, *, train, rng):
    """(logits, embeddings), updated batch stats (None when not in train mode)."""
    if not train:
      return self.model.apply({"params": params, "batch_stats": batch_stats}, images,
                              train=False), None
    return networks.apply_train(self.model, params, batch_stats, images, rng=rng)

  def _forward(self, params, batch, *, state, rng):
    """Student and (no-gradient) teacher outputs of the step's images."""
    x_l = batch["labelled"]["images"]["image"]
    u_w = batch["unlabelled"]["images"]["weak"]
    u_s = batch["unlabelled"]["images"]["strong"]
    n_l, n_u = x_l.shape[0], u_w.shape[0]
    student_rng, teacher_rng = jax.random.split(rng)
    # Each pass's images stay on their devices (networks.concat_examples).
    concat = lambda arrays: networks.concat_examples(arrays, mesh=self.mesh)
    split = lambda outputs, sizes: networks.split_examples(outputs, sizes, mesh=self.mesh)
    if self.variant == "student_teacher":
      (logits, embeddings), batch_stats = self._apply(
          params, state.batch_stats, concat([x_l, u_s]), train=True, rng=student_rng)
      (t_logits, t_embeddings), _ = self._apply(
          state.target_params, state.target_batch_stats, concat([x_l, u_w]),
          train=bool(self.option("teacher_train_mode")), rng=teacher_rng)
      _, weak_logits = split(t_logits, (n_l, n_u))
      bank_embeddings, weak_embeddings = split(t_embeddings, (n_l, n_u))
      labelled_logits, strong_logits = split(logits, (n_l, n_u))
      _, strong_embeddings = split(embeddings, (n_l, n_u))
    else:
      (logits, embeddings), batch_stats = self._apply(
          params, state.batch_stats, concat([x_l, u_w, u_s]), train=True, rng=student_rng)
      labelled_logits, weak_logits, strong_logits = split(logits, (n_l, n_u, n_u))
      bank_embeddings, weak_embeddings, strong_embeddings = split(embeddings, (n_l, n_u, n_u))
    sg = jax.lax.stop_gradient
    return dict(labelled_logits=labelled_logits, weak_logits=sg(weak_logits),
                weak_embeddings=sg(weak_embeddings), bank_embeddings=sg(bank_embeddings),
                strong_logits=strong_logits, strong_embeddings=strong_embeddings,
                batch_stats=batch_stats)

  def loss_fn(self, params, batch, *, state, rng):
    out = self._forward(params, batch, state=state, rng=rng)
    bank = state.method_state["bank"]
    window = state.method_state["da"]
    temperature = self.option("temperature")
    threshold = self.option("threshold")

    p_weak = jax.nn.softmax(out["weak_logits"], axis=-1)
    if self.option("distribution_alignment"):
      p_weak, window = losses.push_and_align(probs=p_weak, window=window)
    q_weak = losses.instance_similarity(embeddings=out["weak_embeddings"],
                                        bank_embeddings=bank.embeddings,
                                        temperature=temperature)
    p_hat, q_hat = losses.simmatch_propagate(
        p_weak=p_weak, q_weak=q_weak, bank_labels=bank.labels,
        num_classes=self.info.num_classes, alpha=self.option("alpha"),
        p_strategy=self.option("p_strategy"),
        q_strategy=self.option("q_strategy"))
    warmup_steps = round(self.option("instance_warmup_epochs") * self.info.steps_per_epoch)
    instance_on = state.step >= warmup_steps
    p_target = jnp.where(instance_on, p_hat, p_weak)

    labels = batch["labelled"]["label"]
    loss_s = losses.softmax_cross_entropy(logits=out["labelled_logits"], labels=labels)
    loss_u, u_extras = losses.simmatch_unlabelled_loss(
        p_hat=p_target, strong_logits=out["strong_logits"], threshold=threshold)
    loss_in, in_extras = losses.simmatch_instance_loss(
        q_target=q_hat, strong_embeddings=out["strong_embeddings"],
        bank_embeddings=bank.embeddings, temperature=temperature)
    lambda_in = self.option("lambda_in") * instance_on.astype(loss_in.dtype)
    loss = loss_s + self.option("lambda_u") * loss_u + lambda_in * loss_in

    momentum = 0.0 if self.variant == "student_teacher" else self.option("bank_momentum")
    new_bank = losses.update_labelled_bank(
        bank=bank, ids=batch["labelled"]["index"], embeddings=out["bank_embeddings"],
        labels=labels, momentum=momentum)
    metrics = {
        "train_top1": jnp.mean(jnp.argmax(out["labelled_logits"], -1) == labels),
        "loss_s": loss_s, "loss_u": loss_u, "loss_in": loss_in,
        "instance_on": instance_on.astype(jnp.float32),
        "q_hat_entropy": in_extras["target_entropy"],
    }
    true_labels = batch["unlabelled"].get("true_label")
    if true_labels is not None:
      metrics.update(networks.pseudo_label_telemetry(
          pseudo_labels=jnp.argmax(p_target, -1), true_labels=true_labels,
          mask=u_extras["mask"]))
      metrics.update(networks.pseudo_label_telemetry(
          pseudo_labels=jnp.argmax(p_weak, -1), true_labels=true_labels, prefix="pw_"))
      instance_labels = jnp.take(bank.labels, jnp.argmax(q_hat, -1))
      metrics["pl_instance_accuracy"] = jax.lax.stop_gradient(
          jnp.mean(instance_labels == true_labels))
    aux = base.StepAux(out["batch_stats"], {"bank": new_bank, "da": window}, metrics)
    return loss, aux

  def eval_logits(self, variables, images):
    return self.model.apply(variables, images, train=False)[0]

  def eval_features(self, variables, images):
    return self.model.apply(variables, images, train=False,
                            method=lambda module, x, train: module.backbone(x, train=train))
