"""SimCLRv2 stages: pretraining (Eq. 1 + MoCo queue), fine-tuning from head layer k,
distillation (Eq. 2, 3) from a checkpointed teacher, the configs and the chained pipeline."""
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import simclrv2_fmnist, simclrv2_r50
from semissl import models
from semissl.methods import base, distill, simclr
from semissl.training import checkpointing, offline_evaluation, optimizers, sharding
from semissl.training import train_and_evaluate
from semissl.training.setup import create_state
from semissl.training.train_state import TrainState
from tests.data import fake_data
from tests.training import capture

INFO = base.DatasetInfo(num_classes=3, image_shape=(8, 8, 1), num_labelled=8,
                        num_unlabelled=16)
TINY_MODEL = {"name": "tiny_resnet", "stem_width": 4, "stage_widths": (8,),
              "stage_strides": (2,)}
CROP_FLIP = {"name": "crop_flip"}


def _config(**method):
  return ml_collections.ConfigDict({
      "model": dict(TINY_MODEL), "method": method,
      "data": {"labelled_views": {"image": CROP_FLIP},
               "unlabelled_views": {"view1": CROP_FLIP, "view2": CROP_FLIP}}})


def _images(seed, n=8):
  return np.random.RandomState(seed).normal(size=(n, 8, 8, 1)).astype(np.float32)


def _f64(x):
  return np.asarray(x, np.float64)


def _numpy_nt_xent(z_a, z_b, temperature, queue=None):
  """Eq. 1 averaged over the 2N anchors, in float64."""
  normalise = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  z = normalise(np.concatenate([z_a, z_b]))
  n = len(z_a)
  negatives = z if queue is None else np.concatenate([z, normalise(queue)])
  losses = []
  for i in range(2 * n):
    logits = negatives @ z[i] / temperature
    others = np.delete(logits, i)
    losses.append(np.log(np.sum(np.exp(others))) - logits[(i + n) % (2 * n)])
  return np.mean(losses)


def _numpy_distillation(student, teacher, temperature):
  softmax = lambda x: np.exp(x - x.max(1, keepdims=True)) / np.exp(
      x - x.max(1, keepdims=True)).sum(1, keepdims=True)
  return -np.mean(np.sum(softmax(teacher / temperature) * np.log(softmax(student / temperature)),
                         axis=1))


def test_semppl_head_type_loads_the_projector_first_layer():
  """head_type 'semppl' has MLPHead's layer-1 names under 'projector' (SemPPL's paths)."""
  method = simclr.SimCLRFinetune(_config(name="simclr_finetune", head_type="semppl",
                                         head_layers=1, head_hidden_dim=16, finetune_layer=1),
                                 INFO)
  images = _images(6)
  variables = jax.eval_shape(method.init, jax.random.PRNGKey(0),
                             {"labelled": {"images": {"image": images}}})[0]
  projector = jax.eval_shape(functools.partial(models.MLPHead(16, 4).init, train=False),
                             jax.random.PRNGKey(0), jnp.zeros((8, 8)))
  shapes = lambda tree: jax.tree.map(jnp.shape, tree)
  for collection in ("params", "batch_stats"):
    ours = variables[collection]["projector"]
    assert shapes(ours) == {k: shapes(v) for k, v in projector[collection].items() if k in ours}
  assert set(variables["params"]["projector"]) == {"dense1", "bn1"}
  assert variables["params"]["classifier"]["dense"]["kernel"].shape == (16, 3)
  with pytest.raises(ValueError, match="at most 1 for head_type 'semppl'"):
    simclr.head_settings({**simclr.head_defaults(), "head_type": "semppl",
                          "head_layers": 3}.__getitem__)


def _plain_state(variables, method_state=None):
  """A TrainState without optimizer, the EMA target equal to the online variables."""
  return TrainState.create(params=variables["params"], batch_stats=variables["batch_stats"],
                           method_state=method_state, rng=jax.random.PRNGKey(0))


