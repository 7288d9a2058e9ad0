"""experiments/compare.py (the demo's last line) and experiments/results_tables.py."""
import json

from experiments import compare, results_tables


def _results(workdir, **metrics):
  workdir.mkdir(parents=True)
  (workdir / "results.json").write_text(json.dumps({"metrics": metrics, "config": {}}))
  return str(workdir)


def test_compares_validation_selected_top1(tmp_path, capsys):
  # FixMatch: EMA has the higher val top-1 -> its test top-1 (71.31); label-only:
  # online has the higher val top-1 -> 55.0.
  fixmatch = _results(tmp_path / "fm", eval_top1=0.709, eval_ema_top1=0.7131,
                      val_top1=0.70, val_ema_top1=0.72)
  supervised = _results(tmp_path / "sup", eval_top1=0.55, eval_ema_top1=0.552,
                        val_top1=0.56, val_ema_top1=0.54)
  compare.main(["compare.py", "FixMatch 40 labels", fixmatch, "label-only", supervised])
  assert capsys.readouterr().out == (
      "FixMatch 40 labels: 71.3% | label-only: 55.0% | gain +16.3 points\n"
      "  (test top-1; weights chosen on the validation split: EMA vs online)\n")


def test_without_validation_uses_online_top1():
  line = compare.comparison("A", {"eval_top1": 0.5}, "B", {"eval_top1": 0.525,
                                                            "eval_ema_top1": 0.6})
  assert line.startswith("A: 50.0% | B: 52.5% | gain -2.5 points\n")


def _store_run(store, labels, entry, seed, stages):
  for index, (metrics, records) in enumerate(stages):
    stage = store / labels / entry / f"seed{seed}" / f"stage{index}"
    stage.mkdir(parents=True)
    (stage / "results.json").write_text(json.dumps({"metrics": metrics}))
    (stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (stage / "command.txt").write_text(f"python experiments/main.py --seed={seed}\n")


def test_tables_from_store(tmp_path):
  store = tmp_path / "results"
  base = [0.50, 0.54, 0.52]
  for seed, value in enumerate(base):
    _store_run(store, "40", "label_only", seed,
               [({"eval_top1": value, "val_top1": 0.5, "step": 10, "train_seconds": 60},
                 [{"step": 10, "eval_top1": value}])])
  for seed, value in enumerate([0.70, 0.74, 0.72]):
    _store_run(store, "40", "two_stage", seed, [
        ({"eval_knn_top1": 0.6, "step": 5, "train_seconds": 120},
         [{"step": 5, "train_pl_accuracy": 0.8}]),
        ({"eval_top1": value - 0.1, "eval_ema_top1": value, "val_top1": 0.1,
          "val_ema_top1": 0.2, "step": 10, "train_seconds": 60},
         [{"step": 10, "eval_ema_top1": value}])])
  slug = lambda name: name.replace("-", "_").replace(" ", "_")
  runs = results_tables.load_store(str(store), ["label-only", "two stage"], slug,
                                   labels=["40"], fixed={})
  lines = results_tables.table(runs["40"], "label-only")
  # means 52.0 +- 2.0 and 72.0 +- 2.0 (numpy-free: sample std of three values 2 apart)
  assert lines[2].startswith("| label-only | 52.0 ± 2.0 | – | 3 | 50.0 / – | 50.0 | – | 1 |")
  assert lines[3].startswith("| two stage | 72.0 ± 2.0 | +20.0 | 3 | 60.0 / 70.0 | 20.0 | "
                             "80.0 | 2 + 1 | 5 + 10 |")
  out = tmp_path / "docs" / "RESULTS.md"
  results_tables.write_markdown(runs, out=str(out), command="python x", baseline="label-only",
                                flagships=["label-only", "two stage"], machine="test")
  text = out.read_text()
  assert "![test top-1 over training, labels=40](plots/results_top1_40.png)" in text
  assert (tmp_path / "docs" / "plots" / "results_top1_40.png").exists()
  assert (tmp_path / "docs" / "plots" / "results_pseudo_labels_40.png").exists()


def test_noisy_label_settings_run_only_the_noisy_entries():
  from experiments import results_entries as make_results  # the script's entries
  noisy = [e for e in make_results.ENTRIES if e.noisy]
  assert {e.name for e in noisy} == {"dividemix", make_results.NOISY_BASELINE}
  assert make_results.noise_rate("noise0.2") == "0.2" and make_results.noise_rate("40") is None
  baseline = next(e for e in noisy if e.name == make_results.NOISY_BASELINE)
  command = make_results.stage_command(baseline, 0, labels="noise0.5", seed=1,
                                       previous=None, workdir="w")
  assert command[1] == "--config=configs/dividemix_fmnist.py:noise=0.5,ce"
  assert "--config.seed=1" in command and "--config.data.split_seed=1" in command
  assert not any(c.startswith("--config.num_train_steps") for c in command)
  two_stage = next(e for e in make_results.ENTRIES if e.name == "semppl -> fine-tune")
  command = make_results.stage_command(two_stage, 1, labels="40", seed=0, previous="p",
                                       workdir="w", steps=1000, extra=["--config.x=1"])
  assert command[1] == "--config=configs/semppl_fmnist.py:labels=40,stage=finetune,init_from=p"
  assert command[-2:] == ["--config.num_train_steps=250", "--config.x=1"]


def test_gain_column_names_each_tables_baseline(tmp_path):
  store = tmp_path / "results"
  for name, value in (("ce", 0.6), ("dividemix", 0.75)):
    _store_run(store, "noise0.5", name, 0,
               [({"eval_top1": value, "step": 10, "train_seconds": 60},
                 [{"step": 10, "eval_top1": value}])])
  runs = results_tables.load_store(str(store), ["ce", "dividemix"], lambda n: n,
                                   labels=["noise0.5"], fixed={})
  out = tmp_path / "RESULTS.md"
  results_tables.write_markdown(runs, out=str(out), command="python x",
                                baseline={"noise0.5": "ce"}, flagships=[], machine="test")
  text = out.read_text()
  assert "| method | test top-1 (val-selected) | gain vs ce |" in text
  assert "| dividemix | 75.0 | +15.0 | 1 |" in text
