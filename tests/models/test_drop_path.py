"""Noise in the convnets (Noisy Student): stochastic depth in ResNet / TinyResNet / WRN blocks
(whole residual branch dropped per example, survival decaying linearly with depth) and
dropout before the classifier; rate 0 and eval mode leave the function unchanged."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semissl import models
from semissl.models import resnet
from semissl.models import wide_resnet

TINY = dict(stem_width=4, stage_widths=(8, 8, 8), stage_strides=(2, 1, 1),
            zero_init_last_bn=False)  # else every branch starts at 0
BUILDS = {
    "tiny_resnet": (functools.partial(models.TinyResNet, **TINY), 3),
    "resnet18": (functools.partial(models.ResNet, depth=18, stage_sizes=(2, 1),
                                   cifar_stem=True, zero_init_last_bn=False), 3),
    "resnet50_remat": (functools.partial(models.ResNet, depth=50, stage_sizes=(1, 1),
                                         cifar_stem=True, zero_init_last_bn=False,
                                         remat=True), 2),
    "wrn10_1": (functools.partial(models.WideResNet, depth=10, widen_factor=1), 3),
}


def _images(n=16, size=8, channels=1, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, size, size, channels)),
                     jnp.float32)


def _apply(model, variables, images, *, train, rng=None):
  out = model.apply(variables, images, train=train, mutable=["batch_stats"] if train else False,
                    rngs=None if rng is None else {"dropout": rng})
  return out[0] if train else out


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_rate_zero_and_eval_mode_are_the_function_without_noise(name):
  build, _ = BUILDS[name]
  images = _images(channels=3 if name != "tiny_resnet" else 1)
  plain, noisy = build(), build(drop_path_rate=0.5)
  variables = plain.init(jax.random.PRNGKey(0), images, train=False)
  noisy_variables = noisy.init(jax.random.PRNGKey(0), images, train=False)
  jax.tree.map(np.testing.assert_array_equal, noisy_variables, variables)  # no new variables
  train = _apply(plain, variables, images, train=True)  # no rng needed at rate 0
  zero = build(drop_path_rate=0.0)
  np.testing.assert_array_equal(
      _apply(zero, variables, images, train=True, rng=jax.random.PRNGKey(1)), train)
  eval_plain = _apply(plain, variables, images, train=False)
  np.testing.assert_array_equal(_apply(noisy, variables, images, train=False), eval_plain)
  # Train mode with a rate draws from the 'dropout' rng: other keys, other features.
  a = _apply(noisy, variables, images, train=True, rng=jax.random.PRNGKey(1))
  b = _apply(noisy, variables, images, train=True, rng=jax.random.PRNGKey(2))
  assert not np.allclose(a, b) and not np.allclose(a, train)
  with pytest.raises(Exception, match="dropout"):
    _apply(noisy, variables, images, train=True)


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_block_rates_decay_linearly_with_depth(name):
  build, num_blocks = BUILDS[name]
  images = _images(n=2, channels=3 if name != "tiny_resnet" else 1)
  model = build(drop_path_rate=0.3)
  variables = model.init(jax.random.PRNGKey(0), images, train=False)
  seen = {}  # block name -> (rate, deterministic); nn.remat calls a block twice

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, (resnet.BasicBlock, resnet.BottleneckBlock,
                                   wide_resnet.WideResNetBlock)):
      seen[context.module.name] = (context.module.drop_path_rate,
                                   context.module.deterministic)
    return next_fun(*args, **kwargs)

  for train in (True, False):
    seen.clear()
    with nn.intercept_methods(record):
      _apply(model, variables, images, train=train, rng=jax.random.PRNGKey(1))
    expected = 0.3 * np.arange(1, num_blocks + 1) / num_blocks  # Huang et al.: p_l = l/L p_L
    np.testing.assert_allclose([rate for rate, _ in seen.values()], expected, rtol=1e-12)
    assert all(deterministic == (not train) for _, deterministic in seen.values())
  with pytest.raises(ValueError, match=r"drop_path_rate=1.0 must be in \[0, 1\)"):
    build(drop_path_rate=1.0).init(jax.random.PRNGKey(0), images, train=False)


def test_block_drops_its_whole_residual_branch_per_example():
  """Each example's output is relu(x) (branch dropped) or relu(x + y / (1 - p)) (kept),
  y the branch's output (its BN over the whole batch, as without drop)."""
  rate, n = 0.5, 32
  conv = functools.partial(nn.Conv, use_bias=False)
  norm = functools.partial(nn.BatchNorm, use_running_average=False)
  block = resnet.BasicBlock(4, conv=conv, norm=norm, zero_init_last_bn=False,
                            drop_path_rate=rate, deterministic=False)
  x = _images(n=n, size=5, channels=4)
  variables = block.init(jax.random.PRNGKey(0), x)
  out, state = block.apply(variables, x, mutable=["batch_stats", "intermediates"],
                           capture_intermediates=True, rngs={"dropout": jax.random.PRNGKey(3)})
  y = np.asarray(state["intermediates"]["bn2"]["__call__"][0], np.float64)
  x, out = np.asarray(x, np.float64), np.asarray(out)
  dropped = np.maximum(x, 0)
  kept = np.maximum(x + y / (1 - rate), 0)
  is_dropped = np.array([np.allclose(out[i], dropped[i], atol=1e-6) for i in range(n)])
  is_kept = np.array([np.allclose(out[i], kept[i], atol=1e-5) for i in range(n)])
  assert np.all(is_dropped ^ is_kept)  # every example is one or the other, whole
  assert 0 < is_dropped.sum() < n
  eval_block = block.clone(deterministic=True)
  eval_out, _ = eval_block.apply(variables, x.astype(np.float32), mutable=["batch_stats"])
  np.testing.assert_allclose(eval_out, np.maximum(x + y, 0), atol=1e-5)


