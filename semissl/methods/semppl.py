"""SemPPL: semantic positives via k-NN pseudo-labels (Bošnjak et al. 2023).

Per step (SemPPL §2, App. B, Listing 1), with N = labelled + unlabelled
examples, every example seen in V_large large and V_small small views:
1. online encoder f -> projector g -> predictor h on every view gives the
   anchors o (Eq. 1's z^a1); the EMA target f_t -> g_t on the large views gives
   t (the engine's `target_params`; the target predictor is unused);
2. the target projections of the labelled examples are pushed into one FIFO
   queue per large view (Listing 1 line 23);
3. unlabelled examples get the k-NN pseudo-label of Eq. 2 with view voting
   (App. D); labelled examples keep their label;
4. P semantic positives per (anchor view, large view) pair are drawn from the
   queue entries of that large view sharing the (pseudo-)label (Listing 1);
5. loss = `semissl.losses.semppl_loss` (Eq. 10 with Listing 1's normalisation).

Options: `SemPPL.defaults`, their bounds checked by `validate()`; the choices the
paper leaves open (push order, voting, positives and negatives drawn, bounds,
telemetry of Fig. 3): docs/DESIGN_CHOICES.md ("SemPPL").

Parameters are named like `models.Classifier`'s (`backbone/...`), so a
fine-tune stage with `config.init_from` pointing here copies the encoder.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from semissl import losses
from semissl import models
from semissl.methods import base, networks


class SemPPLNetwork(nn.Module):
  """Encoder f, projector g and predictor h (SemPPL §2.1 "Architecture").

  Attributes:
    backbone: encoder returning pooled features [B, F].
    projector_hidden_dim: g's hidden width (4096).
    projection_dim: output width of g and h (256).
    predictor_hidden_dim: h's hidden width (4096).
  """

  backbone: nn.Module
  projector_hidden_dim: int = 4096
  projection_dim: int = 256
  predictor_hidden_dim: int = 4096

  def setup(self):
    self.projector = models.MLPHead(self.projector_hidden_dim, self.projection_dim)
    self.predictor = models.MLPHead(self.predictor_hidden_dim, self.projection_dim)

  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """(projection g(f(x)), prediction h(g(f(x))))."""
    projection = self.project(x, train=train)
    return projection, self.predictor(projection, train=train)

  def project(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.projector(self.backbone(x, train=train), train=train)

  def embed(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    return self.backbone(x, train=train)


def vote_telemetry(*, votes: jax.Array, pseudo_labels: jax.Array,
                   true_labels: jax.Array, thresholds: Sequence[float]) -> dict:
  """SemPPL Fig. 3: precision / recall of pseudo-labels at vote thresholds.

  Args:
    votes: [B, K] vote counts per class.
    pseudo_labels: [B] winners (-1 where no vote was cast).
    true_labels: [B] hidden labels.
    thresholds: fractions t of the votes cast that the winner must reach.

  Returns:
    `pl_recall_at_{100 t}` (fraction of examples whose winner has >= t of the
    votes) and `pl_precision_at_{100 t}` (accuracy among those).
  """
  cast = jnp.sum(votes, axis=-1).astype(jnp.float32)
  agreement = jnp.max(votes, axis=-1) / jnp.maximum(cast, 1.0)
  correct = ((pseudo_labels == true_labels) & (pseudo_labels >= 0)).astype(jnp.float32)
  out = {}
  for threshold in thresholds:
    above = ((agreement >= threshold - 1e-6) & (cast > 0)).astype(jnp.float32)
    name = f"{round(100 * threshold)}"
    out["pl_recall_at_" + name] = jnp.mean(above)
    out["pl_precision_at_" + name] = (jnp.sum(correct * above)
                                      / jnp.maximum(jnp.sum(above), 1.0))
  return jax.lax.stop_gradient(out)


@base.register
class SemPPL(base.Method):
  """SemPPL pretraining (no classifier: evaluated via `eval_features`)."""

  name = "semppl"
  has_classifier = False
  defaults = {
      "large_views": ("large1", "large2", "large3", "large4"),
      "small_views": ("small1", "small2"),
      "queue_capacity": 20 * 4096,
      "num_neighbours": 1,
      "view_voting": True,
      "temperature": 0.2,
      "num_negatives": 10,
      "num_semantic_positives": 3,
      "alpha": 0.2,
      "contrastive_scale": 0.3,
      "invariance_scale": 5.0,
      "projector_hidden_dim": 4096,
      "projection_dim": 256,
      "predictor_hidden_dim": 4096,
      "use_pseudo_labels": True,  # False: Table 4b "- Pseudo-labels"
      "vote_thresholds": (0.25, 0.5, 0.75, 1.0),
  }

  def __init__(self, config, info, **kwargs):
    super().__init__(config, info, **kwargs)
    self.large_views = tuple(self.option("large_views"))
    self.small_views = tuple(self.option("small_views"))
    self.model = SemPPLNetwork(
        backbone=networks.build_backbone(config.model),
        projector_hidden_dim=self.option("projector_hidden_dim"),
        projection_dim=self.option("projection_dim"),
        predictor_hidden_dim=self.option("predictor_hidden_dim"))

  # --- configuration checks -------------------------------------------------

  def validate(self):
    o = self.option
    data = self.config.data
    labelled_batch = int(self.config.batch_size)
    unlabelled_batch = int(self.config.get("mu", 0) * labelled_batch)
    streams = {"labelled_views": dict(data.get("labelled_views", {}) or {})}
    if unlabelled_batch:
      streams["unlabelled_views"] = dict(data.get("unlabelled_views", {}) or {})
    if not self.large_views:
      raise ValueError("method.large_views is empty; SemPPL needs at least one large view "
                       "(the target and the queues use them).")
    for key, views in streams.items():
      missing = [v for v in self.large_views + self.small_views if v not in views]
      if missing:
        raise ValueError(f"SemPPL views {missing} are missing from config.data.{key} "
                         f"(it has {sorted(views)}); add them or fix method.large_views/"
                         "small_views.")
      for group in (self.large_views, self.small_views):
        sizes = {int(views[v].get("size") or data.get("image_size", 0)) for v in group}
        if len(sizes) > 1:
          raise ValueError(f"SemPPL views {list(group)} in config.data.{key} have sizes "
                           f"{sorted(sizes)}; views of one group must share a size.")
    capacity = int(o("queue_capacity"))
    if capacity < labelled_batch:
      raise ValueError(f"method.queue_capacity={capacity} is smaller than the labelled batch "
                       f"{labelled_batch} pushed per step; use at least {labelled_batch} "
                       "(SemPPL: 20 x batch).")
    if not 1 <= int(o("num_neighbours")) <= capacity:
      raise ValueError(f"method.num_neighbours={o('num_neighbours')} must be in [1, "
                       f"queue_capacity={capacity}].")
    if not 0 <= int(o("num_semantic_positives")) <= capacity:
      raise ValueError(f"method.num_semantic_positives={o('num_semantic_positives')} must be "
                       f"in [0, queue_capacity={capacity}] (draws per anchor and large view).")
    batch = labelled_batch + unlabelled_batch
    if not 0 <= int(o("num_negatives")) <= batch - 1:
      raise ValueError(f"method.num_negatives={o('num_negatives')} must be in [0, {batch - 1}]"
                       f": negatives are other examples of the batch of {batch}.")
    if float(o("temperature")) <= 0:
      raise ValueError(f"method.temperature={o('temperature')} must be positive.")
    if any(not 0 < float(t) <= 1 for t in o("vote_thresholds")):
      raise ValueError(f"method.vote_thresholds={o('vote_thresholds')} must be fractions in "
                       "(0, 1].")

  def state_sharding_rules(self):
    return ((r"method_state/queue/embeddings", P(None, "data", None)),
            (r"method_state/queue/labels", P(None, "data")))

  # --- init / loss ------------------------------------------------------------

  def init(self, rng, example_batch):
    model_rng, queue_rng = jax.random.split(rng)
    images = example_batch["labelled"]["images"][self.large_views[0]]
    variables = self.model.init(model_rng, images, train=False)
    queue = losses.init_embedding_queue(
        rng=queue_rng, capacity=int(self.option("queue_capacity")),
        dim=int(self.option("projection_dim")), num_views=len(self.large_views))
    return dict(variables), {"queue": queue}

  def forward(self, params, batch, *, state):
    """Online predictions [V_all, N, D], target projections [V_large, N, D].

    Also returns the updated online batch statistics and the labelled count.
    Labelled examples come first along N.
    """
    parts = [batch["labelled"]["images"]]
    if "unlabelled" in batch:
      parts.append(batch["unlabelled"]["images"])
    num_labelled = batch["labelled"]["label"].shape[0]

    def stacked(names):  # every (view, part), kept on its device (networks.concat_examples)
      return networks.concat_examples([part[name] for name in names for part in parts],
                                      mesh=self.mesh)

    def per_view(outputs, names):  # -> [V, N, D], labelled first along N
      pieces = networks.split_examples(
          outputs, [part[name].shape[0] for name in names for part in parts], mesh=self.mesh)
      k = len(parts)
      return jnp.stack([jnp.concatenate(pieces[i * k:(i + 1) * k], axis=0)
                        for i in range(len(names))])

    batch_stats = state.batch_stats
    predictions = []
    for group in (self.large_views, self.small_views):
      if not group:
        continue
      (_, prediction), batch_stats = networks.apply_train(
          self.model, params, batch_stats, stacked(group))
      predictions.append(per_view(prediction, group))
    # The target runs in training mode (batch statistics), its updates dropped.
    target, _ = networks.apply_train(
        self.model, state.target_params, state.target_batch_stats,
        stacked(self.large_views), method=SemPPLNetwork.project)
    target = jax.lax.stop_gradient(per_view(target, self.large_views))
    return jnp.concatenate(predictions, axis=0), target, batch_stats, num_labelled

  def loss_fn(self, params, batch, *, state, rng):
    o = self.option
    online, target, batch_stats, num_labelled = self.forward(params, batch, state=state)
    num_large, num_all = len(self.large_views), online.shape[0]
    labels = batch["labelled"]["label"].astype(jnp.int32)

    # Listing 1: enqueue the labelled target projections, then look up.
    queue = losses.push_embedding_queue(state.method_state["queue"],
                                        embeddings=target[:, :num_labelled], labels=labels)
    metrics = {"queue_fill": jnp.mean(queue.num_filled) / queue.labels.shape[-1]}
    if "unlabelled" in batch:
      pseudo_labels, votes = losses.knn_pseudo_labels(
          queries=online[:num_large, num_labelled:], queue_embeddings=queue.embeddings,
          queue_labels=queue.labels, num_classes=self.info.num_classes,
          k=int(o("num_neighbours")), view_voting=bool(o("view_voting")))
      true_labels = batch["unlabelled"].get("true_label")  # absent: no hidden labels
      if true_labels is not None:
        metrics.update(networks.pseudo_label_telemetry(
            pseudo_labels=pseudo_labels, true_labels=true_labels, mask=pseudo_labels >= 0))
        metrics.update(vote_telemetry(votes=votes, pseudo_labels=pseudo_labels,
                                      true_labels=true_labels,
                                      thresholds=o("vote_thresholds")))
      if not o("use_pseudo_labels"):
        pseudo_labels = jnp.full_like(pseudo_labels, losses.EMPTY_LABEL)
      labels = jnp.concatenate([labels, pseudo_labels])

    positives_rng, negatives_rng = jax.random.split(rng)
    num_positives = int(o("num_semantic_positives"))
    positives, valid = losses.sample_semantic_positives(
        rng=positives_rng, labels=labels, queue_embeddings=queue.embeddings,
        queue_labels=queue.labels, num_positives=num_all * num_positives)
    batch_size, dim = online.shape[1:]
    # [V_large, V_all * P, ...] -> [V_all, V_large, P, ...]: a draw per anchor view.
    positives = jnp.swapaxes(
        positives.reshape(num_large, num_all, num_positives, batch_size, dim), 0, 1)
    valid = jnp.swapaxes(valid.reshape(num_large, num_all, num_positives, batch_size), 0, 1)
    loss, extras = losses.semppl_loss(
        online=online, target=target, semantic_positives=positives,
        semantic_positive_mask=valid, rng=negatives_rng,
        num_negatives=int(o("num_negatives")), temperature=float(o("temperature")),
        alpha=float(o("alpha")), contrastive_scale=float(o("contrastive_scale")),
        invariance_scale=float(o("invariance_scale")))
    if num_positives == 0:
      extras.pop("semantic_positive_fraction")
    metrics.update(jax.lax.stop_gradient(extras))
    return loss, base.StepAux(batch_stats, {"queue": queue}, metrics)

  # --- evaluation -------------------------------------------------------------

  def eval_features(self, variables, images):
    return self.model.apply(variables, images, train=False, method=SemPPLNetwork.embed)
