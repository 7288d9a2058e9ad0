"""Temporal Ensembling: the loss and the per-example store against NumPy (Laine & Aila
2017, Algorithm 2), and an exact resume of the store."""
import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import temporal_ensembling_fmnist
from semissl import methods
from semissl.training import train_and_evaluate
from tests.methods.test_classic import tiny_fashion_dir  # noqa: F401  (fixture)
from tests.data import fake_data

K, NUM_LABELLED, NUM_UNLABELLED, SIZE, ALPHA = 4, 4, 12, 8, 0.6


def _setup():
  config = ml_collections.ConfigDict({
      "mu": 2, "model": {"name": "tiny_resnet", "stem_width": 4, "stage_widths": (4,),
                         "stage_strides": (2,)},
      "method": {"name": "temporal_ensembling", "alpha": ALPHA, "unlabelled_weight": 3.0,
                 "rampup": "none"},
      "data": {"labelled_views": {"image": {}}, "unlabelled_views": {"image": {}}}})
  info = methods.DatasetInfo(num_classes=K, image_shape=(SIZE, SIZE, 1),
                             num_labelled=NUM_LABELLED, num_unlabelled=NUM_UNLABELLED)
  method = methods.get_method("temporal_ensembling")(config, info)
  method.validate()
  rs = np.random.RandomState(0)
  images = lambda n: jnp.asarray(rs.normal(size=(n, SIZE, SIZE, 1)), jnp.float32)
  batch = {"labelled": {"images": {"image": images(NUM_LABELLED)},
                        "label": jnp.arange(NUM_LABELLED) % K},
           "unlabelled": {"images": {"image": images(8)},
                          "index": jnp.asarray([5, 0, 11, 3, 7, 2, 9, 4], jnp.int32),
                          "true_label": jnp.arange(8) % K}}
  variables, store = method.init(jax.random.PRNGKey(0), batch)
  return method, variables, batch, store


def _np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _step(method, variables, batch, store):
  state = types.SimpleNamespace(step=jnp.asarray(0), batch_stats=variables["batch_stats"],
                                method_state=store)
  loss, aux = jax.jit(lambda p: method.loss_fn(p, batch, state=state,
                                               rng=jax.random.PRNGKey(1)))(variables["params"])
  images = jnp.concatenate([batch["labelled"]["images"]["image"],
                            batch["unlabelled"]["images"]["image"]])
  logits, _ = method.apply_train(variables["params"], variables["batch_stats"], images,
                                 rng=jax.random.PRNGKey(1))
  return loss, aux, np.asarray(logits[NUM_LABELLED:], np.float64)


def test_store_starts_empty_and_first_step_has_no_target():
  method, variables, batch, store = _setup()
  assert store["ensemble"].shape == (NUM_UNLABELLED, K) and not np.any(store["ensemble"])
  assert store["updates"].shape == (NUM_UNLABELLED,) and not np.any(store["updates"])
  loss, aux, logits = _step(method, variables, batch, store)
  assert float(aux.metrics["unsupervised_loss"]) == 0.0  # no example has a target yet
  slots = np.asarray(batch["unlabelled"]["index"])
  want = np.zeros((NUM_UNLABELLED, K))
  want[slots] = (1 - ALPHA) * _np_softmax(logits)
  np.testing.assert_allclose(aux.method_state["ensemble"], want, rtol=1e-5, atol=1e-7)
  counts = np.zeros(NUM_UNLABELLED, np.int32)
  counts[slots] = 1
  np.testing.assert_array_equal(aux.method_state["updates"], counts)
  np.testing.assert_allclose(float(aux.metrics["ensemble_coverage"]), 8 / NUM_UNLABELLED)


