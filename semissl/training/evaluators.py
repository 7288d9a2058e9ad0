"""The train loop's evaluators: `evaluator(state, data) -> metrics` on the eval split
and, with `data.validation_size`, the validation split (`val_*`).

* `ClassifierEvaluator`: top-1 / top-5 of the classifier (`method.eval_logits`), online
  and EMA weights (`eval_top1`, `eval_ema_top1`, ...).
* `KnnMonitor`: for methods without a classifier (SimCLR stage 1, SemPPL pretraining):
  encoder features (`method.eval_features`) of the labelled train images (eval view)
  form the bank, eval images are the queries; cosine similarity, the k most similar
  vote with weight exp(sim / T) (Wu et al. 2018; k=20, T=0.07 as DINO), k=1 is the
  nearest neighbour (`eval_knn_top1`, `eval_ema_knn_top1`).

`make_evaluator(config, ...)` picks one by `config.evaluator` ('classifier' | 'knn';
default: by `method.has_classifier`), as big_vision builds its evaluators from the
config; the loop only calls it. `make_feature_fn` / `extract_features` are shared with
offline evaluation (training/offline_evaluation.py).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from semissl import losses
from semissl.training import sharding
from semissl.training.step import make_eval_step


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


class ClassifierEvaluator:
  """Top-1 / top-5 of the classifier, online and EMA (training/step.make_eval_step)."""

  def __init__(self, method, *, mesh: jax.sharding.Mesh, state_shardings: Any):
    self.mesh = mesh
    self.eval_step = make_eval_step(method, mesh=mesh, state_shardings=state_shardings)

  def __call__(self, state: Any, data: Any) -> dict[str, float]:
    sums_fn = lambda local_batch: self.eval_step(state, sharding.global_batch(local_batch,
                                                                              self.mesh))
    metrics: dict[str, float] = {}
    for prefix, batches in eval_splits(data).items():
      metrics.update(mean_over_batches(sums_fn, batches(), prefix=prefix))
    return metrics


EVALUATORS = ("classifier", "knn")


def make_evaluator(config: ml_collections.ConfigDict, method, *, mesh: jax.sharding.Mesh,
                   state_shardings: Any) -> Callable[[Any, Any], dict[str, float]]:
  """`config.evaluator` ('classifier' | 'knn', with `config.knn_monitor` its k and
  temperature); unset: the classifier if the method has one, else the k-NN monitor."""
  name = config.get("evaluator", None) or ("classifier" if method.has_classifier else "knn")
  if name == "classifier":
    if not method.has_classifier:
      raise ValueError(f"evaluator='classifier', but method {method.name!r} has no "
                       "classifier; use evaluator='knn'.")
    return ClassifierEvaluator(method, mesh=mesh, state_shardings=state_shardings)
  if name == "knn":
    return KnnMonitor(method, mesh=mesh, state_shardings=state_shardings,
                      **dict(config.get("knn_monitor", None) or {}))
  raise ValueError(f"evaluator={name!r}; known: {', '.join(EVALUATORS)}.")

