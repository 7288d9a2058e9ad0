"""Device mesh, sharding rules by parameter path, and global batches.

The mesh always gets explicit `Auto` axis types (`jax.make_mesh` defaults to
Explicit axes since jax 0.9). Batches are sharded over `data`; state leaves are
replicated unless a rule (big_vision style: regex on the '/'-joined path) says
otherwise.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# A rule's spec: a PartitionSpec (or tuple of axis names/None per dim), or
# "fsdp": shard the largest dimension divisible by the data-axis size on `data`.
FSDP = "fsdp"


def make_mesh(mesh_config: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh from e.g. {'data': -1} or {'data': -1, 'model': 4}.

  At most one axis may be -1 (all remaining devices). Axis types are Auto, so
  XLA propagates shardings through the step (global batch norm, cross-device
  negatives) without annotations.
  """
  mesh_config = dict(mesh_config or {DATA_AXIS: -1})
  if DATA_AXIS not in mesh_config:
    raise ValueError(f"config.mesh must contain a '{DATA_AXIS}' axis, got {mesh_config}.")
  devices = list(devices if devices is not None else jax.devices())
  names = tuple(mesh_config)
  sizes = [int(s) for s in mesh_config.values()]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh may have at most one -1 axis, got {mesh_config}.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if known <= 0 or len(devices) % known:
    raise ValueError(f"config.mesh {mesh_config} does not divide the {len(devices)} devices.")
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"config.mesh {mesh_config} uses {int(np.prod(sizes))} devices, "
                     f"but {len(devices)} are available; use -1 for the data axis.")
  axis_types = (jax.sharding.AxisType.Auto,) * len(names)
  return jax.make_mesh(tuple(sizes), names, axis_types=axis_types, devices=devices)


def path_to_str(path: tuple[Any, ...]) -> str:
  """'/'-joined names of a tree path (dict keys, dataclass fields, indices)."""
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def _fsdp_spec(shape: tuple[int, ...], axis_size: int) -> P:
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % axis_size == 0 and shape[dim] >= axis_size:
      spec = [None] * len(shape)
      spec[dim] = DATA_AXIS
      return P(*spec)
  return P()


def tree_shardings(tree: Any, mesh: Mesh,
                   rules: Sequence[tuple[str, Any]] = ()) -> Any:
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs).

  The first rule whose regex `re.search`es the leaf's path wins; no match means
  replicated. A rule whose spec does not divide the leaf's shape is an error.
  """
  compiled = [(re.compile(pattern), spec) for pattern, spec in rules]

  def leaf_sharding(path, leaf):
    name = path_to_str(path)
    shape = tuple(np.shape(leaf))
    for pattern, spec in compiled:
      if not pattern.search(name):
        continue
      if spec == FSDP:
        return NamedSharding(mesh, _fsdp_spec(shape, mesh.shape[DATA_AXIS]))
      spec = spec if isinstance(spec, P) else P(*spec)
      for dim, axes in enumerate(spec):
        if axes is None:
          continue
        size = int(np.prod([mesh.shape[a] for a in np.atleast_1d(axes)]))
        if dim >= len(shape) or shape[dim] % size:
          raise ValueError(f"Sharding rule {pattern.pattern!r} -> {spec} does not fit "
                           f"'{name}' of shape {shape}; change the rule or the size.")
      return NamedSharding(mesh, spec)
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over `data`, everything else replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles this process's NumPy shard of each leaf into global jax.Arrays.

  Every process passes its contiguous slice of the global batch; the result is
  sharded over `data` on dim 0 (`jax.make_array_from_process_local_data`).
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def check_divisible(name: str, global_size: int, mesh: Mesh) -> None:
  """One-line error when a global batch cannot be split over the data axis."""
  n = mesh.shape[DATA_AXIS]
  if global_size % n:
    raise ValueError(f"{name}={global_size} is not divisible by the {n} devices on the "
                     f"'{DATA_AXIS}' axis; use a multiple of {n}.")
