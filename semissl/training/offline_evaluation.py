"""Evaluation of a run's checkpoint after training: linear probe and confusion.

* Linear evaluation on frozen features (SimCLRv2 §3, "linear evaluation"): features
  are extracted once, then a softmax-regression classifier is fitted with optax
  L-BFGS on the full feature matrix (`fit_linear_probe`); `linear_evaluation(config,
  workdir)` runs the whole protocol on a checkpoint.
* `classifier_confusion(config, workdir)`: the per-class confusion of a run's
  classifier on the validation split (experiments/confusion.py).
`restore_for_evaluation` is the checkpoint loader both share. The trained protocols
(SemPPL's fine-tune, the linear stage) are configs: configs/protocols.py.

TensorFlow-free: the data pipeline is imported lazily.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from semissl import losses
from semissl.training import checkpointing, setup, sharding, workdirs
from semissl.training.evaluators import extract_features, make_feature_fn
from semissl.training.train_state import TrainState


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
  cross_entropy = losses.softmax_cross_entropy(logits=logits, labels=y)
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

  mesh = setup.make_mesh(config)
  data = data_lib.build_input(
      config.data, batch_size=config.batch_size, mu=config.get("mu", 0),
      eval_batch_size=config.eval_batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  method = setup.build_method(config, setup.dataset_info_of(data, config), mesh=mesh)
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
  state = TrainState.create(
      params=online["params"], batch_stats=online["batch_stats"],
      target_params=target["target_params"], target_batch_stats=target["target_batch_stats"],
      step=jax.device_put(np.int32(0), replicated),
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