@functools.partial(jax.jit, static_argnums=0)
def _projections(network, variables_list, images):
  """Train-mode projections of `images` under each of the variables (the reference)."""
  return [network.apply(v, images, train=True, mutable=["batch_stats"])[0]["projection"]
          for v in variables_list]


@functools.partial(jax.jit, static_argnums=0)
def _distill_logits(method, state, images):
  """(student train-mode logits, teacher inference logits) of `images` (the reference)."""
  student, _ = method.student.apply(state.variables, images, train=True, mutable=["batch_stats"])
  teacher = method.teacher.apply(state.method_state["teacher"], images, train=False)
  return student["logits"], teacher["logits"]


def _state(method, batch, mesh):
  state, shardings = create_state(method, optax.identity(), rng=jax.random.PRNGKey(0),
                                  example_batch=sharding.global_batch(batch, mesh), mesh=mesh)
  return state, shardings


def _loss(method, state, batch, mesh):
  fn = jax.jit(lambda s, b: method.loss_fn(s.params, b, state=s, rng=jax.random.PRNGKey(1)))
  return fn(state, sharding.global_batch(batch, mesh))


def test_pretrain_loss_is_eq1_over_global_batch_with_queue(mesh8):
  config = _config(name="simclr", temperature=0.5, head_layers=2, head_out_dim=6, queue_size=32)
  method = simclr.SimCLR(config, INFO)
  method.validate()
  batch = {"unlabelled": {"images": {"view1": _images(0), "view2": _images(1)}}}
  state, _ = _state(method, batch, mesh8)
  queue = state.method_state["queue"]
  assert queue.embeddings.shape == (32, 6)
  assert queue.embeddings.sharding.spec == P("data")  # sharded on slots
  # A memory network different from the online one, as after some EMA steps.
  state = state.replace(target_params=jax.tree.map(lambda p: p * 0.7, state.target_params))
  loss, aux = _loss(method, state, batch, mesh8)

  images = np.concatenate([_images(0), _images(1)])
  online, target = _projections(method.network, (state.variables, state.target_variables),
                                images)
  z = _f64(online)
  expected = _numpy_nt_xent(z[:8], z[8:], 0.5, queue=_f64(queue.embeddings))
  # Negatives span the 16 images of all 8 devices; the two directions are summed.
  np.testing.assert_allclose(float(aux.metrics["nt_xent"]), expected, rtol=1e-4)
  np.testing.assert_allclose(float(loss), 2.0 * expected, rtol=1e-4)

  keys = _f64(target)
  new_queue = aux.method_state["queue"]
  np.testing.assert_allclose(_f64(new_queue.embeddings[:16]),
                             keys / np.linalg.norm(keys, axis=1, keepdims=True), atol=1e-5)
  np.testing.assert_array_equal(new_queue.embeddings[16:], queue.embeddings[16:])
  assert int(new_queue.pointer) == 16 and int(new_queue.num_filled) == 16


@pytest.mark.parametrize("k", [0, 1])
def test_finetune_classifier_on_head_layer_k(k):
  method = simclr.SimCLRFinetune(_config(name="simclr_finetune", head_layers=3, head_out_dim=6,
                                         finetune_layer=k), INFO)
  method.validate()
  images, labels = _images(2), np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
  batch = {"labelled": {"images": {"image": images}, "label": labels}}
  variables, _ = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  pretrain = simclr.SimCLR(_config(name="simclr", head_layers=3, head_out_dim=6), INFO)
  pretrained, _ = jax.eval_shape(pretrain.init, jax.random.PRNGKey(0),
                                 {"unlabelled": {"images": {"view1": images}}})
  # Encoder and head have the stage-1 paths and shapes: init_from loads them.
  shapes = lambda tree: jax.tree.map(jnp.shape, tree)
  for collection in ("params", "batch_stats"):
    assert set(variables[collection]) - {"classifier"} == set(pretrained[collection])
    for name in pretrained[collection]:
      assert shapes(variables[collection][name]) == shapes(pretrained[collection][name])

  outputs, intermediates = jax.jit(functools.partial(
      method.network.apply, train=False, capture_intermediates=True))(variables, images)
  hiddens = intermediates["intermediates"]["projection"]["__call__"][0][1]
  classifier = variables["params"]["classifier"]["dense"]
  np.testing.assert_allclose(outputs["logits"],
                             hiddens[k] @ classifier["kernel"] + classifier["bias"], rtol=1e-5,
                             atol=1e-6)
  state = _plain_state(variables)
  grads = jax.jit(jax.grad(lambda p: method.loss_fn(p, batch, state=state,
                                                    rng=jax.random.PRNGKey(1))[0]))(
                                                        variables["params"])
  for layer in range(1, 4):  # the head above layer k gets no gradient
    norm = float(optax.tree.norm(grads["projection"][f"dense{layer}"]))
    assert (norm > 0) == (layer <= k)
  assert float(optax.tree.norm(grads["backbone"])) > 0


