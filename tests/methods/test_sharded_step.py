"""Every registered method: two jitted train steps on 8 devices equal those on 1.

Same init (rng), same two global batches, same optimizer and EMA; the whole
TrainState (params, batch stats, EMA target, optimizer state, method state:
queues, banks, DA windows, distillation teacher) and every reported metric must
agree. The batch is sharded over `data` and the method's state by its own
`state_sharding_rules`, so this checks that no loss depends on the per-device
split (global batch norm, negatives and pseudo-labels over the global batch,
sharded queue / bank writes, the step rng).
"""
import re

import jax
import ml_collections
import numpy as np
import pytest

from semissl import methods
from semissl.methods.base import EpochFeatures
from semissl.training import setup, sharding

NUM_CLASSES = 3
SIZE = 8
B, MU = 8, 2  # one labelled and two unlabelled images per device
NUM_LABELLED = 16  # SimMatch bank slots: 2 per device
NUM_UNLABELLED = 64  # temporal ensemble slots: 8 per device
LABELLED_LABELS = np.arange(NUM_LABELLED) % NUM_CLASSES
TOTAL_STEPS = 10
TINY_RESNET = {"name": "tiny_resnet", "stem_width": 4, "stage_widths": (8,),
               "stage_strides": (2,)}
WEAK = {"name": "crop_flip"}
CLASSIC = {"unlabelled_weight": 2.0, "rampup": "none"}
# Every jit here is compiled without LLVM's optimisation passes (the init compiles ~9x,
# a train step ~2x faster on CPU); the SPMD partitioning under test (HLO) is the same.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
RTOL, ATOL = 1e-4, 1e-4  # see `_assert_trees_close`
SEMPPL_SIZES = {"large1": SIZE, "large2": SIZE, "small1": 6}

