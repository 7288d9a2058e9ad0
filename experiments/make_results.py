"""Runs the Fashion-MNIST evidence suite and writes docs/RESULTS.md + PNG plots.

  python experiments/make_results.py --labels=1pct,40 --steps=600 [--only=fixmatch,simmatch]

Every method runs through `experiments/main.py` with the same tiny backbone, the
same label split and the same number of train steps (the CPU budget); multi-
stage methods (SemPPL, SimCLRv2) split their steps over their stages as listed.
Each run's workdir is kept under --root; a finished run (results.json present)
is not rerun, so the suite can be resumed. The table lists the exact command of
every run, and the plots come from each run's metrics.jsonl.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_LABELS = flags.DEFINE_list("labels", ["1pct", "40"], "Label settings (config 'labels=').")
_STEPS = flags.DEFINE_integer("steps", 600, "Train steps per method (split over stages).")
_ONLY = flags.DEFINE_list("only", [], "Run only these entries (full names or first words).")
_ROOT = flags.DEFINE_string("root", os.path.join(ROOT, "workdirs", "results"), "Workdirs.")
_OUT = flags.DEFINE_string("out", os.path.join(ROOT, "docs", "RESULTS.md"), "Markdown output.")
_SEED = flags.DEFINE_integer("seed", 0, "Experiment seed.")


@dataclasses.dataclass(frozen=True)
class Stage:
  config: str  # configs/<file>.py[:variants]; '{labels}', '{prev}' (previous workdir) substituted
  fraction: float = 1.0  # share of the step budget
  init_from_previous: bool = False
  extra: tuple[str, ...] = ()  # further --config.* flags; '{prev}', '{steps}' substituted


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  stages: tuple[Stage, ...]
  labels: str | None = None  # fixed label setting (e.g. the full-label upper bound)


def _single(name: str, config: str) -> Entry:
  return Entry(name, (Stage(f"configs/{config}.py:labels={{labels}}"),))


ENTRIES = (
    _single("supervised", "supervised_fmnist"),
    Entry("supervised (all labels, upper bound)",
          (Stage("configs/supervised_fmnist.py:labels=all"),), labels="all"),
    _single("fixmatch", "fixmatch_fmnist"),
    _single("emateacher + pseudo mixup", "emateacher_fmnist"),
    _single("simmatch", "simmatch_fmnist"),
    _single("pi_model", "pimodel_fmnist"),
    _single("mean_teacher", "meanteacher_fmnist"),
    _single("pseudo_label", "pseudolabel_fmnist"),
    _single("uda", "uda_fmnist"),
    _single("vat", "vat_fmnist"),
    Entry("mixmatch", (Stage("configs/mixmatch_fmnist.py:labels={labels}",
                             extra=("--config.method.rampup_steps={steps}",)),)),
    _single("remixmatch_da (fixmatch + DA)", "remixmatch_fmnist"),
    Entry("semppl + fine-tune", (
        Stage("configs/sempl_fmnist.py:labels={labels}", 0.75),
        Stage("configs/sempl_fmnist.py:labels={labels},stage=finetune,init_from={prev}",
              0.25))),
    Entry("simclrv2 pretrain + fine-tune", (
        Stage("configs/simclrv2_fmnist.py:labels={labels},stage=pretrain", 0.75),
        Stage("configs/simclrv2_fmnist.py:labels={labels},stage=finetune", 0.25, True))),
    Entry("simclrv2 + self-distillation", (
        Stage("configs/simclrv2_fmnist.py:labels={labels},stage=pretrain", 0.6),
        Stage("configs/simclrv2_fmnist.py:labels={labels},stage=finetune", 0.2, True),
        Stage("configs/simclrv2_fmnist.py:labels={labels},stage=distill", 0.2, True,
              ("--config.method.teacher_workdir={prev}",)))),
)


def _slug(text: str) -> str:
  return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def run_entry(entry: Entry, labels: str, steps: int) -> dict:
  """Runs (or reuses) every stage of `entry`; returns the last stage's results + commands."""
  previous, commands, seconds, workdirs = None, [], 0.0, []
  for index, stage in enumerate(entry.stages):
    workdir = os.path.join(_ROOT.value, labels, f"{_slug(entry.name)}_stage{index}")
    config = stage.config.format(labels=labels, prev=previous)
    stage_steps = max(int(round(steps * stage.fraction)), 1)
    command = [sys.executable, "experiments/main.py", f"--config={config}",
               f"--workdir={workdir}", f"--config.num_train_steps={stage_steps}",
               f"--config.seed={_SEED.value}"]
    if stage.init_from_previous:
      command.append(f"--config.init_from={previous}")
    command += [flag.format(prev=previous, steps=stage_steps) for flag in stage.extra]
    commands.append(" ".join(command[1:]).replace(ROOT + "/", ""))
    results_path = os.path.join(workdir, "results.json")
    if not os.path.exists(results_path):
      start = time.time()
      log_path = os.path.join(_ROOT.value, labels, f"{_slug(entry.name)}_stage{index}.log")
      os.makedirs(os.path.dirname(log_path), exist_ok=True)
      with open(log_path, "w") as log:
        proc = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
      if proc.returncode:
        return {"error": f"stage {index} failed (log: {log_path})", "commands": commands}
      print(f"  {entry.name} [{labels}] stage {index}: {time.time() - start:.0f}s", flush=True)
    metrics = json.load(open(results_path))["metrics"]
    seconds += metrics.get("train_seconds", 0.0)
    previous = workdir
    workdirs.append(workdir)
  return dict(metrics, commands=commands, total_train_seconds=seconds, workdirs=workdirs)


