"""Label Propagation (Iscen et al. 2019, "Label Propagation for Deep Semi-supervised
Learning"; survey "Label propagation").

Alternates, once per epoch (the train loop's epoch pass, training/epoch_pass.py):
1. descriptors of every training image with the current eval-mode encoder;
2. their k-NN graph, W = A + A^T, W_n = D^{-1/2} W D^{-1/2}, the diffusion
   Z = (I - alpha W_n)^{-1} Y (conjugate gradient), pseudo-labels y_hat = argmax Z,
   certainty w_i = 1 - H(z_hat_i)/log c and class weights zeta_j
   (`semissl.losses.label_propagation.propagate_labels`);
3. training with L = CE(labelled) + mu(t) L_w, L_w the zeta w-weighted cross-entropy
   of the unlabelled stream ('image' view, crop+flip) against each example's stored
   pseudo-label (looked up by its slot, batch 'index').

The graph's nodes are the unlabelled stream's images (which hold the labelled ones
when `data.labelled_in_unlabelled`; those nodes get their label, w = 1) plus the
labelled images not in it. The paper first trains on the labelled images only: for
`warmup_epochs` epochs there is no propagation and L_w is off (mask 0). The
per-example store (pseudo-labels [N] and certainty [N]) is sharded over 'data' like
SimMatch's bank and checkpointed with the state ('epoch': the epoch of the last
propagation, -1 before the first).

Config keys (`config.method`, defaults in `LabelPropagation.defaults`): k (50),
gamma (3), alpha (0.99), cg_iterations (20), block_size (1024; query rows per
similarity block), warmup_epochs (1), and the classic family's unlabelled_weight /
rampup keys.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from semissl.losses import label_propagation as lp_losses
from semissl.methods import base, networks
from semissl.methods import semi_supervised_classifier as ssc

STORE_PATHS = (r"method_state/pseudo_labels", r"method_state/certainty")


@base.register
class LabelPropagation(ssc.SemiSupervisedClassifier):
  """Weighted pseudo-labels from a per-epoch diffusion over the k-NN graph."""

  name = "label_propagation"
  labelled_view_names = ("image",)
  unlabelled_view_names = ("image",)
  needs_epoch_pass = True
  defaults = {**ssc.SemiSupervisedClassifier.defaults, "k": 50, "gamma": 3.0,
              "alpha": 0.99, "cg_iterations": 20, "block_size": 1024, "warmup_epochs": 1}

  def validate(self):
    super().validate()
    n = self.info.num_unlabelled
    if n < 1:
      raise ValueError("label_propagation needs an unlabelled split (num_unlabelled > 0).")
    k = self.option("k")
    if not isinstance(k, int) or not 1 <= k < n:
      raise ValueError(f"method.k={k!r} must be an int in [1, {n}) (the unlabelled images).")
    if not 0.0 <= self.option("alpha") < 1.0:
      raise ValueError(f"method.alpha={self.option('alpha')} must be in [0, 1).")
    self.check_positive("gamma")
    for key in ("cg_iterations", "block_size"):
      if not isinstance(self.option(key), int) or self.option(key) < 1:
        raise ValueError(f"method.{key}={self.option(key)!r} must be a positive integer.")
    warmup = self.option("warmup_epochs")
    if not isinstance(warmup, int) or warmup < 0:
      raise ValueError(f"method.warmup_epochs={warmup!r} must be a non-negative integer.")

  def init(self, rng, example_batch):
    variables, _ = super().init(rng, example_batch)
    n, c = int(self.info.num_unlabelled), int(self.info.num_classes)
    return variables, {"pseudo_labels": jnp.zeros((n,), jnp.int32),
                       "certainty": jnp.zeros((n,), jnp.float32),
                       "class_weights": jnp.zeros((c,), jnp.float32),
                       "epoch": jnp.asarray(-1, jnp.int32)}

  def state_sharding_rules(self):
    return networks.rows_over_data(self, num_rows=self.info.num_unlabelled,
                                   what="Label-propagation store", paths=STORE_PATHS)

  def epoch_pass_due(self, epoch):
    return epoch >= self.option("warmup_epochs")

  @functools.cached_property
  def _propagate(self):
    """Jitted (features [n, D], labels [n]) -> (pseudo, certainty, class weights) on
    the run's mesh, the k-NN search sharded over 'data'."""
    mesh = self.mesh if self.mesh is not None and self.data_devices > 1 else None
    return jax.jit(functools.partial(
        lp_losses.propagate_labels, num_classes=int(self.info.num_classes),
        k=self.option("k"), gamma=float(self.option("gamma")),
        alpha=float(self.option("alpha")), num_iterations=self.option("cg_iterations"),
        block_size=self.option("block_size"), mesh=mesh))

  def _on_mesh(self, array: np.ndarray) -> jax.Array:
    """A host array (equal on every process) replicated over the run's mesh."""
    if self.mesh is None:
      return jnp.asarray(array)
    return jax.make_array_from_callback(array.shape, NamedSharding(self.mesh, P()),
                                        lambda index: array[index])

  def epoch_update(self, method_state, *, epoch, features):
    n = int(self.info.num_unlabelled)
    slots = np.asarray(features.labelled_slots)
    outside = slots < 0
    nodes = np.concatenate([features.unlabelled, features.labelled[outside]])
    labels = np.full(len(nodes), -1, np.int32)
    labels[slots[~outside]] = features.labelled_labels[~outside]
    labels[n:] = features.labelled_labels[outside]
    pseudo, certainty, class_weights = self._propagate(self._on_mesh(nodes),
                                                       self._on_mesh(labels))
    return {"pseudo_labels": pseudo[:n], "certainty": certainty[:n],
            "class_weights": class_weights,
            "epoch": jnp.asarray(epoch, jnp.int32)}

  def loss_fn(self, params, batch, *, state, rng):
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    (labelled_logits, unlabelled_logits), batch_stats = self.apply_train_parts(
        params, state.batch_stats,
        [labelled["images"]["image"], unlabelled["images"]["image"]], rng=rng)

    store = state.method_state
    slots = unlabelled["index"].astype(jnp.int32)
    pseudo = store["pseudo_labels"].at[slots].get(mode="fill", fill_value=0)
    certainty = store["certainty"].at[slots].get(mode="fill", fill_value=0)
    propagated = (store["epoch"] >= 0).astype(jnp.float32)
    unsupervised, extras = lp_losses.weighted_cross_entropy(
        logits=unlabelled_logits, pseudo_labels=pseudo, certainty=certainty,
        class_weights=store["class_weights"], mask=jnp.full(pseudo.shape, propagated))
    metrics = {"propagated": propagated, "certainty": jnp.mean(certainty) * propagated,
               "loss_weight": jnp.mean(extras["weights"])}
    true_labels = unlabelled.get("true_label")
    if true_labels is not None:
      metrics.update(networks.pseudo_label_telemetry(
          pseudo_labels=pseudo, true_labels=true_labels))
    return self.combine(state=state, batch_stats=batch_stats,
                        labelled_logits=labelled_logits, labels=labelled["label"],
                        unsupervised_loss=unsupervised, metrics=metrics)
