"""Label Propagation (Iscen et al. 2019): the epoch update and the loss against NumPy,
a runlocal run through the train loop (epoch pass), and an exact resume."""
import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import label_propagation_fmnist
from semissl import methods
from semissl.methods import label_propagation as lp_method
from semissl.methods.base import EpochFeatures
from semissl.training import train_and_evaluate
from tests.data import fake_data
from tests.losses.test_label_propagation import np_affinity, np_normalized, np_weights
from tests.methods.test_classic import tiny_fashion_dir  # noqa: F401  (fixture)
from tests.training import capture

C, NUM_LABELLED, NUM_UNLABELLED, SIZE = 3, 6, 30, 8


def _method(**options):
  config = ml_collections.ConfigDict({
      "mu": 2, "model": {"name": "tiny_resnet", "stem_width": 4, "stage_widths": (4,),
                         "stage_strides": (2,)},
      "method": {"name": "label_propagation", "k": 5, "gamma": 3.0, "alpha": 0.9,
                 "cg_iterations": 200, "block_size": 4, "rampup": "none",
                 "unlabelled_weight": 2.0, **options},
      "data": {"labelled_views": {"image": {}}, "unlabelled_views": {"image": {}}}})
  info = methods.DatasetInfo(num_classes=C, image_shape=(SIZE, SIZE, 1),
                             num_labelled=NUM_LABELLED, num_unlabelled=NUM_UNLABELLED,
                             steps_per_epoch=2)
  method = methods.get_method("label_propagation")(config, info)
  method.validate()
  return method


def _batch(rs):
  images = lambda n: jnp.asarray(rs.normal(size=(n, SIZE, SIZE, 1)), jnp.float32)
  return {"labelled": {"images": {"image": images(4)}, "label": jnp.asarray([0, 1, 2, 1])},
          "unlabelled": {"images": {"image": images(8)},
                         "index": jnp.asarray([5, 0, 29, 3, 7, 2, 9, 4], jnp.int32),
                         "true_label": jnp.asarray([0, 1, 2, 0, 1, 2, 0, 1])}}


def test_epoch_update_matches_the_dense_pipeline():
  """Nodes = unlabelled slots + the labelled images outside the stream; labelled slots
  keep their label with certainty 1; the rest is the dense NumPy diffusion."""
  method = _method()
  rs = np.random.RandomState(0)
  centres = rs.normal(size=(C, 6)) * 3
  truth = rs.randint(0, C, size=NUM_UNLABELLED + 2)
  x = (centres[truth] + rs.normal(size=(len(truth), 6))).astype(np.float32)
  # Labelled 0..3 sit in slots 1, 8, 12, 20; labelled 4, 5 are outside the stream.
  slots = np.array([1, 8, 12, 20, -1, -1])
  labelled_x = np.concatenate([x[slots[:4]], x[NUM_UNLABELLED:]])
  labelled_y = np.concatenate([truth[slots[:4]], truth[NUM_UNLABELLED:]]).astype(np.int32)
  _, store = method.init(jax.random.PRNGKey(0), _batch(rs))
  new = method.epoch_update(store, epoch=3, features=EpochFeatures(
      unlabelled=x[:NUM_UNLABELLED], labelled=labelled_x, labelled_labels=labelled_y,
      labelled_slots=slots))
  nodes = x.astype(np.float64)
  labels = np.full(len(nodes), -1)
  labels[slots[:4]] = labelled_y[:4]
  labels[NUM_UNLABELLED:] = labelled_y[4:]
  y = np.zeros((len(nodes), C))
  y[labels >= 0, labels[labels >= 0]] = 1
  z = np.linalg.solve(np.eye(len(nodes)) - 0.9 * np_normalized(np_affinity(nodes, 5, 3.0)), y)
  ref_p, ref_w, ref_zeta = np_weights(z, labels)
  np.testing.assert_array_equal(np.asarray(new["pseudo_labels"]), ref_p[:NUM_UNLABELLED])
  np.testing.assert_allclose(np.asarray(new["certainty"]), ref_w[:NUM_UNLABELLED], atol=1e-3)
  np.testing.assert_allclose(np.asarray(new["class_weights"]), ref_zeta, rtol=1e-6)
  assert int(new["epoch"]) == 3
  assert jax.tree.map(lambda a: (a.shape, a.dtype), new) == jax.tree.map(
      lambda a: (a.shape, a.dtype), store)


