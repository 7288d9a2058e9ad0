"""DivideMix: the co-divide epoch update against sklearn, the warm-up and divided losses
against NumPy, and a runlocal run on noisy labels through the train loop (epoch pass)
and its exact resume."""
import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import dividemix_fmnist
from semissl import methods
from semissl.methods import dividemix as dm_method
from semissl.methods.base import EpochFeatures
from semissl.training import train_and_evaluate
from tests.data import fake_data
from tests.losses.test_dividemix import np_sharpen, np_softmax, sklearn_clean_probability
from tests.methods.test_classic import tiny_fashion_dir  # noqa: F401  (fixture)
from tests.training import capture

C, N, SIZE, B = 3, 40, 8, 6


def _method(**options):
  config = ml_collections.ConfigDict({
      "mu": 0, "model": {"name": "tiny_resnet", "stem_width": 4, "stage_widths": (4,),
                         "stage_strides": (2,)},
      "method": {"name": "dividemix", "rampup": "none", "unlabelled_weight": 3.0,
                 "regularisation_weight": 0.5, "mixup_alpha": 4.0, "temperature": 0.5,
                 **options},
      "data": {"labelled_views": {"augment0": {}, "augment1": {}}, "unlabelled_views": {}}})
  info = methods.DatasetInfo(num_classes=C, image_shape=(SIZE, SIZE, 1), num_labelled=N,
                             num_unlabelled=N, steps_per_epoch=2)
  method = methods.get_method("dividemix")(config, info)
  method.validate()
  return method


def _batch(rs, *, with_true_labels=True):
  images = lambda: jnp.asarray(rs.normal(size=(B, SIZE, SIZE, 1)), jnp.float32)  # noqa: E731
  labels = jnp.asarray(rs.randint(0, C, B), jnp.int32)
  labelled = {"images": {"augment0": images(), "augment1": images()}, "label": labels,
              "index": jnp.asarray(rs.choice(N, B, replace=False), jnp.int32)}
  if with_true_labels:
    labelled["true_label"] = jnp.where(jnp.arange(B) % 2 == 0, labels, (labels + 1) % C)
  return {"labelled": labelled}


def test_epoch_update_co_divides_with_sklearn_gmms():
  """clean_prob[0] (network 1's division) is the GMM posterior of network 2's losses and
  vice versa; losses are the CE of each network's logits against the noisy labels."""
  method = _method()
  rs = np.random.RandomState(0)
  labels = rs.randint(0, C, N).astype(np.int32)
  logits = rs.normal(size=(N, 2 * C)).astype(np.float32) * 3
  _, store = method.init(jax.random.PRNGKey(0), _batch(rs))
  new = method.epoch_update(store, epoch=2, features=EpochFeatures(
      unlabelled=np.zeros((0, 2 * C), np.float32), labelled=logits,
      labelled_labels=labels, labelled_slots=np.full(N, -1)))
  expected = []
  for k in range(2):
    p = np_softmax(logits[:, k * C:(k + 1) * C].astype(np.float64))
    ce = -np.log(p[np.arange(N), labels])
    expected.append(sklearn_clean_probability(ce, 10, 5e-4)[0])
  np.testing.assert_allclose(np.asarray(new["clean_prob"]), np.stack(expected[::-1]),
                             atol=2e-4)
  assert int(new["epoch"]) == 2
  assert jax.tree.map(lambda a: (a.shape, a.dtype), new) == jax.tree.map(
      lambda a: (a.shape, a.dtype), store)


def _state(method, variables, store):
  return types.SimpleNamespace(step=jnp.asarray(0), batch_stats=variables["batch_stats"],
                               method_state=store)


def _flat(tree):
  return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])


def _np_ce(logits, labels):
  p = np_softmax(np.asarray(logits, np.float64))
  return -np.log(p[np.arange(len(labels)), labels])


def test_warmup_loss_is_the_sum_of_both_networks_ce():
  method = _method()
  rs = np.random.RandomState(1)
  batch = _batch(rs)
  variables, store = method.init(jax.random.PRNGKey(0), batch)
  rng = jax.random.PRNGKey(3)
  loss, aux = method.loss_fn(variables["params"], batch, state=_state(method, variables, store),
                             rng=rng)
  labels = np.asarray(batch["labelled"]["label"])
  expected = 0.0
  for net in dm_method.NETS:
    logits, _ = method.apply_train(variables["params"][net], variables["batch_stats"][net],
                                   batch["labelled"]["images"]["augment0"], rng=None)
    expected += np.mean(_np_ce(logits, labels))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(aux.metrics["warmup"]) == 1.0
  assert float(aux.metrics["label_noise_rate"]) == 0.5
  # The two networks start from different weights.
  assert not np.allclose(_flat(variables["params"]["net1"]["head"]),
                         _flat(variables["params"]["net2"]["head"]))


