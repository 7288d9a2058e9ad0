"""SimCLRv2 stage 3: distillation with unlabelled data from a fixed teacher (Eq. 2, 3).

`simclr_distill` trains a student on the teacher's softened predictions,
P(y|x; tau) = softmax(logits / tau), over the unlabelled stream (Eq. 2), or with
`method.alpha` < 1 also on the labelled stream's labels (Eq. 3). The teacher is
a fine-tuned `simclr_finetune` network read once, at the start of a fresh run,
from the latest checkpoint of `method.teacher_workdir` (every variable must be
there: another architecture is a one-line error). It lives in `method_state`
as {'teacher': {'params', 'batch_stats'}}, is applied in inference mode and is
never updated; being part of the TrainState it is checkpointed, so a resumed
run does not read the teacher workdir again (`semissl.methods.teachers`).

Self-distillation: the student has the teacher's encoder (without its
projection head), temperature 0.1, and may start from the teacher through
`config.init_from`; big-to-small: a smaller `config.model`, temperature 1.0,
from scratch (SimCLRv2 §3.1).

Options: `SimCLRDistill.defaults` (alpha 1.0: Eq. 2 only; teacher_model a
`config.model`, None or an empty name: the student's; the teacher's head keys
`teacher_head_*`); choices: docs/DESIGN_CHOICES.md ("SimCLRv2").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from semissl import losses
from semissl.methods import base, networks, simclr, teachers


@base.register
class SimCLRDistill(base.Method):
  """Student trained on a fixed fine-tuned teacher's predictions (SimCLRv2 Eq. 2 / 3)."""

  name = "simclr_distill"
  defaults = {**simclr.head_defaults(head_layers=0),
              **simclr.head_defaults(prefix="teacher_", finetune_layer=1),
              "teacher_workdir": None, "teacher_model": None,
              "temperature": 0.1, "alpha": 1.0}

  def __init__(self, config, info, **kwargs):
    super().__init__(config, info, **kwargs)
    # Bad head settings (layer k) raise here, before training.
    self.student = simclr.build_network(model_config=config.model, num_classes=info.num_classes,
                                        **simclr.head_settings(self.option))
    teacher_model = self.option("teacher_model")
    if not teacher_model or not teacher_model.get("name"):
      teacher_model = config.model
    self.teacher = simclr.build_network(
        model_config=teacher_model, num_classes=info.num_classes,
        **simclr.head_settings(self.option, prefix="teacher_"))
    self.temperature = float(self.option("temperature"))
    self.alpha = float(self.option("alpha"))

  @property
  def uses_labels(self) -> bool:
    return self.alpha < 1.0

  def validate(self):
    if not self.option("teacher_workdir"):
      raise ValueError("simclr_distill needs method.teacher_workdir: the workdir of the "
                       "fine-tuned teacher (a simclr_finetune run).")
    if self.temperature <= 0:
      raise ValueError(f"method.temperature={self.temperature} must be positive.")
    if not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f"method.alpha={self.alpha} must be in [0, 1] (1: no label loss).")
    if "image" not in self.unlabelled_views:
      raise ValueError("simclr_distill reads data.unlabelled_views['image']; name the view "
                       "'image' (crop + flip only, SimCLRv2 §3.1).")
    if self.uses_labels and "image" not in self.labelled_views:
      raise ValueError(f"method.alpha={self.alpha} < 1 uses labels (Eq. 3): set "
                       "data.labelled_views['image'].")

  def init(self, rng, example_batch):
    images = example_batch["unlabelled"]["images"]["image"]
    student_rng, teacher_rng = jax.random.split(rng)
    variables = self.student.init(simclr.init_rngs(student_rng), images, train=False)
    teacher = teachers.init_variables(self.teacher, simclr.init_rngs(teacher_rng), images)
    return dict(variables), {"teacher": teacher}

  def load_method_state(self, method_state, *, load_variables):
    return teachers.load(method_state, load_variables=load_variables,
                         workdir=self.option("teacher_workdir"))

  def loss_fn(self, params, batch, *, state, rng):
    unlabelled = batch["unlabelled"]
    images = unlabelled["images"]["image"]
    num_unlabelled = images.shape[0]
    if self.uses_labels:
      labelled = batch["labelled"]
      images = self.concat_examples([labelled["images"]["image"], images])
      labels = self.concat_examples(
          [labelled["label"], jnp.full((num_unlabelled,), -1, labelled["label"].dtype)])
    outputs, batch_stats = networks.apply_train(self.student, params, state.batch_stats,
                                                images, rng=rng)
    student_logits = outputs["logits"]
    teacher_logits = jax.lax.stop_gradient(
        self.teacher.apply(state.method_state["teacher"], images, train=False)["logits"])
    if self.uses_labels:
      loss, metrics = losses.distillation_with_labels(
          student_logits=student_logits, teacher_logits=teacher_logits, labels=labels,
          temperature=self.temperature, alpha=self.alpha)
    else:
      loss = losses.distillation(student_logits=student_logits, teacher_logits=teacher_logits,
                                 temperature=self.temperature)
      metrics = {"distillation": loss}
    sizes = (images.shape[0] - num_unlabelled, num_unlabelled)
    unlabelled_rows = lambda logits: self.split_examples(logits, sizes)[1]
    teacher_labels = jnp.argmax(unlabelled_rows(teacher_logits), -1)
    metrics["student_teacher_agreement"] = jnp.mean(
        jnp.argmax(unlabelled_rows(student_logits), -1) == teacher_labels)
    if "true_label" in unlabelled:  # absent: an unlabelled source without labels
      metrics.update(networks.pseudo_label_telemetry(
          pseudo_labels=teacher_labels, true_labels=unlabelled["true_label"],
          prefix="teacher_"))
    return loss, base.StepAux(batch_stats, state.method_state, metrics)

  def eval_logits(self, variables, images):
    return self.student.apply(variables, images, train=False)["logits"]

  def eval_features(self, variables, images):
    return self.student.apply(variables, images, train=False)["features"]

