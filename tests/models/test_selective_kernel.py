"""Selective-kernel units (SemPPL, SimCLRv2) against float64 NumPy."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semissl.models import selective_kernel

_CONV = functools.partial(nn.Conv, use_bias=False)
_NORM = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=1e-5)


def _grouped_dilated_conv3x3(x, kernel, *, groups, dilation):
  """Stride-1 'same' 3x3 conv in NumPy; kernel [3, 3, Cin / groups, Cout]."""
  batch, height, width, in_channels = x.shape
  out_channels = kernel.shape[-1]
  padded = np.pad(
      x, ((0, 0), (dilation, dilation), (dilation, dilation), (0, 0))
  )
  grouped_kernel = kernel.reshape(
      3, 3, in_channels // groups, groups, out_channels // groups
  )
  out = np.zeros((batch, height, width, groups, out_channels // groups))
  for dy in range(3):
    for dx in range(3):
      window = padded[
          :,
          dy * dilation : dy * dilation + height,
          dx * dilation : dx * dilation + width,
      ]
      window = window.reshape(
          batch, height, width, groups, in_channels // groups
      )
      out += np.einsum("bhwgi,igo->bhwgo", window, grouped_kernel[dy, dx])
  return out.reshape(batch, height, width, out_channels)


def _batch_norm_eval(x, stats, params, *, epsilon=1e-5):
  out = (
      (x - stats["mean"])
      / np.sqrt(stats["var"] + epsilon)
      * params.get("scale", 1.0)
  )
  return out + params.get("bias", 0.0)


def _softmax_mix(branches, logits):
  logits = logits.reshape(logits.shape[0], 2, -1)
  weights = np.exp(logits - logits.max(axis=1, keepdims=True))
  weights /= weights.sum(axis=1, keepdims=True)
  return sum(weights[:, m, None, None, :] * branches[m] for m in range(2))


def _init_with_random_stats(module, x, seed):
  """Initialises, then draws random BN scales, offsets and running stats."""
  variables = module.init(jax.random.key(seed), x)
  rng = np.random.default_rng(seed)

  def randomize(path, leaf):
    name = path[-1].key
    if name == "var":
      return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), jnp.float32)
    if name in ("mean", "scale", "bias"):
      return jnp.asarray(
          rng.normal(0.0, 0.5, leaf.shape) + (name == "scale"), jnp.float32
      )
    return leaf

  return jax.tree_util.tree_map_with_path(randomize, variables)


def _as64(tree):
  return jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), tree)


def test_semppl_selective_kernel_matches_numpy():
  x = np.random.default_rng(0).normal(size=(2, 6, 6, 64)).astype(np.float32)
  module = selective_kernel.SemPPLSelectiveKernel(64, conv=_CONV, norm=_NORM)
  variables = _init_with_random_stats(module, x, seed=1)
  out = module.apply(variables, x)
  params, stats = _as64(variables["params"]), _as64(variables["batch_stats"])
  assert params["branch0_conv"]["kernel"].shape == (3, 3, 2, 64)  # 32 groups

  branches = []
  for index, dilation in enumerate((1, 2)):
    conv = _grouped_dilated_conv3x3(
        x.astype(np.float64),
        params[f"branch{index}_conv"]["kernel"],
        groups=32,
        dilation=dilation,
    )
    bn = _batch_norm_eval(
        conv, stats[f"branch{index}_bn"], params[f"branch{index}_bn"]
    )
    branches.append(np.maximum(bn, 0.0))
  pooled = (branches[0] + branches[1]).mean(axis=(1, 2))
  assert params["fuse_dense"]["kernel"].shape == (64, 32)  # max(64 / 16, 32)
  z = np.maximum(
      _batch_norm_eval(
          pooled @ params["fuse_dense"]["kernel"],
          stats["fuse_bn"],
          params["fuse_bn"],
      ),
      0.0,
  )
  expected = _softmax_mix(branches, z @ params["select_dense"]["kernel"])
  np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-4)


def test_simclrv2_selective_kernel_matches_numpy():
  x = np.random.default_rng(2).normal(size=(2, 6, 6, 8)).astype(np.float32)
  module = selective_kernel.SimCLRv2SelectiveKernel(
      16, conv=_CONV, norm=_NORM, sk_ratio=0.0625
  )
  variables = _init_with_random_stats(module, x, seed=3)
  out = module.apply(variables, x)
  params, stats = _as64(variables["params"]), _as64(variables["batch_stats"])
  assert params["conv"]["kernel"].shape == (3, 3, 8, 32)  # one conv, 2C outputs

  conv = _grouped_dilated_conv3x3(
      x.astype(np.float64), params["conv"]["kernel"], groups=1, dilation=1
  )
  joint = np.maximum(_batch_norm_eval(conv, stats["bn"], params["bn"]), 0.0)
  branches = [joint[..., :16], joint[..., 16:]]
  pooled = (branches[0] + branches[1]).mean(axis=(1, 2))
  z = np.maximum(
      _batch_norm_eval(
          pooled @ params["fuse_dense"]["kernel"],
          stats["fuse_bn"],
          params["fuse_bn"],
      ),
      0.0,
  )
  expected = _softmax_mix(branches, z @ params["select_dense"]["kernel"])
  np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("flavour", ["semppl", "simclrv2"])
def test_selective_kernel_stride_two_halves_resolution(flavour):
  module_cls = {
      "semppl": selective_kernel.SemPPLSelectiveKernel,
      "simclrv2": selective_kernel.SimCLRv2SelectiveKernel,
  }[flavour]
  module = module_cls(32, conv=_CONV, norm=_NORM, strides=2)
  out = jax.eval_shape(
      lambda x: module.init_with_output(jax.random.key(0), x)[0],
      jax.ShapeDtypeStruct((2, 7, 7, 32), jnp.float32),
  )
  assert out.shape == (2, 4, 4, 32)
