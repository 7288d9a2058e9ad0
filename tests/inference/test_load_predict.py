"""semissl.load and experiments/predict.py on runlocal workdirs (real Fashion-MNIST).

The references are computed the way the run's evaluation computes its logits: the
TF pipeline's normalised eval images, the method built from the pipeline's
DatasetInfo, `method.eval_logits` / `eval_features` on the checkpoint's TrainState
read with plain orbax. `load` sees only the workdir and raw uint8 pixels.
"""
import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

import semissl
from configs import fixmatch_fmnist, supervised_fmnist
from semissl.data import idx_files
from semissl.training import setup, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {"supervised": supervised_fmnist, "fixmatch": fixmatch_fmnist}


def _reference(config, workdir):
  """{'ids', 'mean', 'std', 'online' / 'ema': {'logits', 'features'}} of the first eval
  batch, through the run's own eval path (see the module docstring)."""
  from semissl import data as data_lib
  data = data_lib.build_input(config.data, batch_size=config.batch_size,
                              mu=config.get("mu", 0), eval_batch_size=config.eval_batch_size,
                              seed=config.seed)
  method = setup.build_method(config, setup.dataset_info_of(data, config), mesh=None)
  step = max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
  batch = next(data.eval_iter())
  images = batch["images"]["image"]
  out = {"ids": batch["id"][batch["mask"] > 0], "mean": data.info.mean, "std": data.info.std,
         "class_names": data.info.class_names, "step": step}
  for weights, prefix in (("online", ""), ("ema", "target_")):
    variables = {"params": state[prefix + "params"],
                 "batch_stats": state[prefix + "batch_stats"]}
    out[weights] = {name: np.asarray(jax.jit(fn)(variables, images))
                    for name, fn in (("logits", method.eval_logits),
                                     ("features", method.eval_features))}
  return out


def _train(name, tmp_path_factory):
  """(config, workdir, reference) of a finished runlocal run of CONFIGS[name]."""
  config = CONFIGS[name].get_config("runlocal")
  config.eval_every_steps = 0  # only the final evaluation (the 10,000 test images)
  workdir = tmp_path_factory.mktemp(name)
  train_and_evaluate(config, str(workdir))
  return config, workdir, _reference(config, workdir)


@pytest.fixture(scope="module")
def supervised_run(tmp_path_factory):
  return _train("supervised", tmp_path_factory)


@pytest.fixture(scope="module")
def fixmatch_run(tmp_path_factory):
  return _train("fixmatch", tmp_path_factory)


@pytest.fixture(params=sorted(CONFIGS))
def run(request):
  """Each of the runs."""
  return request.getfixturevalue(f"{request.param}_run")


@pytest.fixture(scope="module")
def test_images():
  return idx_files.load_fashion_mnist_arrays()["test"]["image"]


def _softmax(logits):
  exp = np.exp(logits - logits.max(-1, keepdims=True))
  return exp / exp.sum(-1, keepdims=True)


def test_model_info_records_what_the_pipeline_applied(run):
  config, workdir, ref = run
  info = json.load(open(workdir / "model_info.json"))
  assert info["method"] == config.method.name and info["has_classifier"]
  assert info["num_classes"] == 10 and info["image_shape"] == [28, 28, 1]
  assert info["class_names"] == list(ref["class_names"])
  np.testing.assert_array_equal(info["mean"], ref["mean"])
  np.testing.assert_array_equal(info["std"], ref["std"])
  assert info["eval_view"] == {"name": "identity"}


