"""The classic family (Pi-model, Mean Teacher, pseudo-label, UDA, VAT, MixMatch,
ReMixMatch DA via FixMatch): loss_fn wiring, stop-gradients, ramp-up, config
checks, the fmnist configs and one end-to-end run each."""
import json
import math
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import fixmatch_fmnist, meanteacher_fmnist, mixmatch_fmnist, pimodel_fmnist
from configs import pseudolabel_fmnist, remixmatch_fmnist, supervised_fmnist
from configs import ict_fmnist, temporal_ensembling_fmnist, uda_fmnist, vat_fmnist
from semissl import methods
from semissl.methods import rampup
from semissl.training import setup, train_and_evaluate
from tests.data import fake_data
from tests.training import capture

NUM_CLASSES = 4
NUM_LABELLED, NUM_UNLABELLED, SIZE = 8, 16, 8
WEAK = {"name": "crop_flip"}
VIEWS = {  # method -> (labelled views, unlabelled views)
    "pi_model": (("first", "second"), ("first", "second")),
    "mean_teacher": (("student", "teacher"), ("student", "teacher")),
    "pseudo_label": (("image",), ("weak",)),
    "uda": (("image",), ("weak", "strong")),
    "vat": (("image",), ("image",)),
    "mixmatch": (("image",), ("augment0", "augment1")),
    "ict": (("image",), ("image",)),
}
TINY_RESNET = {"name": "tiny_resnet", "stem_width": 4, "stage_widths": (4,),
               "stage_strides": (2,)}
# BN-free and per-example: a gradient that is zero through a stop-gradient target
# is exactly zero with respect to that target's input images.
TINY_VIT = {"name": "vit_ti", "width": 8, "depth": 1, "num_heads": 2, "mlp_dim": 16,
            "patch_size": 4}


def _config(name, *, model=None, **method_overrides):
  labelled_views, unlabelled_views = VIEWS[name]
  config = ml_collections.ConfigDict()
  config.mu = 2
  config.method = {"name": name, "unlabelled_weight": 2.0, "rampup": "none",
                   "threshold": 0.0, **method_overrides}
  config.model = dict(model or TINY_RESNET)
  config.data = {"labelled_views": {v: WEAK for v in labelled_views},
                 "unlabelled_views": {v: WEAK for v in unlabelled_views}}
  return config


def _setup(name, *, model=None, **method_overrides):
  config = _config(name, model=model, **method_overrides)
  info = methods.DatasetInfo(num_classes=NUM_CLASSES, image_shape=(SIZE, SIZE, 1),
                             num_labelled=NUM_LABELLED, num_unlabelled=NUM_UNLABELLED,
                             total_steps=10)
  method = methods.get_method(name)(config, info)
  method.validate()
  keys = (jax.random.fold_in(jax.random.PRNGKey(0), i) for i in range(10_000))
  labelled_views, unlabelled_views = VIEWS[name]
  image = lambda n: jax.random.normal(next(keys), (n, SIZE, SIZE, 1))
  batch = {
      "labelled": {"images": {v: image(NUM_LABELLED) for v in labelled_views},
                   "label": jax.random.randint(next(keys), (NUM_LABELLED,), 0,
                                               NUM_CLASSES)},
      "unlabelled": {"images": {v: image(NUM_UNLABELLED) for v in unlabelled_views},
                     "true_label": jax.random.randint(next(keys), (NUM_UNLABELLED,), 0,
                                                      NUM_CLASSES)},
  }
  variables, method_state = method.init(next(keys), batch)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  # A teacher that differs from the student.
  noise_key = next(keys)
  target_params = jax.tree.map(
      lambda p: p + 0.05 * jax.random.normal(noise_key, p.shape), params)
  state = types.SimpleNamespace(step=jnp.asarray(3), batch_stats=batch_stats,
                                target_params=target_params,
                                target_batch_stats=batch_stats,
                                method_state=method_state)
  return method, params, batch, state


def _run(method, params, batch, state):
  """Jitted `loss_fn` -> (loss, aux)."""
  return jax.jit(lambda p: method.loss_fn(p, batch, state=state,
                                          rng=jax.random.PRNGKey(1)))(params)


