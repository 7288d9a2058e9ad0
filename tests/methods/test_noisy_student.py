"""Noisy Student: one step's loss against a NumPy computation (labelled CE + the filtered,
class-balanced soft CE to the fixed teacher), the noise (student only, train mode only),
config checks, the iteration chain teacher -> student -> student through the train loop
(each teacher in method state equal to its workdir's checkpoint) and an exact resume
(the running class counts included)."""
import json
import os
import shutil
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import noisy_student_fmnist
from semissl import methods
from semissl.methods import networks
from semissl.training import checkpointing, train_and_evaluate
from tests.data import fake_data
from tests.losses.test_noisy_student import np_noisy_student
from tests.methods.test_classic import tiny_fashion_dir  # noqa: F401  (fixture)

K, NUM_LABELLED, NUM_UNLABELLED, SIZE = 4, 6, 10, 8
TINY_RESNET = {"name": "tiny_resnet", "stem_width": 4, "stage_widths": (4, 8),
               "stage_strides": (2, 1), "zero_init_last_bn": False, "drop_path_rate": 0.3}


def _config(**overrides):
  method = {"name": "noisy_student", "teacher_workdir": "unused", "unlabelled_weight": 1.5,
            "threshold": 0.3, "temperature": 1.0, "dropout_rate": 0.5,
            "label_smoothing": 0.0}
  method.update(overrides)
  return ml_collections.ConfigDict({
      "mu": 2, "model": dict(TINY_RESNET), "method": method,
      "data": {"labelled_views": {"image": {}},
               "unlabelled_views": {"weak": {}, "strong": {}}}})


def _info():
  return methods.DatasetInfo(num_classes=K, image_shape=(SIZE, SIZE, 1),
                             num_labelled=NUM_LABELLED, num_unlabelled=NUM_UNLABELLED,
                             total_steps=10)


def _setup(**overrides):
  method = methods.get_method("noisy_student")(_config(**overrides), _info())
  method.validate()
  rs = np.random.RandomState(0)
  images = lambda n: jnp.asarray(rs.normal(size=(n, SIZE, SIZE, 1)), jnp.float32)
  batch = {"labelled": {"images": {"image": images(NUM_LABELLED)},
                        "label": jnp.arange(NUM_LABELLED) % K},
           "unlabelled": {"images": {"weak": images(NUM_UNLABELLED),
                                     "strong": images(NUM_UNLABELLED)},
                          "true_label": jnp.arange(NUM_UNLABELLED) % K}}
  variables, method_state = method.init(jax.random.PRNGKey(0), batch)
  # A teacher unlike the student (another init, sharper logits) and non-zero counts.
  teacher = method.teacher.init(jax.random.PRNGKey(7), batch["labelled"]["images"]["image"],
                                train=False)
  head = teacher["params"]["head"]["dense"]
  teacher["params"]["head"]["dense"] = dict(head, kernel=100.0 * head["kernel"])
  method_state = dict(method_state, teacher=dict(teacher),
                      class_counts=jnp.array([5, 0, 2, 9], jnp.int32))
  state = types.SimpleNamespace(step=jnp.asarray(3), batch_stats=variables["batch_stats"],
                                method_state=method_state)
  return method, variables["params"], batch, state


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_matches_numpy_on_one_batch():
  method, params, batch, state = _setup()
  teacher = np.asarray(method.teacher.apply(state.method_state["teacher"],
                                            batch["unlabelled"]["images"]["weak"],
                                            train=False), np.float64)
  confidences = np.exp(_np_log_softmax(teacher)).max(-1)
  ordered = np.sort(confidences)
  threshold = float(ordered[4] + ordered[5]) / 2  # keeps half, away from any tie
  method.config.method.threshold = threshold
  rng = jax.random.PRNGKey(11)
  loss, aux = method.loss_fn(params, batch, state=state, rng=rng)
  # The student's train-mode forward with the same dropout rng (labelled then strong).
  images = jnp.concatenate([batch["labelled"]["images"]["image"],
                            batch["unlabelled"]["images"]["strong"]])
  logits, _ = networks.apply_train(method.model, params, state.batch_stats, images, rng=rng)
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(batch["labelled"]["label"])
  supervised = -np.mean(_np_log_softmax(logits[:NUM_LABELLED])[np.arange(NUM_LABELLED), labels])
  unsupervised, counts, weights, kept = np_noisy_student(
      logits[NUM_LABELLED:], teacher, np.array([5, 0, 2, 9]), threshold, 1.0, True, False)
  assert 0 < kept.sum() < NUM_UNLABELLED  # the filter and the balancing both act
  assert not np.allclose(weights[kept > 0], 1.0)
  np.testing.assert_allclose(loss, supervised + 1.5 * unsupervised, rtol=1e-5)
  np.testing.assert_array_equal(aux.method_state["class_counts"], counts)
  jax.tree.map(np.testing.assert_array_equal, aux.method_state["teacher"],
               state.method_state["teacher"])  # the teacher is fixed
  np.testing.assert_allclose(aux.metrics["unsupervised_loss"], unsupervised, rtol=1e-5)
  np.testing.assert_allclose(aux.metrics["mask_rate"], kept.mean(), rtol=1e-6)