def test_predict_matches_the_eval_step(run, test_images):
  config, workdir, ref = run
  raw = test_images[ref["ids"]]  # uint8 [N, 28, 28, 1], the pixels the pipeline read
  for weights in ("online", "ema"):
    model = semissl.load(str(workdir), weights=weights)
    assert model.weights == weights and model.step == ref["step"] == 6
    logits = model.logits(raw)
    np.testing.assert_allclose(logits, ref[weights]["logits"], rtol=1e-5, atol=1e-5)
    probabilities = model.predict(raw)
    assert probabilities.shape == (len(raw), 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, _softmax(ref[weights]["logits"]), atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
  # Float pixels in [0, 1], [N, H, W] input and a batch size that pads the last batch.
  small_batches = semissl.load(str(workdir), weights="ema", batch_size=7)
  np.testing.assert_allclose(small_batches.predict(raw[..., 0].astype(np.float32) / 255.0),
                             _softmax(ref["ema"]["logits"]), atol=1e-5)


def test_ema_and_online_weights_differ(run, test_images):
  _, workdir, ref = run
  online = semissl.load(str(workdir), weights="online")
  ema = semissl.load(str(workdir), weights="EMA")
  assert (online.weights, ema.weights) == ("online", "ema")
  kernel = lambda m: np.asarray(jax.tree.leaves(m.variables["params"])[0])
  assert not np.allclose(kernel(online), kernel(ema))
  raw = test_images[ref["ids"]]
  assert not np.allclose(online.logits(raw), ema.logits(raw), atol=1e-4)
  assert not np.allclose(ref["online"]["logits"], ref["ema"]["logits"], atol=1e-4)
  # No validation split in runlocal: the default is EMA.
  default = semissl.load(str(workdir))
  assert default.weights == "ema"
  np.testing.assert_array_equal(default.logits(raw), ema.logits(raw))


def test_default_weights_follow_the_validation_headline(run):
  _, workdir, _ = run
  path = workdir / "results.json"
  original = path.read_text()
  try:
    for online_top1, expected in ((0.9, "online"), (0.1, "ema"), (0.5, "online")):
      results = json.loads(original)
      results["metrics"].update(val_top1=online_top1, val_ema_top1=0.5)
      path.write_text(json.dumps(results))
      assert semissl.inference.headline_weights(str(workdir)) == expected
    assert semissl.load(str(workdir)).weights == "online"  # the last: a tie
    assert semissl.load(str(workdir), weights="ema").weights == "ema"  # explicit wins
  finally:
    path.write_text(original)


def test_features_have_the_encoder_width(run, test_images):
  config, workdir, ref = run
  model = semissl.load(str(workdir), weights="online")
  features = model.features(test_images[ref["ids"]])
  width = 128  # tiny_resnet's stage_widths[-1]
  assert "stage_widths" not in config.model  # (its default)
  assert features.shape == (len(ref["ids"]), width)
  np.testing.assert_allclose(features, ref["online"]["features"], rtol=1e-5, atol=1e-5)


def test_bad_images_are_one_line_errors(run):
  _, workdir, _ = run
  model = semissl.load(str(workdir))
  for images, match in ((np.zeros((2, 32, 32, 1), np.uint8), r"\[N, 28, 28, 1\]"),
                        (np.zeros((2, 28, 28, 3), np.uint8), r"\[N, 28, 28, 1\]"),
                        (np.zeros((2, 28, 28, 1), np.int64), "uint8"),
                        (np.zeros((0, 28, 28, 1), np.uint8), "empty")):
    with pytest.raises(ValueError, match=match) as error:
      model.predict(images)
    assert "\n" not in str(error.value)


def _write_image_folder(folder, test_images):
  """A tiny folder: exact 28 x 28 gray PNGs, a larger RGB JPEG, an RGBA PNG, a text file."""
  (folder / "shoes" / "deep").mkdir(parents=True)
  Image.fromarray(test_images[0][..., 0]).save(folder / "a.png")
  Image.fromarray(test_images[1][..., 0]).save(folder / "shoes" / "b.PNG")
  rgb = np.repeat(np.kron(test_images[2], np.ones((2, 2, 1), np.uint8)), 3, axis=-1)
  Image.fromarray(rgb).save(folder / "shoes" / "deep" / "c.jpg", quality=95)
  rgba = np.concatenate([np.repeat(test_images[3], 3, -1),
                         np.full((28, 28, 1), 255, np.uint8)], -1)
  Image.fromarray(rgba, "RGBA").save(folder / "d.png")
  (folder / "notes.txt").write_text("not an image")


def _predict_script(*args):
  return subprocess.run([sys.executable, "experiments/predict.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_predict_script_writes_the_csv(supervised_run, test_images, tmp_path):
  _, workdir, _ = supervised_run
  folder = tmp_path / "images"
  _write_image_folder(folder, test_images)
  output = tmp_path / "predictions.csv"
  done = _predict_script(f"--workdir={workdir}", f"--images={folder}", f"--output={output}",
                         "--weights=online")
  assert done.returncode == 0, done.stderr[-2000:]
  rows = list(csv.reader(open(output)))
  assert rows[0] == ["file", "class", "probability"]
  files = ["a.png", "d.png", "shoes/b.PNG", "shoes/deep/c.jpg"]
  assert [r[0] for r in rows[1:]] == files
  model = semissl.load(str(workdir), weights="online")
  images = semissl.inference.read_images([str(folder / f) for f in files],
                                         image_shape=(28, 28, 1))
  for exact in (0, 2):  # a.png and shoes/b.PNG are test images 0 and 1, unchanged
    np.testing.assert_array_equal(images[exact], test_images[exact // 2])
  probabilities = model.predict(images)
  names = idx_files.FASHION_MNIST_CLASS_NAMES
  assert [r[1] for r in rows[1:]] == [names[k] for k in probabilities.argmax(-1)]
  np.testing.assert_allclose([float(r[2]) for r in rows[1:]], probabilities.max(-1),
                             atol=2e-6)
  # An unreadable file: one line on stderr, exit status 2, no CSV.
  (folder / "broken.png").write_bytes(b"not a png")
  done = _predict_script(f"--workdir={workdir}", f"--images={folder}")
  assert done.returncode == 2 and not done.stdout
  assert done.stderr.strip().splitlines()[-1].startswith("error: cannot read image ")
  assert "broken.png" in done.stderr


def test_load_needs_no_tensorflow(fixmatch_run):
  _, workdir, _ = fixmatch_run
  code = ("import sys, numpy as np, semissl; assert 'jax' not in sys.modules; "
          f"m = semissl.load({str(workdir)!r}); "
          "p = m.predict(np.zeros((3, 28, 28, 1), np.uint8)); "
          "f = m.features(np.ones((3, 28, 28))); "
          "assert p.shape == (3, 10) and f.shape == (3, 128); import semissl.inference; "
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)


def test_workdir_without_checkpoint_is_a_one_line_error(run, tmp_path):
  _, workdir, _ = run
  cases = {tmp_path / "missing": "does not exist", tmp_path / "empty": "has no checkpoint"}
  (tmp_path / "empty").mkdir()
  started = tmp_path / "started"  # config and model_info written, no save yet
  started.mkdir()
  for name in ("config.json", "model_info.json"):
    shutil.copy(workdir / name, started / name)
  cases[started] = "has no checkpoint; train it first"
  old = tmp_path / "old"  # trained before model_info.json existed
  shutil.copytree(workdir, old)
  os.remove(old / "model_info.json")
  cases[old] = "has no model_info.json"
  for path, match in cases.items():
    with pytest.raises(ValueError, match=match) as error:
      semissl.load(str(path))
    assert "\n" not in str(error.value)
  with pytest.raises(ValueError, match="weights='best'"):
    semissl.load(str(workdir), weights="best")
