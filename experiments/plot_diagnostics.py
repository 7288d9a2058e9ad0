"""Plots of diagnostic runs kept in docs/results/diagnostics/<name>/<run>/ (PNG in docs/plots).

  python experiments/plot_diagnostics.py semppl_1pct

Each run directory holds results.json, metrics.jsonl and command.txt, like a stage of the
results store; the pseudo-label accuracy / mask-rate panels are those of RESULTS.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import results_tables  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(name: str) -> str | None:
  base = os.path.join(ROOT, "docs", "results", "diagnostics", name)
  entries = {}
  for run in sorted(os.listdir(base)):
    loaded = results_tables.load_run_dir(os.path.join(base, run))
    if loaded is not None:
      entries[run] = {0: loaded}
  out = os.path.join(ROOT, "docs", "plots", f"diagnostics_{name}_pseudo_labels.png")
  return results_tables.plot_pseudo_labels(entries, name, out)


if __name__ == "__main__":
  print(main(sys.argv[1]))
