"""SimMatch: loss wiring vs a NumPy float64 reference (both bank variants), the
bank/DA state, first-epoch gating, stop-gradients, config checks, end to end."""
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import simmatch_cifar, simmatch_fmnist, simmatch_r50
from semissl import methods
from semissl.training import sharding, train_and_evaluate
from semissl.training.setup import validate_config
from semissl.training.train_state import TrainState
from tests.data import fake_data
from tests.training import capture

NUM_CLASSES, NUM_LABELLED, SIZE = 3, 16, 8
B, MU = 8, 2
STEPS_PER_EPOCH = 5
TINY_RESNET = {"name": "tiny_resnet", "stem_width": 4, "stage_widths": (4, 8),
               "stage_strides": (1, 2)}
BANK_LABELS = np.arange(NUM_LABELLED) % NUM_CLASSES


def _config(**method):
  config = ml_collections.ConfigDict()
  config.mu = MU
  config.mesh = {"data": -1}
  config.method = {"name": "simmatch", "variant": "student_teacher", "lambda_u": 1.5,
                   "lambda_in": 0.7, "temperature": 0.1, "alpha": 0.9,
                   "threshold": 0.5, "bank_momentum": 0.7, "da_window": 4,
                   "embedding_dim": 6, "embedding_hidden_dim": 32, **method}
  config.model = dict(TINY_RESNET)
  weak = {"name": "crop_flip"}
  config.data = {"labelled_views": {"image": weak},
                 "unlabelled_views": {"weak": weak, "strong": weak}}
  return config


def _info(num_labelled=NUM_LABELLED):
  return methods.DatasetInfo(
      num_classes=NUM_CLASSES, image_shape=(SIZE, SIZE, 1), num_labelled=num_labelled,
      num_unlabelled=64, steps_per_epoch=STEPS_PER_EPOCH, total_steps=100,
      labelled_labels=np.arange(num_labelled) % NUM_CLASSES)


def _batch(seed=0):
  rs = np.random.RandomState(seed)
  images = lambda n: rs.normal(size=(n, SIZE, SIZE, 1)).astype(np.float32)
  index = rs.permutation(NUM_LABELLED)[:B].astype(np.int32)
  return {"labelled": {"images": {"image": images(B)},
                       "label": BANK_LABELS[index].astype(np.int32), "index": index},
          "unlabelled": {"images": {"weak": images(MU * B), "strong": images(MU * B)},
                         "true_label": rs.randint(0, NUM_CLASSES, MU * B).astype(np.int32)}}


def _setup(mesh, **method):
  """Method, TrainState (bank sharded by the method's rules) and a global batch."""
  method_obj = methods.get_method("simmatch")(_config(**method), _info())
  method_obj.validate()
  batch = sharding.global_batch(_batch(), mesh)
  variables, method_state = jax.jit(method_obj.init)(jax.random.PRNGKey(0), batch)

  def sharpen(path, p):  # larger logits so confidences spread around the threshold
    return p * 30.0 if jax.tree_util.keystr(path).startswith("['head']") else p

  params = jax.tree_util.tree_map_with_path(sharpen, variables["params"])
  noise = jax.random.normal(jax.random.PRNGKey(1), ())
  target = jax.tree.map(lambda p: p * (1.0 + 0.1 * noise), params)
  shardings = sharding.tree_shardings({"method_state": method_state}, mesh,
                                      method_obj.state_sharding_rules())
  method_state = jax.device_put(method_state, shardings["method_state"])
  state = TrainState.create(params=params, batch_stats=variables["batch_stats"],
                            target_params=target, method_state=method_state,
                            rng=jax.random.PRNGKey(3))
  return method_obj, state, batch


@pytest.fixture(scope="module", params=["student_teacher", "temporal_ensemble"])
def setup(request, mesh8):
  return _setup(mesh8, variant=request.param)


def _run(loss_fn, state, batch, step):
  return loss_fn(state.params, batch, state.replace(step=jnp.asarray(step, jnp.int32)))


@functools.partial(jax.jit, static_argnums=0)
def _jit_apply(model, variables, images):
  return model.apply(variables, images, train=True, mutable=["batch_stats"])[0]


