"""Meta Pseudo Labels: which network each term trains (the teacher's gradient is UDA's
plus the MPL term's, the student's that of its pseudo-label cross-entropy), batch
statistics of both nets, the student's evaluation, config checks, a runlocal run and
an exact resume."""
import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import meta_pseudo_labels_fmnist
from semissl import methods
from semissl.methods import networks
from semissl.training import train_and_evaluate
from tests.data import fake_data
from tests.methods.test_classic import tiny_fashion_dir  # noqa: F401  (fixture)

K, NUM_LABELLED, NUM_UNLABELLED, SIZE = 4, 6, 8, 8
TINY_RESNET = {"name": "tiny_resnet", "stem_width": 4, "stage_widths": (4,),
               "stage_strides": (2,)}


def _config(name="meta_pseudo_labels", **overrides):
  method = {"name": name, "unlabelled_weight": 2.0, "rampup": "none", "threshold": 0.0,
            "temperature": 0.4}
  if name == "meta_pseudo_labels":
    method.update(inner_lr=0.5, mpl_weight=1.5)
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
  method = methods.get_method("meta_pseudo_labels")(_config(**overrides), _info())
  method.validate()
  rs = np.random.RandomState(0)
  images = lambda n: jnp.asarray(rs.normal(size=(n, SIZE, SIZE, 1)), jnp.float32)
  batch = {"labelled": {"images": {"image": images(NUM_LABELLED)},
                        "label": jnp.arange(NUM_LABELLED) % K},
           "unlabelled": {"images": {"weak": images(NUM_UNLABELLED),
                                     "strong": images(NUM_UNLABELLED)},
                          "true_label": jnp.arange(NUM_UNLABELLED) % K}}
  variables, method_state = method.init(jax.random.PRNGKey(0), batch)
  state = types.SimpleNamespace(step=jnp.asarray(3), batch_stats=variables["batch_stats"],
                                method_state=method_state)
  return method, variables["params"], batch, state


def _loss_and_grads(method, params, batch, state):
  return jax.jit(jax.value_and_grad(
      lambda p: method.loss_fn(p, batch, state=state, rng=jax.random.PRNGKey(1)),
      has_aux=True))(params)


def _allclose(a, b, rtol=1e-4, atol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def _norm(tree):
  return float(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)) ** 0.5)


def test_loss_is_teacher_terms_plus_student_term():
  method, params, batch, state = _setup()
  (loss, aux), grads = _loss_and_grads(method, params, batch, state)
  m = aux.metrics
  np.testing.assert_allclose(
      loss, m["supervised_loss"] + 2.0 * m["unsupervised_loss"] + 1.5 * m["mpl_loss"]
      + m["student_loss"], rtol=1e-5)
  for key in ("mpl_loss", "student_loss", "student_train_top1", "pl_accuracy",
              "student_pl_accuracy", "train_top1"):
    assert np.isfinite(float(m[key])), key
  assert _norm(grads["teacher"]) > 0 and _norm(grads["student"]) > 0


def test_teacher_gradient_is_uda_plus_mpl_only():
  """With eta_S = 0 the MPL term is constant in the teacher: the teacher's gradient is
  exactly UDA's on the teacher network (the student's cross-entropy adds nothing)."""
  method, params, batch, state = _setup(inner_lr=0.0)
  (_, aux), grads = _loss_and_grads(method, params, batch, state)
  uda = methods.get_method("uda")(_config("uda"), _info())
  uda_state = types.SimpleNamespace(step=state.step,
                                    batch_stats=state.batch_stats["teacher"],
                                    method_state={})
  (uda_loss, uda_aux), uda_grads = _loss_and_grads(uda, params["teacher"], batch, uda_state)
  _allclose(grads["teacher"], uda_grads)
  _allclose(aux.batch_stats["teacher"], uda_aux.batch_stats)
  np.testing.assert_allclose(aux.metrics["unsupervised_loss"],
                             uda_aux.metrics["unsupervised_loss"], rtol=1e-5)
  # With eta_S > 0 the teacher also gets the MPL gradient.
  method.config.method.inner_lr = 0.5
  _, mpl_grads = _loss_and_grads(method, params, batch, state)
  assert _norm(jax.tree.map(jnp.subtract, mpl_grads["teacher"], uda_grads)) > 1e-6


def test_student_gradient_is_its_pseudo_label_cross_entropy():
  """grad_student = grad of CE(sg softmax T(strong), S(strong)) with the teacher's
  strong logits from its own labelled + weak + strong pass; the student's running
  statistics come from its strong pass."""
  method, params, batch, state = _setup()
  (_, aux), grads = _loss_and_grads(method, params, batch, state)
  images = batch["unlabelled"]["images"]
  teacher_logits, _ = networks.apply_train(
      method.model, params["teacher"], state.batch_stats["teacher"],
      jnp.concatenate([batch["labelled"]["images"]["image"], images["weak"],
                       images["strong"]]))
  targets = jax.nn.softmax(teacher_logits[NUM_LABELLED + NUM_UNLABELLED:])

  def student_ce(p):
    logits, stats = networks.apply_train(method.student_model, p,
                                         state.batch_stats["student"], images["strong"])
    return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), -1)), stats

  (want_loss, want_stats), want_grads = jax.jit(jax.value_and_grad(
      student_ce, has_aux=True))(params["student"])
  _allclose(grads["student"], want_grads)
  _allclose(aux.batch_stats["student"], want_stats)
  np.testing.assert_allclose(aux.metrics["student_loss"], want_loss, rtol=1e-5)