def _with_images(batch, images):
  return {part: dict(batch[part], images=images[part]) for part in batch}


def _image_grads(method, params, batch, state):
  images = {part: batch[part]["images"] for part in batch}
  loss_of_images = lambda im: method.loss_fn(params, _with_images(batch, im),
                                             state=state, rng=jax.random.PRNGKey(1))[0]
  return jax.jit(jax.grad(loss_of_images))(images)


def _norm(tree):
  return float(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)) ** 0.5)


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_loss_fn_wiring(name):
  method, params, batch, state = _setup(name)
  (loss, aux), grads = jax.jit(jax.value_and_grad(
      lambda p: method.loss_fn(p, batch, state=state, rng=jax.random.PRNGKey(1)),
      has_aux=True))(params)
  metrics = aux.metrics
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert _norm(grads["head"]) > 0 and _norm(grads["backbone"]["stem_conv"]) > 0
  for key in ("train_top1", "supervised_loss", "unsupervised_loss",
              "unsupervised_weight", "pl_accuracy"):
    assert key in metrics and np.isfinite(float(metrics[key])), key
  if name in ("pseudo_label", "uda"):
    assert 0.0 <= float(metrics["pl_mask_rate"]) <= 1.0
  # L = L_s + mu(t) L_u (+ VAT's entropy term, off here); weight 2 without ramp.
  np.testing.assert_allclose(float(metrics["unsupervised_weight"]), 2.0)
  np.testing.assert_allclose(
      float(loss), float(metrics["supervised_loss"]) + 2.0 * float(
          metrics["unsupervised_loss"]), rtol=1e-5)
  assert float(metrics["unsupervised_loss"]) > 0
  assert aux.method_state == state.method_state
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), aux.batch_stats,
                       state.batch_stats)
  assert all(jax.tree.leaves(moved))


def test_eval_logits_and_features():
  method, params, batch, state = _setup("pi_model")
  variables = {"params": params, "batch_stats": state.batch_stats}
  images = batch["labelled"]["images"]["first"]
  assert method.eval_logits(variables, images).shape == (NUM_LABELLED, NUM_CLASSES)
  assert method.eval_features(variables, images).shape == (
      NUM_LABELLED, TINY_RESNET["stage_widths"][-1])


@pytest.mark.parametrize("name,target_views,student_views", [
    ("pi_model", ("second",), ("first",)),
    ("mean_teacher", ("teacher",), ("student",)),
    ("uda", ("weak",), ("strong",)),
])
def test_no_gradient_through_targets(name, target_views, student_views):
  method, params, batch, state = _setup(name, model=TINY_VIT)
  grads = _image_grads(method, params, batch, state)
  for view in target_views:
    for part in ("labelled", "unlabelled"):
      if view in grads[part]:
        np.testing.assert_array_equal(grads[part][view], 0.0)
  for view in student_views:
    assert _norm(grads["unlabelled"][view]) > 0


def test_mean_teacher_teacher_gets_no_gradient_and_keeps_batch_stats():
  method, params, batch, state = _setup("mean_teacher")
  loss_of_teacher = lambda t: method.loss_fn(
      params, batch, state=types.SimpleNamespace(**dict(vars(state), target_params=t)),
      rng=jax.random.PRNGKey(1))[0]
  teacher_grads = jax.jit(jax.grad(loss_of_teacher))(state.target_params)
  assert _norm(teacher_grads) == 0.0
  _, aux = _run(method, params, batch, state)
  # Only the student pass moves the running averages.
  student_images = jnp.concatenate([batch["labelled"]["images"]["student"],
                                    batch["unlabelled"]["images"]["student"]])
  _, expected = method.apply_train(params, state.batch_stats, student_images,
                                   rng=jax.random.PRNGKey(2))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               aux.batch_stats, expected)


