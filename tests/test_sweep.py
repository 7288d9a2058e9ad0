"""experiments/sweep.py: the value is chosen on validation, stored runs are reused."""
import json

from absl import flags
from absl.testing import flagsaver

from experiments import sweep


def _store(store, name, rel, **metrics):
  run = store / name / rel
  run.mkdir(parents=True)
  (run / "results.json").write_text(json.dumps({"metrics": metrics}))


def test_val_score_takes_the_better_weights_and_ignores_test():
  assert sweep.val_score({"val_top1": 0.6, "val_ema_top1": 0.7, "eval_top1": 0.99}) == (
      0.7, "ema")
  assert sweep.val_score({"val_top1": 0.6, "eval_ema_top1": 0.99}) == (0.6, "online")
  assert sweep.val_score({"eval_top1": 0.9}) == (None, "")


def test_tabulates_stored_runs_and_marks_the_validation_best(tmp_path, capsys):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  store = tmp_path / "sweeps"
  # lr 0.2 has the best test top-1 but the worse validation: 0.4 must be chosen.
  _store(store, "lr", "optimizer.base_lr=0.2", val_top1=0.50, val_ema_top1=0.52,
         eval_top1=0.90)
  _store(store, "lr", "optimizer.base_lr=0.4", val_top1=0.61, val_ema_top1=0.58,
         eval_top1=0.40)
  with flagsaver.flagsaver(name="lr", config="configs/supervised_fmnist.py:labels=40",
                           param="config.optimizer.base_lr", values=["0.2", "0.4", "0.8"],
                           store=str(store), no_train=True):
    sweep.main([])
  readme = (store / "lr" / "README.md").read_text()
  assert "| 0.2 | 50.0 | 52.0 |  |" in readme
  assert "| 0.4 | 61.0 | 58.0 | **yes** |" in readme
  assert "| 0.8 | – | – | |" in readme  # not run (--no_train)
  assert readme in capsys.readouterr().out + "\n"


def test_train_and_store_copies_a_finished_run_without_training(tmp_path):
  from experiments import results_tables
  run = tmp_path / "workdirs" / "run"
  run.mkdir(parents=True)
  (run / "results.json").write_text(json.dumps({"metrics": {"val_top1": 0.5}}))
  (run / "metrics.jsonl").write_text('{"step": 1}\n')
  stored = tmp_path / "store" / "run"
  assert results_tables.train_and_store(
      ["experiments/main.py", "--config=c.py:labels=40"], root=str(tmp_path),
      workdir="workdirs/run", stored=str(stored), label="run")
  assert json.loads((stored / "results.json").read_text())["metrics"] == {"val_top1": 0.5}
  assert (stored / "metrics.jsonl").read_text() == '{"step": 1}\n'
  assert (stored / "command.txt").read_text() == (
      "python experiments/main.py --config=c.py:labels=40\n")
  assert not (tmp_path / "workdirs" / "run.log").exists()  # nothing was trained