def _last_logged(result: dict, key: str):
  """The last logged value of `key` in any stage (e.g. SemPPL's pretraining)."""
  value = None
  for workdir in result.get("workdirs", []):
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
      for line in open(path):
        value = json.loads(line).get(key, value)
  return value


def _pct(value) -> str:
  return f"{100 * value:.1f}" if isinstance(value, (int, float)) else "–"


def _this_command() -> str:
  """The command line that produced this file (flags as given, paths repo-relative)."""
  args = [shlex.quote(a.replace(ROOT + "/", "")) for a in sys.argv[1:]]
  return " ".join(["python experiments/make_results.py"] + args)


def write_markdown(rows: dict, steps: int) -> None:
  lines = ["# Results", "",
           "Fashion-MNIST (real data, Debian's `dataset-fashion-mnist`), test split (10,000 "
           "images), top-1 in %. Same backbone (`tiny_resnet`, 0.3M parameters), same label "
           f"split (`split_seed=0`) and the same budget of {steps} train steps per method "
           "(multi-stage methods split it over their stages), seed "
           f"{_SEED.value}, one run each, on {platform.machine()} with {os.cpu_count()} "
           "shared CPU cores. 'EMA' is the EMA-target model. Regenerate with:", "",
           "```", _this_command(), "```", "",
           "How to read it: the budget is tiny (a few CPU minutes per method, well under "
           "one pass over the 59,400 unlabelled images), so these numbers say that every "
           "method trains end to end on real data and where it stands after a short run, not "
           "how the methods rank when trained to convergence as in the papers. Learning "
           "rates and batch sizes are each config's own (no per-method tuning on the test "
           "set); multi-stage pipelines get fewer steps per stage. Increase --steps for a "
           "ranking.", "",
           "Column notes: the EMA column of MixMatch uses the paper's decay 0.999, whose "
           "~1000-step time constant exceeds budgets of a few hundred steps, so that EMA "
           "model is still close to its initialisation. SemPPL's pseudo-label accuracy is "
           "that of its k-NN pseudo-labels during pretraining (before fine-tuning); "
           "methods without pseudo-labels (supervised, SimCLRv2) show '–'. VAT's power iteration uses the exact Hessian-vector "
           "product (configs/vat_fmnist.py says why). The mask-rate plots show how many "
           "pseudo-labels the confidence-thresholded methods (FixMatch, ReMixMatch DA, "
           "SimMatch, EMA-Teacher: threshold 0.95 or 0.7 on an early, unconfident model) "
           "actually train on within the budget.", ""]
  for labels, entries in rows.items():
    lines += [f"## labels={labels}", "",
              "| method | top-1 | top-1 (EMA) | pseudo-label acc. (last log) | train s | "
              "commands |", "|---|---|---|---|---|---|"]
    for name, result in entries.items():
      if "error" in result:
        lines.append(f"| {name} | failed | | | | {result['error']} |")
        continue
      top1 = result.get("eval_top1", result.get("eval_knn_top1"))
      ema = result.get("eval_ema_top1", result.get("eval_ema_knn_top1"))
      pl = _last_logged(result, "train_pl_accuracy")
      cmds = "<br>".join(f"`{c}`" for c in result["commands"])
      lines.append(f"| {name} | {_pct(top1)} | {_pct(ema)} | {_pct(pl)} | "
                   f"{result['total_train_seconds']:.0f} | {cmds} |")
    lines += ["", _comparison_with_baseline(entries), ""]
    plot = plot_pseudo_labels(labels, entries)
    if plot:
      lines += [f"![pseudo-labels, labels={labels}]({os.path.relpath(plot, os.path.dirname(_OUT.value))})", ""]
  with open(_OUT.value, "w") as f:
    f.write("\n".join(lines))


