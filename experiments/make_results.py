"""Runs the Fashion-MNIST evidence suite and writes docs/RESULTS.md + PNG plots.

  python experiments/make_results.py --labels=40 --seeds=0,1,2
  python experiments/make_results.py --labels=1pct --seeds=0 --only=supervised,fixmatch
  python experiments/make_results.py --labels=40,1pct --no_train   # tables from committed runs
  python experiments/make_results.py --labels=noise0.2,noise0.5     # the noisy-label table

Every entry runs through `experiments/main.py` with its config's own default
budget (or `--steps`, split over the stages of multi-stage entries). Seed k sets
both the init seed and the split seed (`--config.seed=k --config.data.split_seed=k`:
another labelled subset and validation split). Each finished stage's results.json
and metrics.jsonl are copied to `--store` (committed, small), and the tables and
plots are built from there, so they can be rebuilt without retraining; a stage
already in the store is not rerun. Every recipe was chosen on the validation split
(`val_*`); the test split (`eval_*`) appears in the tables only.
"""
from __future__ import annotations

import os
import platform
import shlex
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import results_tables  # noqa: E402
from experiments.results_entries import (  # noqa: E402
    BASELINE, ENTRIES, NOISY_BASELINE, Entry, noise_rate, slug, stage_command)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_LABELS = flags.DEFINE_list("labels", ["40", "1pct"], "Label settings (config 'labels=') "
                            "or noisy-label settings 'noise<r>' (e.g. noise0.2).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds (init + split); e.g. 0,1,2.")
_STEPS = flags.DEFINE_integer("steps", 0, "Train steps per entry, split over stages; "
                              "0: each config's own default budget.")
_ONLY = flags.DEFINE_list("only", [], "Run only these entries (full names or first words).")
_ROOT = flags.DEFINE_string("root", os.path.join(ROOT, "workdirs", "results"), "Workdirs.")
_STORE = flags.DEFINE_string("store", os.path.join(ROOT, "docs", "results"),
                             "Where each stage's results.json / metrics.jsonl are kept.")
_OUT = flags.DEFINE_string("out", os.path.join(ROOT, "docs", "RESULTS.md"), "Markdown output.")
_NO_TRAIN = flags.DEFINE_bool("no_train", False, "Only rebuild tables from the store.")
_EXTRA = flags.DEFINE_list("extra", [], "Further --config.* flags for every stage.")


def run_entry(entry: Entry, labels: str, seed: int) -> dict | None:
  """Runs (or reuses) every stage of `entry` for `seed`; returns the stored run or None."""
  previous = None
  for index in range(len(entry.stages)):
    rel = os.path.join(labels, slug(entry.name), f"seed{seed}")
    workdir = os.path.relpath(os.path.join(_ROOT.value, rel, f"stage{index}"), ROOT)
    stored = os.path.join(_STORE.value, rel, f"stage{index}")
    command = stage_command(entry, index, labels=labels, seed=seed, previous=previous,
                            workdir=workdir, steps=_STEPS.value, extra=_EXTRA.value)
    if not os.path.exists(os.path.join(stored, "results.json")):
      if _NO_TRAIN.value or not results_tables.train_and_store(
          command, root=ROOT, workdir=workdir, stored=stored,
          label=f"{entry.name} [{labels}, seed {seed}] stage {index}"):
        return None
    previous = workdir
  return results_tables.load_run(os.path.join(_STORE.value, labels, slug(entry.name),
                                              f"seed{seed}"))


def this_command() -> str:
  """The command line that produced the markdown (flags as given, paths repo-relative)."""
  args = [shlex.quote(a.replace(ROOT + "/", "")) for a in sys.argv[1:]]
  return " ".join(["python experiments/make_results.py"] + args)


def main(argv):
  del argv
  runs: dict[str, dict[str, dict[int, dict]]] = {}
  for labels in _LABELS.value:
    runs[labels] = {}
    for entry in ENTRIES:
      if _ONLY.value and not {entry.name, entry.name.split(" ")[0]} & set(_ONLY.value):
        continue
      if entry.noisy != (noise_rate(labels) is not None):
        continue
      seeds = [0] if entry.labels else [int(s) for s in _SEEDS.value]
      for seed in seeds:
        run = run_entry(entry, entry.labels or labels, seed)
        if run is not None:
          runs[labels].setdefault(entry.name, {})[seed] = run
  # The tables show every stored run (also those of earlier invocations).
  stored = results_tables.load_store(_STORE.value, [e.name for e in ENTRIES], slug,
                                     labels=_LABELS.value, fixed={e.name: e.labels
                                                                  for e in ENTRIES})
  for labels, entries in stored.items():  # a noisy setting shows only its entries
    noisy = {e.name for e in ENTRIES if e.noisy}
    for name in list(entries):
      if (name in noisy) != (noise_rate(labels) is not None):
        del entries[name]
  flagships = [e.name for e in ENTRIES if e.flagship]
  baselines = {labels: NOISY_BASELINE if noise_rate(labels) else BASELINE
               for labels in stored}
  results_tables.write_markdown(
      stored, out=_OUT.value, command=this_command(), baseline=baselines,
      flagships=flagships,
      machine=f"{platform.machine()} with {os.cpu_count()} shared CPU cores")


if __name__ == "__main__":
  app.run(main)