def test_loss_uses_the_bias_corrected_ensemble_of_earlier_steps():
  method, variables, batch, _ = _setup()
  rs = np.random.RandomState(3)
  ensemble = rs.dirichlet(np.ones(K), NUM_UNLABELLED).astype(np.float32) * 0.5
  updates = np.array([0, 2, 1, 3, 0, 1, 2, 0, 4, 1, 0, 2], np.int32)
  store = {"ensemble": jnp.asarray(ensemble), "updates": jnp.asarray(updates)}
  loss, aux, logits = _step(method, variables, batch, store)

  slots = np.asarray(batch["unlabelled"]["index"])
  t = updates[slots].astype(np.float64)
  valid = t >= 1
  assert 0 < valid.sum() < len(slots)  # some with a target, some without
  target = ensemble[slots] / (1 - ALPHA ** np.maximum(t, 1))[:, None]
  probs = _np_softmax(logits)
  per_example = np.mean((probs - target) ** 2, axis=-1)
  want = (per_example * valid).sum() / valid.sum()
  np.testing.assert_allclose(float(aux.metrics["unsupervised_loss"]), want, rtol=1e-4)
  np.testing.assert_allclose(
      float(loss), float(aux.metrics["supervised_loss"]) + 3.0 * want, rtol=1e-4)

  new_ensemble, new_updates = ensemble.astype(np.float64).copy(), updates.copy()
  new_ensemble[slots] = ALPHA * ensemble[slots] + (1 - ALPHA) * probs
  new_updates[slots] += 1
  np.testing.assert_allclose(aux.method_state["ensemble"], new_ensemble, rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_array_equal(aux.method_state["updates"], new_updates)


def test_target_is_a_stop_gradient():
  method, variables, batch, _ = _setup()
  store = {"ensemble": jnp.full((NUM_UNLABELLED, K), 0.1), "updates":
           jnp.ones((NUM_UNLABELLED,), jnp.int32)}
  state = types.SimpleNamespace(step=jnp.asarray(0), batch_stats=variables["batch_stats"],
                                method_state=store)
  grad = jax.grad(lambda s: method.loss_fn(
      variables["params"], batch, state=types.SimpleNamespace(**{**vars(state),
                                                                 "method_state": s}),
      rng=jax.random.PRNGKey(1))[0], allow_int=True)(store)
  assert not np.any(np.asarray(grad["ensemble"]))


@pytest.mark.parametrize("bad, match", [(1.0, r"alpha=1.0 must be in \[0, 1\)"),
                                        (-0.1, r"alpha=-0.1 must be in \[0, 1\)")])
def test_bad_alpha_is_a_one_line_error(bad, match):
  method, *_ = _setup()
  method.config.method.alpha = bad
  with pytest.raises(ValueError, match=match):
    method.validate()


def test_resume_continues_the_store_exactly(tiny_fashion_dir, tmp_path):  # noqa: F811
  def config(steps):
    c = temporal_ensembling_fmnist.get_config("runlocal")
    c.data.update(data_dir=tiny_fashion_dir, image_size=fake_data.TINY_SIZE,
                  label_fraction=None, labels_per_class=2, mean=0.5, std=0.25)
    c.num_train_steps, c.eval_every_steps = steps, 0
    c.checkpoint_every_steps, c.log_every_steps = 2, 1
    c.method.rampup = "none"
    return c

  def last_train_metrics(workdir):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return [r for r in rows if "train_loss" in r][-1]

  train_and_evaluate(config(4), str(tmp_path / "straight"))
  train_and_evaluate(config(2), str(tmp_path / "resumed"))
  train_and_evaluate(config(4), str(tmp_path / "resumed"),
                     allow_config_change=("num_train_steps",))
  straight, resumed = (last_train_metrics(tmp_path / name) for name in ("straight", "resumed"))
  assert straight["step"] == resumed["step"] == 4
  assert straight["train_ensemble_coverage"] > 0
  for key in ("train_loss", "train_unsupervised_loss", "train_ensemble_coverage",
              "train_pl_mask_rate"):
    np.testing.assert_allclose(resumed[key], straight[key], rtol=1e-6, err_msg=key)
