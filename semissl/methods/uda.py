"""UDA, Unsupervised Data Augmentation (Xie et al. 2020; survey L_u^UDA).

Labelled, weak unlabelled ('weak': the "original" example) and strong
unlabelled ('strong': RandAugment) images go through one train-mode batch, as
UDA's code does. The weak logits are the fixed target (stop-gradient, same
params): 1[max p(weak) > tau] KL(softmax(z_weak / T) || p(strong))
(`losses.uda_loss`; UDA's image settings tau = 0.8, T = 0.4, lambda = 1).
L = L_s + mu(t) L_u with no ramp-up by default (`method.rampup='none'`).
L_s is the labelled cross-entropy, or with `method.tsa` = 'linear' | 'log' | 'exp'
UDA's training signal annealing (Sec. 3.5; `losses.tsa_cross_entropy`): labelled
examples whose correct-class probability exceeds eta_t are left out, eta_t rising
from 1/K to 1 over the run ('none', the default: plain cross-entropy).
Telemetry 'pl_*': argmax of the weak view, its mask rate and masked accuracy.
"""
from __future__ import annotations


from semissl import losses
from semissl.methods import base
from semissl.methods import semi_supervised_classifier as ssc


@base.register
class UDA(ssc.SemiSupervisedClassifier):
  """Confidence-masked, sharpened weak-to-strong KL consistency."""

  name = "uda"
  labelled_view_names = ("image",)
  unlabelled_view_names = ("weak", "strong")
  defaults = {**ssc.SemiSupervisedClassifier.defaults, "rampup": "none",
              "threshold": 0.8, "temperature": 0.4, "tsa": "none"}

  def validate(self):
    super().validate()
    self.check_probability("threshold")
    self.check_positive("temperature")
    if self.option("tsa") not in losses.TSA_SCHEDULES:
      raise ValueError(f"method.tsa={self.option('tsa')!r}; use one of "
                       f"{', '.join(losses.TSA_SCHEDULES)}.")

  def loss_fn(self, params, batch, *, state, rng):
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    num_labelled = labelled["label"].shape[0]
    num_unlabelled = unlabelled["images"]["weak"].shape[0]
    logits, batch_stats = self.apply_train(
        params, state.batch_stats,
        self.concat_examples([labelled["images"]["image"], unlabelled["images"]["weak"],
                              unlabelled["images"]["strong"]]), rng=rng)
    labelled_logits, weak_logits, strong_logits = self.split_examples(
        logits, [num_labelled, num_unlabelled, num_unlabelled])
    supervised_loss, unsupervised, metrics = self.uda_terms(
        labelled_logits=labelled_logits, weak_logits=weak_logits,
        strong_logits=strong_logits, labels=labelled["label"],
        true_labels=unlabelled.get("true_label"), step=state.step)
    return self.combine(state=state, batch_stats=batch_stats,
                        labelled_logits=labelled_logits, labels=labelled["label"],
                        unsupervised_loss=unsupervised, metrics=metrics,
                        supervised_loss=supervised_loss)

  def uda_terms(self, *, labelled_logits, weak_logits, strong_logits, labels,
                true_labels, step):
    """(L_s or None for the plain cross-entropy, L_u, metrics) of one network's
    labelled, weak and strong logits: the TSA-annealed L_s when `method.tsa` is set,
    the masked KL L_u and its telemetry (also Meta Pseudo Labels' teacher)."""
    unsupervised, extras = losses.uda_loss(
        teacher_logits=weak_logits, student_logits=strong_logits,
        threshold=self.option("threshold"), temperature=self.option("temperature"))
    metrics = ssc.target_telemetry(targets=weak_logits, true_labels=true_labels,
                                   mask=extras["mask"])
    supervised_loss = None
    if self.option("tsa") != "none":
      threshold = losses.tsa_threshold(step=step, total_steps=self.info.total_steps,
                                       num_classes=self.info.num_classes,
                                       schedule=self.option("tsa"))
      supervised_loss, tsa = losses.tsa_cross_entropy(
          logits=labelled_logits, labels=labels, threshold=threshold)
      metrics.update(tsa_threshold=threshold, tsa_kept_rate=tsa["kept_rate"])
    return supervised_loss, unsupervised, metrics
