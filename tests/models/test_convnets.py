"""Forward passes and BatchNorm behaviour of the convolutional backbones."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semissl import models
from semissl.models import resnet


def _images(shape, seed=0):
  return jnp.asarray(
      np.random.default_rng(seed).normal(size=shape), jnp.float32
  )


@pytest.mark.parametrize(
    "name, kwargs, image_shape, feature_dim",
    [
        ("resnet18", {"cifar_stem": True}, (32, 32, 3), 512),
        ("wrn28_2", {}, (32, 32, 3), 128),
        ("tiny_resnet", {}, (28, 28, 1), 128),
    ],
)
def test_forward_shapes(
    name, kwargs, image_shape, feature_dim, numpy_variables
):
  model = models.get_backbone(name, **kwargs)
  x = _images((2, *image_shape))
  variables = numpy_variables(model, x, train=False)
  features = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert features.shape == (2, feature_dim) and features.dtype == jnp.float32
  assert np.all(np.isfinite(features))


@pytest.mark.parametrize("sk", ["semppl", "simclrv2"])
def test_selective_kernel_resnet_forward(sk, numpy_variables):
  # 28x28 input: odd feature maps (7x7) reach the strided blocks and the
  # ResNet-D avg-pool shortcut must agree with the strided 3x3 conv on the size.
  model = resnet.ResNet(depth=50, sk=sk, stage_sizes=(1, 1, 1, 1))
  x = _images((2, 28, 28, 3))
  variables = numpy_variables(model, x, train=False)
  features, _ = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  )(variables, x)
  assert features.shape == (2, 2048) and np.all(np.isfinite(features))
  params = variables["params"]
  block = params["stage2_block1"]
  assert "sk_conv" in block and "conv2" not in block
  if sk == "simclrv2":  # ResNet-D 3-conv stem; one 3x3 conv to 2C channels.
    assert {"stem_conv1", "stem_conv2", "stem_conv3"} <= set(params)
    assert block["sk_conv"]["conv"]["kernel"].shape == (3, 3, 128, 256)
  else:  # SKNet: ResNeXt widths (2x the bottleneck width), 32 groups.
    assert "stem_conv" in params
    assert block["sk_conv"]["branch1_conv"]["kernel"].shape == (3, 3, 8, 256)


@pytest.mark.parametrize("zero_init", [True, False])
def test_zero_init_last_bn_option(zero_init):
  conv = functools.partial(nn.Conv, use_bias=False)
  norm = functools.partial(nn.BatchNorm, use_running_average=True)
  x = jnp.zeros((1, 4, 4, 8))
  expected = 0.0 if zero_init else 1.0
  for block, last_bn in (
      (
          resnet.BasicBlock(
              8, conv=conv, norm=norm, zero_init_last_bn=zero_init
          ),
          "bn2",
      ),
      (
          resnet.BottleneckBlock(
              2, conv=conv, norm=norm, zero_init_last_bn=zero_init
          ),
          "bn3",
      ),
  ):
    params = jax.jit(block.init)(jax.random.key(0), x)["params"]
    np.testing.assert_array_equal(params[last_bn]["scale"], expected)
    np.testing.assert_array_equal(params["bn1"]["scale"], 1.0)


def test_invalid_resnet_options_raise():
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match="bottleneck"):
    jax.eval_shape(
        lambda: models.get_backbone("resnet18", sk="semppl").init(
            jax.random.key(0), x, train=False
        )
    )
  with pytest.raises(ValueError, match="sk must be"):
    jax.eval_shape(
        lambda: models.get_backbone("resnet50", sk="sknet").init(
            jax.random.key(0), x, train=False
        )
    )


def test_batch_norm_train_updates_running_stats_eval_does_not(numpy_variables):
  model = models.get_backbone("tiny_resnet")
  x = _images((4, 28, 28, 1))
  variables = numpy_variables(model, x, train=False)

  @jax.jit
  def train_apply(variables, x):
    return model.apply(
        variables,
        x,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda mdl, _: mdl.name == "stem_conv",
    )

  @jax.jit
  def eval_apply(variables, x):
    return model.apply(variables, x, train=False, mutable=["batch_stats"])

  train_out, updates = train_apply(variables, x)
  # Flax convention: running = momentum * running + (1 - momentum) * batch
  # statistic (biased variance), momentum 0.9, statistics over batch and space.
  stem = np.asarray(
      updates["intermediates"]["stem_conv"]["__call__"][0], np.float64
  )
  new_stats = updates["batch_stats"]["stem_bn"]
  np.testing.assert_allclose(
      new_stats["mean"], 0.1 * stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
      new_stats["var"],
      0.9 + 0.1 * stem.var(axis=(0, 1, 2)),
      rtol=1e-4,
      atol=1e-6,
  )

  eval_out, eval_updates = eval_apply(variables, x)
  jax.tree.map(
      np.testing.assert_array_equal,
      eval_updates["batch_stats"],
      variables["batch_stats"],
  )

  # Replacing examples 2 and 3 changes the batch statistics: in train mode the
  # outputs of examples 0 and 1 move, in eval mode they do not.
  other = x.at[2:].set(_images((2, 28, 28, 1), seed=5) * 3.0 + 1.0)
  np.testing.assert_allclose(
      eval_apply(variables, other)[0][:2], eval_out[:2], atol=1e-6
  )
  assert not np.allclose(
      train_apply(variables, other)[0][:2], train_out[:2], atol=1e-3
  )


def test_batch_norm_statistics_are_global_on_a_sharded_batch(
    mesh8, numpy_variables
):
  # No axis_name: under jit with a data-sharded batch XLA reduces across
  # devices, so the statistics equal those of the whole (unsharded) batch.
  model = models.get_backbone("tiny_resnet")
  x = _images((8, 28, 28, 1), seed=1)
  variables = numpy_variables(model, x, train=False)

  def apply(v, x):
    return model.apply(v, x, train=True, mutable=["batch_stats"])

  replicated = jax.sharding.NamedSharding(mesh8, jax.sharding.PartitionSpec())
  data = jax.sharding.NamedSharding(mesh8, jax.sharding.PartitionSpec("data"))
  sharded_apply = jax.jit(
      apply, in_shardings=(replicated, data), out_shardings=replicated
  )
  sharded = sharded_apply(variables, jax.device_put(x, data))
  reference = jax.jit(apply)(variables, x)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
      sharded,
      reference,
  )


def test_bfloat16_computation_keeps_float32_params_and_output(numpy_variables):
  x = _images((2, 28, 28, 1))
  model32 = models.get_backbone("tiny_resnet")
  model16 = models.get_backbone("tiny_resnet", dtype=jnp.bfloat16)
  abstract = jax.eval_shape(
      lambda x: model16.init(jax.random.key(0), x, train=False), x
  )
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(abstract))
  variables = numpy_variables(model16, x, train=False)
  out16 = jax.jit(lambda v, x: model16.apply(v, x, train=False))(variables, x)
  out32 = jax.jit(lambda v, x: model32.apply(v, x, train=False))(variables, x)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(
      out16, out32, rtol=0.05, atol=0.05 * float(np.abs(out32).max())
  )
