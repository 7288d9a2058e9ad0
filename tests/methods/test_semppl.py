"""SemPPL method: loss wiring on tiny shapes, validation, sharding, configs, end to end."""
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from semissl import losses, methods
from semissl.methods import semppl
from semissl.training import checkpointing, sharding
from semissl.training.train_state import TrainState
from tests.training import capture

from configs import common, semppl_fmnist, semppl_r50

NUM_CLASSES = 3
LABELLED, UNLABELLED = 8, 16
LARGE, SMALL = ("large1", "large2"), ("small1",)
SIZES = {"large1": 8, "large2": 8, "small1": 6}


def _config(**method):
  config = ml_collections.ConfigDict()
  config.batch_size = LABELLED
  config.mu = UNLABELLED // LABELLED
  views = {name: {"name": "simclr", "size": size} for name, size in SIZES.items()}
  config.data = {"image_size": 8, "labelled_views": views, "unlabelled_views": views}
  config.model = {"name": "tiny_resnet", "stem_width": 4, "stage_widths": (4, 8),
                  "stage_strides": (2, 2)}
  config.method = dict(
      name="semppl", large_views=LARGE, small_views=SMALL, queue_capacity=32,
      num_neighbours=1, view_voting=True, temperature=0.2, num_negatives=3,
      num_semantic_positives=2, alpha=0.2, contrastive_scale=0.3, invariance_scale=5.0,
      projector_hidden_dim=16, projection_dim=8, predictor_hidden_dim=16,
      vote_thresholds=(0.5, 1.0))
  config.method.update(method)
  config.optimizer = {"name": "lars", "base_lr": 0.3, "weight_decay": 1e-6,
                      "warmup_steps": 1, "schedule": "cosine"}
  config.ema = {"decay": 0.99, "schedule": "constant"}
  return config


def _info():
  return methods.DatasetInfo(num_classes=NUM_CLASSES, image_shape=(8, 8, 1),
                             num_labelled=40, num_unlabelled=200)


def _batch(seed=0):
  rs = np.random.RandomState(seed)

  def views(n):
    return {v: jnp.asarray(rs.normal(size=(n, s, s, 1)), jnp.float32)
            for v, s in SIZES.items()}

  return {"labelled": {"images": views(LABELLED),
                       "label": jnp.asarray(rs.randint(0, NUM_CLASSES, LABELLED), jnp.int32)},
          "unlabelled": {"images": views(UNLABELLED),
                         "true_label": jnp.asarray(rs.randint(0, NUM_CLASSES, UNLABELLED),
                                                   jnp.int32)}}


@pytest.fixture(scope="module")
def setup():
  method = semppl.SemPPL(_config(), _info())
  method.validate()
  batch = _batch()
  variables, method_state = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  # A distinct EMA target, as after some training.
  target = jax.tree.map(lambda x: x * 0.9, variables["params"])
  state = TrainState.create(params=variables["params"], batch_stats=variables["batch_stats"],
                            target_params=target, method_state=method_state,
                            rng=jax.random.PRNGKey(5))
  return method, batch, variables, state


def _stack(batch, names):
  return jnp.concatenate([jnp.concatenate([batch["labelled"]["images"][v],
                                           batch["unlabelled"]["images"][v]]) for v in names])


def _independent_forward(method, batch, variables, state):
  """Online predictions [3, N, D] (large first) and target projections [2, N, D]."""
  model = method.model
  (_, large), updates = model.apply(variables, _stack(batch, LARGE), train=True,
                                    mutable=["batch_stats"])
  (_, small), _ = model.apply({"params": variables["params"], **updates},
                              _stack(batch, SMALL), train=True, mutable=["batch_stats"])
  target, _ = model.apply({"params": state.target_params,
                           "batch_stats": state.target_batch_stats},
                          _stack(batch, LARGE), train=True, mutable=["batch_stats"],
                          method=semppl.SemPPLNetwork.project)
  n = batch["labelled"]["label"].shape[0] + batch["unlabelled"]["true_label"].shape[0]
  online = jnp.concatenate([large.reshape(2, n, -1), small.reshape(1, n, -1)])
  return online, target.reshape(2, n, -1)


