"""The committed run store and the tables and plots of docs/RESULTS.md built from it
(see make_results.py and sweep.py, which fill the store through `train_and_store`).

A stored run is `<store>/<labels>/<entry>/seed<k>/stage<i>/{results.json,
metrics.jsonl,command.txt}`. The headline number of a run is the test top-1 of
the weights (online or EMA) with the higher validation top-1: the choice of
weights is made on the validation split like every other choice.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

ANALYSIS = "analysis.md"  # hand-written findings in the store, appended to the markdown


def finished(workdir: str) -> bool:
  """True when `workdir` holds the results.json of a run that ran to its end (an
  interrupted run writes one with status 'interrupted'; rerunning resumes it)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return json.load(f).get("status", "complete") == "complete"


def train_and_store(command: list[str], *, root: str, workdir: str, stored: str,
                    label: str) -> bool:
  """Runs `python <command>` in `root` (output in `<workdir>.log`) unless `workdir`
  already has a finished run (`finished`), then copies results.json, metrics.jsonl and the command
  line into `stored`. Returns False (and says where the log is) if the run failed."""
  if not finished(os.path.join(root, workdir)):
    log_path = os.path.join(root, workdir + ".log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.time()
    with open(log_path, "w") as log:
      proc = subprocess.run([sys.executable] + command, cwd=root, stdout=log,
                            stderr=subprocess.STDOUT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if proc.returncode:
      print(f"  {label} failed: {log_path}", flush=True)
      return False
    print(f"  {label}: {time.time() - start:.0f}s", flush=True)
  os.makedirs(stored, exist_ok=True)
  for name in ("results.json", "metrics.jsonl"):
    shutil.copy(os.path.join(root, workdir, name), os.path.join(stored, name))
  with open(os.path.join(stored, "command.txt"), "w") as f:
    f.write("python " + " ".join(shlex.quote(c) for c in command) + "\n")
  return True


def load_run(path: str) -> dict | None:
  """{'stages': [{'metrics', 'records', 'command'}...]} of one seed's directory."""
  stages = []
  index = 0
  while os.path.exists(os.path.join(path, f"stage{index}", "results.json")):
    stages.append(_load_stage(os.path.join(path, f"stage{index}")))
    index += 1
  return {"stages": stages} if stages else None


def load_run_dir(path: str) -> dict | None:
  """A single-stage run kept directly in `path` (diagnostic experiments)."""
  if not os.path.exists(os.path.join(path, "results.json")):
    return None
  return {"stages": [_load_stage(path)]}


def _load_stage(stage_dir: str) -> dict:
  with open(os.path.join(stage_dir, "results.json")) as f:
    metrics = json.load(f)["metrics"]
  records = []
  if os.path.exists(os.path.join(stage_dir, "metrics.jsonl")):
    with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
      records = [json.loads(line) for line in f if line.strip()]
  command = ""
  if os.path.exists(os.path.join(stage_dir, "command.txt")):
    with open(os.path.join(stage_dir, "command.txt")) as f:
      command = f.read().strip()
  return {"metrics": metrics, "records": records, "command": command}


def load_store(store: str, names: list[str], slug, *, labels: list[str],
               fixed: dict[str, str | None]) -> dict[str, dict[str, dict[int, dict]]]:
  """{labels: {entry: {seed: run}}} of every stored run of `names` (in that order)."""
  out: dict[str, dict[str, dict[int, dict]]] = {}
  for label in labels:
    out[label] = {}
    for name in names:
      base = os.path.join(store, fixed.get(name) or label, slug(name))
      if not os.path.isdir(base):
        continue
      seeds = sorted(int(d[4:]) for d in os.listdir(base) if d.startswith("seed"))
      for seed in seeds:
        run = load_run(os.path.join(base, f"seed{seed}"))
        if run is not None:
          out[label].setdefault(name, {})[seed] = run
  return out


def headline(run: dict) -> tuple[float | None, str]:
  """(test top-1, 'online'|'EMA'|'k-NN') of the validation-selected weights."""
  m = run["stages"][-1]["metrics"]
  candidates = [("online", "top1"), ("EMA", "ema_top1")]
  candidates = [(n, k) for n, k in candidates if f"eval_{k}" in m]
  if not candidates:
    return m.get("eval_knn_top1"), "k-NN"
  if all(f"val_{k}" in m for _, k in candidates):
    name, key = max(candidates, key=lambda c: m[f"val_{c[1]}"])
  else:
    name, key = candidates[0]
  return m[f"eval_{key}"], name


def _mean_std(values: list[float]) -> str:
  if not values:
    return "–"
  mean = 100 * statistics.mean(values)
  if len(values) == 1:
    return f"{mean:.1f}"
  return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def _last(run: dict, key: str):
  value = None
  for stage in run["stages"]:
    for record in stage["records"]:
      value = record.get(key, value)
  return value


def _stage_minutes(run: dict) -> str:
  return " + ".join(f"{s['metrics'].get('train_seconds', 0) / 60:.0f}" for s in run["stages"])


def table(entries: dict[str, dict[int, dict]], baseline: str) -> list[str]:
  lines = [f"| method | test top-1 (val-selected) | gain vs {baseline} | seeds | test online / "
           "EMA (seed 0) | val top-1 (seed 0) | pseudo-label acc. (last log) | train min "
           "(per stage) | steps |", "|---|---|---|---|---|---|---|---|---|"]
  base_values = [headline(r)[0] for r in entries.get(baseline, {}).values()]
  base_values = [v for v in base_values if v is not None]
  for name, seeds in entries.items():
    values = [v for v in (headline(r)[0] for r in seeds.values()) if v is not None]
    first = seeds[min(seeds)]
    m = first["stages"][-1]["metrics"]
    gain = "–"
    if name != baseline and values and base_values:
      gain = f"{100 * (statistics.mean(values) - statistics.mean(base_values)):+.1f}"
    online, ema = m.get("eval_top1", m.get("eval_knn_top1")), m.get("eval_ema_top1")
    val = max((m[k] for k in ("val_top1", "val_ema_top1") if k in m), default=None)
    pl = _last(first, "train_pl_accuracy")
    steps = " + ".join(str(s["metrics"].get("step", "?")) for s in first["stages"])
    lines.append(
        f"| {name} | {_mean_std(values)} | {gain} | {len(values)} | "
        f"{_pct(online)} / {_pct(ema)} | {_pct(val)} | {_pct(pl)} | "
        f"{_stage_minutes(first)} | {steps} |")
  return lines


def _pct(value) -> str:
  return f"{100 * value:.1f}" if isinstance(value, (int, float)) else "–"


def commands(entries: dict[str, dict[int, dict]]) -> list[str]:
  lines = []
  for name, seeds in entries.items():
    run = seeds[min(seeds)]
    lines.append(f"- {name} (seed {min(seeds)}; other seeds change `seed` and `split_seed`):")
    lines += [f"  `{stage['command']}`" for stage in run["stages"] if stage["command"]]
  return lines


def write_markdown(runs: dict[str, dict[str, dict[int, dict]]], *, out: str, command: str,
                   baseline: str | dict[str, str], flagships: list[str],
                   machine: str) -> None:
  """`baseline`: the entry each table's gain column compares with (one name, or one per
  label setting)."""
  plots_dir = os.path.join(os.path.dirname(out), "plots")
  stem = os.path.splitext(os.path.basename(out))[0].lower()
  lines = [
      "# Results", "",
      "Fashion-MNIST (real data, Debian's `dataset-fashion-mnist`). Test split (10,000 "
      "images), top-1 in %, mean ± std over seeds (seed k: init seed and label/validation "
      "split seed k). Every config runs at its own default budget on " + machine + "; "
      "5,000 labelled train images (500 per class) are held out as a validation split "
      "that no run trains on, every recipe choice was made on it, and the test split "
      "appears only here. The headline column uses, per run, the weights (online or EMA) "
      "with the higher validation top-1. Regenerate (runs already stored in docs/results "
      "are not rerun; `--no_train` only rebuilds the tables):", "",
      "```", command, "```", ""]
  for labels, entries in runs.items():
    if not entries:
      continue
    base = baseline if isinstance(baseline, str) else baseline[labels]
    lines += [f"## labels={labels}", ""] + table(entries, base) + [""]
    curve = plot_curves(entries, labels, flagships, os.path.join(
        plots_dir, f"{stem}_top1_{labels}.png"))
    pseudo = plot_pseudo_labels(entries, labels, os.path.join(
        plots_dir, f"{stem}_pseudo_labels_{labels}.png"))
    for title, path in (("test top-1 over training", curve),
                        ("pseudo-labels over training", pseudo)):
      if path:
        lines += [f"![{title}, labels={labels}]({os.path.relpath(path, os.path.dirname(out))})",
                  ""]
    lines += ["Commands:", ""] + commands(entries) + [""]
  analysis = os.path.join(os.path.dirname(out), "results", ANALYSIS)
  if os.path.exists(analysis):
    with open(analysis) as f:
      lines += [f.read().rstrip(), ""]
  with open(out, "w") as f:
    f.write("\n".join(lines))


def _records(run: dict) -> list[tuple[int, dict]]:
  """(global step, record) over the stages of a run, stages placed one after another."""
  offset, out = 0, []
  for stage in run["stages"]:
    for record in stage["records"]:
      out.append((offset + record["step"], record))
    offset += int(stage["metrics"].get("step", 0))
  return out


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_curves(entries, labels, flagships, out) -> str | None:
  """Test top-1 (validation-selected weights of the final stage) against steps, seed 0."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  drawn = False
  for index, name in enumerate(n for n in flagships if n in entries):
    run = entries[name][min(entries[name])]
    _, weights = headline(run)
    key = {"online": "eval_top1", "EMA": "eval_ema_top1"}.get(weights, "eval_knn_top1")
    last_stage_start = sum(int(s["metrics"].get("step", 0)) for s in run["stages"][:-1])
    points = [(step, r[key]) for step, r in _records(run)
              if key in r and step > last_stage_start]
    if points:
      ax.plot(*zip(*points), marker="o", label=f"{name} ({weights})",
              color=plt.cm.tab10.colors[index % 10])
      drawn = True
  if not drawn:
    plt.close(fig)
    return None
  # Multi-stage entries: their last stage, steps counted from the pipeline's start.
  ax.set(title=f"test top-1 over training, labels={labels} (seed 0)",
         xlabel="step (multi-stage: from the first stage's start)", ylabel="top-1")
  ax.legend(fontsize=7)
  return _save(plt, fig, out)


def plot_pseudo_labels(entries, labels, out) -> str | None:
  """Pseudo-label accuracy and mask rate over training (seed 0), every entry with them."""
  plt = _pyplot()
  fig, (ax_acc, ax_mask) = plt.subplots(1, 2, figsize=(12, 4.5))
  drawn = False
  for index, (name, seeds) in enumerate(entries.items()):
    records = _records(seeds[min(seeds)])
    style = dict(label=name, color=plt.cm.tab10.colors[index % 10],
                 linestyle="-" if index < 10 else "--")
    acc = [(s, r["train_pl_accuracy"]) for s, r in records if "train_pl_accuracy" in r]
    mask = [(s, r["train_pl_mask_rate"]) for s, r in records if "train_pl_mask_rate" in r]
    if acc:
      ax_acc.plot(*zip(*acc), **style)
      drawn = True
    if mask:
      ax_mask.plot(*zip(*mask), **style)
  if not drawn:
    plt.close(fig)
    return None
  ax_acc.set(title=f"pseudo-label accuracy (unlabelled batch), labels={labels}",
             xlabel="step", ylabel="accuracy", ylim=(0, 1))
  ax_mask.set(title="mask rate (pseudo-labels used)", xlabel="step", ylabel="fraction",
              ylim=(0, 1.02))  # a mask rate of 1 (SemPPL uses every pseudo-label) shows
  for ax in (ax_acc, ax_mask):
    if ax.get_legend_handles_labels()[0]:  # a test store may hold no mask-rate curve
      ax.legend(fontsize=7)
  return _save(plt, fig, out)


def _save(plt, fig, out: str) -> str:
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
