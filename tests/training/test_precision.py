"""Mixed precision (`config.model.dtype`): a bfloat16 step next to the float32 step.

What stays float32 and why: models/precision.py. On CPU, XLA's compiler upcasts
bfloat16 convolutions to float32 after lowering, so these tests read the lowered
module (what XLA receives on every backend; TPU / GPU compile its bfloat16
convolutions as they are) and the residuals autodiff keeps for the backward pass.
"""
import contextlib
import functools
import importlib
import io
import os
import re

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest

from semissl import models
from semissl.methods import networks
from semissl.training import sharding
from tests.methods import test_sharded_step as sharded

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_CONFIGS = {"semppl_r50", "simclrv2_r50", "simmatch_r50", "semivit_vitb", "supervised_r50"}


def _config_names():
  return sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, "configs"))
                if name.endswith(".py") and name not in ("__init__.py", "common.py"))


@pytest.mark.parametrize("name", _config_names())
def test_every_config_has_a_compute_dtype(name):
  module = importlib.import_module(f"configs.{name}")
  if not hasattr(module, "get_config"):  # shared pieces (classic_fmnist_common)
    return
  expected = "bfloat16" if name in PAPER_CONFIGS else "float32"
  assert module.get_config().model.dtype == expected
  assert module.get_config("runlocal").model.dtype == "float32"  # CPU smoke runs


def test_unknown_dtype_is_a_one_line_error():
  config = sharded._config("supervised")
  config.model.dtype = "float16"
  with pytest.raises(ValueError, match=r"config.model.dtype='float16'; use one of float32, "
                     r"bfloat16"):
    networks.build_backbone(config.model)


def _float32_activations_kept(model, images, rngs=None):
  """The saved residuals (jax.ad_checkpoint.print_saved_residuals) of the train-mode
  backward pass that are float32 and have the batch as leading axis."""
  variables = model.init(jax.random.PRNGKey(0), images, train=False)

  def loss(params, images):
    features, _ = model.apply({**variables, "params": params}, images, train=True,
                              mutable=["batch_stats"], rngs=rngs)
    return jnp.sum(features ** 2)

  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(loss, variables["params"], images)
  lines = out.getvalue().splitlines()
  batch = images.shape[0]
  kept = [line for line in lines if re.match(rf"(f32|float32)\[{batch},\d+,", line)]
  low = [line for line in lines if re.match(rf"(bf16|bfloat16)\[{batch},\d+,", line)]
  return kept, low


@pytest.mark.parametrize("name, kwargs, shape", [
    ("tiny_resnet", {}, (8, 28, 28, 1)),
    ("resnet18", {}, (4, 32, 32, 3)),
    ("wrn28_2", {}, (4, 32, 32, 3)),
    ("vit_ti", {"patch_size": 8, "depth": 2, "drop_path_rate": 0.1}, (4, 32, 32, 3)),
])
def test_bfloat16_backbone_keeps_no_float32_copy_of_the_activations(name, kwargs, shape):
  images = jnp.ones(shape)
  rngs = {"dropout": jax.random.PRNGKey(1)}
  kept, low = _float32_activations_kept(
      models.get_backbone(name, dtype=jnp.bfloat16, **kwargs), images, rngs)
  assert low and not kept, "\n".join(kept[:5])
  # The float32 model keeps its activations in float32: the check can fail.
  kept32, _ = _float32_activations_kept(models.get_backbone(name, **kwargs), images, rngs)
  assert kept32


@functools.lru_cache(maxsize=None)  # each (case, dtype) step compiles once for both tests
def _one_step(case, dtype):
  config = sharded._config(case)
  config.model.dtype = dtype
  batch = sharded._batch(case, 0)
  run = sharded._run(case, jax.devices()[:1], batch, config=config)
  initial = sharded._initial_state(run, batch)
  state = jax.device_put(initial, run.state_shardings)
  batch = sharding.global_batch(batch, run.mesh)
  train_step = run.train_step
  lowered = train_step.lower(state, batch)
  new_state, metrics = lowered.compile(compiler_options=sharded.FAST_COMPILE)(state, batch)
  return initial, lowered.as_text(), sharded._host(new_state), sharded._host(metrics)


def _float_leaves(tree):
  return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)
          if np.issubdtype(np.asarray(leaf).dtype, np.floating)]


@pytest.mark.parametrize("case", ["supervised", "fixmatch_remixmatch_da", "semppl"])
def test_bfloat16_step_keeps_float32_state_and_convolves_in_bfloat16(case):
  init32, text32, _, _ = _one_step(case, "float32")
  init16, text16, state16, _ = _one_step(case, "bfloat16")
  # The same parameters to start from (params are float32 in both) ...
  sharded._assert_trees_close(sharded._host(init16), sharded._host(init32), "init")
  # ... and after the step every float of the state is float32: parameters,
  # optimizer moments, EMA target, batch-norm statistics, queues and banks.
  assert {leaf.dtype for leaf in _float_leaves(state16)} == {np.dtype(np.float32)}
  # The lowered step convolves in bfloat16, forward and backward.
  convs = [line for line in text16.splitlines() if "stablehlo.convolution" in line]
  assert convs and all(re.search(r"\(tensor<[\dx]+xbf16>, tensor<[\dx]+xbf16>\)", line)
                       for line in convs), convs[:3]
  assert "xbf16>" not in text32  # the float32 model: nothing in bfloat16


@pytest.mark.parametrize("case", ["supervised", "fixmatch_remixmatch_da"])
def test_bfloat16_step_is_close_to_the_float32_step(case):
  """Same init, same batch, one step; the first step's rate is 0 (one warm-up step),
  so its momentum buffer holds the gradient. bfloat16 rounds each value to 8
  mantissa bits (relative error <= 2^-9 = 0.2%); over the ~10 layers of the test
  network these errors add up to ~0.1-0.5% of the gradient's norm (measured), so
  the tolerance is 2% of that norm (not per element: a bias followed by batch
  norm has an exactly cancelling gradient, pure rounding noise in either dtype),
  and 0.5% on the loss, an average over the batch. SemPPL is left out: its
  nearest-neighbour votes and argmaxes are discrete, so a rounding change may
  flip one and move its gradient by more than rounding."""
  _, _, state32, metrics32 = _one_step(case, "float32")
  _, _, state16, metrics16 = _one_step(case, "bfloat16")
  np.testing.assert_allclose(metrics16["loss"], metrics32["loss"], rtol=5e-3)
  np.testing.assert_allclose(metrics16["grad_norm"], metrics32["grad_norm"], rtol=0.02)
  grad32 = np.concatenate([leaf.ravel() for leaf in _float_leaves(state32.opt_state)])
  grad16 = np.concatenate([leaf.ravel() for leaf in _float_leaves(state16.opt_state)])
  assert np.linalg.norm(grad32) > 0
  assert np.linalg.norm(grad16 - grad32) <= 0.02 * np.linalg.norm(grad32)