def test_noise_is_the_students_only_and_train_mode_only():
  method, params, batch, state = _setup()
  a, _ = method.loss_fn(params, batch, state=state, rng=jax.random.PRNGKey(1))
  b, _ = method.loss_fn(params, batch, state=state, rng=jax.random.PRNGKey(2))
  assert not np.isclose(float(a), float(b))  # dropout / stochastic depth draw per step
  quiet, *_ = _setup(dropout_rate=0.0)
  quiet.config.model.drop_path_rate = 0.0
  quiet = methods.get_method("noisy_student")(quiet.config, _info())
  c, _ = quiet.loss_fn(params, batch, state=state, rng=jax.random.PRNGKey(1))
  d, _ = quiet.loss_fn(params, batch, state=state, rng=jax.random.PRNGKey(2))
  assert float(c) == float(d)
  variables = {"params": params, "batch_stats": state.batch_stats}
  images = batch["labelled"]["images"]["image"]
  np.testing.assert_array_equal(method.eval_logits(variables, images),
                                quiet.eval_logits(variables, images))
  # The teacher's logits do not depend on the step's rng (eval mode, no dropout).
  np.testing.assert_array_equal(method.teacher_logits(state.method_state, images),
                                quiet.teacher_logits(state.method_state, images))


@pytest.mark.parametrize("overrides, match", [
    ({"teacher_workdir": ""}, "needs method.teacher_workdir"),
    ({"threshold": 1.5}, r"threshold=1.5 must be in \[0, 1\]"),
    ({"temperature": 0.0}, "temperature=0.0 must be positive"),
    ({"dropout_rate": 1.0}, r"dropout_rate=1.0 must be in \[0, 1\)")])
def test_bad_options_are_one_line_errors(overrides, match):
  method = methods.get_method("noisy_student")(_config(**overrides), _info())
  with pytest.raises(ValueError, match=match):
    method.validate()


def test_config_iterations():
  teacher = noisy_student_fmnist.get_config("iteration=0")
  assert teacher.method.name == "supervised" and "drop_path_rate" not in teacher.model
  noised = noisy_student_fmnist.get_config("iteration=0,noise=True")
  assert noised.model.drop_path_rate == noisy_student_fmnist.DROP_PATH
  student = noisy_student_fmnist.get_config("iteration=1,teacher=/w/iteration0")
  assert (student.method.name, student.method.teacher_workdir) == ("noisy_student",
                                                                    "/w/iteration0")
  assert student.method.dropout_rate == 0.5 and student.model.drop_path_rate == 0.2
  assert student.data.unlabelled_views.strong.name == "randaugment"
  assert student.data.unlabelled_views.weak.name == "crop_flip"
  larger = noisy_student_fmnist.get_config("iteration=2,growth=2")
  assert tuple(larger.model.stage_widths) == (128, 256, 512)
  assert tuple(larger.method.teacher_model.stage_widths) == (64, 128, 256)
  with pytest.raises(ValueError, match="iteration=-1"):
    noisy_student_fmnist.get_config("iteration=-1")


