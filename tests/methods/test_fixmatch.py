"""FixMatch / EMA-Teacher / probabilistic pseudo mixup: loss wiring vs references,
stop-gradients, options, config checks, paper values, end to end incl. Semi-ViT's
supervised -> semi-supervised stages chained by init_from."""
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import emateacher_fmnist, fixmatch_cifar, fixmatch_fmnist, semivit_vitb
from semissl import losses, methods, models
from semissl.losses import mixing
from semissl.methods import fixmatch
from semissl.training import (checkpointing, offline_evaluation, optimizers, sharding,
                              train_and_evaluate)
from semissl.training.train_state import TrainState
from tests.data import fake_data
from tests.training import capture

NUM_CLASSES, SIZE, B, MU = 3, 8, 8, 2
TINY_RESNET = {"name": "tiny_resnet", "stem_width": 4, "stage_widths": (4, 8),
               "stage_strides": (1, 2)}
LABELLED_LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 2])  # prior (1/2, 1/4, 1/4)


def _config(mu=MU, **method):
  config = ml_collections.ConfigDict()
  config.mu = mu
  config.method = {"name": "fixmatch", "teacher": "self", "threshold": 0.5,
                   "lambda_u": 1.5, **method}
  config.model = dict(TINY_RESNET)
  weak = {"name": "crop_flip"}
  config.data = {"labelled_views": {"image": weak},
                 "unlabelled_views": {"weak": weak, "strong": weak} if mu else {}}
  return config


def _method(mu=MU, **method):
  info = methods.DatasetInfo(num_classes=NUM_CLASSES, image_shape=(SIZE, SIZE, 1),
                             num_labelled=8, num_unlabelled=64, steps_per_epoch=4,
                             total_steps=40, labelled_labels=LABELLED_LABELS)
  method_obj = methods.get_method("fixmatch")(_config(mu, **method), info)
  method_obj.validate()
  return method_obj


def _batch(seed=0):
  rs = np.random.RandomState(seed)
  images = lambda n: rs.normal(size=(n, SIZE, SIZE, 1)).astype(np.float32)
  return {"labelled": {"images": {"image": images(B)},
                       "label": rs.randint(0, NUM_CLASSES, B).astype(np.int32)},
          "unlabelled": {"images": {"weak": images(MU * B), "strong": images(MU * B)},
                         "true_label": rs.randint(0, NUM_CLASSES, MU * B).astype(np.int32)}}


@pytest.fixture(scope="module")
def setup(mesh8):
  """Shared variables: student params, a different teacher, a sharded batch."""
  method_obj = _method()
  batch = sharding.global_batch(_batch(), mesh8)
  variables, _ = jax.jit(method_obj.init)(jax.random.PRNGKey(0), batch)

  def sharpen(path, p):  # larger logits: confidences spread around the threshold
    return p * 30.0 if jax.tree_util.keystr(path).startswith("['head']") else p

  params = jax.tree_util.tree_map_with_path(sharpen, variables["params"])
  noise = jax.random.normal(jax.random.PRNGKey(1), ())
  target = jax.tree.map(lambda p: p * (1.0 + 0.2 * noise), params)
  batch_stats = variables["batch_stats"]
  # Running statistics for the eval-mode teacher that differ from the init.
  target_stats = jax.tree.map(lambda s: s + 0.1, batch_stats)
  return TrainState.create(step=5, params=params, batch_stats=batch_stats,
                           target_params=target, target_batch_stats=target_stats,
                           rng=jax.random.PRNGKey(3)), batch


def _loss(method_obj, state, batch):
  if method_obj.config.method.get("distribution_alignment", False):
    window = losses.init_distribution_alignment_window(
        num_classes=NUM_CLASSES, window_size=method_obj.config.method.da_window)
    state = state.replace(method_state={"da": window})
  fn = jax.jit(lambda p, b, s: method_obj.loss_fn(p, b, state=s, rng=jax.random.PRNGKey(4)))
  return fn(state.params, batch, state)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _jit_logits(model, variables, images, train):
  if train:
    return model.apply(variables, images, train=True, mutable=["batch_stats"])[0]
  return model.apply(variables, images, train=False)


