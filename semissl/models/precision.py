"""Compute dtypes: `config.model.dtype` names and the norm layers of a low-precision model.

Mixed precision in semissl: a backbone's convolutions, matmuls and activations run in
its `dtype` (bfloat16 on TPU / GPU); its parameters, batch-norm statistics, the
optimizer state and the EMA target stay float32, and every backbone returns float32
features, so heads, classifiers and losses (softmax, logsumexp, normalisation, k-NN
similarities) compute in float32.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: Any) -> Any:
  """The jnp dtype of `config.model.dtype` ('float32' | 'bfloat16', or a dtype)."""
  if not isinstance(name, str):
    name = jnp.dtype(name).name
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype={name!r}; use one of {', '.join(DTYPES)}.")
  return DTYPES[name]


def norm_layer(cls: type[nn.Module], dtype: Any) -> type[nn.Module]:
  """`cls` (a flax BatchNorm / LayerNorm) for a model computing in `dtype`.

  Flax's norms compute their statistics in float32, and autodiff would keep those
  float32 intermediates (x - mean, x^2) of every norm for the backward pass: two
  float32 copies of each activation in a bfloat16 model. Below float32 the layer is
  rematerialised instead, so the backward pass keeps only its low-precision input
  and recomputes the (elementwise, cheap) float32 statistics. Same variables and
  names as `cls`.
  """
  if jnp.dtype(dtype) == jnp.float32:
    return cls
  return nn.remat(cls)