def _comparison_with_baseline(entries: dict) -> str:
  """One line: which methods beat the supervised baseline of this table, by how much."""
  def top1(result):
    return result.get("eval_top1", result.get("eval_knn_top1"))
  baseline = entries.get("supervised", {})
  if "error" in baseline or top1(baseline) is None:
    return ""
  base = top1(baseline)
  others = {name: top1(r) for name, r in entries.items()
            if not name.startswith("supervised") and "error" not in r
            and top1(r) is not None}
  ranked = sorted(others.items(), key=lambda item: -item[1])
  above = [f"{n} ({100 * (v - base):+.1f})" for n, v in ranked if v > base]
  below = [f"{n} ({100 * (v - base):+.1f})" for n, v in ranked if v <= base]
  return (f"Against the supervised baseline ({_pct(base)}), in points of top-1: above: "
          f"{', '.join(above) or 'none'}; at or below: {', '.join(below) or 'none'}.")


def plot_pseudo_labels(labels: str, entries: dict) -> str | None:
  """Pseudo-label accuracy and mask rate over training, from each run's metrics.jsonl."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_acc, ax_mask) = plt.subplots(1, 2, figsize=(12, 4.5))
  drawn = False
  for index, (name, result) in enumerate(entries.items()):
    # One style per method in both panels: 10 distinct colours, then dashed.
    style = dict(label=name, color=plt.cm.tab10.colors[index % 10],
                 linestyle="-" if index < 10 else "--")
    paths = [os.path.join(w, "metrics.jsonl") for w in result.get("workdirs", [])]
    records = [json.loads(line) for path in paths if os.path.exists(path)
               for line in open(path)]
    if "error" in result or not records:
      continue
    acc = [(r["step"], r["train_pl_accuracy"]) for r in records if "train_pl_accuracy" in r]
    mask = [(r["step"], r["train_pl_mask_rate"]) for r in records if "train_pl_mask_rate" in r]
    if acc:
      ax_acc.plot(*zip(*acc), **style)
      drawn = True
    if mask:
      ax_mask.plot(*zip(*mask), **style)
  if not drawn:
    plt.close(fig)
    return None
  ax_acc.set(title=f"pseudo-label accuracy (unlabelled batch), labels={labels}",
             xlabel="step", ylabel="accuracy")
  ax_mask.set(title="mask rate (pseudo-labels used)", xlabel="step", ylabel="fraction")
  ax_acc.legend(fontsize=7)
  ax_mask.legend(fontsize=7)
  stem = os.path.splitext(os.path.basename(_OUT.value))[0].lower()
  out = os.path.join(os.path.dirname(_OUT.value), "plots", f"{stem}_pseudo_labels_{labels}.png")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def main(argv):
  del argv
  rows: dict[str, dict] = {}
  for labels in _LABELS.value:
    rows[labels] = {}
    for entry in ENTRIES:
      if _ONLY.value and not {entry.name, entry.name.split(" ")[0]} & set(_ONLY.value):
        continue
      rows[labels][entry.name] = run_entry(entry, entry.labels or labels, _STEPS.value)
      write_markdown(rows, _STEPS.value)


if __name__ == "__main__":
  app.run(main)
