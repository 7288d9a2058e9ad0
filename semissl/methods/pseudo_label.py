"""Pseudo-label (Lee 2013; survey "Pseudo Labeling").

The model's own hard argmax on the (weakly augmented) unlabelled view is the
target of the same logits (`losses.pseudo_label_loss`, stop-gradient on the
target), kept where its confidence is >= `method.threshold` (0: every example,
as in Lee 2013). Labelled and unlabelled images share one train-mode batch.
L = CE(labelled) + mu(t) L_PL with Lee's piecewise-linear alpha(t): 0 before
`rampup_start_step` (T1), linear to `unlabelled_weight` (alpha_f) over
`rampup_steps` (T2 - T1), then constant (`method.rampup='linear'`, the default here).
Telemetry 'pl_*': pseudo-label accuracy, mask rate and masked accuracy against
the hidden true labels.
"""
from __future__ import annotations


from semissl import losses
from semissl.methods import base
from semissl.methods import semi_supervised_classifier as ssc


@base.register
class PseudoLabel(ssc.SemiSupervisedClassifier):
  """CE to the model's own confident argmax on unlabelled images."""

  name = "pseudo_label"
  labelled_view_names = ("image",)
  unlabelled_view_names = ("weak",)
  defaults = {**ssc.SemiSupervisedClassifier.defaults, "rampup": "linear",
              "threshold": 0.0}

  def validate(self):
    super().validate()
    self.check_probability("threshold")

  def loss_fn(self, params, batch, *, state, rng):
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    (labelled_logits, unlabelled_logits), batch_stats = self.apply_train_parts(
        params, state.batch_stats,
        [labelled["images"]["image"], unlabelled["images"]["weak"]], rng=rng)
    unsupervised, extras = losses.pseudo_label_loss(
        logits=unlabelled_logits, threshold=self.option("threshold"))
    metrics = ssc.target_telemetry(targets=unlabelled_logits,
                                   true_labels=unlabelled.get("true_label"),
                                   mask=extras["mask"])
    return self.combine(state=state, batch_stats=batch_stats,
                        labelled_logits=labelled_logits, labels=labelled["label"],
                        unsupervised_loss=unsupervised, metrics=metrics)