def _logits(method_obj, params, stats, images, *, train=True):
  """Logits in float64 (one compile per model and mode: flax modules hash by value)."""
  variables = {"params": params, "batch_stats": stats}
  return np.asarray(_jit_logits(method_obj.model, variables, images, train), np.float64)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _ce(logits, targets, smoothing=0.0):
  targets = (1 - smoothing) * targets + smoothing / targets.shape[-1]
  return -(targets * np.log(_softmax(logits))).sum(-1)


def _mid_threshold(confidences):
  c = np.sort(confidences)
  return float(c[len(c) // 2 - 1] + c[len(c) // 2]) / 2


def _parts(batch):
  x_l = np.asarray(batch["labelled"]["images"]["image"])
  u_w = np.asarray(batch["unlabelled"]["images"]["weak"])
  u_s = np.asarray(batch["unlabelled"]["images"]["strong"])
  return x_l, u_w, u_s, np.asarray(batch["labelled"]["label"])


def test_fixmatch_one_batch_matches_reference_and_stops_gradient(setup):
  state, batch = setup
  method_obj = _method()
  x_l, u_w, u_s, y = _parts(batch)
  n_l, n_u = len(x_l), len(u_w)
  logits = _logits(method_obj, state.params, state.batch_stats,
                   np.concatenate([x_l, u_w, u_s]))
  probs = _softmax(logits[n_l:n_l + n_u])
  method_obj.config.method.threshold = tau = _mid_threshold(probs.max(-1))
  mask = probs.max(-1) >= tau
  one_hot = np.eye(NUM_CLASSES)
  loss_u = np.mean(mask * _ce(logits[n_l + n_u:], one_hot[probs.argmax(-1)]))
  expected = np.mean(_ce(logits[:n_l], one_hot[y])) + 1.5 * loss_u
  loss, aux = _loss(method_obj, state, batch)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  np.testing.assert_allclose(float(aux.metrics["pl_mask_rate"]), mask.mean())
  assert 0.0 < mask.mean() < 1.0

  # Gradient = that of a first-principles loss with sg on the weak-view targets.
  def reference(params):
    out = method_obj.model.apply({"params": params, "batch_stats": state.batch_stats},
                                 jnp.concatenate([x_l, u_w, u_s]), train=True,
                                 mutable=["batch_stats"])[0]
    weak = jax.nn.softmax(jax.lax.stop_gradient(out[n_l:n_l + n_u]))
    keep = (weak.max(-1) >= tau).astype(jnp.float32)
    targets = jax.nn.one_hot(weak.argmax(-1), NUM_CLASSES)
    l_u = jnp.mean(keep * optax.softmax_cross_entropy(out[n_l + n_u:], targets))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out[:n_l], y)) + 1.5 * l_u

  ours = jax.jit(jax.grad(lambda p: method_obj.loss_fn(
      p, batch, state=state, rng=jax.random.PRNGKey(4))[0]))(state.params)
  theirs = jax.jit(jax.grad(reference))(state.params)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("soft_targets", [False, True])
def test_ema_teacher_matches_reference(setup, soft_targets):
  state, batch = setup
  method_obj = _method(teacher="ema", soft_targets=soft_targets, label_smoothing=0.1,
                       temperature=0.5)
  x_l, u_w, u_s, y = _parts(batch)
  n_l = len(x_l)
  weak = _logits(method_obj, state.target_params, state.target_batch_stats, u_w,
                 train=False)
  student = _logits(method_obj, state.params, state.batch_stats,
                    np.concatenate([x_l, u_s]))
  probs = _softmax(weak / 0.5)
  method_obj.config.method.threshold = tau = _mid_threshold(probs.max(-1))
  mask = probs.max(-1) >= tau
  one_hot = np.eye(NUM_CLASSES)
  targets = probs if soft_targets else one_hot[probs.argmax(-1)]
  expected = (np.mean(_ce(student[:n_l], one_hot[y], 0.1))
              + 1.5 * np.mean(mask * _ce(student[n_l:], targets, 0.1)))
  loss, _ = _loss(method_obj, state, batch)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  if not soft_targets:  # the weak view reaches the loss only through the teacher
    def loss_of_weak(images):
      b = dict(batch, unlabelled=dict(batch["unlabelled"], images=images))
      return method_obj.loss_fn(state.params, b, state=state,
                                rng=jax.random.PRNGKey(4))[0]
    grads = jax.jit(jax.grad(loss_of_weak))(dict(batch["unlabelled"]["images"]))
    assert float(jnp.abs(grads["weak"]).max()) == 0.0
    assert float(jnp.abs(grads["strong"]).max()) > 0.0


