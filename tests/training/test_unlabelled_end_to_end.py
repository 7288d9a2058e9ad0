"""FixMatch end to end: a labelled image folder plus a class-less unlabelled folder."""
import json

import numpy as np

from configs import fixmatch_fmnist
from semissl.data import unlabelled
from semissl.training import train_and_evaluate
from tests.data import fake_data


def _folders(tmp_path):
  """labelled/{train,test}/<class>/ and unlabelled/ (nested, PNG + JPEG, gray + RGB)."""
  rng = np.random.default_rng(0)
  for split, count in (("train", 3), ("test", 2)):
    for class_name in ("ant", "bee"):
      for i in range(count):
        fake_data.save_image(str(tmp_path / "labelled" / split / class_name / f"{i}.png"),
                             rng.integers(0, 256, (16, 16, 3), np.uint8), "PNG")
  for i in range(10):
    name = f"part{i % 2}/deep/{i}.jpg" if i % 3 else f"{i}.png"
    shape = (20, 18) if i % 2 else (16, 16, 3)
    fake_data.save_image(str(tmp_path / "unlabelled" / name),
                         rng.integers(0, 256, shape, np.uint8), "JPEG" if i % 3 else "PNG")
  return str(tmp_path / "labelled"), str(tmp_path / "unlabelled")


def test_fixmatch_with_an_unlabelled_folder(tmp_path):
  labelled_root, unlabelled_root = _folders(tmp_path)
  config = fixmatch_fmnist.get_config(
      f"runlocal,labels=perclass2,dataset=folder:{labelled_root}")
  config.data.unlabelled_dataset = f"folder:{unlabelled_root}"
  config.data.image_size = 16
  config.num_train_steps = 2
  config.log_every_steps = 1
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  workdir = tmp_path / "run"
  results = train_and_evaluate(config, str(workdir))
  assert results["step"] == 2 and np.isfinite(results["train_loss"])
  assert results["num_labelled"] == 4 and results["num_unlabelled"] == 10
  assert 0.0 <= results["eval_ema_top1"] <= 1.0
  assert "train_pl_accuracy" not in results  # no hidden labels to compare with
  record = json.loads((workdir / unlabelled.RECORD_FILENAME).read_text())
  assert record["num_examples"] == 10
  written = json.loads((workdir / "config.json").read_text())
  assert written["data"]["unlabelled_dataset"] == f"folder:{unlabelled_root}"
