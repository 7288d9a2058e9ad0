"""Evaluation protocols for representations: k-NN monitor, linear probe, fine-tuning.

* `KnnMonitor`: the online eval of methods without a classifier (SimCLR stage 1,
  SemPPL pretraining): encoder features (`method.eval_features`) of the
  labelled train images (eval view) form the bank, eval images are the queries;
  cosine similarity, the k most similar vote with weight exp(sim / T) (Wu et al.
  2018; k=20, T=0.07 as DINO), k=1 is the nearest neighbour. Reports
  `eval_knn_top1` (online) and `eval_ema_knn_top1` (EMA target), and with a
  validation split (`data.validation_size`) `val_knn_top1`, `val_ema_knn_top1`
  (its images queried against the same bank); `eval_splits` / `mean_over_batches`
  are the split loop the classifier evaluation shares.
* Linear evaluation on frozen features (SimCLRv2 §3, "linear evaluation"):
  features are extracted once, then a softmax-regression classifier is fitted
  with optax L-BFGS on the full feature matrix (`fit_linear_probe`);
  `linear_evaluation(config, workdir)` runs the whole protocol on a checkpoint.
* `classifier_confusion(config, workdir)`: the per-class confusion of a run's
  classifier on the validation split (experiments/confusion.py);
  `restore_for_evaluation` is the checkpoint loader both share.
* Fine-tuning per SemPPL App. A.1: `semppl_finetune_protocol(config)` turns a
  `simclr_finetune` config into that protocol (classifier on the first projector
  layer, SGD Nesterov, encoder and classifier learning rates through an
  optax.multi_transform (`optimizer.lr_multipliers`), x0.2 at 18 and 24 of 30
  epochs, no weight decay); it then runs through `train_and_evaluate`.

TensorFlow-free: `linear_evaluation` imports the data pipeline lazily.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from semissl import losses
from semissl.training import sharding
from semissl.training import workdirs


def knn_class_scores(*, query_features: jax.Array, bank_features: jax.Array,
                     bank_labels: jax.Array, num_classes: int, k: int,
                     temperature: float | None = 0.07) -> jax.Array:
  """Weighted k-NN vote: [Q, num_classes] scores of the queries' k nearest bank entries.

  Similarity is cosine; each of the k most similar bank entries adds
  exp(sim / temperature) (1 if temperature is None) to its label's score.
  k is clipped to the bank size.
  """
  query = losses.l2_normalize(query_features.astype(jnp.float32))
  bank = losses.l2_normalize(bank_features.astype(jnp.float32))
  similarity = query @ bank.T  # [Q, N]
  top_similarity, top_index = jax.lax.top_k(similarity, min(k, bank.shape[0]))
  weights = (jnp.ones_like(top_similarity) if temperature is None
             else jnp.exp(top_similarity / temperature))
  votes = jax.nn.one_hot(bank_labels[top_index], num_classes, dtype=jnp.float32)
  return jnp.einsum("qk,qkc->qc", weights, votes)


def make_feature_fn(method, *, mesh: jax.sharding.Mesh, state_shardings: Any,
                    output: str = "features") -> Callable:
  """Jitted `(state, batch) -> {'features': {'': online, 'ema_': EMA}, 'label', 'mask'}`.

  `batch` is an eval-style batch; the outputs are replicated, so every process
  can read them whole. `output` 'features' (`method.eval_features`) or 'logits'
  (`method.eval_logits`, for methods with a classifier).
  """
  if output not in ("features", "logits"):
    raise ValueError(f"output={output!r}; use 'features' or 'logits'.")
  apply = getattr(method, "eval_" + output)

  def features(state, batch):
    images = batch["images"]["image"]
    return {"features": {"": apply(state.variables, images),
                         "ema_": apply(state.target_variables, images)},
            "label": batch["label"], "mask": batch["mask"]}

  return jax.jit(features, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def extract_features(feature_fn: Callable, state: Any, batches: Iterable[dict],
                     mesh: jax.sharding.Mesh) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Runs `feature_fn` over padded eval-style batches; returns (features, labels).

  Padding (mask 0) is dropped; features is {prefix: float32 [N, D]}.
  """
  features: dict[str, list[np.ndarray]] = {}
  labels = []
  for local_batch in batches:
    out = jax.device_get(feature_fn(state, sharding.global_batch(local_batch, mesh)))
    mask = np.asarray(out["mask"]) > 0
    for prefix, value in out["features"].items():
      features.setdefault(prefix, []).append(np.asarray(value)[mask])
    labels.append(np.asarray(out["label"])[mask])
  return ({prefix: np.concatenate(parts) for prefix, parts in features.items()},
          np.concatenate(labels))


