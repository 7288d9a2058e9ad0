"""`remat=True` (nn.remat per block) changes memory, never the function: same variables,
outputs, batch statistics and gradients as without it, and the traced step really
rematerialises (one checkpoint per block)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import semivit_vitb, semppl_r50, simclrv2_r50, simmatch_r50, supervised_r50
from semissl import models
from semissl.methods import networks

CASES = {
    "basic": (functools.partial(models.ResNet, depth=18, stage_sizes=(1, 1), cifar_stem=True,
                                zero_init_last_bn=False), (2, 8, 8, 3), 2),
    "bottleneck": (functools.partial(models.ResNet, depth=50, stage_sizes=(1, 1),
                                     cifar_stem=True, zero_init_last_bn=False),
                   (2, 8, 8, 3), 2),
    "basic_drop_path": (functools.partial(models.ResNet, depth=18, stage_sizes=(1, 1),
                                          cifar_stem=True, zero_init_last_bn=False,
                                          drop_path_rate=0.5), (4, 8, 8, 3), 2),
    "vit_drop_path": (functools.partial(models.ViT, width=16, depth=3, num_heads=2,
                                        patch_size=4, drop_path_rate=0.5),
                      (4, 8, 8, 3), 3),
}


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grads(model, variables, images, rng):
  def loss(params):
    features, updates = model.apply(
        {"params": params, **{k: v for k, v in variables.items() if k != "params"}},
        images, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
    return jnp.sum(jnp.sin(features)), updates
  return jax.value_and_grad(loss, has_aux=True)(variables["params"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_remat_is_the_same_function(name):
  build, shape, num_blocks = CASES[name]
  images = jax.random.normal(jax.random.PRNGKey(0), shape)
  plain, remat = build(), build(remat=True)
  variables = plain.init(jax.random.PRNGKey(1), images, train=False)
  remat_variables = remat.init(jax.random.PRNGKey(1), images, train=False)
  jax.tree.map(np.testing.assert_array_equal, remat_variables, variables)  # same names

  rng = jax.random.PRNGKey(2)
  (loss, updates), grads = _loss_and_grads(plain, variables, images, rng)
  (remat_loss, remat_updates), remat_grads = _loss_and_grads(remat, variables, images, rng)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
               remat_updates, updates)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
               remat_grads, grads)
  assert float(jnp.abs(jax.tree.leaves(grads)[0]).sum()) > 0
  if name.endswith("drop_path"):  # the dropout rng reaches the rematerialised blocks
    (other, _), _ = _loss_and_grads(remat, variables, images, jax.random.PRNGKey(3))
    assert not np.isclose(float(other), float(remat_loss))

  def count_checkpoints(model):
    jaxpr = jax.make_jaxpr(lambda p: _loss_and_grads.__wrapped__(
        model, dict(variables, params=p), images, rng))(variables["params"])
    return sum(str(eqn.primitive) in ("checkpoint", "remat2", "remat")
               for eqn in _all_eqns(jaxpr.jaxpr))
  assert count_checkpoints(plain) == 0
  assert count_checkpoints(remat) >= num_blocks


def _all_eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _all_eqns(inner)


@pytest.mark.parametrize("module,arg", [
    (semppl_r50, ""), (simclrv2_r50, ""), (simmatch_r50, ""), (supervised_r50, ""),
    (semivit_vitb, "")])
def test_paper_configs_take_remat_from_the_command_line(module, arg):
  config = module.get_config(arg)
  assert config.model.remat is False
  config.model.remat = True  # what --config.model.remat=True does
  backbone = networks.build_backbone(config.model)
  assert backbone.remat is True
