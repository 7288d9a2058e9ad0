"""DivideMix (Li, Socher, Hoi, ICLR 2020): learning with noisy labels as semi-supervised
learning (losses/dividemix.py).

Two networks, params {'net1', 'net2'} (independent initialisations, the same
`config.model`), trained together: the loss is the sum of both networks' losses,
whose parameters are disjoint, so each network gets its own gradient.
1. Warm-up (`warmup_epochs`): plain CE on the (noisy) labels of the 'augment0' view
   (+ the confidence penalty -H of Eq. 2 with `confidence_penalty`).
2. Co-divide, at the start of each later epoch (the train loop's epoch pass over the
   labelled set, `epoch_pass_parts` = ('labelled',)): each network's eval-mode logits
   (`epoch_pass_features`: both networks' logits side by side) give per-example CE
   losses against the noisy labels (Eq. 1), a two-component GMM fit per network
   gives w_i (`losses.dividemix.clean_probability`), and each network is trained on
   the OTHER's division: method_state['clean_prob'][k] = w of network 1 - k.
3. A step for network k: rows of the labelled batch with w_i > `p_threshold` form the
   labelled division X, the rest the unlabelled division U (their labels unused).
   Both crop+flip views ('augment0', 'augment1') go through network k in train mode
   (batch statistics dropped) and through the other network in eval mode; X's labels
   are co-refined (Eq. 3-4, `refine_labels`), U's co-guessed (`co_guess`); both views
   with their targets are mixed (one lambda' = max(lambda, 1 - lambda), lambda ~
   Beta(alpha, alpha), per step, over one shuffle of all rows: Eq. 5-6) and trained
   with L = L_X + lambda_u(t) L_U + lambda_r L_reg (Eq. 7-10,
   `dividemix_masked_loss`; lambda_u(t) = `unlabelled_weight` x the ramp-up, which
   the paper starts at the end of the warm-up).

Difference from the paper: the paper draws X from the clean division and U from the
rest, a batch of each per step; here one labelled stream over the whole (noisy)
training set is split per batch by w, so a batch's X : U ratio follows the division.
Evaluation: the average of both networks' softmax outputs (as log-probabilities);
`eval_features` are network 1's.

Config keys (`config.method`, defaults in `DivideMix.defaults`): warmup_epochs,
p_threshold (tau, 0.5), temperature (T, 0.5), mixup_alpha (4), unlabelled_weight
(lambda_u), regularisation_weight (lambda_r, 1), gmm_iterations (10), reg_covar
(5e-4), confidence_penalty (False; the paper's asymmetric-noise warm-up), and the
classic family's rampup keys. Telemetry with the data's clean 'true_label'
(`data.label_noise`): label_noise_rate of the batch, division_precision / _recall
(how many X rows carry their true label / how many correct labels land in X) and
pl_accuracy of the targets' argmax.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from semissl import losses
from semissl.losses import dividemix as dm_losses
from semissl.losses import mixing
from semissl.methods import base, networks
from semissl.methods import semi_supervised_classifier as ssc

NETS = ("net1", "net2")
_METRICS = ("supervised_loss", "unsupervised_loss", "regulariser", "clean_rate",
            "division_precision", "division_recall", "pl_accuracy")


def _net(variables, net):
  """The variables {'params', 'batch_stats', ...} of one network."""
  return {key: value[net] for key, value in variables.items()}


def _masked_mean(values, mask):
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@base.register
class DivideMix(ssc.SemiSupervisedClassifier):
  """Two networks, GMM co-divide per epoch, co-refinement, co-guessing and MixMatch."""

  name = "dividemix"
  labelled_view_names = ("augment0", "augment1")
  unlabelled_view_names = ()
  needs_epoch_pass = True
  epoch_pass_parts = ("labelled",)
  defaults = {**ssc.SemiSupervisedClassifier.defaults, "rampup": "linear",
              "unlabelled_weight": 25.0, "warmup_epochs": 1, "p_threshold": 0.5,
              "temperature": 0.5, "mixup_alpha": 4.0, "regularisation_weight": 1.0,
              "gmm_iterations": 10, "reg_covar": 5e-4, "confidence_penalty": False}

  def validate(self):
    super().validate()
    if self.info.num_labelled < 2:
      raise ValueError("dividemix needs a labelled (noisy) training set of >= 2 images; "
                       "set data.label_fraction = 1.0.")
    for key in ("warmup_epochs", "gmm_iterations"):
      value = self.option(key)
      if not isinstance(value, int) or value < (0 if key == "warmup_epochs" else 1):
        raise ValueError(f"method.{key}={value!r} must be an integer >= "
                         f"{0 if key == 'warmup_epochs' else 1}.")
    self.check_probability("p_threshold")
    for key in ("temperature", "mixup_alpha", "reg_covar"):
      self.check_positive(key)
    self.check_non_negative("regularisation_weight")
    if not isinstance(self.option("confidence_penalty"), bool):
      raise ValueError(f"method.confidence_penalty={self.option('confidence_penalty')!r} "
                       "must be True or False.")

  def init(self, rng, example_batch):
    images = example_batch["labelled"]["images"][self.labelled_view_names[0]]
    per_net = [dict(self.model.init({"params": r, "dropout": r}, images, train=False))
               for r in jax.random.split(rng, len(NETS))]
    variables = {key: {net: v[key] for net, v in zip(NETS, per_net)} for key in per_net[0]}
    n = int(self.info.num_labelled)
    return variables, {"clean_prob": jnp.zeros((len(NETS), n), jnp.float32),
                       "epoch": jnp.asarray(-1, jnp.int32)}

  def _net_logits(self, variables, images):
    return [self.model.apply(_net(variables, net), images, train=False) for net in NETS]

  def eval_logits(self, variables, images):
    """log of the mean of both networks' softmax (the paper's ensemble)."""
    log_probs = [jax.nn.log_softmax(z, -1) for z in self._net_logits(variables, images)]
    return jax.nn.logsumexp(jnp.stack(log_probs), axis=0) - jnp.log(len(NETS))

  def eval_features(self, variables, images):
    backbone = lambda module, x, train: module.backbone(x, train=train)
    return self.model.apply(_net(variables, NETS[0]), images, train=False, method=backbone)

  def epoch_pass_features(self, variables, images):
    """[B, 2C]: network 1's logits, then network 2's."""
    return jnp.concatenate(self._net_logits(variables, images), axis=-1)

  def epoch_pass_due(self, epoch):
    return epoch >= self.option("warmup_epochs")

  @functools.cached_property
  def _clean_probability(self):
    return jax.jit(functools.partial(
        dm_losses.clean_probability, num_iterations=self.option("gmm_iterations"),
        reg_covar=float(self.option("reg_covar"))))

  def epoch_update(self, method_state, *, epoch, features):
    c = int(self.info.num_classes)
    logits = np.asarray(features.labelled, np.float64).reshape(-1, len(NETS), c)
    labels = np.asarray(features.labelled_labels, np.int64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    per_example = -np.take_along_axis(log_probs, labels[:, None, None], -1)[..., 0]
    clean = [self._clean_probability(losses=jnp.asarray(per_example[:, k], jnp.float32))[0]
             for k in range(len(NETS))]
    # Co-divide: network 1 trains on network 2's division and vice versa.
    return {"clean_prob": jnp.stack(clean[::-1]), "epoch": jnp.asarray(epoch, jnp.int32)}

  def loss_fn(self, params, batch, *, state, rng):
    labelled = batch["labelled"]
    views = [labelled["images"][name] for name in self.labelled_view_names]
    labels, true_labels = labelled["label"], labelled.get("true_label")
    rngs = jax.random.split(rng, len(NETS))

    def warmup():
      return self._warmup_loss(params, state.batch_stats, views[0], labels, rngs)

    def divide():
      return self._divided_loss(params, views, labelled, state, rngs)

    # Both phases are computed and one is selected. A lax.cond would run only one, but
    # on XLA:CPU the step with the cond measured 24x slower than the warm-up alone
    # (8.3 s against 0.34 s, experiments/benchmark.py, B = 64) and 5x slower than the
    # divided loss alone (1.7 s); both + select costs their sum. Every term is finite
    # in both phases (masked means of empty masks are 0), so the unselected phase
    # adds exact zeros to the gradient.
    in_warmup = state.method_state["epoch"] < 0
    loss, batch_stats, metrics = jax.tree.map(
        lambda w, d: jnp.where(in_warmup, w, d), warmup(), divide())
    metrics = dict(metrics, warmup=(state.method_state["epoch"] < 0).astype(jnp.float32),
                   unsupervised_weight=self.unlabelled_weight(state.step))
    if true_labels is not None:
      metrics["label_noise_rate"] = jnp.mean((labels != true_labels).astype(jnp.float32))
    metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
    return loss, base.StepAux(batch_stats, state.method_state, metrics)

  def _warmup_loss(self, params, batch_stats, images, labels, rngs):
    """CE on the noisy labels for each network (+ -H with confidence_penalty)."""
    total, new_stats, supervised = 0.0, {}, []
    for net, net_rng in zip(NETS, rngs):
      logits, new_stats[net] = self.apply_train(params[net], batch_stats[net], images,
                                                rng=net_rng)
      ce = self.supervised_loss(logits, labels)
      penalty = (dm_losses.negative_entropy(logits=logits)
                 if self.option("confidence_penalty") else 0.0)
      total, supervised = total + ce + penalty, supervised + [ce]
    metrics = {key: jnp.zeros((), jnp.float32) for key in _METRICS}
    metrics["supervised_loss"] = jnp.mean(jnp.stack(supervised))
    return total, new_stats, metrics

  def _divided_loss(self, params, views, labelled, state, rngs):
    """Sum over the networks of `_one_network_loss` (each with the other as partner)."""
    total, new_stats, parts = 0.0, {}, []
    for k, net in enumerate(NETS):
      other = NETS[1 - k]
      clean_prob = state.method_state["clean_prob"][k].at[
          labelled["index"].astype(jnp.int32)].get(mode="fill", fill_value=0.0)
      loss, new_stats[net], metrics = self._one_network_loss(
          params[net], state.batch_stats[net], partner=_net(
              {"params": params, "batch_stats": state.batch_stats}, other),
          views=views, labelled=labelled, clean_prob=clean_prob, step=state.step,
          rng=rngs[k])
      total, parts = total + loss, parts + [metrics]
    metrics = {key: jnp.mean(jnp.stack([m[key] for m in parts])) for key in _METRICS}
    return total, new_stats, metrics

  def _one_network_loss(self, params, batch_stats, *, partner, views, labelled,
                        clean_prob, step, rng):
    guess_rng, permutation_rng, ratio_rng, train_rng = jax.random.split(rng, 4)
    num, num_classes = views[0].shape[0], int(self.info.num_classes)
    sizes = [num] * len(views)
    # Targets are constants: both guessing passes run on stop-gradient weights.
    own, _ = self.apply_train(jax.lax.stop_gradient(params), batch_stats,
                              self.concat_examples(views), rng=guess_rng)
    partner = jax.lax.stop_gradient(partner)
    theirs = self.model.apply(partner, self.concat_examples(views), train=False)
    own = jnp.stack(self.split_examples(own, sizes))
    theirs = jnp.stack(self.split_examples(theirs, sizes))
    temperature = self.option("temperature")
    clean = clean_prob > self.option("p_threshold")
    refined = dm_losses.refine_labels(
        labels_onehot=jax.nn.one_hot(labelled["label"], num_classes), clean_prob=clean_prob,
        logits_per_augmentation=own, temperature=temperature)
    guessed = dm_losses.co_guess(logits_per_augmentation=own,
                                 other_logits_per_augmentation=theirs,
                                 temperature=temperature)
    targets = jnp.where(clean[:, None], refined, guessed)

    total = num * len(views)
    mixed_images, mixed_targets = mixing.mixup(
        images=jnp.concatenate(views), targets=jnp.tile(targets, (len(views), 1)),
        permutation=jax.random.permutation(permutation_rng, total),
        mix_ratio=losses.mixmatch_mix_ratio(rng=ratio_rng,
                                            alpha=self.option("mixup_alpha")))
    row_sizes = [num] * len(views)
    logits, new_stats = self.apply_train(
        params, batch_stats,
        self.concat_examples(jnp.split(mixed_images, len(views))), rng=train_rng)
    logits = jnp.concatenate(self.split_examples(logits, row_sizes))
    loss, extras = dm_losses.dividemix_masked_loss(
        logits=logits, targets=mixed_targets, clean_mask=jnp.tile(clean, len(views)),
        unlabelled_weight=self.unlabelled_weight(step),
        regularisation_weight=self.option("regularisation_weight"))

    metrics = {key: extras[key] for key in
               ("supervised_loss", "unsupervised_loss", "regulariser")}
    metrics["clean_rate"] = jnp.mean(clean.astype(jnp.float32))
    true_labels = labelled.get("true_label")
    if true_labels is None:
      metrics.update(division_precision=jnp.zeros(()), division_recall=jnp.zeros(()),
                     pl_accuracy=jnp.zeros(()))
    else:
      correct = labelled["label"] == true_labels
      metrics.update(
          division_precision=_masked_mean(correct.astype(jnp.float32), clean),
          division_recall=_masked_mean(clean.astype(jnp.float32), correct),
          pl_accuracy=networks.pseudo_label_telemetry(
              pseudo_labels=jnp.argmax(targets, -1), true_labels=true_labels)["pl_accuracy"])
    return loss, new_stats, metrics