def test_frozen_encoder_trains_only_the_classifier():
  """Linear protocol (`frozen_encoder`): eval-mode encoder (batch statistics kept),
  zero gradient for everything but the classifier, logits = f(x) W + b."""
  method = simclr.SimCLRFinetune(_config(name="simclr_finetune", head_layers=0,
                                         finetune_layer=0, frozen_encoder=True), INFO)
  images, labels = _images(3), np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
  batch = {"labelled": {"images": {"image": images}, "label": labels}}
  variables, _ = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  assert set(variables["params"]) == {"backbone", "classifier"}
  # Non-trivial running statistics, so that train-mode batch norm would differ.
  stats = jax.tree.map(lambda x: x + 0.3, variables["batch_stats"])
  state = _plain_state({"params": variables["params"], "batch_stats": stats})
  loss_fn = lambda p: method.loss_fn(p, batch, state=state, rng=jax.random.PRNGKey(1))
  (loss, aux), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
  for kept, given in zip(jax.tree.leaves(aux.batch_stats), jax.tree.leaves(stats)):
    np.testing.assert_array_equal(kept, given)
  assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads["backbone"]))
  assert float(optax.tree.norm(grads["classifier"])) > 0
  # The loss is cross-entropy of a linear map of the eval-mode encoder features.
  features = method.network.backbone.apply(
      {"params": variables["params"]["backbone"], "batch_stats": stats["backbone"]},
      images, train=False)
  dense = variables["params"]["classifier"]["dense"]
  logits = _f64(features) @ _f64(dense["kernel"]) + _f64(dense["bias"])
  logits -= logits.max(-1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(loss, -log_probs[np.arange(8), labels].mean(), rtol=1e-5)


@pytest.mark.parametrize("make,match", [
    (lambda: simclr.SimCLRFinetune(_config(name="simclr_finetune", head_layers=3,
                                           finetune_layer=4), INFO), "outside the projection"),
    (lambda: simclr.SimCLR(ml_collections.ConfigDict({
        "model": TINY_MODEL, "method": {"name": "simclr"},
        "data": {"labelled_views": {}, "unlabelled_views": {"view1": CROP_FLIP}}}), INFO
     ).validate(), "exactly two data.unlabelled_views"),
    (lambda: distill.SimCLRDistill(_config(name="simclr_distill"), INFO).validate(),
     "needs method.teacher_workdir"),
    (lambda: distill.SimCLRDistill(_config(name="simclr_distill", teacher_workdir="x",
                                           teacher_finetune_layer=5), INFO),
     "teacher_finetune_layer=5 is outside"),
])
def test_bad_settings_fail_with_one_line(make, match):
  with pytest.raises(ValueError, match=match) as error:
    make()
  assert "\n" not in str(error.value)


def _distill_config(teacher_workdir, **method):
  settings = dict(name="simclr_distill", teacher_workdir=teacher_workdir, temperature=0.5,
                  teacher_head_layers=3, teacher_head_out_dim=6, teacher_finetune_layer=1)
  config = _config(**(settings | method))
  config.data.unlabelled_views = {"image": CROP_FLIP}
  return config


def test_distill_teacher_from_checkpoint_and_eq2_eq3(tmp_path):
  images, labels = _images(3), np.array([2, 1, 0, 0, 1, 2, 1, 0], np.int32)
  finetune = simclr.SimCLRFinetune(_config(name="simclr_finetune", head_layers=3, head_out_dim=6,
                                           finetune_layer=1), INFO)
  fine_variables, _ = jax.jit(finetune.init)(jax.random.PRNGKey(5), {"labelled": {"images": {
      "image": images}}})
  manager = checkpointing.make_manager(str(tmp_path / "teacher"), save_interval_steps=1)
  checkpointing.save(manager, _plain_state(fine_variables), force=True)
  manager.wait_until_finished()
  manager.close()

  unlabelled = {"images": {"image": _images(4)}, "true_label": labels[::-1].copy()}
  batch = {"unlabelled": unlabelled, "labelled": {"images": {"image": images}, "label": labels}}
  method = distill.SimCLRDistill(_distill_config(str(tmp_path / "teacher"), alpha=0.25), INFO)
  method.validate()
  variables, method_state = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  state = _plain_state(variables, method.load_method_state(
      method_state, load_variables=checkpointing.load_variables_from))
  teacher = state.method_state["teacher"]
  jax.tree.map(np.testing.assert_array_equal, teacher, fine_variables)

  loss_and_grad = jax.jit(jax.value_and_grad(
      lambda p, m, s, b: m.loss_fn(p, b, state=s, rng=jax.random.PRNGKey(1)), has_aux=True),
      static_argnums=1)
  (loss, aux), grads = loss_and_grad(state.params, method, state, batch)
  jax.tree.map(np.testing.assert_array_equal, aux.method_state, state.method_state)  # fixed
  assert float(optax.tree.norm(grads)) > 0  # the student is trained
  student_logits, teacher_logits = map(_f64, _distill_logits(
      method, state, np.concatenate([images, _images(4)])))
  distill_term = _numpy_distillation(student_logits, teacher_logits, 0.5)
  log_probs = student_logits[:8] - np.log(np.exp(student_logits[:8]).sum(1, keepdims=True))
  label_term = -np.mean(log_probs[np.arange(8), labels])
  np.testing.assert_allclose(float(loss), 0.75 * label_term + 0.25 * distill_term, rtol=1e-4)
  np.testing.assert_allclose(float(aux.metrics["distillation"]), distill_term, rtol=1e-4)

  eq2 = distill.SimCLRDistill(_distill_config(str(tmp_path / "teacher")), INFO)
  (loss2, _), _ = loss_and_grad(state.params, eq2, state, {"unlabelled": unlabelled})
  np.testing.assert_allclose(float(loss2), _numpy_distillation(
      *map(_f64, _distill_logits(eq2, state, _images(4))), 0.5), rtol=1e-4)

  for teacher_workdir, settings, match in (
      (str(tmp_path / "nothing"), {}, "method.teacher_workdir: .*has no checkpoint"),
      (str(tmp_path / "teacher"), {"teacher_head_layers": 2}, "method.teacher_workdir: .*shape"),
      (str(tmp_path / "teacher"), {"teacher_model": dict(
          TINY_MODEL, stage_widths=(8, 8), stage_strides=(2, 2))},
       "method.teacher_workdir: .*not in that checkpoint")):
    other = distill.SimCLRDistill(_distill_config(teacher_workdir, **settings), INFO)
    _, abstract = jax.eval_shape(other.init, jax.random.PRNGKey(0), {"unlabelled": unlabelled})
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(ValueError, match=match):
      other.load_method_state(jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract),
          load_variables=checkpointing.load_variables_from)


