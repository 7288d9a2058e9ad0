"""Prints the demo's comparison of a semi-supervised run with the label-only baseline.

  python experiments/compare.py "FixMatch 40 labels" WORKDIR_A "label-only" WORKDIR_B
  -> FixMatch 40 labels: 71.3% | label-only: 55.2% | gain +16.1 points
       (test top-1; weights chosen on the validation split: EMA vs online)

Both runs are read from `<workdir>/results.json`; each contributes the test top-1 of
its weights (online or EMA) with the higher validation top-1, as in docs/RESULTS.md
(`experiments.results_tables.headline`).
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import results_tables  # noqa: E402


def read_metrics(workdir: str) -> dict:
  if not results_tables.finished(workdir):
    raise SystemExit(f"{workdir} has no finished run (no results.json, or an interrupted "
                     "run's); rerun its training command to finish it.")
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)["metrics"]


def comparison(name: str, metrics: dict, base_name: str, base: dict) -> str:
  """The headline line and which weights each number comes from."""
  a, a_weights = results_tables.headline({"stages": [{"metrics": metrics}]})
  b, b_weights = results_tables.headline({"stages": [{"metrics": base}]})
  return (f"{name}: {100 * a:.1f}% | {base_name}: {100 * b:.1f}% | gain "
          f"{100 * (a - b):+.1f} points\n"
          f"  (test top-1; weights chosen on the validation split: {a_weights} vs "
          f"{b_weights})")


def main(argv: list[str]) -> None:
  if len(argv) != 5:
    sys.exit(__doc__)
  print(comparison(argv[1], read_metrics(argv[2]), argv[3], read_metrics(argv[4])), flush=True)


if __name__ == "__main__":
  main(sys.argv)