@pytest.mark.parametrize("with_true_labels", [True, False])
def test_divided_loss_matches_numpy(with_true_labels):
  """After a co-divide: per network k, X = rows with w > 0.5 (w from the store row k at
  the batch's 'index'), co-refined targets on X, co-guessed on U, MixUp of both views
  with one lambda' and one shuffle, L_X + lambda_u L_U + lambda_r L_reg (NumPy), summed
  over the networks. The rng use mirrors the method's: split(rng, 2) per network,
  then (guess, permutation, ratio, train)."""
  method = _method()
  rs = np.random.RandomState(2)
  batch = _batch(rs, with_true_labels=with_true_labels)
  variables, store = method.init(jax.random.PRNGKey(0), batch)
  clean_prob = rs.uniform(size=(2, N)).astype(np.float32)
  store = {"clean_prob": jnp.asarray(clean_prob), "epoch": jnp.asarray(1, jnp.int32)}
  rng = jax.random.PRNGKey(4)
  loss, aux = method.loss_fn(variables["params"], batch,
                             state=_state(method, variables, store), rng=rng)

  labelled = batch["labelled"]
  views = [np.asarray(labelled["images"][v]) for v in ("augment0", "augment1")]
  labels, index = np.asarray(labelled["label"]), np.asarray(labelled["index"])
  onehot = np.eye(C)[labels]
  expected, clean_rates = 0.0, []
  for k, net in enumerate(dm_method.NETS):
    other = dm_method.NETS[1 - k]
    _, perm_rng, ratio_rng, _ = jax.random.split(jax.random.split(rng, 2)[k], 4)
    w = clean_prob[k][index].astype(np.float64)
    clean = w > 0.5
    clean_rates.append(clean.mean())
    both = jnp.concatenate(views)
    own, _ = method.apply_train(variables["params"][net], variables["batch_stats"][net],
                                both, rng=None)
    theirs = method.model.apply({"params": variables["params"][other],
                                 "batch_stats": variables["batch_stats"][other]},
                                both, train=False)
    p_own = np_softmax(np.asarray(own, np.float64)).reshape(2, B, C)
    p_theirs = np_softmax(np.asarray(theirs, np.float64)).reshape(2, B, C)
    refined = np_sharpen(w[:, None] * onehot + (1 - w[:, None]) * p_own.mean(0), 0.5)
    guessed = np_sharpen((p_own.sum(0) + p_theirs.sum(0)) / 4, 0.5)
    targets = np.tile(np.where(clean[:, None], refined, guessed), (2, 1))
    perm = np.asarray(jax.random.permutation(perm_rng, 2 * B))
    lam = float(jax.random.beta(ratio_rng, 4.0, 4.0))
    lam = max(lam, 1 - lam)
    images = np.concatenate(views)
    mixed = lam * images + (1 - lam) * images[perm]
    mixed_targets = lam * targets + (1 - lam) * targets[perm]
    logits, _ = method.apply_train(variables["params"][net],
                                   variables["batch_stats"][net], jnp.asarray(mixed),
                                   rng=None)
    p = np_softmax(np.asarray(logits, np.float64))
    rows_clean = np.tile(clean, 2)
    ce = -np.sum(mixed_targets * np.log(p), -1)
    sq = np.mean((mixed_targets - p) ** 2, -1)
    l_x = ce[rows_clean].mean() if rows_clean.any() else 0.0
    l_u = sq[~rows_clean].mean() if (~rows_clean).any() else 0.0
    l_reg = np.sum(np.log((1 / C) / p.mean(0))) / C
    expected += l_x + 3.0 * l_u + 0.5 * l_reg
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  assert float(aux.metrics["warmup"]) == 0.0
  np.testing.assert_allclose(float(aux.metrics["clean_rate"]), np.mean(clean_rates),
                             rtol=1e-6)
  assert ("label_noise_rate" in aux.metrics) == with_true_labels


def test_gradients_reach_both_networks():
  method = _method()
  rs = np.random.RandomState(5)
  batch = _batch(rs)
  variables, _ = method.init(jax.random.PRNGKey(0), batch)
  store = {"clean_prob": jnp.asarray(rs.uniform(size=(2, N)), jnp.float32),
           "epoch": jnp.asarray(1, jnp.int32)}
  grads = jax.grad(lambda p: method.loss_fn(
      p, batch, state=_state(method, variables, store), rng=jax.random.PRNGKey(1))[0])(
          variables["params"])
  for net in dm_method.NETS:
    assert np.abs(_flat(grads[net]["head"])).sum() > 0