def test_fmnist_distill_teacher_semppl_is_the_semppl_finetune_network():
  # `teacher=semppl` distils a configs/semppl_fmnist.py fine-tune run: the teacher network
  # the distill config builds must have exactly that run's variables (require_all loading).
  from configs import semppl_fmnist
  info = base.DatasetInfo(num_classes=10, image_shape=(28, 28, 1), num_labelled=40,
                          num_unlabelled=100)
  images = jnp.zeros((2, 28, 28, 1))
  finetune_config = semppl_fmnist.get_config("labels=40,stage=finetune,init_from=/p")
  finetune = simclr.SimCLRFinetune(finetune_config, info)
  saved = jax.eval_shape(lambda: finetune.network.init(jax.random.PRNGKey(0), images,
                                                      train=False))
  for teacher, expected in (("semppl", saved), ("simclrv2", None)):
    config = simclrv2_fmnist.get_config(f"labels=40,stage=distill,teacher={teacher}")
    assert config.model.to_dict() == finetune_config.model.to_dict()
    method = distill.SimCLRDistill(config, info)
    built = jax.eval_shape(lambda m=method: m.teacher.init(jax.random.PRNGKey(0), images,
                                                           train=False))
    shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), dict(tree))
    if expected is not None:
      assert shapes(built) == shapes(expected)
    else:  # SimCLRv2's 3-layer head is another network
      assert shapes(built) != shapes(saved)
  with pytest.raises(ValueError, match="use simclrv2 or semppl"):
    simclrv2_fmnist.get_config("stage=distill,teacher=byol")


