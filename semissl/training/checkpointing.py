"""orbax checkpoints: async saves, keep-last-K, resume, `init_from`.

A checkpoint holds the whole TrainState (as a nested dict) under the item
'state'. orbax writes each save into a temporary directory and renames it when
complete, so a crash mid-save never touches the last good checkpoint; only
finalised steps are listed by `latest_step`.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from semissl.training import workdirs
from semissl.training.sharding import path_to_str

STATE_ITEM = "state"


def make_manager(workdir: str, *, max_to_keep: int = 3, save_interval_steps: int = 1,
                 async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
      enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(workdirs.resolve(workdir) / "checkpoints",
                               options=options, item_names=(STATE_ITEM,))


def save(manager: ocp.CheckpointManager, state: Any, *, force: bool = False) -> bool:
  step = int(jax.device_get(state.step))
  if step in manager.all_steps():
    return False
  state_dict = flax.serialization.to_state_dict(state)
  return manager.save(step, args=ocp.args.Composite(
      **{STATE_ITEM: ocp.args.StandardSave(state_dict)}), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> Any:
  """Restores onto the shardings carried by `abstract_state` (the current mesh)."""
  step = manager.latest_step() if step is None else step
  abstract_dict = flax.serialization.to_state_dict(abstract_state)
  restored = manager.restore(step, args=ocp.args.Composite(
      **{STATE_ITEM: ocp.args.StandardRestore(abstract_dict)}))
  return flax.serialization.from_state_dict(abstract_state, restored[STATE_ITEM])


def _flatten(tree: Any) -> dict[str, Any]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_to_str(path): leaf for path, leaf in leaves}


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a finalised checkpoint (cheap: lists step directories)."""
  directory = workdirs.resolve(workdir) / "checkpoints"
  return bool(ocp.utils.checkpoint_steps(directory) if directory.is_dir() else [])


def latest_step(workdir: str) -> int | None:
  """The step of the latest finalised checkpoint in `workdir`, or None (no restore)."""
  directory = workdirs.resolve(workdir) / "checkpoints"
  steps = ocp.utils.checkpoint_steps(directory) if directory.is_dir() else []
  return max(steps) if steps else None


def require_checkpoint(workdir: str, *, what: str = "config.init_from") -> None:
  """One-line error unless `workdir` holds a finalised checkpoint (cheap: no restore)."""
  if not has_checkpoint(workdir):
    raise ValueError(f"{what}={workdir!r} has no checkpoint; run that stage first or point "
                     f"{what} at its workdir.")


def restore_collections(workdir: str, collections=("params", "batch_stats")
                        ) -> dict[str, Any]:
  """The TrainState collections `collections` (e.g. 'params') of the latest checkpoint
  in `workdir`, as saved (no model needed), on the first device; collections the
  checkpoint lacks or holds empty are left out. One-line error without a checkpoint."""
  directory = workdirs.resolve(workdir) / "checkpoints"
  manager = ocp.CheckpointManager(
      directory, item_handlers={STATE_ITEM: ocp.PyTreeCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0,
                                           create=False))
  step = manager.latest_step() if directory.is_dir() else None
  if step is None:
    raise ValueError(f"config.init_from={workdir!r} has no checkpoint; run that stage first "
                     "or point init_from at its workdir.")
  metadata = manager.item_metadata(step)[STATE_ITEM]
  metadata = getattr(metadata, "tree", metadata)
  wanted = {c: metadata[c] for c in collections if c in metadata and metadata[c]}
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                     sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
      wanted, is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
  restored = manager.restore(step, args=ocp.args.Composite(
      **{STATE_ITEM: ocp.args.PyTreeRestore(
          abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True)}))[STATE_ITEM]
  manager.close()
  return dict(restored)


def load_variables_from(workdir: str, current: dict[str, Any],
                        collections=("params", "batch_stats"), *,
                        require_all: bool = False, what: str = "init_from") -> dict[str, Any]:
  """`config.init_from`: copies matching variables from another run's latest checkpoint.

  Every variable of the other run whose path and shape match one of `current`
  replaces it (so a fine-tune stage can load an encoder and keep a fresh head);
  leaves without a counterpart keep their current value. Raises a one-line
  error when the other run has no checkpoint, or when a shared path has
  another shape, or when nothing matches (another architecture), or, with
  `require_all` (e.g. a distillation teacher), when any leaf of `current` has no
  counterpart. `what` names the caller in those errors (`semissl.load`: 'workdir').
  """
  restored = restore_collections(workdir, collections)
  result, matched, missing = {}, 0, []
  for collection, tree in current.items():
    source = _flatten(restored.get(collection, {}))
    def pick(path, leaf, collection=collection, source=source):
      nonlocal matched
      name = path_to_str(path)
      if name not in source:
        missing.append(f"{collection}/{name}")
        return leaf
      value = np.asarray(source[name])
      if value.shape != tuple(leaf.shape):
        raise ValueError(f"{what} {workdir!r}: {collection}/{name} has shape {value.shape}, "
                         f"this model has {tuple(leaf.shape)}; use the same architecture.")
      matched += 1
      return jax.device_put(value.astype(leaf.dtype), leaf.sharding)
    result[collection] = jax.tree_util.tree_map_with_path(pick, tree)
  if not matched:
    raise ValueError(f"{what} {workdir!r}: no variable of that checkpoint matches this model "
                     "(another architecture?).")
  if require_all and missing:
    raise ValueError(f"{what} {workdir!r}: {missing[0]} (and {len(missing) - 1} more) are "
                     "not in that checkpoint; use the same architecture.")
  return result