def test_pseudo_label_equals_cross_entropy_with_frozen_labels():
  method, params, batch, state = _setup("pseudo_label", model=TINY_VIT)
  images = jnp.concatenate([batch["labelled"]["images"]["image"],
                            batch["unlabelled"]["images"]["weak"]])
  forward = jax.jit(lambda p: method.model.apply({"params": p}, images, train=True))
  logits = forward(params)
  probs = np.asarray(jax.nn.softmax(logits[NUM_LABELLED:]), np.float64)
  threshold = float(np.median(probs.max(-1)))
  method.config.method.threshold = threshold
  pseudo_labels, mask = probs.argmax(-1), (probs.max(-1) >= threshold)
  assert 0 < mask.sum() < NUM_UNLABELLED

  def frozen_target_loss(p):
    log_probs = jax.nn.log_softmax(method.model.apply({"params": p}, images,
                                                      train=True))
    labelled = -jnp.mean(log_probs[jnp.arange(NUM_LABELLED), batch["labelled"]["label"]])
    unlabelled = -jnp.sum(mask * log_probs[NUM_LABELLED + np.arange(NUM_UNLABELLED),
                                           pseudo_labels]) / NUM_UNLABELLED
    return labelled + 2.0 * unlabelled

  (loss, aux), grads = jax.jit(jax.value_and_grad(
      lambda p: method.loss_fn(p, batch, state=state, rng=jax.random.PRNGKey(1)),
      has_aux=True))(params)
  expected_loss, expected_grads = jax.jit(jax.value_and_grad(frozen_target_loss))(params)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads, expected_grads)
  np.testing.assert_allclose(aux.metrics["pl_mask_rate"], mask.mean(), rtol=1e-6)
  true = np.asarray(batch["unlabelled"]["true_label"])
  np.testing.assert_allclose(aux.metrics["pl_accuracy"],
                             np.mean(pseudo_labels == true), rtol=1e-6)


def test_uda_threshold_one_masks_everything():
  method, params, batch, state = _setup("uda", threshold=1.0)
  _, aux = _run(method, params, batch, state)
  assert float(aux.metrics["unsupervised_loss"]) == 0.0
  assert float(aux.metrics["pl_mask_rate"]) == 0.0


@pytest.mark.parametrize("schedule, step", [("linear", 0), ("log", 1), ("exp", 3)])
def test_uda_tsa_anneals_the_labelled_loss(schedule, step):
  """At `step` of 10 with K = 4 classes the labelled loss is the cross-entropy over
  the examples whose correct-class probability is <= eta_t (UDA Sec. 3.5)."""
  method, params, batch, state = _setup("uda", tsa=schedule)
  state.step = jnp.asarray(step)
  _, aux = _run(method, params, batch, state)
  progress = step / 10
  alpha = {"linear": progress, "log": 1 - np.exp(-5 * progress),
           "exp": np.exp(5 * (progress - 1))}[schedule]
  eta = alpha * (1 - 1 / NUM_CLASSES) + 1 / NUM_CLASSES
  images = jnp.concatenate([batch["labelled"]["images"]["image"],
                            batch["unlabelled"]["images"]["weak"],
                            batch["unlabelled"]["images"]["strong"]])
  logits, _ = method.apply_train(params, state.batch_stats, images,
                                 rng=jax.random.PRNGKey(1))
  logits = np.asarray(logits[:NUM_LABELLED], np.float64)
  labels = np.asarray(batch["labelled"]["label"])
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
  correct = log_probs[np.arange(NUM_LABELLED), labels]
  keep = np.exp(correct) <= eta
  want = -(correct * keep).sum() / max(keep.sum(), 1)
  np.testing.assert_allclose(float(aux.metrics["supervised_loss"]), want, rtol=1e-4)
  np.testing.assert_allclose(float(aux.metrics["tsa_threshold"]), eta, rtol=1e-6)
  np.testing.assert_allclose(float(aux.metrics["tsa_kept_rate"]), keep.mean())
  if step == 0:  # eta = 1/K at the start: some examples kept, some dropped
    assert 0 < keep.sum() < NUM_LABELLED