def test_fmnist_finetune_protocol_follows_the_label_regime():
  # Chosen on validation at 40 labels (docs/results/diagnostics/simclrv2_40_finetune):
  # SemPPL's App. A.1 at encoder rate 0.001 with few labels, SimCLRv2's own otherwise.
  few = simclrv2_fmnist.get_config("labels=40,stage=finetune")
  assert (few.optimizer.name, few.optimizer.base_lr, few.optimizer.nesterov) == (
      "sgd", 0.001, True)
  assert few.optimizer.lr_multipliers == ((r"^classifier/", 40.0),)
  assert few.method.finetune_layer == 1 and few.method.head_type == "simclr"
  pct = simclrv2_fmnist.get_config("labels=1pct,stage=finetune")
  assert (pct.optimizer.name, pct.optimizer.base_lr) == ("lars", 0.005)
  assert simclrv2_fmnist.get_config("labels=40,stage=finetune,protocol=simclr"
                                    ).optimizer.base_lr == 0.005
  with pytest.raises(ValueError, match="use auto, simclr or semppl"):
    simclrv2_fmnist.get_config("stage=finetune,protocol=linear")


def test_r50_configs_have_paper_values():
  lr = lambda c: optimizers.scaled_learning_rate(c.optimizer, c.batch_size)
  pre = simclrv2_r50.get_config("stage=pretrain")
  assert (pre.method.name, pre.batch_size, pre.num_epochs) == ("simclr", 4096, 800)
  assert math.isclose(lr(pre), 6.4) and pre.optimizer.name == "lars"
  assert pre.optimizer.warmup_epochs / pre.num_epochs == 0.05
  assert pre.optimizer.weight_decay == 1e-4 and pre.optimizer.momentum == 0.9
  assert (pre.method.head_layers, pre.method.queue_size, pre.ema.decay) == (3, 65536, 0.999)
  assert pre.model.name == "resnet50" and pre.model.width_multiplier == 1
  for labels, epochs, k in (("1pct", 60, 1), ("10pct", 30, 1), ("100pct", 30, 0)):
    fine = simclrv2_r50.get_config(f"stage=finetune,labels={labels}")
    assert (fine.method.finetune_layer, fine.num_epochs, fine.batch_size) == (k, epochs, 1024)
    assert math.isclose(lr(fine), 0.16) and fine.optimizer.weight_decay == 0.0
    assert fine.optimizer.warmup_epochs == 0 and fine.data.labelled_views.image.name == "crop_flip"
  big = simclrv2_r50.get_config("stage=finetune,model=r152_3x_sk")
  assert math.isclose(lr(big), 0.064) and big.model.sk == "simclrv2"
  assert big.model.name == "resnet152" and big.model.width_multiplier == 3
  self_distill = simclrv2_r50.get_config("stage=distill")
  assert self_distill.method.temperature == 0.1 and self_distill.num_epochs == 400
  assert math.isclose(lr(self_distill), 6.4) and self_distill.optimizer.weight_decay == 1e-4
  assert self_distill.optimizer.warmup_epochs / self_distill.num_epochs == 0.05
  small = simclrv2_r50.get_config("stage=distill,teacher=r152_3x_sk")
  assert small.method.temperature == 1.0 and small.method.teacher_model.name == "resnet152"
  semppl = simclrv2_r50.get_config("stage=finetune,protocol=semppl")
  assert semppl.optimizer.name == "sgd" and semppl.optimizer.schedule == "step"
  with pytest.raises(ValueError, match="model='r50'"):
    simclrv2_r50.get_config("model=r50")