# case -> method name, (labelled views, unlabelled views), config.method overrides.
# Thresholds are 0: every pseudo-label is kept, so no mask sits on a float edge.
CASES = {
    "supervised": ("supervised", (("image",), ()), {"label_smoothing": 0.1}),
    "simclr": ("simclr", ((), ("view1", "view2")),
               # 48 slots: the second push of 2 x 16 keys wraps around the ring.
               {"temperature": 0.5, "head_layers": 2, "head_out_dim": 6, "queue_size": 48}),
    "simclr_finetune": ("simclr_finetune", (("image",), ()),
                        {"head_layers": 2, "head_out_dim": 6, "finetune_layer": 1}),
    # The teacher stays at its init (method_state['teacher']): `load_method_state`
    # (reading `teacher_workdir`) is host-side, before the step under test.
    "simclr_distill": ("simclr_distill", (("image",), ("image",)),
                       {"teacher_workdir": "unused", "temperature": 0.5, "alpha": 0.5,
                        "teacher_head_layers": 2, "teacher_head_out_dim": 6,
                        "teacher_finetune_layer": 1}),
    "semppl": ("semppl", (tuple(SEMPPL_SIZES), tuple(SEMPPL_SIZES)),
               {"large_views": ("large1", "large2"), "small_views": ("small1",),
                "queue_capacity": 32, "num_neighbours": 2, "num_negatives": 3,
                "num_semantic_positives": 2, "projector_hidden_dim": 16,
                "projection_dim": 8, "predictor_hidden_dim": 16,
                "vote_thresholds": (0.5, 1.0)}),
    "simmatch_student_teacher": (
        "simmatch", (("image",), ("weak", "strong")),
        {"variant": "student_teacher", "threshold": 0.0, "da_window": 4,
         "embedding_dim": 6, "embedding_hidden_dim": 16, "instance_warmup_epochs": 0}),
    "simmatch_temporal_ensemble": (
        "simmatch", (("image",), ("weak", "strong")),
        {"variant": "temporal_ensemble", "threshold": 0.0, "bank_momentum": 0.7,
         "da_window": 4, "embedding_dim": 6, "embedding_hidden_dim": 16,
         "instance_warmup_epochs": 0}),
    # FixMatch's one-pass step plus ReMixMatch's distribution alignment (its window
    # in the method state): one case for both, each compile costs seconds.
    "fixmatch_remixmatch_da": ("fixmatch", (("image",), ("weak", "strong")),
                               {"threshold": 0.0, "distribution_alignment": True,
                                "da_window": 4}),
    # FixMatch (CTA): CTAugment's bins in the method state, updated probe by probe (a
    # scan over the global batch); the strong views made on each device.
    "fixmatch_cta": ("fixmatch", (("image",), ("weak", "strong")),
                     {"threshold": 0.0, "strong_augment": "ctaugment"}),
    # Semi-ViT: EMA teacher + probabilistic pseudo mixup (mixup or CutMix drawn per
    # example, partners from a random permutation of the global batch).
    "emateacher_pseudo_mixup": (
        "emateacher", (("image",), ("weak", "strong")),
        {"threshold": 0.0, "pseudo_mixup": True, "mixup_alpha": 0.8, "cutmix_alpha": 1.0,
         "label_smoothing": 0.1}),
    "pi_model": ("pi_model", (("first", "second"), ("first", "second")), CLASSIC),
    "mean_teacher": ("mean_teacher", (("student", "teacher"), ("student", "teacher")),
                     CLASSIC),
    "pseudo_label": ("pseudo_label", (("image",), ("weak",)), {**CLASSIC, "threshold": 0.0}),
    # With training signal annealing: its kept-count normaliser is over the global batch.
    "uda": ("uda", (("image",), ("weak", "strong")),
            {**CLASSIC, "threshold": 0.0, "tsa": "exp"}),
    # The exact Hessian power iteration (configs/vat_fmnist.py). The paper's finite
    # difference at xi = 1e-6 sits at float32 resolution (|x| ~ 1), so its r_vadv is
    # dominated by rounding and differs between any two compilations of the same
    # step (per-example cosine 0.33 between the 1- and 8-device directions here);
    # at xi = 0.1 it is well conditioned (cosine 0.9999999).
    # The fixed teacher stays at its init (as simclr_distill's); running class counts
    # over the global batch. Noise off (dropout_rate and drop_path_rate 0): the masks
    # are drawn per row of the student's labelled + strong batch, whose row order
    # (networks.concat_examples: each device's rows together) depends on the device
    # count, so with noise on 8 devices give other examples other masks than 1 (a
    # different, equally valid draw: seen here as ~2e-4 differences in the BN biases).
    "noisy_student": ("noisy_student", (("image",), ("weak", "strong")),
                      {**CLASSIC, "teacher_workdir": "unused", "threshold": 0.0,
                       "dropout_rate": 0.0}),
    # Two networks; the teacher's gradient runs through the student's one-step update.
    "meta_pseudo_labels": ("meta_pseudo_labels", (("image",), ("weak", "strong")),
                           {**CLASSIC, "threshold": 0.0, "inner_lr": 0.1}),
    "vat": ("vat", (("image",), ("image",)),
            {**CLASSIC, "entropy_weight": 0.5, "power_iteration": "hessian"}),
    "vat_finite_difference": ("vat", (("image",), ("image",)), {**CLASSIC, "xi": 0.1}),
    "mixmatch": ("mixmatch", (("image",), ("augment0", "augment1")), CLASSIC),
    # The DA window and CTAugment's bins (updated probe by probe, a scan over the
    # global batch) in the method state; MixUp partners from the whole global batch.
    "remixmatch": ("remixmatch", (("image",), ("weak", "strong0", "strong1")),
                   {**CLASSIC, "num_strong": 2, "da_window": 4}),
    # The permutation pairs examples across devices (global batch).
    "ict": ("ict", (("image",), ("image",)), {**CLASSIC, "mixup_alpha": 1.0}),
    # Two steps: the second reads targets the first wrote into the sharded store.
    "temporal_ensembling": ("temporal_ensembling", (("image",), ("image",)),
                            {**CLASSIC, "alpha": 0.6}),
    # The steps read pseudo-labels and certainties from the sharded store, filled by
    # an epoch update (its k-NN ring search on the run's mesh) before the first step.
    "label_propagation": ("label_propagation", (("image",), ("image",)),
                          {**CLASSIC, "k": 5, "block_size": 4, "warmup_epochs": 0}),
    # Two networks; the divisions come from an epoch update (GMMs on the per-example
    # losses of the epoch features, read as both networks' logits: 6 = 2 x 3 classes);
    # the MixUp permutation pairs rows across devices.
    "dividemix": ("dividemix", (("augment0", "augment1"), ()),
                  {**CLASSIC, "warmup_epochs": 0}),
}


def test_every_registered_method_is_covered():
  assert {name for name, _, _ in CASES.values()} == set(methods.known_methods())