def _fixed_draws(monkeypatch, permutation, use_cutmix, box_key):
  """Replaces the method's random draws by given ones; records the call."""
  calls = []

  def draws(**kwargs):
    calls.append(kwargs)
    return jnp.asarray(permutation), jnp.asarray(use_cutmix), box_key

  monkeypatch.setattr(fixmatch, "pseudo_mixup_draws", draws)
  return calls


@pytest.mark.parametrize("choices", ["mixup", "per_example"])
def test_probabilistic_pseudo_mixup_matches_reference(setup, monkeypatch, choices):
  """Semi-ViT Eq. 3-5 wired as the official ProbPseudoMixup, given its draws (a
  permutation, a mode per example, CutMix boxes), against NumPy."""
  state, batch = setup
  method_obj = _method(teacher="ema", pseudo_mixup=True, mixup_alpha=0.8,
                       cutmix_alpha=1.0, switch_prob=0.3, label_smoothing=0.1)
  x_l, u_w, u_s, y = _parts(batch)
  n_l, n_u, size = len(x_l), len(u_w), u_s.shape[1]
  perm = np.random.default_rng(3).permutation(n_u)
  assert not np.array_equal(perm, np.arange(n_u)[::-1])
  use_cutmix = (np.arange(n_u) % 3 == 1) if choices == "per_example" else np.zeros(n_u, bool)
  box_key = jax.random.PRNGKey(11)
  calls = _fixed_draws(monkeypatch, perm, use_cutmix, box_key)
  probs = _softmax(_logits(method_obj, state.target_params, state.target_batch_stats,
                           u_w, train=False))
  conf = probs.max(-1)
  partner = conf[perm]
  method_obj.config.method.threshold = tau = _mid_threshold(np.maximum(conf, partner))
  lam = conf / (conf + partner)  # Semi-ViT Eq. 4
  # CutMix boxes: the box of example i has side round(size sqrt(1 - lam_i)) (both
  # axes, square images) around a centre drawn from the box key; the sides sit
  # away from .5 so float32 / float64 rounding agree.
  sides = size * np.sqrt(1 - lam)
  assert np.all(np.abs(sides - np.floor(sides) - 0.5) > 1e-3)
  inside, _ = mixing.cutmix_box_mask(rng=box_key, mix_ratio=jnp.asarray(lam),
                                            batch_size=n_u, height=size, width=size)
  inside = np.asarray(inside)
  for i in range(n_u):
    if use_cutmix[i] and inside[i].any():
      rows, cols = np.nonzero(inside[i])
      assert inside[i].sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1) <= round(
          sides[i]) ** 2
  one_hot = np.eye(NUM_CLASSES)[probs.argmax(-1)]
  mixed, targets = np.empty_like(u_s, np.float64), np.empty((n_u, NUM_CLASSES))
  for i, j in enumerate(perm):
    if use_cutmix[i]:
      mixed[i] = np.where(inside[i][..., None], u_s[j], u_s[i])
      kept = 1.0 - inside[i].mean()  # CutMix's box-corrected lambda
    else:
      mixed[i] = lam[i] * u_s[i] + (1 - lam[i]) * u_s[j]  # Eq. 3
      kept = lam[i]
    targets[i] = kept * one_hot[i] + (1 - kept) * one_hot[j]
  if choices == "per_example":
    assert 0 < sum(inside[i].any() for i in np.flatnonzero(use_cutmix))
  mask = np.maximum(conf, partner) >= tau  # Eq. 5
  student = _logits(method_obj, state.params, state.batch_stats,
                    np.concatenate([x_l, mixed.astype(np.float32)]))
  expected = (np.mean(_ce(student[:n_l], np.eye(NUM_CLASSES)[y], 0.1))
              + 1.5 * np.mean(mask * _ce(student[n_l:], targets, 0.1)))
  loss, aux = _loss(method_obj, state, batch)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  np.testing.assert_allclose(float(aux.metrics["mixed_mask_rate"]), mask.mean())
  assert 0.0 < mask.mean() < 1.0
  assert len(calls) == 1 and calls[0]["batch_size"] == n_u
  assert (calls[0]["mixup_alpha"], calls[0]["cutmix_alpha"],
          calls[0]["switch_prob"]) == (0.8, 1.0, 0.3)