def eval_splits(data: Any) -> dict[str, Callable[[], Iterable[dict]]]:
  """Metric prefix -> batch iterator factory of every split an evaluation covers:
  'eval_' (the eval split) and, when `data.info.num_validation` > 0, 'val_' (the
  validation images held out of the train split)."""
  splits = {"eval_": data.eval_iter}
  if data.info.num_validation:
    splits["val_"] = data.validation_iter
  return splits


def mean_over_batches(sums_fn: Callable[[dict], dict], batches: Iterable[dict], *,
                      prefix: str) -> dict[str, float]:
  """{prefix + name: sum / count} of `sums_fn(local_batch)` = {'count', name: sum}
  (device or host scalars) summed over `batches`."""
  totals: dict[str, float] = {}
  for local_batch in batches:
    sums = jax.device_get(sums_fn(local_batch))
    for key, value in sums.items():
      totals[key] = totals.get(key, 0.0) + float(value)
  count = max(totals.pop("count", 0.0), 1.0)
  return {f"{prefix}{key}": value / count for key, value in totals.items()}


def _replicate(array: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
  """A host array (equal on every process) as a replicated global array."""
  return jax.make_array_from_callback(array.shape, sharding.replicated(mesh),
                                      lambda index: array[index])


class KnnMonitor:
  """Online k-NN top-1 of encoder features (online and EMA) on the eval split
  (and the validation split, if any: see `eval_splits`).

  `monitor(state, data)` re-extracts the labelled bank with the current
  encoder once, then votes for every eval (and validation) image on device. The encoder is compiled
  once (`make_feature_fn`, for bank and queries); the vote is a small jit.
  """

  def __init__(self, method, *, mesh: jax.sharding.Mesh, state_shardings: Any,
               k: int = 20, temperature: float | None = 0.07):
    if k < 1:
      raise ValueError(f"knn_monitor.k={k} must be >= 1.")
    self.mesh = mesh
    self.feature_fn = make_feature_fn(method, mesh=mesh, state_shardings=state_shardings)
    num_classes = method.info.num_classes

    def correct_counts(queries, banks):
      labels, mask = queries["label"], queries["mask"]
      sums = {"count": jnp.sum(mask)}
      for prefix, query in queries["features"].items():
        bank_features, bank_labels = banks[prefix]
        scores = knn_class_scores(query_features=query, bank_features=bank_features,
                                  bank_labels=bank_labels, num_classes=num_classes, k=k,
                                  temperature=temperature)
        sums[prefix + "knn_top1"] = jnp.sum((jnp.argmax(scores, -1) == labels) * mask)
      return sums

    self._correct_counts = jax.jit(correct_counts, out_shardings=sharding.replicated(mesh))

  def __call__(self, state: Any, data: Any) -> dict[str, float]:
    bank, bank_labels = extract_features(self.feature_fn, state, data.labelled_eval_iter(),
                                         self.mesh)
    banks = {prefix: (_replicate(features, self.mesh), _replicate(bank_labels, self.mesh))
             for prefix, features in bank.items()}
    def sums_fn(local_batch):
      queries = self.feature_fn(state, sharding.global_batch(local_batch, self.mesh))
      return self._correct_counts(queries, banks)

    metrics: dict[str, float] = {}
    for prefix, batches in eval_splits(data).items():
      metrics.update(mean_over_batches(sums_fn, batches(), prefix=prefix))
    return metrics


@dataclasses.dataclass(frozen=True)
class LinearProbe:
  """Softmax regression on standardised features: logits = ((x - mean) / std) W + b."""
  weights: np.ndarray  # [D, K]
  bias: np.ndarray  # [K]
  mean: np.ndarray  # [D]
  std: np.ndarray  # [D]

  def logits(self, features: np.ndarray) -> np.ndarray:
    return ((np.asarray(features, np.float32) - self.mean) / self.std) @ self.weights + self.bias


def _probe_objective(params, x, y, l2_penalty):
  logits = x @ params["weights"] + params["bias"]
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return cross_entropy + 0.5 * l2_penalty * jnp.sum(jnp.square(params["weights"]))


@functools.partial(jax.jit, static_argnames=("num_classes", "max_steps"))
def _fit_probe(x, y, l2_penalty, tolerance, *, num_classes: int, max_steps: int):
  """Full-batch optax L-BFGS (zoom line search) until max_steps or |grad| < tolerance."""
  objective = lambda params: _probe_objective(params, x, y, l2_penalty)
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                   value_fn=objective)
    return optax.apply_updates(params, updates), state

  def keep_going(carry):
    _, state = carry
    count = optax.tree.get(state, "count")
    grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
    return (count == 0) | ((count < max_steps) & (grad_norm >= tolerance))

  params = {"weights": jnp.zeros((x.shape[1], num_classes)), "bias": jnp.zeros((num_classes,))}
  params, _ = jax.lax.while_loop(keep_going, step, (params, solver.init(params)))
  return params