def _config(case):
  name, (labelled_views, unlabelled_views), overrides = CASES[case]
  config = ml_collections.ConfigDict()
  config.batch_size = B
  config.mu = MU if unlabelled_views else 0
  config.mesh = {"data": -1}
  config.method = {"name": name, **overrides}
  config.model = dict(TINY_RESNET)
  view = lambda v: {"name": "simclr", "size": SEMPPL_SIZES[v]} if name == "semppl" else WEAK
  config.data = {"image_size": SIZE,
                 "labelled_views": {v: view(v) for v in labelled_views},
                 "unlabelled_views": {v: view(v) for v in unlabelled_views}}
  config.optimizer = {"name": "sgd", "base_lr": 0.1, "lr_scaling": "none", "momentum": 0.9,
                      "nesterov": True, "weight_decay": 1e-4, "warmup_steps": 1,
                      "schedule": "cosine"}
  config.ema = {"decay": 0.8, "schedule": "constant"}  # the target moves visibly
  return config


def _batch(case, seed):
  """A host (NumPy) global batch with every key the method's loss reads."""
  name, (labelled_views, unlabelled_views), _ = CASES[case]
  rs = np.random.RandomState(seed)
  size = lambda v: SEMPPL_SIZES[v] if name == "semppl" else SIZE
  images = lambda n, views: {v: rs.normal(size=(n, size(v), size(v), 1)).astype(np.float32)
                             for v in views}
  index = rs.permutation(NUM_LABELLED)[:B].astype(np.int32)
  batch = {"labelled": {"images": images(B, labelled_views),
                        "label": LABELLED_LABELS[index].astype(np.int32), "index": index}}
  if unlabelled_views:
    batch["unlabelled"] = {
        "images": images(MU * B, unlabelled_views),
        "index": rs.permutation(NUM_UNLABELLED)[:MU * B].astype(np.int32),
        "true_label": rs.randint(0, NUM_CLASSES, MU * B).astype(np.int32)}
  if name == "simclr":  # label-free pretraining: unlabelled views only
    del batch["labelled"]
  return batch


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _info():
  return methods.DatasetInfo(
      num_classes=NUM_CLASSES, image_shape=(SIZE, SIZE, 1), num_labelled=NUM_LABELLED,
      num_unlabelled=NUM_UNLABELLED, steps_per_epoch=4, total_steps=TOTAL_STEPS,
      labelled_labels=LABELLED_LABELS)


def _run(case, devices, batch, config=None):
  """The abstract run (setup.build: method on this mesh, optimizer, state shardings,
  train step) of `case` on a 'data' mesh over `devices`."""
  mesh = sharding.make_mesh({"data": -1}, devices=devices)
  return setup.build(config or _config(case), _info(), mesh=mesh, abstract=True,
                     example_batch=sharding.global_batch(batch, mesh),
                     rng=jax.random.PRNGKey(0))


def _initial_state(run, batch):
  """The run's TrainState at step 0 on the host, compiled at XLA's lowest backend
  optimisation (FAST_COMPILE); both meshes start from this copy."""
  init_fn = setup.state_init_fn(run.method, run.optimizer, rng=jax.random.PRNGKey(0))
  return _host(jax.jit(init_fn, compiler_options=FAST_COMPILE)(batch))


def _train_two_steps(case, initial_state, devices):
  """Two train steps from `initial_state` (host) on a 'data' mesh over `devices`."""
  batches = [_batch(case, seed) for seed in (0, 1)]
  run = _run(case, devices, batches[0])
  state = jax.device_put(initial_state, run.state_shardings)
  batches = [sharding.global_batch(batch, run.mesh) for batch in batches]
  # The jitted step itself (its shardings and donation), lowered and compiled once.
  train_step = run.train_step.lower(state, batches[0]).compile(compiler_options=FAST_COMPILE)
  metrics = []
  for batch in batches:
    state, step_metrics = train_step(state, batch)
    metrics.append(step_metrics)
  return state, run.state_shardings, metrics, run.method, train_step.as_text()


# Mixup partners drawn from the whole global batch move images between devices by
# design (MixMatch, ICT, Semi-ViT's pseudo mixup); every other step keeps each
# device's images on it (networks.concat_examples).
MIXES_ACROSS_DEVICES = {"mixmatch", "remixmatch", "ict", "emateacher_pseudo_mixup",
                        "dividemix"}
_MOVES = re.compile(r"= \S+ (all-gather|all-to-all|collective-permute)(-start)?\(")
_IMAGES = re.compile(r"\[\d+,(?:%d|6),(?:%d|6),1\]" % (SIZE, SIZE))


def _image_moves(hlo: str) -> list[str]:
  """The compiled step's collectives whose operand or result is a batch of images."""
  return [line.strip()[:160] for line in hlo.split("\n")
          if _MOVES.search(line) and _IMAGES.search(line)]


