"""Evaluation protocols: k-NN vote and monitor, linear probe, per-group lrs, eval iterators."""
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from semissl.data import build_input
from semissl.methods import base
from configs import protocols
from semissl.training import evaluators, offline_evaluation, optimizers, sharding
from semissl.training.setup import create_state
from tests.data import fake_data


def _numpy_knn_scores(query, bank, bank_labels, num_classes, k, temperature):
  query = query / np.linalg.norm(query, axis=1, keepdims=True)
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  scores = np.zeros((len(query), num_classes))
  for i, row in enumerate(query @ bank.T):
    for j in np.argsort(-row)[:k]:
      scores[i, bank_labels[j]] += 1.0 if temperature is None else np.exp(row[j] / temperature)
  return scores


@pytest.mark.parametrize("k,temperature", [(3, 0.5), (1, 0.07), (4, None)])
def test_knn_scores_match_numpy(k, temperature):
  rs = np.random.RandomState(0)
  query, bank = rs.normal(size=(7, 5)), rs.normal(size=(11, 5))
  bank_labels = rs.randint(0, 3, size=11)
  scores = evaluators.knn_class_scores(
      query_features=jnp.asarray(query, jnp.float32), bank_features=jnp.asarray(bank, jnp.float32),
      bank_labels=jnp.asarray(bank_labels), num_classes=3, k=k, temperature=temperature)
  expected = _numpy_knn_scores(query.astype(np.float64), bank.astype(np.float64), bank_labels,
                               3, k, temperature)
  np.testing.assert_allclose(np.asarray(scores), expected, rtol=1e-4)
  if k == 1:  # the nearest neighbour's label
    nearest = np.argmax(query @ bank.T / np.linalg.norm(bank, axis=1), axis=1)
    np.testing.assert_array_equal(np.argmax(scores, 1), bank_labels[nearest])


class _FlattenFeatures(base.Method):
  """Features = the flattened images (plus a parameter, to have a TrainState)."""
  name = "flatten_features_for_tests"
  has_classifier = False

  def init(self, rng, example_batch):
    return {"params": {"offset": jnp.zeros(())}}, {}

  def eval_features(self, variables, images):
    return images.reshape(images.shape[0], -1) + variables["params"]["offset"]


class _ToyData:
  """`labelled_eval_iter` / `eval_iter` (/ `validation_iter`) as the pipeline yields
  them: padded, with mask."""

  def __init__(self, bank, bank_labels, queries, query_labels, batch=8, validation=None):
    self.parts = [(bank, bank_labels), (queries, query_labels), validation]
    self.batch = batch
    self.info = types.SimpleNamespace(
        num_validation=0 if validation is None else len(validation[1]))

  def _iter(self, images, labels):
    for start in range(0, len(labels), self.batch):
      chunk, chunk_labels = images[start:start + self.batch], labels[start:start + self.batch]
      pad = self.batch - len(chunk_labels)
      yield {"images": {"image": np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])},
             "label": np.concatenate([chunk_labels, -np.ones(pad, np.int32)]),
             "mask": np.concatenate([np.ones(len(chunk_labels)), np.zeros(pad)]).astype(
                 np.float32)}

  def labelled_eval_iter(self):
    return self._iter(*self.parts[0])

  def eval_iter(self):
    return self._iter(*self.parts[1])

  def validation_iter(self):
    return self._iter(*self.parts[2])