def test_loss_wiring_matches_listing_1_and_gradients_flow(setup):
  method, batch, variables, state = setup
  rng = jax.random.PRNGKey(7)
  (loss, aux), grads = jax.jit(jax.value_and_grad(method.loss_fn, has_aux=True))(
      variables["params"], batch, state=state, rng=rng)
  online, target = jax.jit(_independent_forward, static_argnums=0)(
      method, batch, variables, state)
  labels = batch["labelled"]["label"]

  # Listing 1 line 23: labelled target projections of each large view enqueued first.
  queue = aux.method_state["queue"]
  np.testing.assert_array_equal(queue.labels[:, :LABELLED], np.stack([labels, labels]))
  assert np.all(np.asarray(queue.labels[:, LABELLED:]) == losses.EMPTY_LABEL)
  np.testing.assert_allclose(queue.embeddings[:, :LABELLED], target[:, :LABELLED],
                             rtol=1e-4, atol=1e-5)
  assert float(aux.metrics["queue_fill"]) == LABELLED / 32

  # Eq. 2 + view voting (queries: online predictions of the unlabelled large
  # views), then Eq. 10 over labelled + unlabelled with a draw per anchor view.
  pseudo, votes, expected, extras = jax.jit(_reference_loss)(online, target, queue, labels,
                                                             rng)
  assert int(votes.sum(-1).min()) == 4  # 2 large views squared
  true = batch["unlabelled"]["true_label"]
  np.testing.assert_allclose(aux.metrics["pl_accuracy"], np.mean(pseudo == true), atol=1e-6)
  np.testing.assert_allclose(loss, expected, rtol=2e-4)
  np.testing.assert_allclose(aux.metrics["semantic_contrastive"],
                             extras["semantic_contrastive"], rtol=2e-4)
  assert float(aux.metrics["semantic_positive_fraction"]) == 1.0  # labels all in the queue

  # Gradients reach encoder, projector and predictor; online BN statistics move.
  for module in ("backbone", "projector", "predictor"):
    norm = _global_norm(grads[module])
    assert np.isfinite(norm) and norm > 0, module
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), aux.batch_stats,
                         variables["batch_stats"])
  assert all(jax.tree.leaves(changed))


def _reference_loss(online, target, queue, labels, rng):
  pseudo, votes = losses.knn_pseudo_labels(
      queries=online[:2, LABELLED:], queue_embeddings=queue.embeddings,
      queue_labels=queue.labels, num_classes=NUM_CLASSES, k=1)
  positives_rng, negatives_rng = jax.random.split(rng)
  positives, valid = losses.sample_semantic_positives(
      rng=positives_rng, labels=jnp.concatenate([labels, pseudo]),
      queue_embeddings=queue.embeddings, queue_labels=queue.labels, num_positives=3 * 2)
  n = LABELLED + UNLABELLED
  positives = jnp.swapaxes(positives.reshape(2, 3, 2, n, -1), 0, 1)
  valid = jnp.swapaxes(valid.reshape(2, 3, 2, n), 0, 1)
  loss, extras = losses.semppl_loss(
      online=online, target=target, semantic_positives=positives,
      semantic_positive_mask=valid, rng=negatives_rng, num_negatives=3, temperature=0.2,
      alpha=0.2, contrastive_scale=0.3, invariance_scale=5.0)
  return pseudo, votes, loss, extras


def _global_norm(tree):
  return float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))))


# Fixed inputs for the NumPy reference: 4 labelled examples of distinct classes and a
# queue whose every class sits in at most one slot per view once they are pushed, so
# the "uniform draw among same-label entries" has one outcome; with |N| = N - 1 the
# negatives are every other example, so no draw of the method changes the loss.
REF_CLASSES, REF_LABELLED, REF_UNLABELLED, REF_CAPACITY, REF_POINTER = 10, 4, 8, 8, 2
REF_LABELS = np.array([7, 2, 9, 4])
# Slots 2-5 are overwritten by the push (their labels would otherwise duplicate
# classes 5, 1 and 0); slot 6 is empty; view 1 holds class 3 where view 0 holds 0, so
# a pseudo-label 0 finds no semantic positive in queue 1 (a dropped term).
REF_QUEUE_LABELS = np.array([[5, 1, 5, 1, 0, 3, -1, 0], [5, 1, 1, 5, 3, 0, -1, 3]])