def _assert_trees_close(ours, reference, what):
  """Floats within RTOL of each leaf's largest magnitude plus ATOL; the rest exact.

  Rounding errors (the 8-device step sums in another order) scale with a leaf's
  magnitude, not with each element's: an element that is a near-cancelling sum
  (e.g. the gradient of a bias followed by batch norm, zero up to rounding) keeps
  the absolute error of its terms. The 1- vs 8-device differences seen here (up to
  ~5e-5 of a leaf's scale, in the small batch-normed heads) are of the same size as
  those between 1-device steps compiled at two XLA optimisation levels.
  """
  def check(path, a, b):
    where = f"{what}{jax.tree_util.keystr(path)}"
    assert a.shape == b.shape and a.dtype == b.dtype, where
    if np.issubdtype(a.dtype, np.floating):
      scale = float(np.max(np.abs(b), initial=0.0))
      np.testing.assert_allclose(a, b, rtol=0, atol=ATOL + RTOL * scale, err_msg=where)
    else:  # steps, pointers, counts, labels, rng keys
      np.testing.assert_array_equal(a, b, err_msg=where)

  assert jax.tree.structure(ours) == jax.tree.structure(reference), what
  jax.tree_util.tree_map_with_path(check, ours, reference)


def _epoch_features():
  """Random whole-training-set features: 12 labelled images in the unlabelled stream
  (slots 0, 3, ..., 33), 4 outside it."""
  rs = np.random.RandomState(7)
  slots = np.where(np.arange(NUM_LABELLED) < 12, 3 * np.arange(NUM_LABELLED), -1)
  return EpochFeatures(
      unlabelled=rs.normal(size=(NUM_UNLABELLED, 6)).astype(np.float32),
      labelled=rs.normal(size=(NUM_LABELLED, 6)).astype(np.float32),
      labelled_labels=LABELLED_LABELS.astype(np.int32), labelled_slots=slots)


def _with_epoch_update(run, state):
  """`state` (host) after the method's epoch update on `run`'s mesh, if it has one."""
  if not run.method.needs_epoch_pass:
    return state
  method_state = run.method.epoch_update(jax.device_put(state.method_state,
                                                        run.state_shardings.method_state),
                                         epoch=1, features=_epoch_features())
  return state.replace(method_state=_host(method_state))


def test_epoch_update_eight_devices_equal_one_device():
  """Label propagation's epoch update (k-NN ring over 8 devices) equals 1 device's."""
  case = "label_propagation"
  batch = _batch(case, 0)
  run1 = _run(case, jax.devices()[:1], batch)
  initial_state = _initial_state(run1, batch)
  one = _with_epoch_update(run1, initial_state).method_state
  eight = _with_epoch_update(_run(case, jax.devices(), batch), initial_state).method_state
  assert int(one["epoch"]) == 1 and float(np.max(one["certainty"])) > 0
  _assert_trees_close(eight, one, "epoch update")


@pytest.mark.parametrize("case", sorted(CASES))
def test_eight_devices_equal_one_device(case):
  assert jax.device_count() == 8, "tests/conftest.py simulates 8 CPU devices"
  batch = _batch(case, 0)
  run1 = _run(case, jax.devices()[:1], batch)
  initial_state = _with_epoch_update(run1, _initial_state(run1, batch))
  state8, shardings8, metrics8, method, hlo8 = _train_two_steps(case, initial_state,
                                                                jax.devices())
  state1, _, metrics1, _, _ = _train_two_steps(case, initial_state, jax.devices()[:1])
  moves = _image_moves(hlo8)
  assert bool(moves) == (case in MIXES_ACROSS_DEVICES), "\n".join(moves)
  metrics8, metrics1 = _host(metrics8), _host(metrics1)
  # The 8-device run really is spread: every leaf on 8 devices as `shardings8` says
  # (replicated, except queues and banks split on their slot axis by the rules).
  for leaf, expected in zip(jax.tree.leaves(state8), jax.tree.leaves(shardings8)):
    assert leaf.sharding.num_devices == 8, case
    assert leaf.sharding.is_equivalent_to(expected, leaf.ndim), (case, leaf.sharding)
  if method.state_sharding_rules():
    assert any(not s.is_fully_replicated for s in jax.tree.leaves(shardings8.method_state))
  host8, host1 = _host(state8), _host(state1)
  assert int(host8.step) == int(host1.step) == 2
  for field in ("params", "batch_stats", "target_params", "target_batch_stats",
                "method_state", "opt_state", "step", "rng"):
    _assert_trees_close(getattr(host8, field), getattr(host1, field), f"{case} {field}")
  _assert_trees_close(metrics8, metrics1, f"{case} metrics")
