r"""Chooses one config value on the validation split: runs a grid, keeps every run, prints
the validation table and the chosen value. The test split is never looked at here.

  python experiments/sweep.py --name=supervised_lr_40 \
      --config=configs/supervised_fmnist.py:labels=40 \
      --param=config.optimizer.base_lr --values=0.2,0.4,0.8

Each run's results.json, metrics.jsonl and command.txt are copied to
docs/results/sweeps/<name>/<param>=<value>/ (committed, small), and the table to
docs/results/sweeps/<name>/README.md; a value whose stored run exists is not retrained.
A run's score is its final validation top-1 with the better weights (online or EMA), the
rule the results tables use to pick a run's headline weights.
"""
import json
import os
import shlex
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import results_tables  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_NAME = flags.DEFINE_string("name", None, "Sweep name (a folder under --store).", required=True)
_CONFIG = flags.DEFINE_string("config", None, "Config file[:variants].", required=True)
_PARAM = flags.DEFINE_string("param", None, "Flag to vary, e.g. config.optimizer.base_lr.",
                             required=True)
_VALUES = flags.DEFINE_list("values", None, "Values of --param.", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Init and split seed of every run.")
_EXTRA = flags.DEFINE_multi_string("extra", [], "Further main.py flags for every run.")
_STORE = flags.DEFINE_string("store", os.path.join(ROOT, "docs", "results", "sweeps"),
                             "Committed copy of each run.")
_ROOT = flags.DEFINE_string("workdir_root", os.path.join(ROOT, "workdirs", "sweeps"),
                            "Where the runs train.")
_NO_TRAIN = flags.DEFINE_bool("no_train", False, "Only tabulate the stored runs.")


def val_score(metrics: dict) -> tuple[float | None, str]:
  """(validation top-1 of the better weights, 'online' | 'ema')."""
  scores = {w: metrics.get(k) for w, k in (("online", "val_top1"), ("ema", "val_ema_top1"))}
  scores = {w: s for w, s in scores.items() if s is not None}
  if not scores:
    return None, ""
  weights = max(scores, key=scores.get)
  return scores[weights], weights


def command_for(value: str, workdir: str) -> list[str]:
  return (["experiments/main.py", f"--config={_CONFIG.value}", f"--workdir={workdir}",
           f"--config.seed={_SEED.value}", f"--config.data.split_seed={_SEED.value}",
           f"--{_PARAM.value}={value}"] + list(_EXTRA.value))


def run_value(value: str) -> dict | None:
  rel = f"{_PARAM.value.removeprefix('config.')}={value}"
  stored = os.path.join(_STORE.value, _NAME.value, rel)
  if not os.path.exists(os.path.join(stored, "results.json")):
    workdir = os.path.relpath(os.path.join(_ROOT.value, _NAME.value, rel), ROOT)
    if _NO_TRAIN.value or not results_tables.train_and_store(
        command_for(value, workdir), root=ROOT, workdir=workdir, stored=stored, label=rel):
      return None
  with open(os.path.join(stored, "results.json")) as f:
    return json.load(f)["metrics"]


def table(rows: list[tuple[str, dict | None]]) -> list[str]:
  lines = [f"| {_PARAM.value} | val top-1 (online) | val top-1 (EMA) | chosen |",
           "|---|---|---|---|"]
  scored = [(val_score(m)[0], v) for v, m in rows if m is not None]
  best = max(scored)[1] if scored else None
  for value, metrics in rows:
    if metrics is None:
      lines.append(f"| {value} | – | – | |")
      continue
    pct = lambda k: f"{100 * metrics[k]:.1f}" if metrics.get(k) is not None else "–"
    lines.append(f"| {value} | {pct('val_top1')} | {pct('val_ema_top1')} | "
                 f"{'**yes**' if value == best else ''} |")
  return lines


def main(argv):
  del argv
  rows = [(value, run_value(value)) for value in _VALUES.value]
  args = [shlex.quote(a.replace(ROOT + "/", "")) for a in sys.argv[1:]]
  lines = [f"# Sweep {_NAME.value}", "",
           f"`{_CONFIG.value}`, seed {_SEED.value}; chosen on the validation split "
           "(final top-1, better of online/EMA).", "", *table(rows), "",
           "Rerun (reuses the stored runs): `python experiments/sweep.py "
           + " ".join(args) + "`", ""]
  os.makedirs(os.path.join(_STORE.value, _NAME.value), exist_ok=True)
  with open(os.path.join(_STORE.value, _NAME.value, "README.md"), "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