def _phi_distribution(anchor, positive, negatives, temperature):
  """p over [positive, negatives...] of Eq. 5/6: phi(a, b) = tau exp(<a, b> / tau)."""
  scores = np.concatenate([[anchor @ positive], negatives @ anchor])
  phi = temperature * np.exp(scores / temperature)
  return phi / phi.sum()


def _kl(p, q):
  return float(np.sum(p * (np.log(p) - np.log(q))))


def _numpy_semppl(online, target, labels, queue_embeddings, queue_labels, pointer, *,
                  num_classes, k, view_voting, num_positives, temperature, alpha,
                  contrastive_scale, invariance_scale):
  """SemPPL's loss (Eq. 1-10, App. B, Listing 1) in plain NumPy, float64.

  online [V_all, N, D] predictions (large views first), target [V_large, N, D]
  projections, labelled examples first along N; the queue before this step's push.
  Returns (loss, pseudo-labels of the unlabelled examples, queue after the push,
  fraction of valid semantic positives)."""
  online, target = np.asarray(online, np.float64), np.asarray(target, np.float64)
  num_all, n, _ = online.shape
  num_large, num_labelled = target.shape[0], len(labels)
  # Listing 1 line 23: the labelled target projections enter each view's FIFO queue.
  queue_embeddings = np.array(queue_embeddings, np.float64)
  queue_labels = np.array(queue_labels)
  slots = (pointer + np.arange(num_labelled)) % queue_labels.shape[1]
  queue_embeddings[:, slots] = target[:, :num_labelled]
  queue_labels[:, slots] = labels
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  # Eq. 2 with view voting (App. D): k nearest queue entries (cosine) of the online
  # prediction of view j in the queue of view i, every pair (i, j) votes; the mode.
  pairs = ([(i, j) for i in range(num_large) for j in range(num_large)] if view_voting
           else [(i, i) for i in range(num_large)])
  pseudo = []
  for m in range(num_labelled, n):
    votes = np.zeros(num_classes, int)
    for i, j in pairs:
      similarity = unit(queue_embeddings[i]) @ unit(online[j, m])
      similarity[queue_labels[i] < 0] = -np.inf
      for slot in np.argsort(-similarity, kind="stable")[:k]:
        votes[queue_labels[i, slot]] += 1
    pseudo.append(int(np.argmax(votes)))  # ties: the smallest class
  all_labels = np.concatenate([labels, pseudo])

  o, t, q = unit(online), unit(target), unit(queue_embeddings)
  augm = sempos = augm_inv = sempos_inv = 0.0
  count = valid_count = 0
  for m in range(n):
    others = np.arange(n) != m  # N(x_m): every other example
    for i in range(num_all):
      for j in range(num_large):
        p_augm = _phi_distribution(o[i, m], t[j, m], t[j, others], temperature)
        augm -= np.log(p_augm[0])  # Eq. 9
        count += 1
        if i < num_large and i != j:  # I_augm: KL(p(o_i; t_j) || p(o_j; t_i))
          p_reverse = _phi_distribution(o[j, m], t[i, m], t[i, others], temperature)
          augm_inv += _kl(p_augm, p_reverse)
        same = np.flatnonzero(queue_labels[j] == all_labels[m])
        assert len(same) <= 1, "the fixed queue must make the semantic draw unique"
        if not len(same):
          continue  # no entry with that label in queue j: no semantic positive
        positive = q[j, same[0]]
        for _ in range(num_positives):
          p_sempos = _phi_distribution(o[i, m], positive, t[j, others], temperature)
          sempos -= np.log(p_sempos[0])  # Eq. 8
          count += 1
          valid_count += 1
          if i < num_large:  # I_sempos: KL(p(o_i; z+_j) || p(z+_j; t_i))
            p_reverse = _phi_distribution(positive, t[i, m], t[i, others], temperature)
            sempos_inv += _kl(p_sempos, p_reverse)
  # Eq. 10, normalised by the number of contrastive terms (Listing 1 lines 54-55).
  loss = (contrastive_scale * (augm + alpha * sempos)
          + invariance_scale * (augm_inv + sempos_inv)) / count
  fraction = valid_count / (num_all * num_large * num_positives * n)
  return loss, np.array(pseudo), (queue_embeddings, queue_labels), fraction


