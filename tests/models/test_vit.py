"""ViT forward, stochastic depth, patch-size check, layer ids for lr decay."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semissl import models
from semissl.models import vit


def _images(shape, seed=0):
  return jnp.asarray(
      np.random.default_rng(seed).normal(size=shape), jnp.float32
  )


def test_vit_ti_patch4_forward(numpy_variables):
  model = models.get_backbone("vit_ti", patch_size=4)
  x = _images((2, 32, 32, 3))
  variables = numpy_variables(model, x, train=False)
  assert variables["params"]["pos_embedding"].shape == (1, 64, 192)
  features = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert features.shape == (2, 192) and features.dtype == jnp.float32
  assert np.all(np.isfinite(features))


def test_gap_pool_is_mean_of_final_tokens_and_sincos_is_fixed(numpy_variables):
  model = models.get_backbone(
      "vit_ti", patch_size=8, depth=1, posemb="sincos2d", pool="gap"
  )
  x = _images((2, 32, 32, 3))
  variables = numpy_variables(model, x, train=False)
  assert not {"pos_embedding", "cls"} & set(variables["params"])
  features, state = model.apply(
      variables,
      x,
      train=False,
      mutable=["intermediates"],
      capture_intermediates=lambda mdl, _: mdl.name == "encoder_norm",
  )
  tokens = state["intermediates"]["encoder_norm"]["__call__"][0]
  assert tokens.shape == (2, 16, 192)  # no class token with 'gap'
  np.testing.assert_allclose(
      features, np.mean(tokens, axis=1), rtol=1e-5, atol=1e-6
  )


def test_sincos_position_embedding_values():
  table = vit.sincos_2d_position_embedding(height=3, width=5, dim=8)
  assert table.shape == (1, 15, 8)
  # Channels: sin(x w), cos(x w), sin(y w), cos(y w); for dim 8,
  # w = (1, 1e-4).
  row, col = 2, 3
  position = row * 5 + col
  omega = np.array([1.0, 1e-4])
  expected = np.concatenate(
      [
          np.sin(col * omega),
          np.cos(col * omega),
          np.sin(row * omega),
          np.cos(row * omega),
      ]
  )
  np.testing.assert_allclose(table[0, position], expected, rtol=1e-6, atol=1e-7)


def test_drop_path_needs_dropout_rng_only_when_active(numpy_variables):
  model = models.get_backbone(
      "vit_ti", patch_size=8, depth=2, drop_path_rate=0.5
  )
  x = _images((32, 16, 16, 3))
  variables = numpy_variables(model, x, train=False)
  with pytest.raises(flax.errors.InvalidRngError):
    model.apply(variables, x, train=True)
  eval_out = model.apply(variables, x, train=False)  # no rng needed in eval
  no_drop = models.get_backbone("vit_ti", patch_size=8, depth=2)
  np.testing.assert_allclose(
      no_drop.apply(variables, x, train=True), eval_out, rtol=1e-5, atol=1e-6
  )

  # The rate grows linearly to drop_path_rate at the last block (0 at block 0).
  # Dropping both branches of block 1 leaves the output of the 1-block model;
  # drop path decides per example, so only some examples match it exactly.
  one_block = models.get_backbone("vit_ti", patch_size=8, depth=1)
  params = {
      k: v for k, v in variables["params"].items() if k != "encoderblock_1"
  }
  one_block_out = one_block.apply({"params": params}, x, train=False)
  train_out = model.apply(
      variables, x, train=True, rngs={"dropout": jax.random.key(1)}
  )
  skipped = np.all(
      np.isclose(train_out, one_block_out, rtol=1e-5, atol=1e-5), axis=1
  )
  assert 0 < skipped.sum() < len(x)
  all_dropped = models.get_backbone(
      "vit_ti", patch_size=8, depth=2, drop_path_rate=1.0
  )
  np.testing.assert_allclose(
      all_dropped.apply(
          variables, x, train=True, rngs={"dropout": jax.random.key(2)}
      ),
      one_block_out,
      rtol=1e-5,
      atol=1e-5,
  )


def test_image_size_not_divisible_by_patch_raises():
  model = models.get_backbone("vit_ti")
  x = jax.ShapeDtypeStruct((1, 30, 30, 3), jnp.float32)
  with pytest.raises(
      ValueError, match="not divisible by patch_size=16"
  ) as error:
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  assert "\n" not in str(error.value)


def test_vit_layer_id_mapping():
  num_layers = 2
  model = models.Classifier(
      models.get_backbone("vit_ti", patch_size=8, depth=num_layers),
      num_classes=3,
  )
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32),
  )
  ids = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]:
    names = tuple(entry.key for entry in path)
    ids[names] = vit.vit_layer_id(path, num_layers)
    assert (
        vit.vit_layer_id(names, num_layers) == ids[names]
    )  # strings or tree keys
  assert ids[("backbone", "embedding", "kernel")] == 0
  assert ids[("backbone", "pos_embedding")] == 0
  assert ids[("backbone", "cls")] == 0
  assert ids[("backbone", "encoderblock_0", "norm1", "scale")] == 1
  assert ids[("backbone", "encoderblock_1", "mlp", "Dense_1", "kernel")] == 2
  assert ids[("backbone", "encoder_norm", "bias")] == num_layers + 1
  assert ids[("head", "dense", "kernel")] == num_layers + 1
  assert set(ids.values()) == set(range(num_layers + 2))