def test_pseudo_mixup_draws_are_a_random_permutation_and_per_example_modes():
  """The official ProbPseudoMixup draws: np.random.permutation partners and a
  Bernoulli(switch_prob) mode per example (`_params_per_elem`)."""
  batch = 64
  draw = jax.jit(functools.partial(fixmatch.pseudo_mixup_draws, batch_size=batch,
                                   mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5))
  perms, modes = [], []
  for seed in range(20):
    perm, use_cutmix, box_key = draw(rng=jax.random.PRNGKey(seed))
    perm, use_cutmix = np.asarray(perm), np.asarray(use_cutmix)
    np.testing.assert_array_equal(np.sort(perm), np.arange(batch))  # a permutation
    assert use_cutmix.shape == (batch,) and use_cutmix.dtype == bool
    assert 0 < use_cutmix.sum() < batch  # both modes within one batch
    perms.append(perm)
    modes.append(use_cutmix)
  perms, modes = np.stack(perms), np.stack(modes)
  assert not np.any(np.all(perms == np.arange(batch)[::-1], axis=1))  # not the reverse
  assert len({p.tobytes() for p in perms}) == len(perms)  # a new one every key
  # Partner of example 0 spread over the batch; modes Bernoulli(1/2) per example.
  assert len(set(perms[:, 0])) > 8
  assert 0.4 < modes.mean() < 0.6
  # Deterministic in the key.
  again = draw(rng=jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(again[0]), perms[0])
  # One alpha off: that mode never drawn.
  only_cutmix = fixmatch.pseudo_mixup_draws(rng=jax.random.PRNGKey(0), batch_size=8,
                                            mixup_alpha=0.0, cutmix_alpha=1.0,
                                            switch_prob=0.5)[1]
  only_mixup = fixmatch.pseudo_mixup_draws(rng=jax.random.PRNGKey(0), batch_size=8,
                                           mixup_alpha=0.8, cutmix_alpha=0.0,
                                           switch_prob=0.5)[1]
  assert bool(jnp.all(only_cutmix)) and not bool(jnp.any(only_mixup))


def test_labelled_mixup_mode_choice_per_batch():
  keys = jax.random.split(jax.random.PRNGKey(0), 400)
  draws = jax.vmap(lambda k: fixmatch.choose_cutmix(
      rng=k, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5))(keys)
  assert draws.shape == (400,) and 0.4 < float(jnp.mean(draws)) < 0.6
  assert bool(fixmatch.choose_cutmix(rng=keys[0], mixup_alpha=0.0, cutmix_alpha=1.0,
                                     switch_prob=0.5))
  assert not bool(fixmatch.choose_cutmix(rng=keys[0], mixup_alpha=0.8, cutmix_alpha=0.0,
                                         switch_prob=0.5))


def test_remixmatch_distribution_alignment(setup):
  state, batch = setup
  method_obj = _method(distribution_alignment=True, da_window=3)
  x_l, u_w, u_s, y = _parts(batch)
  n_l, n_u = len(x_l), len(u_w)
  logits = _logits(method_obj, state.params, state.batch_stats,
                   np.concatenate([x_l, u_w, u_s]))
  probs = _softmax(logits[n_l:n_l + n_u])
  prior = np.bincount(LABELLED_LABELS, minlength=NUM_CLASSES) / len(LABELLED_LABELS)
  aligned = probs * prior / probs.mean(0)  # the window holds this batch's mean
  aligned /= aligned.sum(-1, keepdims=True)
  method_obj.config.method.threshold = tau = _mid_threshold(aligned.max(-1))
  mask = aligned.max(-1) >= tau
  one_hot = np.eye(NUM_CLASSES)
  expected = (np.mean(_ce(logits[:n_l], one_hot[y]))
              + 1.5 * np.mean(mask * _ce(logits[n_l + n_u:], one_hot[aligned.argmax(-1)])))
  loss, aux = _loss(method_obj, state, batch)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  window = aux.method_state["da"]
  assert int(window.count) == 1 and window.batch_means.shape == (3, NUM_CLASSES)
  np.testing.assert_allclose(np.asarray(window.batch_means[0]), probs.mean(0), atol=1e-6)


