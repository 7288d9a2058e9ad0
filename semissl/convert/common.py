"""Pieces both layouts share: flat variable dicts, kernel transposes, the result type.

Flat variables are `{'params/backbone/stem_conv/kernel': array, ...}`: the
collection, then the module path, '/'-joined, as `semissl.training.sharding`
prints paths. Torch state dicts are `{'conv1.weight': array, ...}` of NumPy arrays.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from semissl import models

BACKBONE = "backbone"
HEAD = "head/dense"  # `models.Classifier`'s linear head (supervised, FixMatch, Semi-ViT...)


@dataclasses.dataclass(frozen=True)
class Converted:
  """Weights in semissl's layout and what a run needs to use them.

  Attributes:
    variables: flat {'params/...' | 'batch_stats/...': array}.
    model: `config.model` of a run that takes them ({'name': 'vit_b', ...}).
    image_size: the square image side the weights expect (ViT: its position
      table), or None (any size: ResNet).
    num_classes: K of the converted classifier head, or None (features only).
  """

  variables: dict[str, np.ndarray]
  model: dict[str, Any]
  image_size: int | None
  num_classes: int | None


def conv_to_flax(weight: np.ndarray) -> np.ndarray:
  """Torch conv weight [O, I, kh, kw] -> flax kernel [kh, kw, I, O]."""
  return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def conv_to_torch(kernel: np.ndarray) -> np.ndarray:
  """Flax conv kernel [kh, kw, I, O] -> torch weight [O, I, kh, kw]."""
  return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def dense_to_flax(weight: np.ndarray) -> np.ndarray:
  """Torch linear weight [out, in] -> flax kernel [in, out] (and back: the same)."""
  return np.ascontiguousarray(np.asarray(weight).T)


dense_to_torch = dense_to_flax


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Nested dicts -> {'a/b/c': leaf}; empty dicts vanish."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    flat = {}
    for key, value in tree.items():
      flat.update(flatten(value, f"{prefix}{key}/"))
    return flat
  return {prefix[:-1]: tree}


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """{'a/b/c': leaf} -> nested dicts."""
  tree: dict[str, Any] = {}
  for path, leaf in flat.items():
    *parents, name = path.split("/")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[name] = leaf
  return tree


def take(state: dict[str, np.ndarray], key: str, *, used: set[str],
         what: str) -> np.ndarray:
  """`state[key]` as float32, recorded in `used`; one-line error when missing."""
  if key not in state:
    raise ValueError(f"checkpoint has no {key!r}: it is not a {what} state dict "
                     "(or a truncated one); check --checkpoint and --from.")
  used.add(key)
  return np.asarray(state[key], np.float32)


def check_all_used(state: dict[str, np.ndarray], used: set[str], *, ignored: tuple[str, ...],
                   what: str) -> None:
  """One-line error naming a checkpoint entry nothing converted (unknown layout)."""
  left = sorted(k for k in state if k not in used and not k.startswith(ignored))
  if left:
    more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
    raise ValueError(f"checkpoint entry {left[0]!r}{more} has no semissl counterpart: this "
                     f"converter takes the plain {what} layout.")


def check_fits(*, variables: dict[str, np.ndarray], model: dict[str, Any],
               image_shape: tuple[int, int, int]) -> None:
  """One-line error unless `variables` (backbone part) are exactly the variables of
  semissl's `model` (names and shapes), built for [1, *image_shape] images."""
  kwargs = {k: v for k, v in model.items() if k != "name"}
  backbone = models.get_backbone(model["name"], **kwargs)
  shapes = jax.eval_shape(
      lambda x: backbone.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                              x, train=False),
      jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  expected = {}
  for path, leaf in flatten(dict(shapes)).items():
    collection, rest = path.split("/", 1)
    expected[f"{collection}/{BACKBONE}/{rest}"] = tuple(leaf.shape)
  got = {k: tuple(v.shape) for k, v in variables.items() if f"/{BACKBONE}/" in k}
  for name in sorted(set(expected) | set(got)):
    if expected.get(name) != got.get(name):
      raise ValueError(f"converted weights do not fit semissl's {model}: {name} is "
                       f"{got.get(name, 'missing')} there, {expected.get(name, 'absent')} in "
                       "the model; the checkpoint's layout is not one this converter knows.")
