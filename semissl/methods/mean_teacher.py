"""Mean Teacher (Tarvainen & Valpola 2017; survey).

The teacher is the engine's EMA of the online params (`state.target_params`,
theta' <- beta theta' + (1 - beta) theta with beta = `config.ema.decay`). Student and
teacher each see their own augmentation ('student', 'teacher' views) of every
labelled and unlabelled image.
L = CE(student, labelled) + mu(t) MSE(softmax student, sg softmax teacher)
(`losses.mean_teacher_loss`), mu(t) the sigmoid ramp-up. The teacher's batch norm
and EMA warm-up: docs/DESIGN_CHOICES.md ("Mean Teacher").
Telemetry 'pl_*': teacher argmax on the unlabelled images.
"""
from __future__ import annotations

import jax

from semissl import losses
from semissl.methods import base
from semissl.methods import semi_supervised_classifier as ssc


@base.register
class MeanTeacher(ssc.SemiSupervisedClassifier):
  """Softmax-MSE consistency to the EMA teacher."""

  name = "mean_teacher"
  labelled_view_names = ("student", "teacher")
  unlabelled_view_names = ("student", "teacher")

  def loss_fn(self, params, batch, *, state, rng):
    labelled, unlabelled = batch["labelled"], batch["unlabelled"]
    num_labelled = labelled["label"].shape[0]
    student_rng, teacher_rng = jax.random.split(rng)
    student_logits, batch_stats = self.apply_train(
        params, state.batch_stats,
        self.concat_examples([labelled["images"]["student"],
                              unlabelled["images"]["student"]]), rng=student_rng)
    teacher_logits, _ = self.apply_train(
        state.target_params, state.target_batch_stats,
        self.concat_examples([labelled["images"]["teacher"],
                              unlabelled["images"]["teacher"]]), rng=teacher_rng)
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    unsupervised = losses.mean_teacher_loss(student_logits=student_logits,
                                            teacher_logits=teacher_logits)
    sizes = (num_labelled, student_logits.shape[0] - num_labelled)
    metrics = ssc.target_telemetry(targets=self.split_examples(teacher_logits, sizes)[1],
                                   true_labels=unlabelled.get("true_label"))
    return self.combine(state=state, batch_stats=batch_stats,
                        labelled_logits=self.split_examples(student_logits, sizes)[0],
                        labels=labelled["label"], unsupervised_loss=unsupervised,
                        metrics=metrics)