def test_labelled_only_stage(setup):
  state, batch = setup
  method_obj = _method(mu=0, label_smoothing=0.1)
  x_l, _, _, y = _parts(batch)
  logits = _logits(method_obj, state.params, state.batch_stats, x_l)
  expected = np.mean(_ce(logits, np.eye(NUM_CLASSES)[y], 0.1))
  loss, aux = _loss(method_obj, state, {"labelled": batch["labelled"]})
  np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
  assert set(aux.metrics) == {"train_top1"}


def test_vit_gets_layer_ids_for_layer_decay():
  assert _method().layer_id_fn is None
  config = _config()
  config.method = {"name": "emateacher"}
  config.model = {"name": "vit_ti", "width": 8, "depth": 2, "num_heads": 2, "mlp_dim": 16,
                  "patch_size": 4, "drop_path_rate": 0.1}
  info = methods.DatasetInfo(num_classes=NUM_CLASSES, image_shape=(SIZE, SIZE, 1),
                             num_labelled=8, num_unlabelled=64)
  method_obj = methods.get_method("emateacher")(config, info)
  assert method_obj.layer_id_fn is models.vit_layer_id and method_obj.teacher == "ema"
  params = jax.jit(lambda x: method_obj.model.init(jax.random.PRNGKey(0), x, train=False))(
      jnp.zeros((2, SIZE, SIZE, 1)))["params"]
  opt = ml_collections.ConfigDict({"name": "adamw", "base_lr": 1e-3, "weight_decay": 0.05,
                                   "layer_decay": 0.5, "layer_decay_num_layers": 2})
  tx, _ = optimizers.make_optimizer(opt, batch_size=256, total_steps=10,
                                    steps_per_epoch=1, layer_id_fn=method_obj.layer_id_fn)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
  # Adam's first step moves every unmasked weight by ~lr * scale: scale 0.5^(3 - id).
  head = float(jnp.abs(updates["head"]["dense"]["kernel"]).mean())
  embed = float(jnp.abs(updates["backbone"]["embedding"]["kernel"]).mean())
  np.testing.assert_allclose(embed / head, 0.5 ** 3, rtol=0.05)


