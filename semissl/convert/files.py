"""Checkpoint files in (.pth / .safetensors) and out (.safetensors), semissl workdirs.

torch is imported only to read a pickled .pth (`torch.load(weights_only=True)`:
tensors and plain containers, no code); .safetensors go through
`safetensors.numpy`, so exporting needs no torch. Both come with
`pip install 'semissl[convert]'`.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from semissl.convert import common
from semissl.training import checkpointing, workdirs
from semissl.training.train_state import TrainState

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
_WRAPPERS = ("model", "state_dict", "module", "model_state")  # MAE / Lightning / DDP
CONVERSION_FILENAME = "conversion.json"


def _missing(package: str) -> ValueError:
  return ValueError(f"reading or writing these weights needs {package}: pip install "
                    f"'semissl[convert]' (or pip install {package}).")


def check_checkpoint_path(path: str) -> None:
  """One-line error unless `path` is an existing .pth/.pt/.bin/.ckpt/.safetensors file."""
  if not path:
    raise ValueError("--checkpoint is empty; pass the .pth or .safetensors file to convert.")
  if not os.path.isfile(path):
    raise ValueError(f"checkpoint {path} does not exist; pass the .pth or .safetensors file.")
  if not path.endswith(TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,)):
    raise ValueError(f"checkpoint {path} is neither .safetensors nor a torch file "
                     f"({', '.join(TORCH_SUFFIXES)}); rename it or save it as one.")


def _to_numpy(value: Any) -> np.ndarray:
  """A torch tensor or array as NumPy; floating tensors (also bf16 / fp16) float32."""
  if hasattr(value, "detach"):  # torch.Tensor
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  value = np.asarray(value)
  return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value


def _unwrap(loaded: Any, path: str) -> dict[str, Any]:
  """The state dict inside a training checkpoint ({'model': {...}, 'epoch': ...})."""
  while isinstance(loaded, dict):
    inner = [k for k in _WRAPPERS if isinstance(loaded.get(k), dict)]
    if inner and not any(hasattr(v, "shape") for v in loaded.values()):
      loaded = loaded[inner[0]]
      continue
    break
  if not isinstance(loaded, dict) or not any(hasattr(v, "shape") for v in loaded.values()):
    raise ValueError(f"checkpoint {path} holds no state dict of tensors; save "
                     "model.state_dict() (or a dict with it under 'model').")
  strip = "module." if all(k.startswith("module.") for k in loaded) else ""
  return {k[len(strip):]: v for k, v in loaded.items() if hasattr(v, "shape")}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a torch (.pth...) or .safetensors checkpoint; float tensors as
  float32. Unwraps {'model': state_dict} (MAE), {'state_dict': ...} and 'module.'."""
  check_checkpoint_path(path)
  if path.endswith(SAFETENSORS_SUFFIX):
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise _missing("safetensors") from None
    try:
      loaded = load_file(path)
    except Exception as error:  # noqa: BLE001  (bf16 has no NumPy dtype: torch reads it)
      try:
        from safetensors.torch import load_file as torch_load_file
        loaded = torch_load_file(path)
      except ImportError:
        raise ValueError(f"checkpoint {path}: {str(error).splitlines()[0]}; install torch "
                         "to read its dtypes.") from None
  else:
    try:
      import torch
    except ImportError:
      raise _missing("torch") from None
    try:
      loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (unpickling errors have many types)
      cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
      raise ValueError(f"checkpoint {path} does not load with torch.load(weights_only=True) "
                       f"({cause}); re-save its state_dict alone.") from None
  return {k: _to_numpy(v) for k, v in _unwrap(loaded, path).items()}


def write_safetensors(state: dict[str, np.ndarray], path: str,
                      metadata: dict[str, str] | None = None) -> None:
  """Writes {name: array} as a .safetensors file (torch's `load_file` reads it)."""
  try:
    from safetensors.numpy import save_file
  except ImportError:
    raise _missing("safetensors") from None
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path, metadata=metadata)


def check_new_workdir(workdir: str) -> None:
  """One-line error unless `workdir` can receive a converted checkpoint."""
  if not workdir:
    raise ValueError("--workdir is empty; pass the directory to write the semissl "
                     "checkpoint into.")
  path = workdirs.resolve(workdir)
  if path.exists() and not path.is_dir():
    raise ValueError(f"workdir {workdir} is a file; point --workdir at a directory.")
  if checkpointing.has_checkpoint(workdir):
    raise ValueError(f"workdir {workdir} already holds a checkpoint; pick a new --workdir "
                     "(conversions never overwrite one).")
  if "://" not in os.fspath(path):
    parent = os.fspath(path)
    while not os.path.exists(parent):
      parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
      raise ValueError(f"workdir {workdir} is not writable; point --workdir at a directory "
                       "this user can write.")


def write_workdir(*, workdir: str, converted: common.Converted, record: dict[str, Any]
                  ) -> None:
  """A semissl workdir `config.init_from` reads: a step-0 checkpoint (TrainState with
  `params` / `batch_stats`; no optimizer, EMA or method state) + conversion.json."""
  check_new_workdir(workdir)
  tree = common.unflatten(converted.variables)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=tree["params"],
                     batch_stats=tree.get("batch_stats", {}), opt_state={},
                     target_params={}, target_batch_stats={}, method_state={},
                     rng=jax.random.PRNGKey(0))
  manager = checkpointing.make_manager(workdir, max_to_keep=1, async_save=False)
  try:
    checkpointing.save(manager, state, force=True)
    manager.wait_until_finished()
  finally:
    manager.close()
  workdirs.write_json(workdirs.resolve(workdir) / CONVERSION_FILENAME, record)


def read_workdir_variables(workdir: str, *, weights: str = "auto"
                           ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
  """(flat params, flat batch_stats, 'online' | 'ema') of the latest checkpoint.

  `weights`: 'online', 'ema' (the EMA target), or 'auto': the run's headline weights
  (`semissl.load`'s rule: higher validation top-1, else EMA), online where the
  checkpoint has no EMA target (a converted workdir)."""
  if weights not in ("auto", "online", "ema"):
    raise ValueError(f"weights={weights!r}; use 'auto', 'online' or 'ema'.")
  if not workdir or not checkpointing.has_checkpoint(workdir):
    raise ValueError(f"workdir {workdir!r} has no checkpoint; point --workdir at a training "
                     "run or a converted workdir.")
  restored = checkpointing.restore_collections(
      workdir, ("params", "batch_stats", "target_params", "target_batch_stats"))
  if weights == "auto":
    from semissl.inference import loading

    weights = loading.headline_weights(workdir) or "ema"
    if not restored.get("target_params"):
      weights = "online"
  names = ("params", "batch_stats") if weights == "online" else (
      "target_params", "target_batch_stats")
  if not restored.get(names[0]):
    raise ValueError(f"workdir {workdir} has no {weights} weights (no {names[0]}); pass "
                     "--weights=online.")
  to_host = lambda tree: {k: np.asarray(v) for k, v in common.flatten(tree).items()}  # noqa: E731
  return to_host(restored[names[0]]), to_host(restored.get(names[1], {})), weights
