"""Backbone registry and the no-TensorFlow import rule."""

import subprocess
import sys

import jax
import jax.numpy as jnp
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