@pytest.mark.parametrize("with_validation", [False, True])
def test_knn_monitor_matches_numpy_on_mesh(mesh8, with_validation):
  rs = np.random.RandomState(1)
  centres = rs.normal(size=(3, 2, 2, 1)) * 2.0
  bank_labels = rs.randint(0, 3, size=13).astype(np.int32)
  query_labels = rs.randint(0, 3, size=21).astype(np.int32)
  bank = (centres[bank_labels] + rs.normal(size=(13, 2, 2, 1))).astype(np.float32)
  queries = (centres[query_labels] + rs.normal(size=(21, 2, 2, 1))).astype(np.float32)
  val_labels = rs.randint(0, 3, size=11).astype(np.int32)
  val_queries = (centres[val_labels] + rs.normal(size=(11, 2, 2, 1)) * 2.0).astype(np.float32)
  info = base.DatasetInfo(num_classes=3, image_shape=(2, 2, 1), num_labelled=13,
                          num_unlabelled=0)
  method = _FlattenFeatures(ml_collections.ConfigDict(), info)
  example = sharding.global_batch({"images": {"image": bank[:8]}}, mesh8)
  state, shardings = create_state(method, optax.identity(), rng=jax.random.PRNGKey(0),
                                  example_batch=example, mesh=mesh8)
  monitor = evaluators.KnnMonitor(method, mesh=mesh8, state_shardings=shardings, k=5,
                                  temperature=0.1)
  validation = (val_queries, val_labels) if with_validation else None
  metrics = monitor(state, _ToyData(bank, bank_labels, queries, query_labels,
                                    validation=validation))
  numpy_top1 = lambda q, labels: np.mean(np.argmax(_numpy_knn_scores(
      q.reshape(len(q), -1).astype(np.float64), bank.reshape(13, -1).astype(np.float64),
      bank_labels, 3, 5, 0.1), 1) == labels)
  expected = numpy_top1(queries, query_labels)
  prefixes = ("eval_", "val_") if with_validation else ("eval_",)
  assert set(metrics) == {p + k for p in prefixes for k in ("knn_top1", "ema_knn_top1")}
  np.testing.assert_allclose(metrics["eval_knn_top1"], expected, rtol=1e-6)
  np.testing.assert_allclose(metrics["eval_ema_knn_top1"], expected, rtol=1e-6)
  if with_validation:  # the validation images are queried against the same bank
    expected_val = numpy_top1(val_queries, val_labels)
    assert expected_val != expected
    np.testing.assert_allclose(metrics["val_knn_top1"], expected_val, rtol=1e-6)
    np.testing.assert_allclose(metrics["val_ema_knn_top1"], expected_val, rtol=1e-6)


class _FirstPixelsClassifier(_FlattenFeatures):
  """Logits = the first three pixels (plus the offset)."""
  name = "first_pixels_classifier_for_tests"
  has_classifier = True

  def eval_logits(self, variables, images):
    return self.eval_features(variables, images)[:, :3]


def test_make_evaluator_follows_config(mesh8):
  rs = np.random.RandomState(4)
  images = rs.normal(size=(21, 2, 2, 1)).astype(np.float32)
  labels = rs.randint(0, 3, size=21).astype(np.int32)
  info = base.DatasetInfo(num_classes=3, image_shape=(2, 2, 1), num_labelled=21,
                          num_unlabelled=0)
  classifier = _FirstPixelsClassifier(ml_collections.ConfigDict(), info)
  encoder = _FlattenFeatures(ml_collections.ConfigDict(), info)
  example = sharding.global_batch({"images": {"image": images[:8]}}, mesh8)
  state, shardings = create_state(classifier, optax.identity(), rng=jax.random.PRNGKey(0),
                                  example_batch=example, mesh=mesh8)
  make = lambda method, **config: evaluators.make_evaluator(
      ml_collections.ConfigDict(config), method, mesh=mesh8, state_shardings=shardings)
  data = _ToyData(images, labels, images, labels)

  top1 = make(classifier)(state, data)  # the default for a method with a classifier
  expected = np.mean(np.argmax(images.reshape(21, -1)[:, :3], 1) == labels)
  np.testing.assert_allclose(top1["eval_top1"], expected, rtol=1e-6)
  np.testing.assert_allclose(top1["eval_ema_top1"], expected, rtol=1e-6)
  assert top1["eval_top5"] == 1.0  # 3 classes
  assert isinstance(make(encoder), evaluators.KnnMonitor)  # no classifier: k-NN
  # Asked for by name: the k-NN monitor of a classifier's encoder; bank = queries here,
  # so k = 1 finds every image itself.
  knn = make(classifier, evaluator="knn", knn_monitor={"k": 1})(state, data)
  assert knn["eval_knn_top1"] == 1.0
  with pytest.raises(ValueError, match=r"evaluator='classifier', but method "
                     r"'flatten_features_for_tests' has no classifier; use evaluator='knn'"):
    make(encoder, evaluator="classifier")
  with pytest.raises(ValueError, match=r"evaluator='top1'; known: classifier, knn"):
    make(classifier, evaluator="top1")