def _apply(method_obj, params, batch_stats, images):
  logits, embeddings = _jit_apply(method_obj.model,
                                  {"params": params, "batch_stats": batch_stats}, images)
  return np.asarray(logits, np.float64), np.asarray(embeddings, np.float64)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _reference(method_obj, state, batch, *, variant, cfg, instance_on):
  """SimMatch Alg. 1 / Eq. 1-12 from first principles in float64."""
  host = jax.device_get
  params, target = host(state.params), host(state.target_params)
  x_l = np.asarray(batch["labelled"]["images"]["image"])
  u_w = np.asarray(batch["unlabelled"]["images"]["weak"])
  u_s = np.asarray(batch["unlabelled"]["images"]["strong"])
  y = np.asarray(batch["labelled"]["label"])
  n_l, n_u = len(x_l), len(u_w)
  if variant == "student_teacher":
    logits, emb = _apply(method_obj, params, host(state.batch_stats),
                         np.concatenate([x_l, u_s]))
    t_logits, t_emb = _apply(method_obj, target, host(state.target_batch_stats),
                             np.concatenate([x_l, u_w]))
    logits_l, logits_s, z_s = logits[:n_l], logits[n_l:], emb[n_l:]
    logits_w, z_w, z_l = t_logits[n_l:], t_emb[n_l:], t_emb[:n_l]
  else:
    logits, emb = _apply(method_obj, params, host(state.batch_stats),
                         np.concatenate([x_l, u_w, u_s]))
    logits_l, logits_w, logits_s = logits[:n_l], logits[n_l:n_l + n_u], logits[n_l + n_u:]
    z_l, z_w, z_s = emb[:n_l], emb[n_l:n_l + n_u], emb[n_l + n_u:]
  bank = _normalize(np.asarray(host(state.method_state["bank"].embeddings), np.float64))
  bank_labels = np.asarray(host(state.method_state["bank"].labels))
  p_w = _softmax(logits_w)
  p_w = p_w / p_w.mean(0)  # DA: the window holds only this batch's mean
  p_w /= p_w.sum(-1, keepdims=True)
  t = cfg["temperature"]
  q_w = _softmax(_normalize(z_w) @ bank.T / t)
  q_hat = q_w * p_w[:, bank_labels]  # Eq. 7-8
  q_hat /= q_hat.sum(-1, keepdims=True)
  q_agg = np.stack([q_w[:, bank_labels == c].sum(-1) for c in range(NUM_CLASSES)], -1)
  p_hat = cfg["alpha"] * p_w + (1 - cfg["alpha"]) * q_agg  # Eq. 9-10
  target_p = p_hat if instance_on else p_w
  log_p_s = np.log(_softmax(logits_s))
  mask = target_p.max(-1) > cfg["threshold"]
  loss_u = np.mean(mask * -(target_p * log_p_s).sum(-1))
  loss_in = np.mean(-(q_hat * np.log(_softmax(_normalize(z_s) @ bank.T / t))).sum(-1))
  loss_s = np.mean(-np.log(_softmax(logits_l))[np.arange(n_l), y])
  total = loss_s + cfg["lambda_u"] * loss_u + cfg["lambda_in"] * instance_on * loss_in
  new_bank = bank.copy()
  index = np.asarray(batch["labelled"]["index"])
  if variant == "student_teacher":
    new_bank[index] = _normalize(z_l)
  else:
    m = cfg["bank_momentum"]
    new_bank[index] = _normalize(m * bank[index] + (1 - m) * _normalize(z_l))
  return dict(loss=total, loss_u=loss_u, loss_in=loss_in, loss_s=loss_s, bank=new_bank,
              p_w_mean=p_w.mean(0), mask=mask, p_w_raw_mean=_softmax(logits_w).mean(0),
              pseudo=target_p.argmax(-1), confidence=target_p.max(-1))


