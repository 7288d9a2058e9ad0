"""train_and_evaluate end to end on real Fashion-MNIST with a tiny model."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import supervised_fmnist
from semissl.training import train_and_evaluate
from tests.training import capture

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**overrides):
  config = supervised_fmnist.get_config("runlocal")
  config.data.image_size = 16  # faster; the crop still pads-and-crops
  for key, value in overrides.items():
    config[key] = value
  return config


def test_runs_and_writes_results(tmp_path, capsys, monkeypatch):
  config = _config()
  config.ema.decay = 0.9  # the runlocal 0.999 moves the target by ~1e-6 per step
  recording = capture.record_train_steps(monkeypatch)
  results = train_and_evaluate(config, str(tmp_path))
  written = json.load(open(tmp_path / "results.json"))
  assert written["metrics"]["step"] == 6
  assert written["config"]["method"]["name"] == "supervised"
  for key in ("eval_top1", "eval_top5", "eval_ema_top1", "eval_ema_top5"):
    assert 0.0 <= results[key] <= 1.0
  assert np.isfinite(results["train_loss"])
  logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in logged if "train_loss" in r] == [2, 4, 6]
  for record in (r for r in logged if "train_loss" in r):  # input wait vs step time
    assert 0.0 <= record["train_data_wait_ms"] <= record["train_step_ms"]
    assert 0.0 <= record["train_data_wait_fraction"] <= 1.0
  progress = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith("step ")]
  assert progress[0].startswith("step 2/6 (33%) | ") and " steps/s | ETA " in progress[0]
  assert " | loss " in progress[0] and progress[0].split(" | ")[-1].startswith("wait ")
  assert logged[-1]["eval_top1"] == results["eval_top1"]
  ids = np.loadtxt(tmp_path / "labelled_ids.txt", dtype=np.int64)
  assert len(ids) == results["num_labelled"] == 600
  # The EMA target follows ema_t = 0.9 ema_{t-1} + 0.1 theta_t at every step.
  states = recording.states
  assert len(states) == 6
  capture.assert_ema_followed(states, lambda update: 0.9)
  # Training lowers the loss of the first batch (fixed rng: the same augmentation).
  loss_fn = jax.jit(lambda params, state, batch: recording.run.method.loss_fn(
      params, batch, state=state, rng=jax.random.PRNGKey(0))[0])
  first = float(loss_fn(states[0].params, states[0], recording.batches[0]))
  last = float(loss_fn(states[-1].params, states[0], recording.batches[0]))
  assert last < first - 0.05, (first, last)


def test_validation_split_metrics(tmp_path):
  config = _config()
  config.data.validation_size = 130
  results = train_and_evaluate(config, str(tmp_path))
  written = json.load(open(tmp_path / "results.json"))["metrics"]
  for key in ("eval_top1", "eval_ema_top1", "val_top1", "val_top5", "val_ema_top1",
              "val_ema_top5"):
    assert 0.0 <= written[key] <= 1.0 and written[key] == results[key], key
  logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  evals = [r for r in logged if "eval_top1" in r]
  assert [r["step"] for r in evals] == [3, 6]  # the periodic and the final evaluation
  assert all("val_top1" in r and "val_ema_top1" in r for r in evals)
  assert evals[-1]["val_top1"] == results["val_top1"]
  validation = np.loadtxt(tmp_path / "validation_ids.txt", dtype=np.int64)
  labelled = np.loadtxt(tmp_path / "labelled_ids.txt", dtype=np.int64)
  assert len(validation) == results["num_validation"] == 130
  assert len(labelled) == results["num_labelled"] == 600
  assert not np.isin(labelled, validation).any()
  assert results["num_unlabelled"] == 60000 - 130


def test_resume_continues_exactly(tmp_path):
  workdir = tmp_path / "run"
  straight = train_and_evaluate(_config(), str(workdir))
  # Simulate a crash right after the step-3 save: drop everything later, rerun.
  checkpoints = workdir / "checkpoints"
  steps = sorted(int(name) for name in os.listdir(checkpoints) if name.isdigit())
  assert 3 in steps and steps[-1] == 6, steps
  for step in steps:
    if step > 3:
      shutil.rmtree(checkpoints / str(step))
  os.remove(workdir / "results.json")
  resumed = train_and_evaluate(_config(), str(workdir))
  assert resumed["step"] == 6
  for key in ("eval_top1", "eval_ema_top1", "train_loss"):
    np.testing.assert_allclose(resumed[key], straight[key], rtol=1e-5, atol=1e-6)
  # metrics.jsonl: the records after step 3 written before the "crash" are replaced,
  # not repeated.
  logged = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in logged if "train_loss" in r] == [2, 4, 6]
  assert [r["step"] for r in logged if "eval_top1" in r] == [3, 6]

  # Killed after the final checkpoint, before results.json: the rerun trains no step
  # and still reports the last train metrics.
  os.remove(workdir / "results.json")
  again = train_and_evaluate(_config(), str(workdir))
  assert again["train_loss"] == resumed["train_loss"] and again["step"] == 6


@pytest.mark.parametrize("overrides,match", [
    ({"batch_size": 12}, "batch_size=12 is not divisible by the 8 devices"),
    ({"eval_batch_size": 100}, "eval_batch_size=100 is not divisible"),
    ({"num_train_steps": 0}, "num_train_steps or config.num_epochs"),
])
def test_bad_config_fails_before_training(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    train_and_evaluate(_config(**overrides), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints" / "0")


def test_unknown_method_lists_known(tmp_path):
  config = _config()
  config.method.name = "no_such_method"
  with pytest.raises(ValueError, match="known methods: .*supervised"):
    train_and_evaluate(config, str(tmp_path))


def test_jax_packages_do_not_import_tensorflow():
  code = ("import sys, semissl.losses, semissl.models, semissl.methods, semissl.training, "
          "semissl.inference; "
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
