"""Fixtures for the model tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _variables_from_numpy(module, x, *, seed=0, **init_kwargs):
  """Variables of the right shapes, filled by NumPy instead of `module.init`.

  `module.init` compiles one random-number kernel per parameter shape, which
  dominates the run time of a small forward test on CPU. Kernels are drawn from
  N(0, 1 / fan_in), BatchNorm/LayerNorm scales are 1 and offsets 0, running
  means 0 and variances 1, other parameters (position tables,
  tokens) N(0, 0.02^2).
  """
  shapes = jax.eval_shape(
      lambda x: module.init(jax.random.key(0), x, **init_kwargs),
      jax.ShapeDtypeStruct(x.shape, x.dtype),
  )
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    elif name in ("bias", "mean"):
      value = np.zeros(leaf.shape)
    else:
      value = 0.02 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture
def numpy_variables():
  return _variables_from_numpy