@pytest.mark.parametrize("epoch", [-1, 2])
def test_loss_matches_numpy(epoch):
  """L = CE(labelled) + w L_w, L_w = mean_i zeta_{y_i} w_i CE(u_i, y_i) with y_i, w_i the
  store's rows at the batch's slots; before the first propagation L_w = 0."""
  method = _method()
  rs = np.random.RandomState(1)
  batch = _batch(rs)
  variables, _ = method.init(jax.random.PRNGKey(0), batch)
  store = {"pseudo_labels": jnp.asarray(rs.randint(0, C, NUM_UNLABELLED), jnp.int32),
           "certainty": jnp.asarray(rs.uniform(size=NUM_UNLABELLED), jnp.float32),
           "class_weights": jnp.asarray([0.5, 1.0, 2.0], jnp.float32),
           "epoch": jnp.asarray(epoch, jnp.int32)}
  state = types.SimpleNamespace(step=jnp.asarray(0), batch_stats=variables["batch_stats"],
                                method_state=store)
  rng = jax.random.PRNGKey(2)
  loss, aux = method.loss_fn(variables["params"], batch, state=state, rng=rng)
  images = jnp.concatenate([batch["labelled"]["images"]["image"],
                            batch["unlabelled"]["images"]["image"]])
  logits, _ = method.apply_train(variables["params"], variables["batch_stats"], images,
                                 rng=rng)
  logits = np.asarray(logits, np.float64)
  log_p = logits - logits.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  sup = -np.mean(log_p[np.arange(4), np.asarray(batch["labelled"]["label"])])
  idx = np.asarray(batch["unlabelled"]["index"])
  pl = np.asarray(store["pseudo_labels"])[idx]
  w = np.asarray(store["certainty"])[idx] * np.asarray(store["class_weights"])[pl]
  unsup = np.mean(w * -log_p[4 + np.arange(8), pl]) * (epoch >= 0)
  np.testing.assert_allclose(float(loss), sup + 2.0 * unsup, rtol=1e-5)
  np.testing.assert_allclose(float(aux.metrics["pl_accuracy"]),
                             np.mean(pl == np.asarray(batch["unlabelled"]["true_label"])))
  assert aux.method_state is store


@pytest.mark.parametrize("key, value, match", [
    ("k", 30, r"method.k=30 must be an int in \[1, 30\)"),
    ("alpha", 1.0, r"alpha=1.0 must be in \[0, 1\)"),
    ("warmup_epochs", -1, r"warmup_epochs=-1"),
    ("cg_iterations", 0, r"cg_iterations=0")])
def test_bad_options_are_one_line_errors(key, value, match):
  with pytest.raises(ValueError, match=match):
    _method(**{key: value})


def test_every_option_has_a_default():
  config = label_propagation_fmnist.get_config()
  for key in config.method:
    if key != "name":
      assert key in lp_method.LabelPropagation.defaults, key
  assert (config.method.k, config.method.gamma, config.method.alpha) == (50, 3.0, 0.99)


def _config(tiny_dir, steps):
  c = label_propagation_fmnist.get_config("runlocal")
  c.data.update(data_dir=tiny_dir, image_size=fake_data.TINY_SIZE, label_fraction=None,
                labels_per_class=2, mean=0.5, std=0.25)
  c.num_train_steps, c.eval_every_steps = steps, 0
  c.checkpoint_every_steps, c.log_every_steps = 100, 1
  return c


def _train_rows(workdir):
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return {r["step"]: r for r in rows if "train_loss" in r}


def _record_updates(monkeypatch):
  """Epochs of every `epoch_update` call (the real update still runs)."""
  calls = []
  original = lp_method.LabelPropagation.epoch_update

  def recording(self, method_state, *, epoch, features):
    calls.append(epoch)
    assert len(features.unlabelled) == self.info.num_unlabelled
    return original(self, method_state, epoch=epoch, features=features)

  monkeypatch.setattr(lp_method.LabelPropagation, "epoch_update", recording)
  return calls


def test_runlocal_propagates_each_epoch_after_warmup(tiny_fashion_dir, tmp_path,  # noqa: F811
                                                     monkeypatch):
  """125 train images, 48 unlabelled per step: 2 steps an epoch; warm-up 1 epoch, so
  propagations before steps 3 and 5 (at steps 2 and 4) and L_w on from step 3."""
  calls = _record_updates(monkeypatch)
  results = train_and_evaluate(_config(tiny_fashion_dir, 6), str(tmp_path))
  assert calls == [1, 2]
  rows = _train_rows(tmp_path)
  assert [rows[s]["train_propagated"] for s in range(1, 7)] == [0, 0, 1, 1, 1, 1]
  assert rows[2]["train_unsupervised_loss"] == 0 and rows[3]["train_unsupervised_loss"] > 0
  assert 0 < rows[6]["train_certainty"] <= 1
  assert 0.0 <= results["eval_top1"] <= 1.0 and np.isfinite(results["train_loss"])


def test_resume_is_exact(tiny_fashion_dir, tmp_path, monkeypatch):  # noqa: F811
  """A crash after the step-3 (mid-epoch) or step-4 (epoch boundary: that checkpoint
  holds the state before epoch 2's propagation) checkpoint: the resumed run
  propagates once per remaining epoch and logs what the straight run logged."""
  calls = _record_updates(monkeypatch)
  config = _config(tiny_fashion_dir, 6)
  config.checkpoint_every_steps, config.keep_checkpoints = 1, 10
  straight_dir = tmp_path / "straight"
  train_and_evaluate(config, str(straight_dir))
  assert calls == [1, 2]
  straight = _train_rows(straight_dir)
  for stop in (3, 4):
    workdir = tmp_path / f"resumed_{stop}"
    capture.crashed_copy(straight_dir, workdir, stop=stop, last=6)
    calls.clear()
    train_and_evaluate(config, str(workdir))
    assert calls == [2], (stop, calls)
    resumed = _train_rows(workdir)
    for step in range(stop + 1, 7):
      for key in ("train_loss", "train_unsupervised_loss", "train_certainty",
                  "train_pl_accuracy", "train_loss_weight", "train_grad_norm"):
        np.testing.assert_allclose(resumed[step][key], straight[step][key], rtol=1e-6,
                                   err_msg=f"{key} at step {step} (stop {stop})")
