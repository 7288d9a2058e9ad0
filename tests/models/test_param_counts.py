"""Parameter counts against the papers' numbers via jax.eval_shape (no compute).

Tolerances are half a unit of the last digit the paper reports (its rounding).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semissl import models

M = 1e6


def _num_params(module, *, image_shape, num_classes=None):
  if num_classes is not None:
    module = models.Classifier(module, num_classes)
  variables = jax.eval_shape(
      functools.partial(module.init, train=False),
      jax.random.key(0),
      jax.ShapeDtypeStruct((1, *image_shape), jnp.float32),
  )
  return sum(
      int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"])
  )


@pytest.mark.parametrize(
    "name, kwargs, num_classes, expected, tolerance",
    [
        # He et al. / torchvision: ResNet-50 with a 1000-way classifier: 25.56M.
        ("resnet50", {}, 1000, 25.56 * M, 0.005 * M),
        # SemPPL App. A.1: "27.5 million weights instead of 25.5 million",
        # both with the 1000-way classifier.
        ("resnet50", {"sk": "semppl"}, 1000, 27.5 * M, 0.05 * M),
        # SimCLRv2 Table 1 counts the ResNet up to the final average pooling, in
        # whole millions: R50 (1x+SK) 35M, R50 (2x) 94M, R152 (3x+SK) 795M.
        ("resnet50", {"sk": "simclrv2"}, None, 35 * M, 0.5 * M),
        ("resnet50", {"width_multiplier": 2}, None, 94 * M, 0.5 * M),
        (
            "resnet152",
            {"width_multiplier": 3, "sk": "simclrv2"},
            None,
            795 * M,
            0.5 * M,
        ),
        # SemPPL's largest encoder, ResNet-200 (2x): 250M (BYOL's table,
        # encoder only).
        ("resnet200", {"width_multiplier": 2}, None, 250 * M, 0.5 * M),
    ],
)
def test_resnet_param_counts(name, kwargs, num_classes, expected, tolerance):
  count = _num_params(
      models.get_backbone(name, **kwargs),
      image_shape=(224, 224, 3),
      num_classes=num_classes,
  )
  assert abs(count - expected) <= tolerance, count


@pytest.mark.parametrize(
    "name, num_classes, expected, tolerance",
    [
        # FixMatch protocol: WRN-28-2 on CIFAR-10, 1.47M.
        ("wrn28_2", 10, 1.47 * M, 0.005 * M),
        # WRN-28-8 is the CIFAR-100 model (FixMatch, SimMatch): 23.4M with its
        # 100-way head (23.35M with a 10-way head).
        ("wrn28_8", 100, 23.4 * M, 0.05 * M),
    ],
)
def test_wide_resnet_param_counts(name, num_classes, expected, tolerance):
  count = _num_params(
      models.get_backbone(name),
      image_shape=(32, 32, 3),
      num_classes=num_classes,
  )
  assert abs(count - expected) <= tolerance, count


@pytest.mark.parametrize(
    "name, patch_size, expected, tolerance",
    [
        # With a 1000-way head: ViT-B/16 86.6M (Dosovitskiy et al.), ViT-H/14
        # 632M (Semi-ViT Table 1).
        ("vit_b", 16, 86.6 * M, 0.05 * M),
        ("vit_h", 14, 632 * M, 0.5 * M),
    ],
)
def test_vit_param_counts(name, patch_size, expected, tolerance):
  count = _num_params(
      models.get_backbone(name, patch_size=patch_size),
      image_shape=(224, 224, 3),
      num_classes=1000,
  )
  assert abs(count - expected) <= tolerance, count


def test_sincos_posemb_and_gap_have_no_embedding_params():
  learned = _num_params(
      models.get_backbone("vit_ti"), image_shape=(224, 224, 3)
  )
  fixed = _num_params(
      models.get_backbone("vit_ti", posemb="sincos2d", pool="gap"),
      image_shape=(224, 224, 3),
  )
  assert learned - fixed == 196 * 192 + 192  # position table + class token