def test_eval_is_the_student():
  method, params, batch, state = _setup()
  variables = {"params": params, "batch_stats": state.batch_stats}
  images = batch["labelled"]["images"]["image"]
  want = method.student_model.apply({"params": params["student"],
                                     "batch_stats": state.batch_stats["student"]},
                                    images, train=False)
  np.testing.assert_allclose(method.eval_logits(variables, images), want, rtol=1e-6)
  teacher = method.model.apply({"params": params["teacher"],
                                "batch_stats": state.batch_stats["teacher"]},
                               images, train=False)
  assert not np.allclose(teacher, want)  # two networks, independently initialised
  assert method.eval_features(variables, images).shape == (NUM_LABELLED, 4)


def test_student_model_is_configurable():
  student = dict(TINY_RESNET, stage_widths=(6,))
  method, params, batch, state = _setup(student_model=student)
  assert params["student"]["head"]["dense"]["kernel"].shape[0] == 6
  assert params["teacher"]["head"]["dense"]["kernel"].shape[0] == 4
  (loss, _), _ = _loss_and_grads(method, params, batch, state)
  assert np.isfinite(float(loss))


@pytest.mark.parametrize("overrides, match", [
    ({"inner_lr": None}, r"method.inner_lr=None: set the student's one-step"),
    ({"inner_lr": -0.1}, r"method.inner_lr=-0.1: set"),
    ({"mpl_weight": -1.0}, "mpl_weight=-1.0 must be non-negative"),
    ({"tsa": "cosine"}, "tsa='cosine'; use one of"),
])
def test_bad_config_fails_in_one_line(overrides, match):
  method = methods.get_method("meta_pseudo_labels")(_config(**overrides), _info())
  with pytest.raises(ValueError, match=match) as error:
    method.validate()
  assert "\n" not in str(error.value)


def test_missing_inner_lr_fails_in_one_line():
  config = _config()
  del config.method["inner_lr"]
  with pytest.raises(ValueError, match="method.inner_lr=None") as error:
    methods.get_method("meta_pseudo_labels")(config, _info()).validate()
  assert "\n" not in str(error.value)


def test_config_values():
  config = meta_pseudo_labels_fmnist.get_config()
  assert config.method.name == "meta_pseudo_labels"
  assert (config.method.threshold, config.method.temperature,
          config.method.unlabelled_weight, config.method.inner_lr,
          config.method.mpl_weight) == (0.8, 0.4, 1.0, 0.1, 1.0)
  # eta_S is the student's peak learning rate.
  assert config.method.inner_lr == config.optimizer.base_lr * config.batch_size / 256
  assert config.data.unlabelled_views.strong.name == "randaugment"
  assert meta_pseudo_labels_fmnist.get_config("tsa=exp").method.tsa == "exp"


def _runlocal(data_dir, steps):
  config = meta_pseudo_labels_fmnist.get_config("runlocal")
  config.data.update(data_dir=data_dir, image_size=fake_data.TINY_SIZE,
                     label_fraction=None, labels_per_class=2, mean=0.5, std=0.25)
  config.num_train_steps, config.eval_every_steps = steps, 0
  config.checkpoint_every_steps, config.log_every_steps = 2, 1
  return config


def _last_train_metrics(workdir):
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return [r for r in rows if "train_loss" in r][-1]


def test_runlocal_trains_and_resumes_exactly(tiny_fashion_dir, tmp_path):  # noqa: F811
  straight = train_and_evaluate(_runlocal(tiny_fashion_dir, 4), str(tmp_path / "straight"))
  written = json.load(open(tmp_path / "straight" / "results.json"))
  assert written["metrics"]["step"] == 4
  for key in ("eval_top1", "eval_ema_top1"):
    assert 0.0 <= straight[key] <= 1.0
  for key in ("train_loss", "train_mpl_loss", "train_student_loss", "train_pl_accuracy"):
    assert np.isfinite(straight[key]), key
  train_and_evaluate(_runlocal(tiny_fashion_dir, 2), str(tmp_path / "resumed"))
  resumed = train_and_evaluate(_runlocal(tiny_fashion_dir, 4), str(tmp_path / "resumed"),
                               allow_config_change=("num_train_steps",))
  a, b = (_last_train_metrics(tmp_path / name) for name in ("straight", "resumed"))
  assert a["step"] == b["step"] == 4
  for key in ("train_loss", "train_mpl_loss", "train_student_loss",
              "train_unsupervised_loss"):
    np.testing.assert_allclose(b[key], a[key], rtol=1e-6, err_msg=key)
  for key in ("eval_top1", "eval_ema_top1"):
    assert resumed[key] == straight[key], key