@pytest.mark.parametrize("view_voting,k", [(True, 1), (False, 2)])
def test_loss_matches_numpy_reference(view_voting, k):
  n = REF_LABELLED + REF_UNLABELLED
  config = _config(queue_capacity=REF_CAPACITY, num_negatives=n - 1, num_neighbours=k,
                   view_voting=view_voting, num_semantic_positives=2)
  config.batch_size, config.mu = REF_LABELLED, REF_UNLABELLED // REF_LABELLED
  info = methods.DatasetInfo(num_classes=REF_CLASSES, image_shape=(8, 8, 1),
                             num_labelled=40, num_unlabelled=200)
  method = semppl.SemPPL(config, info)
  method.validate()
  rs = np.random.RandomState(3)
  views = lambda b: {v: jnp.asarray(rs.normal(size=(b, s, s, 1)), jnp.float32)
                     for v, s in SIZES.items()}
  true = rs.randint(0, REF_CLASSES, REF_UNLABELLED)
  batch = {"labelled": {"images": views(REF_LABELLED),
                        "label": jnp.asarray(REF_LABELS, jnp.int32)},
           "unlabelled": {"images": views(REF_UNLABELLED),
                          "true_label": jnp.asarray(true, jnp.int32)}}
  variables, _ = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  queue_embeddings = rs.normal(size=(len(LARGE), REF_CAPACITY, 8)) * 3.0  # not unit
  queue = losses.EmbeddingQueue(
      embeddings=jnp.asarray(queue_embeddings, jnp.float32),
      labels=jnp.asarray(REF_QUEUE_LABELS, jnp.int32),
      pointer=jnp.full((len(LARGE),), REF_POINTER, jnp.int32),
      num_filled=jnp.full((len(LARGE),), REF_CAPACITY - 1, jnp.int32))
  target = jax.tree.map(lambda x: x * 0.9, variables["params"])
  state = TrainState.create(params=variables["params"], batch_stats=variables["batch_stats"],
                            target_params=target, method_state={"queue": queue},
                            rng=jax.random.PRNGKey(5))
  loss, aux = jax.jit(method.loss_fn)(variables["params"], batch, state=state,
                                      rng=jax.random.PRNGKey(7))
  online, target_projections = jax.jit(_independent_forward, static_argnums=0)(
      method, batch, variables, state)
  expected, pseudo, (queue_embeddings, queue_labels), fraction = _numpy_semppl(
      online, target_projections, REF_LABELS, queue_embeddings, REF_QUEUE_LABELS,
      REF_POINTER, num_classes=REF_CLASSES, k=k, view_voting=view_voting,
      num_positives=2, temperature=0.2, alpha=0.2, contrastive_scale=0.3,
      invariance_scale=5.0)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  new_queue = aux.method_state["queue"]
  np.testing.assert_array_equal(new_queue.labels, queue_labels)
  np.testing.assert_allclose(new_queue.embeddings, queue_embeddings, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(new_queue.pointer, (REF_POINTER + REF_LABELLED) % REF_CAPACITY)
  np.testing.assert_allclose(aux.metrics["pl_accuracy"], np.mean(pseudo == true), atol=1e-6)
  np.testing.assert_allclose(aux.metrics["semantic_positive_fraction"], fraction, atol=1e-6)
  assert 0 < fraction < 1  # the fixed queue leaves some labels without a positive


def test_without_pseudo_labels_only_labelled_get_semantic_positives(setup):
  _, batch, variables, state = setup
  method = semppl.SemPPL(_config(use_pseudo_labels=False), _info())
  _, aux = jax.jit(method.loss_fn)(variables["params"], batch, state=state,
                                   rng=jax.random.PRNGKey(2))
  fraction = LABELLED / (LABELLED + UNLABELLED)
  np.testing.assert_allclose(aux.metrics["semantic_positive_fraction"], fraction, atol=1e-6)


def test_vote_telemetry_against_numpy():
  votes = np.array([[4, 0, 0], [3, 1, 0], [2, 2, 0], [1, 1, 2], [0, 0, 0]])
  pseudo = np.array([0, 1, 0, 2, -1])
  true = np.array([0, 0, 0, 2, 1])
  out = semppl.vote_telemetry(votes=jnp.asarray(votes), pseudo_labels=jnp.asarray(pseudo),
                              true_labels=jnp.asarray(true), thresholds=(0.5, 0.75, 1.0))
  agreement = votes.max(1) / np.maximum(votes.sum(1), 1)
  for t in (0.5, 0.75, 1.0):
    above = (agreement >= t) & (votes.sum(1) > 0)
    correct = (pseudo == true) & above
    name = str(round(100 * t))
    np.testing.assert_allclose(out["pl_recall_at_" + name], above.mean(), atol=1e-6)
    np.testing.assert_allclose(out["pl_precision_at_" + name],
                               correct.sum() / max(above.sum(), 1), atol=1e-6)


@pytest.mark.parametrize("change, message", [
    ({"method": {"queue_capacity": 4}}, "smaller than the labelled batch"),
    ({"method": {"num_neighbours": 33}}, "num_neighbours"),
    ({"method": {"num_semantic_positives": 40}}, "num_semantic_positives"),
    ({"method": {"num_semantic_positives": -1}}, "num_semantic_positives"),
    ({"method": {"num_negatives": 24}}, "num_negatives"),
    ({"method": {"large_views": ("large1", "large9")}}, "missing from config.data"),
    ({"method": {"large_views": ()}}, "at least one large view"),
    ({"method": {"large_views": ("large1", "small1")}}, "must share a size"),
    ({"method": {"vote_thresholds": (0.0,)}}, "vote_thresholds"),
])
def test_validate_rejects_bad_config(change, message):
  config = _config(**change["method"])
  with pytest.raises(ValueError, match=message):
    semppl.SemPPL(config, _info()).validate()


def test_queue_sharded_on_slots_and_matches_single_device(setup, mesh8):
  method, _, _, state = setup
  batch = _batch(1)
  shardings = sharding.tree_shardings(state, mesh8, method.state_sharding_rules())
  queue_shardings = shardings.method_state["queue"]
  assert queue_shardings.embeddings.spec == P(None, "data", None)
  assert queue_shardings.labels.spec == P(None, "data")
  sharded_state = jax.device_put(state, shardings)
  sharded_batch = jax.device_put(batch, NamedSharding(mesh8, P("data")))
  loss_fn = jax.jit(lambda s, b: method.loss_fn(s.params, b, state=s,
                                                rng=jax.random.PRNGKey(3)))
  sharded_loss, sharded_aux = loss_fn(sharded_state, sharded_batch)
  device = jax.devices()[0]
  loss, aux = loss_fn(jax.device_put(state, device), jax.device_put(batch, device))
  np.testing.assert_allclose(sharded_loss, loss, rtol=1e-4)
  np.testing.assert_allclose(sharded_aux.method_state["queue"].embeddings,
                             aux.method_state["queue"].embeddings, rtol=1e-4, atol=1e-5)
  assert sharded_aux.method_state["queue"].embeddings.sharding.is_equivalent_to(
      NamedSharding(mesh8, P(None, "data", None)), 3)


def test_encoder_paths_match_supervised_classifier(setup):
  method, batch, variables, _ = setup
  config = _config()
  supervised = methods.get_method("supervised")(config, _info())
  image = batch["labelled"]["images"]["large1"]
  classifier = supervised.model.init(jax.random.PRNGKey(0), image, train=False)
  for collection in ("params", "batch_stats"):
    ours = jax.tree.map(jnp.shape, variables[collection]["backbone"])
    theirs = jax.tree.map(jnp.shape, classifier[collection]["backbone"])
    assert ours == theirs
  features = method.eval_features(variables, image)
  assert features.shape == (LABELLED, 8)


def test_r50_config_has_the_paper_values():
  config = semppl_r50.get_config()
  m = config.method
  batch = config.batch_size + config.mu * config.batch_size
  assert batch == 4096 and m.queue_capacity == 20 * 4096
  assert (m.num_neighbours, m.view_voting, m.temperature, m.num_negatives) == (1, True, 0.2, 10)
  assert m.num_semantic_positives == 3 and math.isclose(m.alpha, 1 / 5)
  assert (m.invariance_scale, m.contrastive_scale) == (5.0, 0.3)
  assert (m.projector_hidden_dim, m.projection_dim, m.predictor_hidden_dim) == (4096, 256, 4096)
  assert m.large_views == ("large1", "large2", "large3", "large4")
  assert m.small_views == ("small1", "small2")
  opt = config.optimizer
  assert (opt.name, opt.base_lr, opt.lr_scaling, opt.lr_batch_size) == ("lars", 0.3, "linear",
                                                                        4096)
  assert opt.weight_decay == 1e-6 and opt.schedule == "cosine"
  assert opt.exclude_from_weight_decay == r"(bias|scale)$"
  steps_per_epoch = 1_281_167 / 4096
  assert abs(config.num_train_steps / steps_per_epoch - 300) < 0.01
  assert abs(opt.warmup_steps / steps_per_epoch - 10) < 0.01
  assert config.ema.decay == 0.996
  assert config.data.labelled_ids_file.endswith("1percent.txt")
  assert semppl_r50.get_config("labels=10pct").data.labelled_ids_file.endswith("10percent.txt")
  # Table 12: odd views 1, 3 (and small 1), even 2, 4 (and small 2).
  views = config.data.unlabelled_views
  for name in ("large1", "large3", "small1"):
    assert views[name].blur_prob == 0.1 and views[name].solarize_prob == 0.2
  for name in ("large2", "large4", "small2"):
    assert views[name].blur_prob == 1.0 and views[name].solarize_prob == 0.0
  for spec in views.values():
    assert (spec.flip_prob, spec.jitter_prob, spec.grayscale_prob) == (0.5, 0.8, 0.2)
    assert (spec.brightness, spec.contrast, spec.saturation, spec.hue) == (0.4, 0.4, 0.2, 0.1)
    # App. E: every view, the 96 px small ones included, is random-cropped.
    assert tuple(spec.blur_sigma_range) == (0.1, 2.0) and spec.crop_prob == 1.0
  assert [tuple(views[v].area_range) for v in ("large1", "large2", "small1")] == [
      (0.14, 1.0), (0.08, 1.0), (0.05, 0.14)]
  assert {views[v].size for v in ("large1", "large2", "large3", "large4")} == {224}
  assert {views[v].size for v in ("small1", "small2")} == {96}
  models = {a: semppl_r50.get_config(a).model for a in
            ("model=r50x2", "model=r50x4", "model=r200x2", "sk=True")}
  assert (models["model=r50x4"].name, models["model=r50x4"].width_multiplier) == ("resnet50", 4)
  assert (models["model=r200x2"].name, models["model=r200x2"].width_multiplier) == (
      "resnet200", 2)
  assert models["sk=True"].sk == "semppl"
  assert semppl_r50.get_config("ema=byol_cosine").ema.schedule == "byol_cosine"


def test_r50_finetune_and_linear_stages():
  pretrain = semppl_r50.get_config("model=r50x2")
  finetune = semppl_r50.get_config("model=r50x2,stage=finetune,init_from=/p")
  assert finetune.init_from == "/p" and finetune.model.to_dict() == pretrain.model.to_dict()
  m = finetune.method  # App. A.1: classifier on the projector's first layer
  assert (m.name, m.head_type, m.head_layers, m.finetune_layer, m.head_hidden_dim) == (
      "simclr_finetune", "semppl", 1, 1, 4096)
  opt = finetune.optimizer
  assert (opt.name, opt.momentum, opt.nesterov, opt.weight_decay) == ("sgd", 0.9, True, 0.0)
  assert (opt.base_lr, opt.lr_multipliers, opt.lr_batch_size) == (
      0.0025, ((r"^classifier/", 80.0),), 0)
  assert (opt.schedule, tuple(opt.step_decay_fractions), opt.step_decay_factor) == (
      "step", (18 / 30, 24 / 30), 0.2)
  assert (finetune.num_epochs, finetune.batch_size, finetune.mu) == (30.0, 1024, 0)
  assert finetune.data.labelled_ids_file.endswith("1percent.txt")
  assert not finetune.data.unlabelled_views and finetune.knn_monitor is None

  linear = semppl_r50.get_config("stage=linear,init_from=/p")
  m = linear.method  # App. A.2: frozen encoder, classifier on its output, all labels
  assert (m.frozen_encoder, m.head_layers, m.finetune_layer) == (True, 0, 0)
  assert linear.data.labelled_ids_file is None and linear.data.label_fraction == 1.0
  opt = linear.optimizer
  assert (opt.name, opt.nesterov, opt.weight_decay, opt.base_lr, opt.schedule) == (
      "sgd", True, 0.0, 0.05, "cosine")
  assert opt.lr_multipliers == ((r"^(?!classifier/)", 0.0),) and linear.num_epochs == 80.0
  with pytest.raises(ValueError, match="needs init_from"):
    semppl_r50.get_config("stage=linear")
  with pytest.raises(ValueError, match="use one of pretrain, finetune, linear"):
    semppl_r50.get_config("stage=distill,init_from=/p")


def test_configs_validate():
  for config in (semppl_r50.get_config(), semppl_fmnist.get_config(),
                 semppl_r50.get_config("runlocal,dataset=fashion_mnist")):
    semppl.SemPPL(config, _info()).validate()
  with pytest.raises(ValueError, match="init_from"):
    semppl_fmnist.get_config("stage=finetune")
  with pytest.raises(ValueError, match="drop protocol=semppl"):
    semppl_fmnist.get_config("stage=scratch,protocol=semppl")


def test_crop_probability_defaults():
  """SemPPL App. E crops every view (semppl_r50); Table 12's 50% is the Fashion-MNIST
  default, chosen on validation (docs/results/diagnostics/semppl_crop1_40)."""
  for get_config, arg, default, other in ((semppl_r50.get_config, "", 1.0, 0.5),
                                          (semppl_fmnist.get_config, "small=2,", 0.5, 1.0)):
    views = get_config(arg.rstrip(",") or None).data.unlabelled_views
    assert {"small1", "small2"} <= set(views)
    assert {views[v].crop_prob for v in views} == {default}
    changed = get_config(f"{arg}crop_prob={other}").data.unlabelled_views
    assert {changed[v].crop_prob for v in changed} == {other}


def test_fmnist_scratch_is_the_label_only_baseline():
  # SemPPL -> fine-tune is compared against label-only: the scratch stage must be it.
  from configs import supervised_fmnist
  for labels in ("40", "1pct"):
    assert (semppl_fmnist.get_config(f"labels={labels},stage=scratch").to_dict()
            == supervised_fmnist.get_config(f"labels={labels}").to_dict())


def test_fmnist_semppl_finetune_protocol_loads_the_pretraining_head():
  pretrain = semppl_fmnist.get_config()
  config = semppl_fmnist.get_config("stage=finetune,init_from=/p,protocol=semppl,"
                                   "encoder_lr=0.02,classifier_lr=0.5")
  assert config.init_from == "/p"
  assert (config.method.name, config.method.head_type) == ("simclr_finetune", "semppl")
  assert config.method.head_hidden_dim == pretrain.method.projector_hidden_dim
  assert config.model.to_dict() == pretrain.model.to_dict()
  assert config.optimizer.base_lr == 0.02
  assert config.optimizer.lr_multipliers == ((r"^classifier/", 25.0),)
  assert (config.mu, config.knn_monitor, config.num_epochs) == (0, None, 30.0)
  assert semppl_fmnist.get_config("labels=40,stage=finetune,init_from=/p,"
                                 "protocol=semppl").num_epochs == 60.0


def test_fmnist_default_finetune_follows_the_label_regime():
  # Chosen on validation (docs/results/sweeps/semppl_finetune_*): App. A.1 with few
  # labels, the label-only recipe with 1%.
  few = semppl_fmnist.get_config("labels=40,stage=finetune,init_from=/p")
  assert (few.method.name, few.optimizer.base_lr) == ("simclr_finetune", 0.001)
  assert few.optimizer.lr_multipliers == ((r"^classifier/", 40.0),)
  pct = semppl_fmnist.get_config("labels=1pct,stage=finetune,init_from=/p")
  assert pct.method.name == "supervised"
  assert pct.optimizer.base_lr == common.SUPERVISED_BASE_LR
  with pytest.raises(ValueError, match="use auto, supervised or semppl"):
    semppl_fmnist.get_config("stage=finetune,init_from=/p,protocol=linear")


def test_end_to_end_pretrain_then_finetune(tmp_path, monkeypatch):
  from semissl.training import train_and_evaluate
  pretrain_dir, finetune_dir = str(tmp_path / "pretrain"), str(tmp_path / "finetune")
  results = train_and_evaluate(semppl_fmnist.get_config("runlocal"), pretrain_dir)
  saved = json.load(open(os.path.join(pretrain_dir, "results.json")))["metrics"]
  for key in ("eval_knn_top1", "eval_ema_knn_top1", "train_loss", "train_pl_accuracy",
              "train_pl_precision_at_50", "train_pl_recall_at_50", "train_queue_fill"):
    assert np.isfinite(saved[key]), key
  assert 0.0 <= results["eval_knn_top1"] <= 1.0 and saved["step"] == 6

  config = semppl_fmnist.get_config(f"runlocal,stage=finetune,init_from={pretrain_dir}")
  recording = capture.record_train_steps(monkeypatch)
  finetuned = train_and_evaluate(config, finetune_dir)
  assert np.isfinite(finetuned["eval_top1"])
  # The fine-tune stage started from the SemPPL encoder: its first step received the
  # pretraining checkpoint's backbone parameters and batch statistics, exactly.
  checkpoint = checkpointing.restore_collections(pretrain_dir)
  start = recording.states[0]
  for collection, tree in (("params", start.params), ("batch_stats", start.batch_stats)):
    expected = jax.tree_util.tree_leaves_with_path(checkpoint[collection]["backbone"])
    loaded = dict(jax.tree_util.tree_leaves_with_path(tree["backbone"]))
    assert expected and len(expected) == len(loaded), collection
    for path, value in expected:
      np.testing.assert_array_equal(np.asarray(loaded[path]), np.asarray(value))
  # ... which are not what a fresh encoder holds.
  supervised = methods.get_method("supervised")(config, _info())
  init = supervised.model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
  differs = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                         dict(start.params["backbone"]), dict(init["params"]["backbone"]))
  assert all(jax.tree.leaves(differs))
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                       dict(checkpoint["batch_stats"]["backbone"]),
                       dict(init["batch_stats"]["backbone"]))
  assert any(jax.tree.leaves(moved))  # pretraining moved the statistics: not vacuous

  # The linear protocol on the same pretraining: the encoder stays exactly as loaded.
  linear_dir = str(tmp_path / "linear")
  config = semppl_fmnist.get_config(f"runlocal,stage=linear,init_from={pretrain_dir}")
  assert np.isfinite(train_and_evaluate(config, linear_dir)["eval_top1"])
  linear = methods.get_method("simclr_finetune")(config, methods.DatasetInfo(
      num_classes=10, image_shape=(28, 28, 1), num_labelled=600, num_unlabelled=0))
  init = dict(linear.network.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)),
                                  train=False))
  before = checkpointing.load_variables_from(pretrain_dir, init)
  after = checkpointing.load_variables_from(linear_dir, init)
  for collection in ("params", "batch_stats"):
    for a, b in zip(jax.tree.leaves(after[collection]["backbone"]),
                    jax.tree.leaves(before[collection]["backbone"])):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(after["params"]["classifier"]["dense"]["kernel"],
                            init["params"]["classifier"]["dense"]["kernel"])