def fit_linear_probe(*, features: np.ndarray, labels: np.ndarray, num_classes: int,
                     l2_penalty: float = 1e-4, max_steps: int = 500,
                     tolerance: float = 1e-5) -> LinearProbe:
  """Fits mean cross-entropy + l2_penalty/2 ||W||^2 with optax L-BFGS (full batch).

  Features are standardised with their own mean and std (kept in the probe).
  Stops after `max_steps` or when the gradient norm falls below `tolerance`.
  """
  features = np.asarray(features, np.float32)
  mean = features.mean(0)
  std = np.maximum(features.std(0), 1e-6)
  params = jax.device_get(_fit_probe(
      jnp.asarray((features - mean) / std), jnp.asarray(labels, jnp.int32),
      jnp.float32(l2_penalty), jnp.float32(tolerance), num_classes=num_classes,
      max_steps=max_steps))
  return LinearProbe(weights=np.asarray(params["weights"]), bias=np.asarray(params["bias"]),
                     mean=mean, std=std)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


@dataclasses.dataclass(frozen=True)
class Restored:
  """A run's latest checkpoint, ready for evaluation (`restore_for_evaluation`)."""
  method: Any
  data: Any
  mesh: jax.sharding.Mesh
  state: Any  # TrainState: params / batch_stats (online) and the EMA target
  state_shardings: Any


def restore_for_evaluation(config: ml_collections.ConfigDict, workdir: str) -> Restored:
  """The method, input pipeline and online + EMA variables of the latest checkpoint in
  `workdir` (its run's `config`), without the optimizer state."""
  from semissl import data as data_lib  # lazy: imports TensorFlow
  from semissl import methods
  from semissl.training import checkpointing, train_loop
  from semissl.training.train_state import TrainState

  mesh = sharding.make_mesh(config.get("mesh", None))
  data = data_lib.build_input(
      config.data, batch_size=config.batch_size, mu=config.get("mu", 0),
      eval_batch_size=config.eval_batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  info = train_loop._dataset_info(data.info, config,  # pylint: disable=protected-access
                                  labelled_labels=data.labelled_labels)
  method = methods.get_method(config.method.name)(config, info)
  # Abstract variables carrying their shardings: load_variables_from places the
  # checkpoint's values on them, without compiling an init.
  abstract, _ = jax.eval_shape(method.init, jax.random.PRNGKey(0), next(data.train_iter()))
  shardings = sharding.tree_shardings(abstract, mesh, config.get("sharding_rules", ()))
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  variables = {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})}
  online = checkpointing.load_variables_from(workdir, variables, require_all=True)
  target = checkpointing.load_variables_from(
      workdir, {"target_" + k: v for k, v in variables.items()},
      collections=("target_params", "target_batch_stats"), require_all=True)
  replicated = sharding.replicated(mesh)
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated),
                     params=online["params"], batch_stats=online["batch_stats"], opt_state={},
                     target_params=target["target_params"],
                     target_batch_stats=target["target_batch_stats"], method_state={},
                     rng=jax.device_put(jax.random.PRNGKey(0), replicated))
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  return Restored(method=method, data=data, mesh=mesh, state=state,
                  state_shardings=state_shardings)


