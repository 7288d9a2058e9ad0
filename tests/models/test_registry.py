"""Backbone registry and the no-TensorFlow import rule."""

import subprocess
import sys

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semissl import models
from semissl.models import resnet
from semissl.models import tiny_resnet
from semissl.models import vit
from semissl.models import wide_resnet

EXPECTED = {
    "resnet18": resnet.ResNet,
    "resnet34": resnet.ResNet,
    "resnet50": resnet.ResNet,
    "resnet101": resnet.ResNet,
    "resnet152": resnet.ResNet,
    "resnet200": resnet.ResNet,
    "wrn28_2": wide_resnet.WideResNet,
    "wrn28_8": wide_resnet.WideResNet,
    "tiny_resnet": tiny_resnet.TinyResNet,
    "vit_ti": vit.ViT,
    "vit_s": vit.ViT,
    "vit_b": vit.ViT,
    "vit_l": vit.ViT,
    "vit_h": vit.ViT,
}


def test_registry_names_and_types():
  assert set(EXPECTED) <= set(models.BACKBONES)
  for name, module_cls in EXPECTED.items():
    assert isinstance(models.get_backbone(name), module_cls)
  assert models.get_backbone("resnet101").depth == 101
  assert models.get_backbone("wrn28_8").widen_factor == 8


@pytest.mark.parametrize(
    "name, width, depth, heads",
    [
        ("vit_ti", 192, 12, 3),
        ("vit_s", 384, 12, 6),
        ("vit_b", 768, 12, 12),
        ("vit_l", 1024, 24, 16),
        ("vit_h", 1280, 32, 16),
    ],
)
def test_vit_sizes(name, width, depth, heads):
  model = models.get_backbone(name)
  assert (model.width, model.depth, model.num_heads, model.mlp_dim) == (
      width,
      depth,
      heads,
      4 * width,
  )
  assert model.patch_size == 16


def test_kwargs_pass_through():
  model = models.get_backbone(
      "resnet50",
      width_multiplier=2,
      cifar_stem=True,
      sk="semppl",
      zero_init_last_bn=False,
  )
  assert (
      model.width_multiplier,
      model.cifar_stem,
      model.sk,
      model.zero_init_last_bn,
  ) == (2, True, "semppl", False)
  model = models.get_backbone(
      "vit_s", patch_size=8, posemb="sincos2d", pool="gap", drop_path_rate=0.1
  )
  assert (model.patch_size, model.posemb, model.pool, model.drop_path_rate) == (
      8,
      "sincos2d",
      "gap",
      0.1,
  )


def test_unknown_name_lists_known_names():
  with pytest.raises(ValueError) as error:
    models.get_backbone("resnet51")
  message = str(error.value)
  assert "\n" not in message and "resnet51" in message
  assert all(name in message for name in models.BACKBONES)


def test_models_never_import_tensorflow():
  code = (
      "import sys, semissl.models; "
      "assert not any(m.split('.')[0] in ('tensorflow', 'tensorflow_datasets') "
      "for m in sys.modules), 'tensorflow imported'"
  )
  subprocess.run([sys.executable, "-c", code], check=True)


def test_tiny_resnet_stage_strides():
  x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
  for strides in ((1, 2, 2), (2, 2, 2)):
    model = models.get_backbone("tiny_resnet", stage_strides=strides)
    features, _ = jax.eval_shape(
        lambda x, m=model: m.init_with_output(
            jax.random.key(0), x, train=False
        ),
        x,
    )
    assert features.shape == (2, 128)
  with pytest.raises(ValueError, match="same length"):
    jax.eval_shape(
        lambda x: models.get_backbone("tiny_resnet", stage_strides=(1, 2)).init(
            jax.random.key(0), x, train=False
        ),
        x,
    )


def test_tiny_resnet_stride2_stem_layout():
  """stem_stride=2 + stages (1, 2, 2): the 14/7/4 stage resolutions of the default
  layout, no 28 x 28 activation, and the default's parameters minus stage 1's 1x1
  projection shortcut (its input and output already match)."""
  x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)

  def shapes(model):
    _, state = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x, train=False,
                                         capture_intermediates=True), x)
    params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state["params"]))
    flat = traverse_util.flatten_dict(state["intermediates"], sep="/")
    conv_outputs = {key[:-len("/__call__")]: value[0].shape for key, value in flat.items()
                    if key.endswith(("conv1/__call__", "stem_conv/__call__"))}
    return params, conv_outputs

  default_params, default_convs = shapes(models.get_backbone("tiny_resnet"))
  fast_params, fast_convs = shapes(models.get_backbone(
      "tiny_resnet", stem_stride=2, stage_strides=(1, 2, 2)))
  assert default_convs["stem_conv"] == (2, 28, 28, 32)
  assert fast_convs["stem_conv"] == (2, 14, 14, 32)
  for stage, size in (("stage1_block1/conv1", 14), ("stage2_block1/conv1", 7),
                      ("stage3_block1/conv1", 4)):
    assert default_convs[stage][1:3] == fast_convs[stage][1:3] == (size, size)
  shortcut = 32 * 32 + 2 * 32  # 1x1 conv 32 -> 32, BN scale + bias
  assert fast_params == default_params - shortcut