def test_loss_and_state_match_reference(setup):
  method_obj, state, batch = setup
  cfg = method_obj.config.method
  variant = cfg.variant
  # A threshold between two confidences: some examples kept, some not (set
  # before the jitted loss is first traced; the config is read at trace time).
  confidences = np.sort(_reference(method_obj, state, batch, variant=variant, cfg=cfg,
                                   instance_on=True)["confidence"])
  middle = len(confidences) // 2
  cfg.threshold = float(confidences[middle - 1] + confidences[middle]) / 2
  loss_fn = jax.jit(lambda p, b, s: method_obj.loss_fn(p, b, state=s,
                                                       rng=jax.random.PRNGKey(2)))
  for step, instance_on in ((STEPS_PER_EPOCH + 3, True), (0, False)):
    loss, aux = _run(loss_fn, state, batch, step)
    ref = _reference(method_obj, state, batch, variant=variant, cfg=cfg,
                     instance_on=instance_on)
    np.testing.assert_allclose(float(loss), ref["loss"], rtol=2e-4)
    np.testing.assert_allclose(float(aux.metrics["loss_in"]), ref["loss_in"], rtol=2e-4)
    np.testing.assert_allclose(float(aux.metrics["loss_u"]), ref["loss_u"], rtol=2e-4,
                               atol=1e-6)
    assert float(aux.metrics["instance_on"]) == float(instance_on)
    np.testing.assert_allclose(float(aux.metrics["pl_mask_rate"]), ref["mask"].mean())
    true = np.asarray(batch["unlabelled"]["true_label"])
    np.testing.assert_allclose(float(aux.metrics["pl_accuracy"]),
                               np.mean(ref["pseudo"] == true), atol=1e-6)
    if instance_on:
      assert 0.0 < ref["mask"].mean() < 1.0
  bank = aux.method_state["bank"]
  np.testing.assert_allclose(np.asarray(bank.embeddings), ref["bank"], atol=2e-5)
  np.testing.assert_array_equal(np.asarray(bank.labels), BANK_LABELS)
  window = aux.method_state["da"]
  assert int(window.count) == 1
  np.testing.assert_allclose(np.asarray(window.batch_means[0]), ref["p_w_raw_mean"],
                             atol=1e-6)
  # The bank is sharded on its slot axis, in and out of the step.
  assert state.method_state["bank"].embeddings.sharding.spec[0] == "data"
  assert bank.embeddings.sharding.spec[0] == "data"


def test_gradients_stop_at_teacher_and_gate_instance_head(setup):
  method_obj, state, batch = setup

  def loss(params, images, step):
    b = dict(batch, unlabelled=dict(batch["unlabelled"], images=images))
    s = state.replace(step=step)
    return method_obj.loss_fn(params, b, state=s, rng=jax.random.PRNGKey(2))[0]

  grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
  images = dict(batch["unlabelled"]["images"])
  head_norm = lambda g: float(optax.tree.norm(g["embedding_head"]))
  param_grads, image_grads = grad_fn(state.params, images, jnp.asarray(0))
  assert head_norm(param_grads) == 0.0  # first epoch: no instance loss
  param_grads, image_grads = grad_fn(state.params, images, jnp.asarray(STEPS_PER_EPOCH))
  assert head_norm(param_grads) > 0.0
  assert float(jnp.abs(image_grads["strong"]).max()) > 0.0
  if method_obj.variant == "student_teacher":  # the weak view goes to the teacher only
    assert float(jnp.abs(image_grads["weak"]).max()) == 0.0


def test_eval_logits_and_features(setup):
  method_obj, state, batch = setup
  images = batch["labelled"]["images"]["image"]
  logits = method_obj.eval_logits(state.variables, images)
  features = method_obj.eval_features(state.variables, images)
  assert logits.shape == (B, NUM_CLASSES) and features.shape == (B, 8)


def _head_outputs(method_obj, seed=5):
  """Init the network; (params, batch_stats, train-mode features and embeddings)."""
  images = np.random.RandomState(seed).normal(size=(6, SIZE, SIZE, 1)).astype(np.float32)
  model = method_obj.model
  variables = model.init({"params": jax.random.PRNGKey(seed)}, images, train=False)
  (_, embeddings), _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
  features, _ = model.apply(variables, images, train=True, mutable=["batch_stats"],
                            method=lambda module, x, train: module.backbone(x, train=train))
  return variables, np.asarray(features, np.float64), np.asarray(embeddings, np.float64)


def test_projection_head_is_linear_relu_linear_without_batch_norm():
  """The official SimMatch head: nn.Linear -> ReLU -> nn.Linear (no BN), by default."""
  method_obj = methods.get_method("simmatch")(_config(), _info())  # no head key given
  variables, features, embeddings = _head_outputs(method_obj)
  head = variables["params"]["embedding_head"]
  assert set(head) == {"dense1", "dense2"}
  assert "embedding_head" not in variables["batch_stats"]
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  assert not [p for p, _ in flat if "embedding_head" in jax.tree_util.keystr(p)
              and "batch_stats" in jax.tree_util.keystr(p)]
  w1, b1, w2, b2 = (np.asarray(head[layer][k], np.float64)
                    for layer in ("dense1", "dense2") for k in ("kernel", "bias"))
  assert w1.shape == (8, 32) and w2.shape == (32, 6)
  # Train mode: a BN layer would normalise the hidden units over the batch.
  want = np.maximum(features @ w1 + b1, 0.0) @ w2 + b2
  np.testing.assert_allclose(embeddings, want, rtol=1e-4, atol=1e-5)