def test_ict_matches_mixed_teacher_reference():
  """Student on lambda u + (1 - lambda) u[pi] against lambda p' + (1 - lambda) p'[pi]
  of the EMA teacher (Verma et al. Algorithm 1), with the step's own draws; no
  gradient reaches the teacher."""
  from semissl.methods import ict
  method, params, batch, state = _setup("ict", mixup_alpha=0.5)
  _, aux = _run(method, params, batch, state)
  mix_rng, student_rng, teacher_rng = jax.random.split(jax.random.PRNGKey(1), 3)
  perm, ratio = ict.ict_draws(mix_rng, NUM_UNLABELLED, 0.5)
  perm, ratio = np.asarray(perm), float(ratio)
  assert sorted(perm) == list(range(NUM_UNLABELLED)) and 0 < ratio < 1
  u = np.asarray(batch["unlabelled"]["images"]["image"])
  mixed = ratio * u + (1 - ratio) * u[perm]
  student, _ = method.apply_train(
      params, state.batch_stats,
      jnp.concatenate([batch["labelled"]["images"]["image"], jnp.asarray(mixed)]),
      rng=student_rng)
  teacher, _ = method.apply_train(state.target_params, state.target_batch_stats,
                                  jnp.asarray(u), rng=teacher_rng)
  softmax = lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(
      z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)
  p_teacher = softmax(np.asarray(teacher, np.float64))
  target = ratio * p_teacher + (1 - ratio) * p_teacher[perm]
  want = np.mean((softmax(np.asarray(student[NUM_LABELLED:], np.float64)) - target) ** 2)
  np.testing.assert_allclose(float(aux.metrics["unsupervised_loss"]), want, rtol=1e-4)
  np.testing.assert_allclose(float(aux.metrics["mix_ratio"]), ratio, rtol=1e-6)
  teacher_grad = jax.grad(lambda t: method.loss_fn(
      params, batch, state=types.SimpleNamespace(**{**vars(state), "target_params": t}),
      rng=jax.random.PRNGKey(1))[0])(state.target_params)
  assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(teacher_grad))


def test_vat_perturbed_passes_leave_batch_stats_and_reproduce_clean_logits():
  method, params, batch, state = _setup("vat", epsilon=1e-6, xi=1e-6)
  _, aux = _run(method, params, batch, state)
  images = jnp.concatenate([batch["labelled"]["images"]["image"],
                            batch["unlabelled"]["images"]["image"]])
  _, clean_stats = method.apply_train(params, state.batch_stats, images,
                                      rng=jax.random.PRNGKey(2))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               aux.batch_stats, clean_stats)
  np.testing.assert_allclose(aux.metrics["perturbation_norm"], 1e-6, rtol=1e-2)
  # r -> 0: the perturbed pass sees the clean batch composition, so the KL vanishes.
  assert float(aux.metrics["unsupervised_loss"]) < 1e-6


def test_vat_entropy_term():
  method, params, batch, state = _setup("vat", entropy_weight=0.5)
  loss, aux = _run(method, params, batch, state)
  m = aux.metrics
  np.testing.assert_allclose(
      loss, m["supervised_loss"] + 2.0 * m["unsupervised_loss"] + 0.5 * m["entropy"],
      rtol=1e-5)
  assert 0 < float(m["entropy"]) <= math.log(NUM_CLASSES) + 1e-5


def test_mixmatch_guesses_match_numpy_sharpening():
  method, params, batch, state = _setup("mixmatch", temperature=0.5)
  _, aux = _run(method, params, batch, state)
  views = batch["unlabelled"]["images"]
  logits, _ = jax.jit(lambda p: method.apply_train(
      p, state.batch_stats, jnp.concatenate([views["augment0"], views["augment1"]]),
      rng=jax.random.PRNGKey(2)))(params)
  logits = np.asarray(logits, np.float64).reshape(2, NUM_UNLABELLED, NUM_CLASSES)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  averaged = np.mean(probs / probs.sum(-1, keepdims=True), axis=0)
  sharpened = averaged ** 2 / np.sum(averaged ** 2, -1, keepdims=True)  # T = 0.5
  np.testing.assert_allclose(aux.metrics["guess_confidence"],
                             sharpened.max(-1).mean(), rtol=1e-4)
  np.testing.assert_allclose(
      aux.metrics["pl_accuracy"],
      np.mean(sharpened.argmax(-1) == np.asarray(batch["unlabelled"]["true_label"])))


@pytest.mark.parametrize("shape,start,length", [("sigmoid", 0, 10), ("linear", 3, 4),
                                                ("none", 2, 0), ("sigmoid", 0, 0)])
