"""ReMixMatch as a method: the stop-gradient on the guesses, the loss it reports, its
state (DA window, CTAugment bins), its configs, and an exact resume of the bins."""
import json
import os
import shutil
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import fixmatch_fmnist, remixmatch_fmnist
from semissl import methods
from semissl.methods import ctaugment, remixmatch
from semissl.training import checkpointing, train_and_evaluate
from tests.data import fake_data
from tests.methods.test_classic import tiny_fashion_dir  # noqa: F401  (fixture)

NUM_CLASSES, SIZE, K, NUM_LABELLED, NUM_UNLABELLED = 3, 8, 2, 4, 4
WEIGHTS = {"unlabelled_weight": 1.5, "pre_mixup_weight": 0.5, "rotation_weight": 0.5}


def _setup(**overrides):
  views = ("weak",) + remixmatch.strong_view_names(K)
  config = ml_collections.ConfigDict({
      "mu": 1, "model": {"name": "tiny_resnet", "stem_width": 4, "stage_widths": (8,),
                         "stage_strides": (2,)},
      "method": {"name": "remixmatch", "num_strong": K, "da_window": 4, "rampup": "none",
                 **WEIGHTS, **overrides},
      "data": {"labelled_views": {"image": {}},
               "unlabelled_views": {name: {} for name in views}}})
  info = methods.DatasetInfo(num_classes=NUM_CLASSES, image_shape=(SIZE, SIZE, 1),
                             num_labelled=8, num_unlabelled=16,
                             labelled_labels=np.arange(8) % NUM_CLASSES,
                             mean=(0.5,), std=(0.25,))
  method = methods.get_method("remixmatch")(config, info)
  method.validate()
  rs = np.random.RandomState(0)
  images = lambda n: jnp.asarray(rs.uniform(-2, 2, (n, SIZE, SIZE, 1)), jnp.float32)  # noqa: E731
  batch = {"labelled": {"images": {"image": images(NUM_LABELLED)},
                        "label": jnp.arange(NUM_LABELLED) % NUM_CLASSES},
           "unlabelled": {"images": {name: images(NUM_UNLABELLED) for name in views},
                          "true_label": jnp.arange(NUM_UNLABELLED) % NUM_CLASSES}}
  variables, method_state = method.init(jax.random.PRNGKey(0), batch)
  state = types.SimpleNamespace(step=jnp.asarray(0), batch_stats=variables["batch_stats"],
                                method_state=method_state)
  return method, variables, batch, state


def test_the_weak_view_reaches_the_loss_only_through_stop_gradient_guesses():
  """The weak view only makes the guesses: d loss / d weak = 0, while the strong views
  (trained on) and the guessing network's parameters (trained through the other
  passes) do get gradients."""
  method, variables, batch, state = _setup()

  def loss_of(images):
    new = {**batch, "unlabelled": {**batch["unlabelled"],
                                   "images": {**batch["unlabelled"]["images"], **images}}}
    return method.loss_fn(variables["params"], new, state=state,
                          rng=jax.random.PRNGKey(1))[0]

  grads = jax.jit(jax.grad(loss_of))({"weak": batch["unlabelled"]["images"]["weak"],
                             "strong0": batch["unlabelled"]["images"]["strong0"]})
  np.testing.assert_array_equal(grads["weak"], np.zeros_like(grads["weak"]))
  assert np.any(np.asarray(grads["strong0"]) != 0)
  # The bins and the DA window are state, never differentiated into.
  grad_state = jax.jit(jax.grad(lambda s: method.loss_fn(
      variables["params"], batch, state=types.SimpleNamespace(**{**vars(state),
                                                                 "method_state": s}),
      rng=jax.random.PRNGKey(1))[0], allow_int=True))(state.method_state)
  np.testing.assert_array_equal(grad_state["cta"], np.zeros_like(grad_state["cta"]))


def test_reported_losses_compose_the_loss_and_the_state_moves():
  method, variables, batch, state = _setup()
  loss, aux = jax.jit(lambda p: method.loss_fn(p, batch, state=state,
                                               rng=jax.random.PRNGKey(2)))(
      variables["params"])
  m = {key: float(value) for key, value in aux.metrics.items()}
  want = (m["supervised_loss"] + WEIGHTS["unlabelled_weight"] * m["unsupervised_loss"]
          + WEIGHTS["pre_mixup_weight"] * m["pre_mixup_loss"]
          + WEIGHTS["rotation_weight"] * m["rotation_loss"])
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  assert m["unsupervised_weight"] == WEIGHTS["unlabelled_weight"]
  # One batch mean in the DA window; the probes moved at most B x depth bins, each
  # from 1 toward its proximity (rho m + (1 - rho) w < 1 for w < 1).
  assert int(aux.method_state["da"].count) == 1
  cta = np.asarray(aux.method_state["cta"])
  moved = cta != 1.0
  assert 1 <= moved.sum() <= NUM_LABELLED * method.option("cta_depth")
  assert np.all(cta[moved] < 1.0) and np.all(cta[moved] >= method.option("cta_decay"))
  assert 0.0 <= m["probe_proximity"] <= 1.0


