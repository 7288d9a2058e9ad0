"""Noisy Student self-training (Xie et al. 2020, Algorithm 1).

One iteration: a FIXED teacher, read once from `method.teacher_workdir` (a label-only
`supervised` run for iteration 0's teacher, or the previous iteration's
`noisy_student` run: the student becomes the next teacher), labels the clean
unlabelled view ('weak': flip + crop) in eval mode; an equal or larger student
(`config.model`, trained from scratch) is trained with noise on the strong view
('strong': RandAugment) and the labelled view ('image'):

  L = CE(student(x_l), y) + mu(t) L_u,  L_u = 1/B sum_i w_i H(q_i, student(x_u_i))

with q_i = softmax(teacher(x_u_i) / T) the soft pseudo-labels, kept where
max q_i >= `method.threshold` and class-balanced by running counts of the kept
pseudo-classes (`losses.noisy_student_loss`; the counts are method state, so a
resumed run continues them exactly). Student noise: input noise from the strong
view, dropout before the classifier (`method.dropout_rate`, the paper's 0.5) and
stochastic depth (`config.model.drop_path_rate`: block l of L dropped with
rate * l / L; the paper's survival 0.8 at the last block is rate 0.2). The teacher
is never noised: eval mode, no dropout. Iterations are chained by workdirs
(configs/noisy_student_fmnist.py, scripts/noisy_student_pipeline.sh).

Options: `NoisyStudent.defaults` (teacher_model: a `config.model`, None or an empty
name: the student's; a larger student is a wider `config.model` than the teacher's).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from semissl import losses
from semissl.methods import base, supervised, teachers
from semissl.methods import semi_supervised_classifier as ssc


@base.register
class NoisyStudent(ssc.SemiSupervisedClassifier):
  """A noised student on a fixed teacher's filtered, class-balanced soft pseudo-labels."""

  name = "noisy_student"
  labelled_view_names = ("image",)
  unlabelled_view_names = ("weak", "strong")
  defaults = {**ssc.SemiSupervisedClassifier.defaults, "rampup": "none",
              "teacher_workdir": None, "teacher_model": None, "threshold": 0.0,
              "temperature": 1.0, "class_balance": True, "hard_targets": False,
              "dropout_rate": 0.0}

  def __init__(self, config, info, **kwargs):
    base.Method.__init__(self, config, info, **kwargs)
    self.model = supervised.build_classifier(config, info.num_classes,
                                             dropout_rate=float(self.option("dropout_rate")))
    teacher_model = self.option("teacher_model")
    if not teacher_model or not teacher_model.get("name"):
      teacher_model = config.model
    self.teacher = supervised.build_classifier(config, info.num_classes,
                                               model_config=teacher_model)

  def validate(self):
    super().validate()
    if not self.option("teacher_workdir"):
      raise ValueError("noisy_student needs method.teacher_workdir: the workdir of the "
                       "teacher (a supervised run, or the previous noisy_student iteration).")
    self.check_probability("threshold")
    self.check_positive("temperature")
    if not 0.0 <= self.option("dropout_rate") < 1.0:
      raise ValueError(f"method.dropout_rate={self.option('dropout_rate')} must be in [0, 1).")

  def init(self, rng, example_batch):
    student_rng, teacher_rng = jax.random.split(rng)
    variables, _ = super().init(student_rng, example_batch)
    images = example_batch["unlabelled"]["images"]["weak"]
    teacher = teachers.init_variables(self.teacher, teacher_rng, images)
    counts = jnp.zeros((self.info.num_classes,), jnp.int32)
    return variables, {"teacher": teacher, "class_counts": counts}

  def load_method_state(self, method_state, *, load_variables):
    return teachers.load(method_state, load_variables=load_variables,
                         workdir=self.option("teacher_workdir"))

  def teacher_logits(self, method_state, images) -> jax.Array:
    """The fixed teacher's eval-mode logits (no noise, no gradient)."""
    return jax.lax.stop_gradient(
        self.teacher.apply(method_state["teacher"], images, train=False))

  def loss_fn(self, params, batch, *, state, rng):
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    (labelled_logits, student_logits), batch_stats = self.apply_train_parts(
        params, state.batch_stats,
        [labelled["images"]["image"], unlabelled["images"]["strong"]], rng=rng)
    teacher_logits = self.teacher_logits(state.method_state, unlabelled["images"]["weak"])
    unsupervised, extras = losses.noisy_student_loss(
        student_logits=student_logits, teacher_logits=teacher_logits,
        class_counts=state.method_state["class_counts"],
        threshold=self.option("threshold"), temperature=self.option("temperature"),
        class_balance=self.option("class_balance"),
        hard_targets=self.option("hard_targets"))
    mask = extras["mask"]
    metrics = ssc.target_telemetry(targets=teacher_logits,
                                   true_labels=unlabelled.get("true_label"), mask=mask)
    metrics.update(
        balance_weight=jnp.sum(extras["weights"]) / jnp.maximum(jnp.sum(mask), 1.0),
        student_teacher_agreement=jnp.mean(
            jnp.argmax(student_logits, -1) == extras["pseudo_labels"]),
        mask_rate=extras["mask_rate"])
    loss, aux = self.combine(state=state, batch_stats=batch_stats,
                             labelled_logits=labelled_logits, labels=labelled["label"],
                             unsupervised_loss=unsupervised, metrics=metrics)
    method_state = dict(state.method_state, class_counts=extras["class_counts"])
    return loss, aux._replace(method_state=method_state)