def test_rampup_matches_formula(shape, start, length):
  steps = np.arange(20)
  t = np.clip((steps - start) / max(length, 1), 0.0, 1.0) if length else np.ones(20)
  expected = {"sigmoid": np.exp(-5.0 * (1.0 - t) ** 2), "linear": t,
              "none": np.ones(20)}[shape] * (steps >= start)
  got = [float(rampup.rampup_weight(step=s, rampup_steps=length, shape=shape,
                                    start_step=start)) for s in steps]
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_mean_teacher_ema_schedule():
  config = ml_collections.ConfigDict({"ema": {"decay": 0.9, "schedule": "mean_teacher"}})
  decay = setup.ema_decay_fn(config, 100)
  got = [float(decay(jnp.asarray(k))) for k in range(15)]
  np.testing.assert_allclose(got, [min(1 - 1 / (k + 1), 0.9) for k in range(15)],
                             rtol=1e-6)


@pytest.mark.parametrize("name,overrides,match", [
    ("pseudo_label", {"threshold": 1.5}, r"threshold=1.5 must be in \[0, 1\]"),
    ("uda", {"threshold": -0.1}, r"threshold=-0.1 must be in \[0, 1\]"),
    ("uda", {"temperature": 0.0}, "temperature=0.0 must be positive"),
    ("uda", {"tsa": "cosine"}, "tsa='cosine'; use one of none, linear, log, exp"),
    ("pi_model", {"rampup_steps": -1}, "rampup_steps=-1 must be a non-negative"),
    ("mean_teacher", {"rampup": "cosine"}, "rampup='cosine'; known"),
    ("mixmatch", {"num_augmentations": 0}, r"num_augmentations=0 \(K\) must be"),
    ("mixmatch", {"mixup_alpha": -1.0}, "mixup_alpha=-1.0 must be positive"),
    ("vat", {"num_power_iterations": 0}, "num_power_iterations=0 must be"),
    ("vat", {"epsilon": 0.0}, "epsilon=0.0 must be positive"),
    ("vat", {"power_iteration": "exact"}, "power_iteration='exact'; use one of"),
    ("vat", {"unlabelled_weight": -1.0}, "unlabelled_weight=-1.0 must be non-negative"),
    ("ict", {"mixup_alpha": 0.0}, "mixup_alpha=0.0 must be positive"),
])
def test_bad_method_config_fails_in_one_line(name, overrides, match):
  info = methods.DatasetInfo(num_classes=NUM_CLASSES, image_shape=(SIZE, SIZE, 1),
                             num_labelled=NUM_LABELLED, num_unlabelled=NUM_UNLABELLED)
  method = methods.get_method(name)(_config(name, **overrides), info)
  with pytest.raises(ValueError, match=match) as error:
    method.validate()
  assert "\n" not in str(error.value)


def test_missing_views_and_mu_fail_in_one_line():
  info = methods.DatasetInfo(num_classes=NUM_CLASSES, image_shape=(SIZE, SIZE, 1),
                             num_labelled=NUM_LABELLED, num_unlabelled=NUM_UNLABELLED)
  config = _config("uda")
  del config.data.unlabelled_views["strong"]
  with pytest.raises(ValueError, match=r"needs config.data.unlabelled_views.*'strong'"):
    methods.get_method("uda")(config, info).validate()
  config = _config("mixmatch", num_augmentations=3)
  with pytest.raises(ValueError, match=r"missing \['augment2'\]"):
    methods.get_method("mixmatch")(config, info).validate()
  config = _config("pi_model")
  config.mu = 0
  with pytest.raises(ValueError, match="set config.mu > 0"):
    methods.get_method("pi_model")(config, info).validate()


CONFIGS = {"pi_model": pimodel_fmnist, "mean_teacher": meanteacher_fmnist,
           "pseudo_label": pseudolabel_fmnist, "uda": uda_fmnist, "vat": vat_fmnist,
           "mixmatch": mixmatch_fmnist, "remixmatch": remixmatch_fmnist,
           "temporal_ensembling": temporal_ensembling_fmnist, "ict": ict_fmnist}


