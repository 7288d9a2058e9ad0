"""Meta Pseudo Labels (Pham et al. 2021; survey "Meta Pseudo Labels") with UDA on the
teacher, soft pseudo-labels and the exact gradient through the student's step.

Two classifiers trained together by the shared optimizer: params (and batch_stats)
{'teacher': ..., 'student': ...}; the teacher is `config.model`, the student
`config.method.student_model` (model kwargs like `config.model`; default: the same
architecture). Per step, with x_u the strong unlabelled view:

* Teacher, one train-mode pass over labelled + weak + strong images (as UDA):
  L_T = L_s(T) + mu(t) L_UDA(T) + lambda_mpl L_MPL, where L_s and L_UDA are UDA's
  (`UDA.uda_terms`: TSA, threshold, temperature) and
  L_MPL = CE(y_l, S(x_l; theta_S')),
  theta_S' = theta_S - eta_S grad_{theta_S} CE(softmax T(x_u), S(x_u; theta_S))
  (`losses.meta_pseudo_labels_teacher_loss`, eta_S = `method.inner_lr`, required),
  differentiated through the student's update by autodiff (soft pseudo-labels, no
  REINFORCE). theta_S is under stop-gradient there: L_MPL moves the teacher only.
* Student: L_S = CE(sg softmax T(x_u), S(x_u; theta_S)), the pseudo-label loss of
  the inner step; its gradient is the one already computed for theta_S', under
  stop-gradient (`losses.loss_with_gradient`), so the teacher gets nothing from L_S.
  As in the paper the student sees no labels during this training (its final
  fine-tune on the labelled data is not part of this method).

L = L_T + L_S (disjoint parameters, so each network gets only its own gradient).
Batch norm: the teacher's statistics come from its pass (labelled + weak + strong),
the student's from its pass on x_u; the pass of theta_S' on x_l normalises with that
batch's statistics and is dropped. Evaluation (`eval_logits`, also of the EMA
target) is the student's. The teacher and the student share the optimizer and its
schedule; `optimizer.lr_multipliers` can scale either's learning rate.
Metrics: UDA's for the teacher ('pl_*' is the teacher's weak argmax), 'mpl_loss',
'student_loss', 'student_train_top1' (theta_S' on x_l) and 'student_pl_accuracy'
(the teacher's strong argmax, the student's target).
"""
from __future__ import annotations

import jax
import ml_collections

from semissl import losses, models
from semissl.methods import base, networks, uda
from semissl.methods import semi_supervised_classifier as ssc


@base.register
class MetaPseudoLabels(uda.UDA):
  """Teacher (UDA + MPL feedback) and student (teacher's soft pseudo-labels)."""

  name = "meta_pseudo_labels"
  # inner_lr (eta_S) is required; student_model None: the teacher's `config.model`.
  defaults = {**uda.UDA.defaults, "mpl_weight": 1.0, "inner_lr": None, "student_model": None}

  def __init__(self, config, info, **kwargs):
    super().__init__(config, info, **kwargs)  # self.model: the teacher
    student_config = self.option("student_model") or config.model
    self.student_model = models.Classifier(
        backbone=networks.build_backbone(ml_collections.ConfigDict(student_config)),
        num_classes=info.num_classes)

  def validate(self):
    super().validate()
    inner_lr = self.option("inner_lr")
    if inner_lr is None or not inner_lr >= 0:
      raise ValueError(f"method.inner_lr={inner_lr!r}: set the student's one-step "
                       "learning rate eta_S (>= 0) of the teacher's MPL objective.")
    self.check_non_negative("mpl_weight")

  def init(self, rng, example_batch):
    images = example_batch["labelled"]["images"]["image"]
    variables = {}
    for name, model, key in (("teacher", self.model, jax.random.fold_in(rng, 0)),
                             ("student", self.student_model, jax.random.fold_in(rng, 1))):
      for collection, tree in model.init({"params": key, "dropout": key}, images,
                                         train=False).items():
        variables.setdefault(collection, {})[name] = tree
    variables.setdefault("batch_stats", {})
    for name in ("teacher", "student"):
      variables["batch_stats"].setdefault(name, {})
    return variables, {}

  def loss_fn(self, params, batch, *, state, rng):
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    labels = labelled["label"]
    num_labelled = labels.shape[0]
    num_unlabelled = unlabelled["images"]["weak"].shape[0]
    teacher_rng, unlabelled_rng, labelled_rng = jax.random.split(rng, 3)
    logits, teacher_stats = networks.apply_train(
        self.model, params["teacher"], state.batch_stats["teacher"],
        self.concat_examples([labelled["images"]["image"], unlabelled["images"]["weak"],
                              unlabelled["images"]["strong"]]), rng=teacher_rng)
    labelled_logits, weak_logits, strong_logits = self.split_examples(
        logits, [num_labelled, num_unlabelled, num_unlabelled])
    supervised_loss, unsupervised, metrics = self.uda_terms(
        labelled_logits=labelled_logits, weak_logits=weak_logits,
        strong_logits=strong_logits, labels=labels,
        true_labels=unlabelled.get("true_label"), step=state.step)

    student_stats = state.batch_stats["student"]
    mpl, extras = losses.meta_pseudo_labels_teacher_loss(
        teacher_logits=strong_logits, student_params=params["student"],
        student_unlabelled_apply=lambda p: networks.apply_train(
            self.student_model, p, student_stats, unlabelled["images"]["strong"],
            rng=unlabelled_rng),
        student_labelled_apply=lambda p: networks.apply_train(
            self.student_model, p, student_stats, labelled["images"]["image"],
            rng=labelled_rng)[0],
        labels=labels, inner_lr=self.option("inner_lr"))
    student_loss = losses.loss_with_gradient(
        value=extras["student_loss"], grads=extras["student_grads"],
        params=params["student"])

    metrics.update(ssc.target_telemetry(targets=strong_logits,
                                        true_labels=unlabelled.get("true_label"),
                                        prefix="student_pl_"))
    metrics.update(mpl_loss=mpl, student_loss=student_loss,
                   student_train_top1=(extras["updated_labelled_logits"].argmax(-1)
                                       == labels).mean())
    batch_stats = {"teacher": teacher_stats,
                   "student": jax.lax.stop_gradient(extras["student_aux"])}
    return self.combine(state=state, batch_stats=batch_stats,
                        labelled_logits=labelled_logits, labels=labels,
                        unsupervised_loss=unsupervised, metrics=metrics,
                        supervised_loss=supervised_loss,
                        extra_loss=self.option("mpl_weight") * mpl + student_loss)

  def _student_variables(self, variables):
    student = {"params": variables["params"]["student"]}
    stats = variables.get("batch_stats", {}).get("student", {})
    if stats:
      student["batch_stats"] = stats
    return student

  def eval_logits(self, variables, images):
    """The student's eval-mode logits."""
    return self.student_model.apply(self._student_variables(variables), images,
                                    train=False)

  def eval_features(self, variables, images):
    backbone = lambda module, x, train: module.backbone(x, train=train)
    return self.student_model.apply(self._student_variables(variables), images,
                                    train=False, method=backbone)