@pytest.mark.parametrize("key, value, match", [
    ("p_threshold", 1.5, r"p_threshold=1.5 must be in \[0, 1\]"),
    ("warmup_epochs", -1, r"warmup_epochs=-1"),
    ("gmm_iterations", 0, r"gmm_iterations=0"),
    ("temperature", 0.0, r"temperature=0.0 must be positive")])
def test_bad_options_are_one_line_errors(key, value, match):
  with pytest.raises(ValueError, match=match):
    _method(**{key: value})


@pytest.mark.parametrize("variant, noise, weight", [("noise=0.2", 0.2, 0.0), ("", 0.5, 25.0)])
def test_config_variants(variant, noise, weight):
  config = dividemix_fmnist.get_config(variant or None)
  assert (config.data.label_noise, config.method.unlabelled_weight) == (noise, weight)
  assert config.data.label_fraction == 1.0
  for key in config.method:
    if key != "name":
      assert key in dm_method.DivideMix.defaults, key
  with pytest.raises(ValueError, match="noise=0.3"):
    dividemix_fmnist.get_config("noise=0.3")


def _record_updates(monkeypatch):
  """Epochs of every `epoch_update` call (the real update still runs)."""
  calls = []
  original = dm_method.DivideMix.epoch_update

  def recording(self, method_state, *, epoch, features):
    calls.append(epoch)
    assert features.labelled.shape == (self.info.num_labelled, 2 * 10)
    assert len(features.unlabelled) == 0  # epoch_pass_parts = ('labelled',)
    return original(self, method_state, epoch=epoch, features=features)

  monkeypatch.setattr(dm_method.DivideMix, "epoch_update", recording)
  return calls


def _runlocal_config(data_dir):
  config = dividemix_fmnist.get_config("runlocal")
  config.data.update(data_dir=data_dir, image_size=fake_data.TINY_SIZE, mean=0.5, std=0.25)
  config.batch_size, config.num_train_steps = 32, 7
  config.eval_every_steps, config.checkpoint_every_steps, config.log_every_steps = 0, 100, 1
  return config


def _train_rows(workdir):
  return {r["step"]: r for r in map(json.loads, open(workdir / "metrics.jsonl"))
          if "train_loss" in r}


def test_runlocal_co_divides_each_epoch_after_warmup(tiny_fashion_dir, tmp_path,  # noqa: F811
                                                     monkeypatch):
  """125 noisy-labelled train images, B = 32: 3 steps an epoch; warm-up 1 epoch, so the
  co-divide runs before steps 4 and 7 (epochs 1, 2) and the divided loss from step 4."""
  calls = _record_updates(monkeypatch)
  results = train_and_evaluate(_runlocal_config(tiny_fashion_dir), str(tmp_path))
  assert calls == [1, 2]
  rows = _train_rows(tmp_path)
  assert [rows[s]["train_warmup"] for s in range(1, 8)] == [1, 1, 1, 0, 0, 0, 0]
  assert all(0 < rows[s]["train_label_noise_rate"] < 1 for s in range(1, 8))
  assert all(0 <= rows[s]["train_clean_rate"] <= 1 for s in range(4, 8))
  assert 0.0 <= results["eval_top1"] <= 1.0 and np.isfinite(results["train_loss"])


def test_resume_is_exact(tiny_fashion_dir, tmp_path, monkeypatch):  # noqa: F811
  """A crash after the step-5 checkpoint (mid-epoch, divided phase: the division of epoch
  1 is method state) or the step-3 one (epoch boundary, still warming up): the resumed
  run co-divides once per remaining epoch and logs what the straight run logged."""
  calls = _record_updates(monkeypatch)
  config = _runlocal_config(tiny_fashion_dir)
  config.checkpoint_every_steps, config.keep_checkpoints = 1, 10
  straight_dir = tmp_path / "straight"
  train_and_evaluate(config, str(straight_dir))
  assert calls == [1, 2]
  straight = _train_rows(straight_dir)
  for stop, expected_calls in ((5, [2]), (3, [1, 2])):
    workdir = tmp_path / f"resumed_{stop}"
    capture.crashed_copy(straight_dir, workdir, stop=stop, last=7)
    calls.clear()
    train_and_evaluate(config, str(workdir))
    assert calls == expected_calls, (stop, calls)
    resumed = _train_rows(workdir)
    for step in range(stop + 1, 8):
      for key in ("train_loss", "train_warmup", "train_clean_rate", "train_grad_norm"):
        if key in straight[step]:
          np.testing.assert_allclose(resumed[step][key], straight[step][key], rtol=1e-6,
                                     err_msg=f"{key} at step {step} (stop {stop})")