def _runlocal(data_dir, iteration, steps, teacher=""):
  config = noisy_student_fmnist.get_config(f"iteration={iteration},runlocal")
  config.data.update(data_dir=data_dir, image_size=fake_data.TINY_SIZE,
                     label_fraction=None, labels_per_class=2, mean=0.5, std=0.25)
  config.num_train_steps, config.eval_every_steps = steps, 0
  config.checkpoint_every_steps, config.log_every_steps = 2, 1
  if iteration:  # threshold 0: a 2-step teacher is nowhere near the paper's 0.3
    config.method.teacher_workdir, config.method.threshold = teacher, 0.0
  return config


def _train_rows(workdir):
  """step -> the last train-metrics row logged at that step."""
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return {r["step"]: r for r in rows if "train_loss" in r}


def _checkpoint(workdir, *collections):
  return checkpointing.restore_collections(str(workdir), collections)


@pytest.fixture(scope="module")
def teacher_workdir(tiny_fashion_dir, tmp_path_factory):  # noqa: F811
  workdir = tmp_path_factory.mktemp("noisy") / "iteration0"
  train_and_evaluate(_runlocal(tiny_fashion_dir, 0, 2), str(workdir))
  return workdir


def _assert_teacher_is(workdir, teacher_workdir):
  teacher = _checkpoint(workdir, "method_state")["method_state"]["teacher"]
  saved = _checkpoint(teacher_workdir, "params", "batch_stats")
  jax.tree.map(np.testing.assert_array_equal, teacher, saved)


def test_chain_teacher_student_student(tiny_fashion_dir, teacher_workdir):  # noqa: F811
  first = teacher_workdir.parent / "iteration1"
  second = teacher_workdir.parent / "iteration2"
  results = train_and_evaluate(_runlocal(tiny_fashion_dir, 1, 2, str(teacher_workdir)),
                               str(first))
  train_and_evaluate(_runlocal(tiny_fashion_dir, 2, 2, str(first)), str(second))
  _assert_teacher_is(first, teacher_workdir)  # iteration 0's supervised classifier
  _assert_teacher_is(second, first)  # the student became the next teacher
  for workdir in (first, second):
    assert json.load(open(workdir / "results.json"))["metrics"]["step"] == 2
    counts = _checkpoint(workdir, "method_state")["method_state"]["class_counts"]
    assert counts.dtype == np.int32 and counts.sum() > 0
  assert 0.0 <= results["eval_top1"] <= 1.0
  for key in ("train_loss", "train_unsupervised_loss", "train_pl_accuracy",
              "train_balance_weight"):
    assert np.isfinite(results[key]), key


def test_resume_is_exact(tiny_fashion_dir, teacher_workdir, tmp_path):  # noqa: F811
  """A crash after the step-2 checkpoint: the resumed run logs what the straight run
  logged and ends with the same class counts (running totals in method state)."""
  config = _runlocal(tiny_fashion_dir, 1, 4, str(teacher_workdir))
  config.checkpoint_every_steps, config.keep_checkpoints = 1, 10
  straight_dir, workdir = tmp_path / "straight", tmp_path / "resumed"
  train_and_evaluate(config, str(straight_dir))
  straight = _train_rows(straight_dir)
  shutil.copytree(straight_dir, workdir)
  for step in (3, 4):
    shutil.rmtree(workdir / "checkpoints" / str(step))
  os.remove(workdir / "results.json")
  train_and_evaluate(config, str(workdir))
  resumed = _train_rows(workdir)
  for step in (3, 4):
    for key in ("train_loss", "train_unsupervised_loss", "train_balance_weight",
                "train_mask_rate", "train_grad_norm"):
      np.testing.assert_allclose(resumed[step][key], straight[step][key], rtol=1e-6,
                                 err_msg=f"{key} at step {step}")
  counts = [_checkpoint(directory, "method_state")["method_state"]["class_counts"]
            for directory in (straight_dir, workdir)]
  np.testing.assert_array_equal(counts[1], counts[0])
  assert counts[0].sum() == 4 * 3 * 16  # threshold 0: every unlabelled image counted
