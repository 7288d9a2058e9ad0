"""The entries of the Fashion-MNIST evidence suite (experiments/make_results.py).

Each entry is a method's name and its stages: one experiments/main.py run each, the
later ones starting from the earlier ones' workdirs. Kept apart from the script so
that tests and notebooks can read them without defining the script's flags.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Stage:
  # configs/<file>.py[:variants]; '{labels}', '{noise}' (noisy settings) and '{prev}'
  # (previous workdir) substituted
  config: str
  fraction: float = 1.0  # share of --steps (only with --steps)
  init_from_previous: bool = False
  extra: tuple[str, ...] = ()  # further --config.* flags; '{prev}' substituted


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  stages: tuple[Stage, ...]
  labels: str | None = None  # fixed label setting (e.g. the full-label upper bound)
  flagship: bool = False  # drawn in the accuracy-over-steps plot
  noisy: bool = False  # runs only in the noisy-label settings 'noise<r>' (and only there)


def _single(name: str, config: str, flagship: bool = False) -> Entry:
  return Entry(name, (Stage(f"configs/{config}.py:labels={{labels}}"),), flagship=flagship)


BASELINE = "label-only"
NOISY_BASELINE = "cross-entropy on noisy labels"
NOISE_PREFIX = "noise"


def noise_rate(setting: str) -> str | None:
  """'0.2' for the noisy-label setting 'noise0.2'; None for a label setting."""
  return setting[len(NOISE_PREFIX):] if setting.startswith(NOISE_PREFIX) else None


ENTRIES = (
    _single(BASELINE, "supervised_fmnist", flagship=True),
    Entry("all labels (upper bound)", (Stage("configs/supervised_fmnist.py:labels=all"),),
          labels="all"),
    _single("fixmatch", "fixmatch_fmnist", flagship=True),
    # SimMatch's BN head is the Fashion-MNIST default again (chosen on validation) and
    # SemPPL's crop_prob=0.5 too; both written out as the stored commands have them.
    Entry("simmatch", (Stage("configs/simmatch_fmnist.py:labels={labels}",
                             extra=("--config.method.embedding_batch_norm=True",)),),
          flagship=True),
    Entry("semppl -> fine-tune", (
        Stage("configs/semppl_fmnist.py:labels={labels},crop_prob=0.5", 0.75),
        Stage("configs/semppl_fmnist.py:labels={labels},stage=finetune,init_from={prev}",
              0.25)), flagship=True),
    Entry("simclrv2 -> fine-tune", (
        Stage("configs/simclrv2_fmnist.py:labels={labels},stage=pretrain", 0.75),
        Stage("configs/simclrv2_fmnist.py:labels={labels},stage=finetune", 0.25, True)),
          flagship=True),
    # SimCLRv2's third step (distillation with unlabelled data, Sec. 2) on SemPPL's
    # fine-tuned classifier: a student with the same encoder, trained from scratch on the
    # teacher's predictions for unlabelled images (Eq. 2, temperature 0.1).
    Entry("semppl -> fine-tune -> distill", (
        Stage("configs/semppl_fmnist.py:labels={labels},crop_prob=0.5", 0.6),
        Stage("configs/semppl_fmnist.py:labels={labels},stage=finetune,init_from={prev}",
              0.1),
        Stage("configs/simclrv2_fmnist.py:labels={labels},stage=distill,teacher=semppl", 0.3,
              extra=("--config.method.teacher_workdir={prev}",))), flagship=True),
    # SemPPL's pretrained encoder read out by Label Propagation (Iscen et al. 2019):
    # the kNN-graph diffusion over every training image's features labels the
    # unlabelled images, and the whole network trains on them (its default recipe).
    Entry("semppl -> label propagation", (
        Stage("configs/semppl_fmnist.py:labels={labels},crop_prob=0.5", 0.7),
        Stage("configs/label_propagation_fmnist.py:labels={labels},init_from={prev}", 0.3)),
          flagship=True),
    # Longer budgets, for the targets the default budgets miss (docs/results/analysis.md):
    # SimMatch and FixMatch at twice their 3000 steps (40 labels) and SemPPL's
    # pretraining at twice its 2500 before Label Propagation (1% labels).
    Entry("6000-step simmatch", (Stage("configs/simmatch_fmnist.py:labels={labels}",
                                       extra=("--config.method.embedding_batch_norm=True",
                                              "--config.num_train_steps=6000")),)),
    Entry("6000-step fixmatch", (Stage("configs/fixmatch_fmnist.py:labels={labels}",
                                       extra=("--config.num_train_steps=6000",)),)),
    Entry("5000-step semppl -> label propagation", (
        Stage("configs/semppl_fmnist.py:labels={labels},crop_prob=0.5", 0.8,
              extra=("--config.num_train_steps=5000",)),
        Stage("configs/label_propagation_fmnist.py:labels={labels},init_from={prev}", 0.2))),
    _single("emateacher + pseudo mixup", "emateacher_fmnist"),
    # FixMatch + ReMixMatch's distribution alignment (the stored runs: da_only, what
    # configs/remixmatch_fmnist.py was before it became the full method).
    Entry("remixmatch_da (fixmatch + DA)",
          (Stage("configs/remixmatch_fmnist.py:labels={labels},da_only"),)),
    _single("remixmatch", "remixmatch_fmnist"),
    # FixMatch's CTAugment variant (FixMatch Sec. 2.3: CTAugment + Cutout strong views).
    Entry("fixmatch_cta (ctaugment strong views)",
          (Stage("configs/fixmatch_fmnist.py:labels={labels},strong=cta"),)),
    _single("mixmatch", "mixmatch_fmnist"),
    _single("uda", "uda_fmnist"),
    # UDA with training signal annealing, the paper's exp schedule for few labels.
    Entry("uda + tsa (exp)", (Stage("configs/uda_fmnist.py:labels={labels},tsa=exp"),)),
    _single("vat", "vat_fmnist"),
    _single("pi_model", "pimodel_fmnist"),
    _single("mean_teacher", "meanteacher_fmnist"),
    _single("pseudo_label", "pseudolabel_fmnist"),
    _single("temporal_ensembling", "temporal_ensembling_fmnist"),
    _single("ict", "ict_fmnist"),
    _single("meta_pseudo_labels", "meta_pseudo_labels_fmnist"),
    _single("label_propagation", "label_propagation_fmnist"),
    # Noisy Student: the label-only teacher (iteration 0), then two noised students, each
    # on the previous iteration's soft pseudo-labels (the student becomes the teacher).
    Entry("noisy_student (2 iterations)", (
        Stage("configs/noisy_student_fmnist.py:labels={labels},iteration=0", 0.2),
        Stage("configs/noisy_student_fmnist.py:labels={labels},iteration=1", 0.4,
              extra=("--config.method.teacher_workdir={prev}",)),
        Stage("configs/noisy_student_fmnist.py:labels={labels},iteration=2", 0.4,
              extra=("--config.method.teacher_workdir={prev}",)))),
    # DivideMix's own table (learning with noisy labels): every training label, a share
    # of them redrawn, against one network trained with cross-entropy on those labels.
    Entry(NOISY_BASELINE, (Stage("configs/dividemix_fmnist.py:noise={noise},ce"),),
          noisy=True, flagship=True),
    Entry("dividemix", (Stage("configs/dividemix_fmnist.py:noise={noise}"),), noisy=True,
          flagship=True),
)


def slug(text: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def stage_command(entry: Entry, index: int, *, labels: str, seed: int,
                  previous: str | None, workdir: str, steps: int = 0,
                  extra: tuple[str, ...] | list[str] = ()) -> list[str]:
  """The experiments/main.py command line of one stage.

  `steps` (0: the config's own budget) is split over the stages by their fraction;
  `extra` are further --config.* flags for every stage.
  """
  stage = entry.stages[index]
  config = stage.config.format(labels=labels, prev=previous, noise=noise_rate(labels))
  command = ["experiments/main.py", f"--config={config}",
             f"--workdir={workdir}", f"--config.seed={seed}",
             f"--config.data.split_seed={seed}"]
  if steps:
    command.append(f"--config.num_train_steps={max(round(steps * stage.fraction), 1)}")
  if stage.init_from_previous:
    command.append(f"--config.init_from={previous}")
  command += [flag.format(prev=previous) for flag in stage.extra] + list(extra)
  return command
