"""The epoch pass: whole-training-set features for methods with `needs_epoch_pass`.

The one train loop calls `EpochPass.maybe_update(state, step)` before every train
step. At the start of an epoch (`step` a multiple of the micro-steps per epoch,
`info.steps_per_epoch` x `grad_accum_steps`) for which `method.epoch_pass_due(epoch)`,
it runs the online eval-mode encoder (`method.epoch_pass_features`, by default
`eval_features`) over the unlabelled stream's images in slot order
(`data.unlabelled_eval_iter()`) and the labelled images (`data.labelled_eval_iter()`;
each only if named in `method.epoch_pass_parts`), and replaces the method state
with `method.epoch_update(...)`, placed in its shardings.

Resume is exact: a checkpoint at an epoch boundary is written after that step and
before the next loop iteration's update, so a resumed run (at the same step, with
the same parameters) does the update once, as the uninterrupted run does; a
checkpoint mid-epoch holds the updated method state and no update runs.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

import jax
import numpy as np
from absl import logging

from semissl.methods.base import EpochFeatures
from semissl.training import sharding


def make_feature_fn(method, *, mesh: jax.sharding.Mesh, state_shardings: Any):
  """Jitted `(state, eval batch) -> {'features', 'id', 'mask'}` of the online weights
  (`method.epoch_pass_features`), replicated (every process reads them whole)."""

  def features(state, batch):
    return {"features": method.epoch_pass_features(state.variables,
                                                   batch["images"]["image"]),
            "id": batch["id"], "mask": batch["mask"]}

  return jax.jit(features, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def features_in_order(feature_fn, state, batches: Iterable[dict], mesh, *,
                      num_examples: int) -> np.ndarray:
  """float32 [num_examples, D]: row p = the features of the example with 'id' p."""
  parts, ids = [], []
  for local_batch in batches:
    out = jax.device_get(feature_fn(state, sharding.global_batch(local_batch, mesh)))
    keep = np.asarray(out["mask"]) > 0
    parts.append(np.asarray(out["features"], np.float32)[keep])
    ids.append(np.asarray(out["id"], np.int64)[keep])
  ids = np.concatenate(ids)
  if len(ids) != num_examples or not np.array_equal(np.sort(ids), np.arange(num_examples)):
    raise RuntimeError(f"epoch pass saw {len(ids)} examples, expected ids 0..{num_examples - 1}.")
  out = np.empty((num_examples, parts[0].shape[-1]), np.float32)
  out[ids] = np.concatenate(parts)
  return out


def epoch_features(feature_fn, state, data, mesh, *,
                   parts=("unlabelled", "labelled")) -> EpochFeatures:
  """`EpochFeatures` of the whole training set with `state`'s online encoder; a part
  not in `parts` gets 0 rows."""
  out = {}
  for part, batches, count in (
      ("unlabelled", data.unlabelled_eval_iter, data.info.num_unlabelled),
      ("labelled", data.labelled_eval_iter, data.info.num_labelled)):
    if part in parts:
      out[part] = features_in_order(feature_fn, state, batches(), mesh, num_examples=count)
  if not out:
    raise ValueError(f"epoch_pass_parts={tuple(parts)} names no part; use 'unlabelled' "
                     "and/or 'labelled'.")
  width = next(iter(out.values())).shape[-1]
  unlabelled = out.get("unlabelled", np.zeros((0, width), np.float32))
  labelled = out.get("labelled", np.zeros((0, width), np.float32))
  return EpochFeatures(unlabelled=unlabelled, labelled=labelled,
                       labelled_labels=np.asarray(data.labelled_labels, np.int32),
                       labelled_slots=np.asarray(data.labelled_unlabelled_slots, np.int64))


class EpochPass:
  """`maybe_update(state, step) -> state` for the train loop (see the module doc)."""

  def __init__(self, method, *, data, mesh: jax.sharding.Mesh, state_shardings: Any,
               steps_per_epoch: int):
    self.method, self.data, self.mesh = method, data, mesh
    self.method_shardings = state_shardings.method_state
    self.steps_per_epoch = max(int(steps_per_epoch), 1)
    self.feature_fn = make_feature_fn(method, mesh=mesh, state_shardings=state_shardings)

  def maybe_update(self, state, step: int):
    """`state` with the epoch's method state if `step` starts a due epoch, else as is."""
    if step % self.steps_per_epoch:
      return state
    epoch = step // self.steps_per_epoch
    if not self.method.epoch_pass_due(epoch):
      return state
    start = time.time()
    features = epoch_features(self.feature_fn, state, self.data, self.mesh,
                              parts=self.method.epoch_pass_parts)
    method_state = self.method.epoch_update(state.method_state, epoch=epoch,
                                            features=features)
    method_state = jax.device_put(method_state, self.method_shardings)
    logging.info("Epoch %d pass (%d + %d images) took %.1fs.", epoch,
                 len(features.unlabelled), len(features.labelled), time.time() - start)
    return state.replace(method_state=method_state)


def make_epoch_pass(method, *, data, mesh, state_shardings, steps_per_epoch: int):
  """An `EpochPass` for methods with `needs_epoch_pass`, else None."""
  if not getattr(method, "needs_epoch_pass", False):
    return None
  return EpochPass(method, data=data, mesh=mesh, state_shardings=state_shardings,
                   steps_per_epoch=steps_per_epoch)