def test_linear_probe_separates_linearly_separable_features():
  rs = np.random.RandomState(2)
  directions = rs.normal(size=(4, 16))
  train_labels, eval_labels = rs.randint(0, 4, size=400), rs.randint(0, 4, size=200)
  make = lambda labels: 3.0 * directions[labels] + rs.normal(size=(len(labels), 16)) * 0.5 + 7.0
  train, test = make(train_labels), make(eval_labels)
  # Separable by construction: the class direction has the largest projection.
  assert np.mean(np.argmax((train - 7.0) @ directions.T, 1) == train_labels) == 1.0
  probe = offline_evaluation.fit_linear_probe(features=train, labels=train_labels, num_classes=4,
                                      l2_penalty=1e-3, max_steps=200)
  assert offline_evaluation.top1(probe.logits(train), train_labels) == 1.0
  assert offline_evaluation.top1(probe.logits(test), eval_labels) >= 0.97
  # At the optimum the regularised objective's gradient vanishes (float64 NumPy).
  x = (train - probe.mean) / probe.std
  probs = np.exp(probe.logits(train) - probe.logits(train).max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  grad = x.T @ (probs - np.eye(4)[train_labels]) / len(x) + 1e-3 * probe.weights
  assert np.abs(grad).max() < 1e-3


def _grads_update(tx, params, grads):
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


def test_lr_multipliers_and_step_schedule():
  params = {"backbone": {"kernel": jnp.ones((2, 2))},
            "classifier": {"dense": {"kernel": jnp.ones(3)}}}
  grads = jax.tree.map(jnp.ones_like, params)
  opt = ml_collections.ConfigDict(dict(
      name="sgd", base_lr=0.1, lr_scaling="none", momentum=0.0, nesterov=False, weight_decay=0.0,
      schedule="step", step_decay_fractions=(0.5, 0.75), step_decay_factor=0.2,
      lr_multipliers=((r"^classifier/", 10.0),)))
  tx, schedule = optimizers.make_optimizer(opt, batch_size=256, total_steps=100,
                                           steps_per_epoch=10)
  updates = _grads_update(tx, params, grads)
  np.testing.assert_allclose(updates["backbone"]["kernel"], -0.1, rtol=1e-6)
  np.testing.assert_allclose(updates["classifier"]["dense"]["kernel"], -1.0, rtol=1e-6)
  for step, lr in ((0, 0.1), (49, 0.1), (50, 0.02), (74, 0.02), (75, 0.004), (99, 0.004)):
    np.testing.assert_allclose(schedule(step), lr, rtol=1e-6)


def test_semppl_finetune_protocol():
  def pretraining_config(method):
    return ml_collections.ConfigDict({
        "method": method, "mu": 1,
        "data": {"labelled_views": {}, "unlabelled_views": {"view1": {"name": "simclr"}}},
        "optimizer": {"name": "lars", "weight_decay": 1e-4, "warmup_epochs": 5},
        "num_epochs": 100.0, "num_train_steps": 7})

  semppl = protocols.semppl_finetune_protocol(pretraining_config(
      {"name": "semppl", "projector_hidden_dim": 64}))
  assert semppl.method.to_dict() == {"name": "simclr_finetune", "finetune_layer": 1,
                                     "head_type": "semppl", "head_layers": 1,
                                     "head_hidden_dim": 64}
  config = protocols.semppl_finetune_protocol(pretraining_config(
      {"name": "simclr", "head_layers": 3, "head_out_dim": 32}),
      encoder_base_lr=0.002, classifier_base_lr=0.1)
  assert (config.method.name, config.method.finetune_layer) == ("simclr_finetune", 1)
  assert (config.method.head_type, config.method.head_out_dim) == ("simclr", 32)
  assert config.num_epochs == 30.0 and config.num_train_steps == 0 and config.mu == 0
  assert config.data.labelled_views.to_dict() == {"image": {"name": "crop_flip"}}
  assert not config.data.unlabelled_views
  tx, schedule = optimizers.make_optimizer(config.optimizer, batch_size=512, total_steps=300,
                                           steps_per_epoch=10)
  params = {"backbone": {"kernel": jnp.ones(2)}, "projection": {"dense1": {"kernel": jnp.ones(2)}},
            "classifier": {"dense": {"kernel": jnp.ones(2)}}}
  updates = _grads_update(tx, params, jax.tree.map(jnp.ones_like, params))
  # Nesterov SGD, momentum 0.9: the first update is -(1 + 0.9) lr g; lr = base * 512/256.
  np.testing.assert_allclose(updates["backbone"]["kernel"], -1.9 * 0.004, rtol=1e-5)
  np.testing.assert_allclose(updates["projection"]["dense1"]["kernel"], -1.9 * 0.004, rtol=1e-5)
  np.testing.assert_allclose(updates["classifier"]["dense"]["kernel"], -1.9 * 0.2, rtol=1e-5)
  for epoch, factor in ((0, 1.0), (17.9, 1.0), (18, 0.2), (24, 0.04)):
    np.testing.assert_allclose(schedule(int(epoch * 10)), 0.004 * factor, rtol=1e-5)


def test_labelled_eval_iter_covers_labelled_set_once(tmp_path):
  rng = np.random.default_rng(3)
  arrays = {}
  for split, prefix, counts in (("train", "train", fake_data.TINY_TRAIN_COUNTS),
                                ("test", "t10k", fake_data.TINY_TEST_COUNTS)):
    images, labels = fake_data.tiny_split(rng, counts)
    fake_data.write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte.gz"), images)
    fake_data.write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte"), labels, compress=False)
    arrays[split] = (images, labels)
  inp = build_input(fake_data.tiny_config(str(tmp_path)), batch_size=4, mu=1,
                    eval_batch_size=8, seed=0)
  batches = list(inp.labelled_eval_iter())
  assert len(batches) == -(-len(inp.labelled_ids) // 8)
  mask = np.concatenate([b["mask"] for b in batches]) > 0
  positions = np.concatenate([b["id"] for b in batches])[mask]
  np.testing.assert_array_equal(positions, np.arange(len(inp.labelled_ids)))
  images, labels = arrays["train"]
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask],
                                labels[inp.labelled_ids])
  # The eval view is deterministic: pixels / 255, normalised with the config's 0.5 / 0.25.
  got = np.concatenate([b["images"]["image"] for b in batches])[mask][..., 0]
  np.testing.assert_allclose(got, (images[inp.labelled_ids] / 255.0 - 0.5) / 0.25, atol=1e-5)


def test_confusion_matrix_counts_true_by_predicted():
  labels = np.array([0, 0, 1, 2, 2, 2])
  predictions = np.array([0, 1, 1, 2, 0, 2])
  expected = np.zeros((3, 3), np.int64)
  for true, predicted in zip(labels, predictions):
    expected[true, predicted] += 1
  np.testing.assert_array_equal(
      offline_evaluation.confusion_matrix(labels, predictions, 3),
      [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
  np.testing.assert_array_equal(offline_evaluation.confusion_matrix(labels, predictions, 3), expected)