def test_projection_head_batch_norm_option():
  method_obj = methods.get_method("simmatch")(_config(embedding_batch_norm=True), _info())
  variables, features, embeddings = _head_outputs(method_obj)
  assert set(variables["params"]["embedding_head"]) == {"dense1", "bn1", "dense2"}
  assert "bn1" in variables["batch_stats"]["embedding_head"]
  head = variables["params"]["embedding_head"]
  w1, b1, w2, b2 = (np.asarray(head[layer][k], np.float64)
                    for layer in ("dense1", "dense2") for k in ("kernel", "bias"))
  plain = np.maximum(features @ w1 + b1, 0.0) @ w2 + b2
  assert not np.allclose(embeddings, plain, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("get_config", [
    lambda: simmatch_r50.get_config("labels=1pct"),
    lambda: simmatch_r50.get_config("labels=10pct,runlocal"),
    lambda: simmatch_cifar.get_config("dataset=cifar100,labels=400"),
])
def test_paper_configs_use_the_official_head(get_config):
  config = get_config()
  assert config.method.embedding_batch_norm is False
  method_obj = methods.get_method("simmatch")(config, _info())
  assert method_obj.model.embedding_batch_norm is False
  # The official warm-up: the instance terms start after the first (scaled) epoch.
  assert config.method.instance_warmup_epochs > 0


@pytest.mark.parametrize("arg", ["labels=40", "labels=40,variant=student_teacher"])
def test_fmnist_config_keeps_the_validation_chosen_bn_head(arg):
  config = simmatch_fmnist.get_config(arg)
  assert config.method.embedding_batch_norm is True
  method_obj = methods.get_method("simmatch")(config, _info())
  assert method_obj.model.embedding_batch_norm is True
  # The official warm-up: the instance terms start after the first (scaled) epoch.
  assert config.method.instance_warmup_epochs > 0


@pytest.mark.parametrize("change,match", [
    ({"threshold": 1.5}, r"method.threshold=1.5 must be in \[0, 1\]"),
    ({"threshold": -0.1}, r"method.threshold=-0.1"),
    ({"variant": "queue"}, "method.variant='queue'"),
    ({"p_strategy": "sharpening"}, "method.p_strategy='sharpening'"),
    ({"bank_momentum": 1.0}, "bank_momentum"),
    ({"temperature": 0.0}, "temperature"),
])
def test_bad_method_config(change, match):
  with pytest.raises(ValueError, match=match):
    methods.get_method("simmatch")(_config(**change), _info()).validate()


def test_bank_smaller_than_classes_fails():
  with pytest.raises(ValueError, match="one slot per labelled image .2. but there are 3 "
                     "classes"):
    methods.get_method("simmatch")(_config(), _info(num_labelled=2)).validate()


def test_unlabelled_batch_not_divisible_by_devices(mesh8):
  config = simmatch_fmnist.get_config("runlocal")
  config.batch_size = 8
  with config.ignore_type():
    config.mu = 3.5  # 8 labelled images are fine, 28 unlabelled are not
  with pytest.raises(ValueError, match=r"mu\*batch_size=28 is not divisible by the 8 "
                     "devices on the 'data' axis; use a multiple of 8"):
    validate_config(config, mesh8)


def test_paper_values():
  r50 = simmatch_r50.get_config("labels=1pct")
  m = r50.method
  assert (m.lambda_u, m.lambda_in, m.temperature, m.alpha, m.threshold) == (10, 5, 0.1,
                                                                            0.9, 0.7)
  assert (r50.mu, r50.batch_size, r50.ema.decay, m.da_window) == (5, 64, 0.999, 256)
  assert m.variant == "student_teacher" and r50.model.name == "resnet50"
  assert (r50.optimizer.name, r50.optimizer.base_lr, r50.optimizer.lr_scaling,
          r50.optimizer.nesterov, r50.optimizer.warmup_epochs, r50.optimizer.schedule,
          r50.optimizer.end_lr, r50.num_epochs) == ("sgd", 0.03, "none", True, 5, "cosine",
                                                    0.0, 400)
  assert r50.data.labels_per_class == 13
  assert simmatch_r50.get_config("labels=10pct").data.labels_per_class == 128
  strong = r50.data.unlabelled_views["strong"]
  assert (strong.name, tuple(strong.area_range), strong.jitter_prob, strong.brightness,
          strong.contrast, strong.saturation, strong.hue, strong.grayscale_prob,
          strong.blur_prob) == ("simclr", (0.2, 1.0), 0.8, 0.4, 0.4, 0.4, 0.1, 0.2, 0.5)

  for dataset, model in (("cifar10", "wrn28_2"), ("cifar100", "wrn28_8")):
    cifar = simmatch_cifar.get_config(f"dataset={dataset},labels=400")
    m = cifar.method
    assert (m.lambda_u, m.lambda_in, m.temperature, m.alpha, m.threshold,
            m.bank_momentum, m.da_window) == (1, 1, 0.1, 0.9, 0.95, 0.7, 32)
    assert m.variant == "temporal_ensemble" and cifar.model.name == model
    assert (cifar.mu, cifar.batch_size, cifar.num_train_steps) == (7, 64, 2 ** 20)
    assert (cifar.optimizer.base_lr, cifar.optimizer.schedule,
            cifar.optimizer.nesterov) == (0.03, "fixmatch_cosine", True)
    assert cifar.data.unlabelled_views["strong"].name == "randaugment"


def test_fmnist_config_shares_split_and_variants():
  from configs import supervised_fmnist
  config = simmatch_fmnist.get_config("labels=40,variant=student_teacher")
  base = supervised_fmnist.get_config("labels=40")
  for key in ("dataset", "label_fraction", "labels_per_class", "split_seed",
              "labelled_in_unlabelled", "image_size"):
    assert config.data[key] == base.data[key], key
  assert config.method.variant == "student_teacher"
  assert simmatch_fmnist.get_config("dataset=folder:/x").data.dataset == "folder:/x"


@pytest.fixture(scope="module")
def learnable_fmnist(tmp_path_factory):
  return fake_data.write_fashion_mnist(tmp_path_factory.mktemp("learnable_fmnist"), seed=5,
                                       learnable=True)


def test_end_to_end_runlocal(learnable_fmnist, tmp_path, monkeypatch):
  config = simmatch_fmnist.get_config("runlocal,labels=perclass2,variant=student_teacher")
  config.data.data_dir = learnable_fmnist
  config.data.image_size = 12
  # Widths (4, 8) can pool to all-zero features: l2_normalize's gradient then blows up.
  config.model.stem_width, config.model.stage_widths = 8, (8, 16)
  config.model.stage_strides = (1, 2)
  config.eval_every_steps = 0
  config.ema.decay = 0.9  # the teacher moves visibly in 6 steps
  config.method.instance_warmup_epochs = 0.2  # instance terms on from step 1
  recording = capture.record_train_steps(monkeypatch)
  results = train_and_evaluate(config, str(tmp_path))
  written = json.load(open(tmp_path / "results.json"))
  assert written["metrics"]["step"] == 6 and written["config"]["method"]["name"] == "simmatch"
  for key in ("eval_top1", "eval_ema_top1", "train_pl_accuracy", "train_pl_mask_rate"):
    assert 0.0 <= results[key] <= 1.0, key
  for key in ("train_loss", "train_loss_in", "train_loss_u", "train_loss_s"):
    assert np.isfinite(results[key]), key
  assert results["train_instance_on"] == 1.0
  logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  norms = [r["train_grad_norm"] for r in logged if "train_grad_norm" in r]
  assert norms and max(norms) < 1e3, norms  # no blow-up through l2_normalize

  states, batches = recording.states, recording.batches
  assert len(states) == 6
  capture.assert_ema_followed(states, lambda update: 0.9)  # the teacher (Eq. 11)
  # Sec. 3.4, student-teacher variant: after a step the bank slots of its labelled
  # images hold the teacher's l2-normalised embeddings of them (EMA params, BN on the
  # statistics of the labelled + weak batch), recomputed here outside the method.
  model = recording.run.method.model
  teacher = jax.jit(lambda variables, images: model.apply(
      variables, images, train=True, mutable=["batch_stats"])[0][1])
  for before, after, batch in zip(states[:-1], states[1:], batches[:-1]):
    x_l, u_w = batch["labelled"]["images"]["image"], batch["unlabelled"]["images"]["weak"]
    embeddings = np.asarray(teacher({"params": before.target_params,
                                     "batch_stats": before.target_batch_stats},
                                    np.concatenate([x_l, u_w])), np.float64)[:len(x_l)]
    embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
    bank = np.asarray(after.method_state["bank"].embeddings, np.float64)
    ids = np.asarray(batch["labelled"]["index"])
    assert len(set(ids.tolist())) > len(ids) // 2
    for slot in set(ids.tolist()):  # a slot written twice in one batch keeps one write
      errors = [np.abs(bank[slot] - embeddings[i]).max() for i in np.flatnonzero(ids == slot)]
      assert min(errors) < 1e-4, (slot, errors)
    untouched = np.setdiff1d(np.arange(len(bank)), ids)
    np.testing.assert_array_equal(
        bank[untouched], np.asarray(before.method_state["bank"].embeddings)[untouched])