def test_classifier_dropout_before_the_head():
  images = _images()
  backbone = models.TinyResNet(**TINY)
  plain = models.Classifier(backbone=backbone, num_classes=3)
  noisy = models.Classifier(backbone=backbone, num_classes=3, dropout_rate=0.5)
  variables = plain.init(jax.random.PRNGKey(0), images, train=False)
  jax.tree.map(np.testing.assert_array_equal,
               noisy.init(jax.random.PRNGKey(0), images, train=False), variables)
  np.testing.assert_array_equal(noisy.apply(variables, images, train=False),
                                plain.apply(variables, images, train=False))
  # Train mode: logits = head(d), each feature of d either 0 or f / (1 - p), f the
  # backbone's train-mode features.
  features, _ = backbone.apply({"params": variables["params"]["backbone"],
                                "batch_stats": variables["batch_stats"]["backbone"]},
                               images, train=True, mutable=["batch_stats"])
  logits, state = noisy.apply(variables, images, train=True,
                              rngs={"dropout": jax.random.PRNGKey(4)},
                              mutable=["batch_stats", "intermediates"],
                              capture_intermediates=True)
  dropped = np.asarray(state["intermediates"]["Dropout_0"]["__call__"][0], np.float64)
  features = np.asarray(features, np.float64)
  zero, scaled = np.isclose(dropped, 0.0), np.isclose(dropped, 2.0 * features, atol=1e-6)
  assert np.all(zero | scaled) and 0.3 < zero.mean() < 0.7
  head = variables["params"]["head"]["dense"]
  np.testing.assert_allclose(logits, dropped @ np.asarray(head["kernel"], np.float64)
                             + np.asarray(head["bias"], np.float64), atol=1e-5)
  np.testing.assert_array_equal(  # rate 0: no draw from the rng
      _apply(plain, variables, images, train=True, rng=jax.random.PRNGKey(4)),
      _apply(plain, variables, images, train=True))