@pytest.fixture(scope="module")
def tiny_fashion_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tiny_fashion")
  rng = np.random.default_rng(5)
  for prefix, counts in (("train", fake_data.TINY_TRAIN_COUNTS),
                         ("t10k", fake_data.TINY_TEST_COUNTS)):
    images, labels = fake_data.tiny_split(rng, counts)
    fake_data.write_idx(str(directory / f"{prefix}-images-idx3-ubyte.gz"), images)
    fake_data.write_idx(str(directory / f"{prefix}-labels-idx1-ubyte"), labels, compress=False)
  return str(directory)


def _stage_config(stage, data_dir):
  config = simclrv2_fmnist.get_config(f"stage={stage},runlocal,queue=16")
  config.data.data_dir = data_dir
  config.data.image_size = fake_data.TINY_SIZE
  config.data.label_fraction = None
  config.data.labels_per_class = 2
  config.model = ml_collections.ConfigDict(TINY_MODEL)
  config.num_train_steps = 3
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 100  # only the final save
  return config


def test_pipeline_end_to_end(tmp_path, tiny_fashion_dir, monkeypatch):
  workdir = {stage: str(tmp_path / stage) for stage in simclrv2_fmnist.STAGES}
  pre_config = _stage_config("pretrain", tiny_fashion_dir)
  pre = train_and_evaluate(pre_config, workdir["pretrain"])
  assert set(pre) >= {"eval_knn_top1", "eval_ema_knn_top1", "train_nt_xent"}

  fine_config = _stage_config("finetune", tiny_fashion_dir)
  fine_config.init_from = str(tmp_path / "no_such_run")
  with pytest.raises(ValueError, match="no_such_run' has no checkpoint"):
    train_and_evaluate(fine_config, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "checkpoints" / "0")  # failed before training
  fine_config.init_from = workdir["pretrain"]
  recording = capture.record_train_steps(monkeypatch)
  fine = train_and_evaluate(fine_config, workdir["finetune"])
  # Each stage's first step starts from the previous stage's saved encoder.
  capture.assert_started_from(recording.states[0], workdir["pretrain"])

  distill_config = _stage_config("distill", tiny_fashion_dir)
  distill_config.method.teacher_workdir = workdir["finetune"]
  distill_config.init_from = workdir["finetune"]
  final = train_and_evaluate(distill_config, workdir["distill"])
  capture.assert_started_from(recording.states[0], workdir["finetune"])
  for results, stage in ((pre, "pretrain"), (fine, "finetune"), (final, "distill")):
    written = json.load(open(f"{workdir[stage]}/results.json"))["metrics"]
    assert written["step"] == 3
    assert all(np.isfinite(v) for v in written.values() if isinstance(v, float))
    assert all(0.0 <= v <= 1.0 for k, v in results.items() if k.startswith("eval_"))
  assert {"train_distillation", "train_teacher_accuracy"} <= set(final)

  linear = offline_evaluation.linear_evaluation(pre_config, workdir["pretrain"], max_steps=20)
  assert linear["linear_num_train"] == 20
  assert all(0.0 <= linear[k] <= 1.0 for k in ("linear_top1", "ema_linear_top1"))