def linear_evaluation(config: ml_collections.ConfigDict, workdir: str, *,
                      l2_penalty: float | Sequence[float] = 1e-4,
                      max_steps: int = 500) -> dict[str, float]:
  """Linear evaluation of the latest checkpoint in `workdir` (its run's `config`).

  Encoder features (`method.eval_features`, online and EMA) of the labelled
  train images (set `config.data.label_fraction=1.0` for the all-labels
  protocol) and of the eval split, both with the deterministic eval view; a
  linear probe per feature set. With several `l2_penalty` values the run's
  validation split (`data.validation_size`) chooses one per feature set (the
  eval split is never used to choose). Writes `<workdir>/linear_eval.json`.
  Returns {'linear_top1', 'linear_train_top1', 'linear_l2_penalty',
  'val_linear_top1' (with a validation split), and the same with 'ema_'}.
  """
  penalties = [float(p) for p in np.atleast_1d(l2_penalty)]
  restored = restore_for_evaluation(config, workdir)
  method, data, mesh, state = (restored.method, restored.data, restored.mesh,
                               restored.state)
  info = method.info
  has_validation = bool(data.info.num_validation)
  if len(penalties) > 1 and not has_validation:
    raise ValueError("Choosing among several l2 penalties needs a validation split: set "
                     "config.data.validation_size > 0 (as the run did), or give one value.")
  feature_fn = make_feature_fn(method, mesh=mesh, state_shardings=restored.state_shardings)
  train_features, train_labels = extract_features(feature_fn, state, data.labelled_eval_iter(),
                                                  mesh)
  eval_features, eval_labels = extract_features(feature_fn, state, data.eval_iter(), mesh)
  if has_validation:
    val_features, val_labels = extract_features(feature_fn, state, data.validation_iter(),
                                                mesh)
  results: dict[str, float] = {"linear_num_train": float(len(train_labels))}
  for prefix, features in train_features.items():
    fitted = []
    for penalty in penalties:
      probe = fit_linear_probe(features=features, labels=train_labels,
                               num_classes=info.num_classes, l2_penalty=penalty,
                               max_steps=max_steps)
      val = top1(probe.logits(val_features[prefix]), val_labels) if has_validation else 0.0
      fitted.append((val, penalty, probe))
    val, penalty, probe = max(fitted, key=lambda f: f[0])  # first best on ties
    results[prefix + "linear_top1"] = top1(probe.logits(eval_features[prefix]), eval_labels)
    results[prefix + "linear_train_top1"] = top1(probe.logits(features), train_labels)
    results[prefix + "linear_l2_penalty"] = penalty
    if has_validation:
      results["val_" + prefix + "linear_top1"] = val
  if jax.process_index() == 0:
    workdirs.write_json(workdirs.resolve(workdir) / "linear_eval.json",
                        {"metrics": results, "l2_penalty": penalties,
                         "max_steps": max_steps})
  return results


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """[K, K] int64 counts: row = true class, column = predicted class."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
  return matrix


def classifier_confusion(config: ml_collections.ConfigDict, workdir: str, *,
                         split: str = "validation") -> dict[str, np.ndarray]:
  """Confusion matrices {'': online, 'ema_': EMA} of the latest checkpoint's classifier
  (`method.eval_logits`) on `split`: 'validation' (the held-out train images, for
  diagnosis and choices) or 'eval' (the test split)."""
  restored = restore_for_evaluation(config, workdir)
  data = restored.data
  if split == "validation" and not data.info.num_validation:
    raise ValueError("split='validation' needs a validation split: set "
                     "config.data.validation_size > 0 (as the run did), or use split='eval'.")
  batches = {"validation": getattr(data, "validation_iter", None),
             "eval": data.eval_iter}.get(split)
  if batches is None:
    raise ValueError(f"split={split!r}; use 'validation' or 'eval'.")
  logits_fn = make_feature_fn(restored.method, mesh=restored.mesh,
                              state_shardings=restored.state_shardings, output="logits")
  logits, labels = extract_features(logits_fn, restored.state, batches(), restored.mesh)
  num_classes = restored.method.info.num_classes
  return {prefix: confusion_matrix(labels, np.argmax(value, -1), num_classes)
          for prefix, value in logits.items()}


def semppl_finetune_protocol(config: ml_collections.ConfigDict, *,
                             encoder_base_lr: float = 0.0025,
                             classifier_base_lr: float = 0.2,
                             num_epochs: float = 30.0,
                             head_type: str | None = None) -> ml_collections.ConfigDict:
  """Sets `config` (in place; returned) to SemPPL's fine-tuning protocol (App. A.1).

  `simclr_finetune` with the classifier on the first projector layer (after its
  non-linearity); point `config.init_from` at the pretraining run to load the
  encoder and that layer. `head_type` 'semppl' (the default when `config` is a
  SemPPL config) keeps SemPPL's projector layer 1 (width
  `method.projector_hidden_dim`), 'simclr' SimCLRv2's head. Cross-entropy on
  crop + flip views of the labelled images; SGD with Nesterov momentum 0.9;
  base learning rates (x B/256) for the encoder (and projector layer) and for
  the classifier (their sweep: {0.001..0.005} and {0.025..0.5}) through an
  optax.multi_transform over parameter paths (`optimizer.lr_multipliers`); x0.2
  at 18 and 24 of 30 epochs; no weight decay, no warm-up.
  """
  method = config.method
  head_type = head_type or ("semppl" if method.get("name") == "semppl"
                            else method.get("head_type", "simclr"))
  if head_type == "semppl":
    head = dict(head_type="semppl", head_layers=1,
                head_hidden_dim=int(method.get("projector_hidden_dim", 4096)))
  else:
    head = dict(head_type="simclr", head_layers=int(method.get("head_layers", 3)),
                head_hidden_dim=int(method.get("head_hidden_dim", 0) or 0),
                head_out_dim=int(method.get("head_out_dim", 128)))
  config.method = ml_collections.ConfigDict(dict(name="simclr_finetune", finetune_layer=1,
                                                 **head))
  _labelled_sgd_stage(config, base_lr=encoder_base_lr, weight_decay=0.0,
                      lr_multipliers=((r"^classifier/", classifier_base_lr / encoder_base_lr),),
                      num_epochs=num_epochs, schedule="step")
  config.optimizer.step_decay_fractions = (18.0 / 30.0, 24.0 / 30.0)
  config.optimizer.step_decay_factor = 0.2
  return config


def _labelled_sgd_stage(config: ml_collections.ConfigDict, *, base_lr: float,
                        weight_decay: float, lr_multipliers: tuple, num_epochs: float,
                        schedule: str) -> None:
  """What the fine-tune and linear protocols share: cross-entropy on crop + flip views
  of the labelled images only, SGD with Nesterov momentum 0.9 at `base_lr` x B/256
  (this stage's batch), no warm-up, `num_epochs`, no k-NN monitor."""
  config.data.labelled_views = {"image": {"name": "crop_flip"}}
  config.data.unlabelled_views = {}
  config.mu = 0
  if "knn_monitor" in config:
    config.knn_monitor = None  # the stage has a classifier: top-1 is its eval
  opt = config.optimizer
  opt.name = "sgd"
  opt.momentum = 0.9
  opt.nesterov = True
  opt.weight_decay = weight_decay
  opt.base_lr = base_lr
  opt.lr_scaling = "linear"
  opt.lr_multipliers = lr_multipliers
  opt.schedule = schedule
  opt.warmup_epochs = type(opt.get("warmup_epochs", 0.0))(0)  # keeps a locked field's type
  opt.warmup_steps = 0
  if "lr_batch_size" in opt:
    opt.lr_batch_size = 0  # scale by this stage's batch, not the pretraining's
  config.num_epochs = num_epochs
  config.num_train_steps = 0


def linear_protocol(config: ml_collections.ConfigDict, *, base_lr: float,
                    num_epochs: float, weight_decay: float = 0.0,
                    schedule: str = "cosine") -> ml_collections.ConfigDict:
  """Sets `config` (in place; returned) to the linear evaluation protocol (SemPPL
  App. A.2 / A.3, after BYOL and SimCLR): a randomly initialised linear classifier
  on the frozen encoder's output (`simclr_finetune` with `frozen_encoder`: eval-mode
  batch norm, stop-gradient), cross-entropy on crop + flip views of the labelled
  images, SGD with Nesterov momentum 0.9, `base_lr` x B/256, no warm-up. Only the
  classifier's updates are kept (`optimizer.lr_multipliers` zero the rest, so weight
  decay cannot touch the encoder). Point `config.init_from` at the pretraining run.
  """
  config.method = ml_collections.ConfigDict(dict(
      name="simclr_finetune", head_layers=0, finetune_layer=0, frozen_encoder=True))
  config.knn_monitor = None
  _labelled_sgd_stage(config, base_lr=base_lr, weight_decay=weight_decay,
                      lr_multipliers=((r"^(?!classifier/)", 0.0),), num_epochs=num_epochs,
                      schedule=schedule)
  return config