@pytest.mark.parametrize("change,match", [
    ({"teacher": "mean"}, "method.teacher='mean'"),
    ({"threshold": 1.2}, r"method.threshold=1.2 must be in \[0, 1\]"),
    ({"pseudo_mixup": True, "soft_targets": True}, "set soft_targets=False"),
    ({"labelled_mixup": True, "mixup_alpha": 0.0, "cutmix_alpha": 0.0}, "one > 0"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
])
def test_bad_method_config(change, match):
  with pytest.raises(ValueError, match=match):
    _method(**change)


def test_missing_strong_view():
  config = _config()
  config.data.unlabelled_views = {"weak": {"name": "crop_flip"}}
  info = methods.DatasetInfo(num_classes=3, image_shape=(8, 8, 1), num_labelled=8,
                             num_unlabelled=8)
  with pytest.raises(ValueError, match=r"needs data.unlabelled_views \['weak', 'strong'\]"):
    methods.get_method("fixmatch")(config, info).validate()


def test_paper_values():
  for dataset, model, wd in (("cifar10", "wrn28_2", 5e-4), ("cifar100", "wrn28_8", 1e-3)):
    c = fixmatch_cifar.get_config(f"dataset={dataset},labels=400")
    assert (c.method.threshold, c.method.lambda_u, c.method.soft_targets,
            c.method.teacher) == (0.95, 1.0, False, "self")
    assert (c.model.name, c.optimizer.weight_decay) == (model, wd)
    assert (c.batch_size, c.mu, c.num_train_steps, c.ema.decay) == (64, 7, 2 ** 20, 0.999)
    assert (c.optimizer.base_lr, c.optimizer.schedule, c.optimizer.nesterov,
            c.optimizer.momentum) == (0.03, "fixmatch_cosine", True, 0.9)
    assert c.data.labels_per_class == 400 // {"cifar10": 10, "cifar100": 100}[dataset]
    strong = c.data.unlabelled_views["strong"]
    assert (strong.name, strong.num_ops, strong.magnitude, strong.magnitude_mode,
            strong.cutout) == ("randaugment", 2, 10, "uniform", 0.5)

  for labels, lr, tau, drop, erasing, lmix in (("10pct", 1e-3, 0.5, 0.1, 0.25, True),
                                               ("1pct", 1e-3, 0.6, 0.0, 0.0, False)):
    c = semivit_vitb.get_config(f"labels={labels}")
    o = c.optimizer
    assert (o.name, o.base_lr, o.weight_decay, o.b1, o.b2, o.layer_decay, o.lr_scaling,
            o.warmup_epochs, o.schedule) == ("adamw", lr, 0.05, 0.9, 0.999, 0.75,
                                             "linear", 5, "cosine")
    assert (c.batch_size, c.mu, c.method.lambda_u, c.num_epochs, c.ema.decay) == (
        128, 5, 5.0, 100, 0.9999)
    m = c.method
    assert (m.teacher, m.threshold, m.label_smoothing, m.mixup_alpha, m.cutmix_alpha,
            m.pseudo_mixup, m.labelled_mixup) == ("ema", tau, 0.1, 0.8, 1.0, True, lmix)
    assert (c.model.name, c.model.drop_path_rate, c.model.pool) == ("vit_b", drop, "gap")
    strong = c.data.unlabelled_views["strong"]
    assert (strong.ops, strong.magnitude, strong.magnitude_std, strong.magnitude_mode,
            strong.random_erasing) == ("timm_increasing", 9, 0.5, "gaussian", erasing)
    assert c.data.labelled_views["image"].name == "randaugment"
    weak = c.data.unlabelled_views["weak"]
    assert (weak.name, weak.jitter_prob, weak.brightness, weak.saturation) == (
        "simclr", 1.0, 0.4, 0.4)
  sup = semivit_vitb.get_config("stage=supervised,labels=10pct")
  assert (sup.optimizer.base_lr, sup.optimizer.layer_decay, sup.batch_size, sup.mu,
          dict(sup.data.unlabelled_views)) == (2.5e-4, 0.65, 512, 0, {})
  assert semivit_vitb.get_config("stage=supervised,labels=1pct").optimizer.base_lr == 5e-5

  emat = emateacher_fmnist.get_config()
  assert (emat.method.name, emat.method.teacher, emat.method.pseudo_mixup) == (
      "emateacher", "ema", True)
  assert not emateacher_fmnist.get_config("mixup=0").method.pseudo_mixup


@pytest.fixture(scope="module")
def learnable_fmnist(tmp_path_factory):
  return fake_data.write_fashion_mnist(tmp_path_factory.mktemp("learnable_fmnist"), seed=5,
                                       learnable=True)


def test_end_to_end_runlocal(learnable_fmnist, tmp_path, monkeypatch):
  config = fixmatch_fmnist.get_config("runlocal,labels=perclass2")
  config.data.data_dir = learnable_fmnist
  config.data.image_size = 12
  config.model.update(stem_width=4, stage_widths=(4, 8), stage_strides=(1, 2))
  config.eval_every_steps = 0
  config.ema.decay = 0.9  # the runlocal 0.99 moves the EMA model by ~1e-5 per step
  config.optimizer.update(base_lr=0.3, warmup_steps=0)  # visible progress in 6 steps
  recording = capture.record_train_steps(monkeypatch)
  results = train_and_evaluate(config, str(tmp_path))
  written = json.load(open(tmp_path / "results.json"))
  assert written["metrics"]["step"] == 6 and written["config"]["method"]["name"] == "fixmatch"
  for key in ("eval_top1", "eval_ema_top1", "train_pl_accuracy", "train_pl_mask_rate"):
    assert 0.0 <= results[key] <= 1.0, key
  for key in ("train_loss", "train_loss_l", "train_loss_u"):
    assert np.isfinite(results[key]), key
  states = recording.states
  assert len(states) == 6
  capture.assert_ema_followed(states, lambda update: 0.9)
  # On learnable data the labelled loss of the first batch falls (same rng: the same
  # draws), from the first step's parameters to the last step's.
  loss_l = jax.jit(lambda params, state, batch: recording.run.method.loss_fn(
      params, batch, state=state, rng=jax.random.PRNGKey(0))[1].metrics["loss_l"])
  first = float(loss_l(states[0].params, states[0], recording.batches[0]))
  last = float(loss_l(states[-1].params, states[0], recording.batches[0]))
  assert last < first - 0.05, (first, last)
  # The restored checkpoint's confusion agrees with the loop's own evaluation.
  matrices = offline_evaluation.classifier_confusion(config, str(tmp_path), split="eval")
  for prefix, matrix in matrices.items():
    assert matrix.shape == (10, 10)
    np.testing.assert_allclose(np.trace(matrix) / matrix.sum(),
                               results[f"eval_{prefix}top1"], atol=1e-6)
  with pytest.raises(ValueError, match="validation_size"):
    offline_evaluation.classifier_confusion(config, str(tmp_path))  # runlocal: no validation


def _float64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _assert_trees_equal(actual, expected):
  actual, expected = _float64(actual), _float64(expected)
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)