def test_strong_views_stay_normalised_like_the_pipeline():
  """CTAugment works on [0, 1] pixels: images are un-normalised with the pipeline's
  mean / std, transformed, and normalised back (identity policy: unchanged)."""
  method, _, batch, _ = _setup()
  images = batch["unlabelled"]["images"]["strong0"]
  pixels = jnp.clip(images * 0.25 + 0.5, 0.0, 1.0)
  ones = jnp.zeros((images.shape[0], 2), jnp.int32)  # identity, identity
  policy = ctaugment.Policy(ones, ones, jnp.zeros((images.shape[0], 2)))
  norm = dict(mean=method.info.mean, std=method.info.std)
  out = ctaugment.augment_normalised(images, policy=policy, rng=jax.random.PRNGKey(0),
                                     **norm)
  np.testing.assert_allclose(out, (pixels - 0.5) / 0.25, atol=1e-6)
  cut = np.asarray(ctaugment.augment_normalised(
      images, policy=policy, rng=jax.random.PRNGKey(0), final_cutout=True,
      **norm)) * 0.25 + 0.5
  grey = np.isclose(cut, 127 / 255, atol=1e-6) & ~np.isclose(np.asarray(pixels), 127 / 255)
  assert grey.any(axis=(1, 2, 3)).all()  # every strong view has its Cutout square


@pytest.mark.parametrize("key, value, match", [
    ("num_strong", 0, r"num_strong=0 must be an integer >= 1"),
    ("cta_threshold", 1.5, r"cta_threshold=1.5 must be in \[0, 1\]"),
    ("rotation_weight", -1.0, r"rotation_weight=-1.0 must be non-negative"),
    ("label_smoothing", 0.1, r"label_smoothing: ReMixMatch's labelled targets")])
def test_bad_options_are_one_line_errors(key, value, match):
  with pytest.raises(ValueError, match=match) as info:
    _setup(**{key: value})
  assert "\n" not in str(info.value)


def test_configs_full_method_and_da_only_variant():
  config = remixmatch_fmnist.get_config()
  m = config.method
  assert m.name == "remixmatch"
  assert (m.temperature, m.mixup_alpha, m.unlabelled_weight, m.pre_mixup_weight,
          m.rotation_weight, m.da_window, m.cta_decay, m.cta_threshold) == (
              0.5, 0.75, 1.5, 0.5, 0.5, 128, 0.99, 0.8)
  assert set(config.data.unlabelled_views) == {"weak", *remixmatch.strong_view_names(
      m.num_strong)}
  assert remixmatch_fmnist.get_config("k=8").method.num_strong == 8
  assert config.mu == 1 and config.num_train_steps == fixmatch_fmnist.get_config(
  ).num_train_steps
  # da_only: configs/fixmatch_fmnist.py with ReMixMatch's DA, nothing else (the
  # stored 'remixmatch_da (fixmatch + DA)' runs).
  for arg in ("da_only", "labels=40,da_only", "da_only,runlocal,labels=10pct"):
    variant = remixmatch_fmnist.get_config(arg)
    fixmatch = fixmatch_fmnist.get_config(
        ",".join(a for a in arg.split(",") if a != "da_only") or None)
    fixmatch.method.update(distribution_alignment=True, da_window=128)
    assert variant.to_dict() == fixmatch.to_dict(), arg


def test_resume_restores_the_ctaugment_bins_exactly(tiny_fashion_dir, tmp_path):  # noqa: F811
  """A run of 4 steps and its copy cut back to the step-2 checkpoint, then resumed:
  the same bins, DA window and logged losses at step 4 (a resume that re-initialised
  the bins would not match)."""
  config = remixmatch_fmnist.get_config("runlocal,k=2")
  config.data.update(data_dir=tiny_fashion_dir, image_size=fake_data.TINY_SIZE,
                     label_fraction=None, labels_per_class=2, mean=0.5, std=0.25)
  config.num_train_steps, config.eval_every_steps = 4, 0
  config.checkpoint_every_steps, config.log_every_steps, config.keep_checkpoints = 2, 1, 5
  straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
  train_and_evaluate(config, str(straight_dir))
  shutil.copytree(straight_dir, resumed_dir)
  shutil.rmtree(resumed_dir / "checkpoints" / "4")
  os.remove(resumed_dir / "results.json")
  halfway = checkpointing.restore_collections(str(resumed_dir),
                                              ("method_state",))["method_state"]
  train_and_evaluate(config, str(resumed_dir))
  straight, resumed = (checkpointing.restore_collections(
      str(workdir), ("method_state",))["method_state"]
                       for workdir in (straight_dir, resumed_dir))
  assert np.any(np.asarray(halfway["cta"]) != 1.0)
  assert np.any(np.asarray(straight["cta"]) != np.asarray(halfway["cta"]))
  np.testing.assert_array_equal(resumed["cta"], straight["cta"])
  jax.tree.map(np.testing.assert_array_equal, resumed["da"], straight["da"])

  def train_rows(workdir):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {row["step"]: row for row in rows if "train_loss" in row}

  straight_rows, resumed_rows = train_rows(straight_dir), train_rows(resumed_dir)
  for step in (3, 4):
    for key in ("train_loss", "train_cta_mean_weight", "train_probe_proximity"):
      np.testing.assert_allclose(resumed_rows[step][key], straight_rows[step][key],
                                 rtol=1e-6, err_msg=f"{key} at step {step}")