def test_configs_hold_the_paper_values_and_the_baseline_split():
  mixmatch = mixmatch_fmnist.get_config().method
  assert (mixmatch.num_augmentations, mixmatch.temperature, mixmatch.mixup_alpha,
          mixmatch.unlabelled_weight) == (2, 0.5, 0.75, 75.0)
  assert mixmatch_fmnist.get_config().ema.decay == 0.999
  uda = uda_fmnist.get_config()
  assert (uda.method.threshold, uda.method.temperature, uda.method.unlabelled_weight,
          uda.method.rampup) == (0.8, 0.4, 1.0, "none")
  assert uda.data.unlabelled_views.strong.name == "randaugment"
  vat = vat_fmnist.get_config()
  assert (vat.method.xi, vat.method.num_power_iterations,
          vat.method.entropy_weight) == (1e-6, 1, 0.0)
  assert vat_fmnist.get_config("entmin").method.entropy_weight == 1.0
  teacher = meanteacher_fmnist.get_config()
  assert (teacher.ema.decay, teacher.ema.schedule) == (0.999, "mean_teacher")
  for module in (pimodel_fmnist, meanteacher_fmnist, vat_fmnist):
    assert module.get_config().method.rampup == "sigmoid"
  assert pseudolabel_fmnist.get_config().method.unlabelled_weight == 3.0  # Lee alpha_f
  remix, fixmatch = remixmatch_fmnist.get_config("da_only"), fixmatch_fmnist.get_config()
  assert (remix.method.name, remix.method.distribution_alignment,
          remix.method.da_window) == ("fixmatch", True, 128)
  fixmatch.method.update(distribution_alignment=True, da_window=128)
  assert remix.to_dict() == fixmatch.to_dict()  # FixMatch + DA, nothing else
  baseline = supervised_fmnist.get_config("labels=40,dataset=folder:/x")
  for name, module in CONFIGS.items():
    config = module.get_config("labels=40,dataset=folder:/x")
    for key in set(baseline.data) - {"labelled_views", "unlabelled_views"}:
      assert config.data[key] == baseline.data[key], (name, key)
    assert config.model.name == baseline.model.name
    assert config.mu >= 1


@pytest.fixture(scope="module")
def tiny_fashion_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tiny_fashion")
  rng = np.random.default_rng(0)
  for prefix, counts in (("train", fake_data.TINY_TRAIN_COUNTS),
                         ("t10k", fake_data.TINY_TEST_COUNTS)):
    images, labels = fake_data.tiny_split(rng, counts)
    fake_data.write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images)
    fake_data.write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)
  return str(directory)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def _ema_decay(ema):
  """update -> decay of `config.ema`, written from the schedules' formulas."""
  if ema.get("schedule", "constant") == "mean_teacher":  # min(1 - 1/(k + 1), decay)
    return lambda update: min(1.0 - 1.0 / (update + 1), ema.decay)
  assert ema.get("schedule", "constant") == "constant", ema
  return lambda update: ema.decay


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_runlocal_trains_and_writes_results(name, tiny_fashion_dir, tmp_path, monkeypatch):
  config = CONFIGS[name].get_config("runlocal")
  config.data.update(data_dir=tiny_fashion_dir, image_size=fake_data.TINY_SIZE,
                     label_fraction=None, labels_per_class=2, mean=0.5, std=0.25)
  config.num_train_steps = 3
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 100
  recording = capture.record_train_steps(monkeypatch)
  results = train_and_evaluate(config, str(tmp_path))
  written = json.load(open(tmp_path / "results.json"))
  assert written["metrics"]["step"] == 3
  assert written["config"]["method"]["name"] == config.method.name
  for key in ("eval_top1", "eval_ema_top1"):
    assert 0.0 <= results[key] <= 1.0
  for key in ("train_loss", "train_unsupervised_loss", "train_pl_accuracy"):
    assert np.isfinite(results[key]), key
  # The EMA target (Mean Teacher's teacher, every method's evaluated EMA) follows
  # ema_t = d_t ema_{t-1} + (1 - d_t) theta_t with the config's schedule.
  assert len(recording.states) == 3
  capture.assert_ema_followed(recording.states, _ema_decay(config.ema))