def _assert_ema_step(target, previous_target, params, decay):
  """target == decay * previous_target + (1 - decay) * params, leaf by leaf (NumPy)."""
  expected = jax.tree.map(lambda t, p: decay * t + (1 - decay) * p,
                          _float64(previous_target), _float64(params))
  for a, b in zip(jax.tree.leaves(_float64(target)), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_semivit_stages_chained_by_init_from(learnable_fmnist, tmp_path, monkeypatch):
  decay = 0.5  # Semi-ViT's 0.9999 would hide a wrong EMA below float32 resolution

  def stage_config(stage, init_from=""):
    # 1% recipe: no labelled mixup, drop path or erasing (fewer ops to compile).
    config = semivit_vitb.get_config(
        f"stage={stage},labels=1pct,runlocal,init_from={init_from}")
    config.data.update(data_dir=learnable_fmnist, image_size=12, label_fraction=None,
                       labels_per_class=2)
    config.model.update(width=8, mlp_dim=16, patch_size=4)
    config.update(num_train_steps=2, eval_every_steps=0, checkpoint_every_steps=2)
    config.ema.decay = decay
    config.optimizer.warmup_steps = 0  # the student moves from the first step on
    return config

  recording = capture.record_train_steps(monkeypatch)
  train_and_evaluate(stage_config("supervised"), str(tmp_path / "sup"))
  saved = checkpointing.restore_collections(str(tmp_path / "sup"), ("params",))["params"]
  semi = train_and_evaluate(stage_config("semi", str(tmp_path / "sup")),
                            str(tmp_path / "semi"))
  assert len(recording.states) == 2 and semi["step"] == 2
  first, second = recording.states
  # The semi stage's first step starts from the supervised stage's saved weights, for
  # the student and for the EMA teacher.
  _assert_trees_equal(first.params, saved)
  _assert_trees_equal(first.target_params, saved)
  # Then the teacher follows ema_t = d ema_{t-1} + (1 - d) theta_t, step 1 and step 2
  # (the last from the semi stage's final checkpoint).
  final = checkpointing.restore_collections(str(tmp_path / "semi"),
                                            ("params", "target_params"))
  _assert_ema_step(second.target_params, first.target_params, second.params, decay)
  _assert_ema_step(final["target_params"], second.target_params, final["params"], decay)
  for after, before in ((second.params, first.params), (final["params"], second.params)):
    moved = max(float(np.abs(a - b).max())
                for a, b in zip(jax.tree.leaves(_float64(after)),
                                jax.tree.leaves(_float64(before))))
    assert moved > 1e-5  # the student trained: the EMA checks above are not vacuous
  for key in ("train_loss_u", "train_mixed_mask_rate", "train_loss"):
    assert np.isfinite(semi[key]), key
