"""A tiny method (conv + BN + dense, cross-entropy) to test the engine alone.

`config.toy.batch_norm=False` drops the BN layer and `config.toy.noise=0` the
rng-dependent logit noise (gradient-accumulation tests need both)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from semissl.methods import base
from semissl.training import setup, sharding


class ToyNet(nn.Module):
  num_classes: int = 3
  batch_norm: bool = True

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.Conv(4, (3, 3))(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x).mean(axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class ToyMethod(base.Method):
  name = "toy"

  def __init__(self, config, info, **kwargs):
    super().__init__(config, info, **kwargs)
    toy = config.get("toy", {})
    self.model = ToyNet(info.num_classes, batch_norm=toy.get("batch_norm", True))
    self.noise = toy.get("noise", 1e-3)

  def init(self, rng, example_batch):
    return dict(self.model.init(rng, example_batch["labelled"]["images"]["image"], train=False)), {
        "seen": jnp.zeros((), jnp.int32)}

  def loss_fn(self, params, batch, *, state, rng):
    labelled = batch["labelled"]
    logits, updates = self.model.apply({"params": params, "batch_stats": state.batch_stats},
                                       labelled["images"]["image"], train=True,
                                       mutable=["batch_stats"])
    # rng-dependent term, so resume tests also check the step rng.
    noise = self.noise * jax.random.normal(rng, logits.shape)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits + noise, labelled["label"]).mean()
    method_state = {"seen": state.method_state["seen"] + labelled["label"].shape[0]}
    return loss, base.StepAux(updates["batch_stats"], method_state, {"train_top1": loss * 0})

  def eval_logits(self, variables, images):
    return self.model.apply(variables, images, train=False)


def toy_config():
  config = ml_collections.ConfigDict()
  config.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", base_lr=0.1, lr_scaling="none", momentum=0.9, nesterov=True,
      weight_decay=1e-4, warmup_steps=2, schedule="cosine"))
  config.ema = ml_collections.ConfigDict(dict(decay=0.9, schedule="constant"))
  return config


def toy_info():
  return base.DatasetInfo(num_classes=3, image_shape=(6, 6, 2), num_labelled=64,
                          num_unlabelled=0)


def toy_batch(seed, batch_size=16):
  rs = np.random.RandomState(seed)
  return {"labelled": {
      "images": {"image": rs.normal(size=(batch_size, 6, 6, 2)).astype(np.float32)},
      "label": rs.randint(0, 3, size=(batch_size,)).astype(np.int32)}}


def toy_training_setup(devices=None, total_steps=10, *, config=None, grad_accum_steps=1,
                       batch_size=16, method_cls=ToyMethod):
  """(mesh, state at step 0, train_step, state shardings, method) of the toy method.

  `total_steps` counts optimizer updates of `grad_accum_steps` micro-batches of
  `batch_size` each."""
  mesh = sharding.make_mesh({"data": -1}, devices=devices)
  config = ml_collections.ConfigDict((config or toy_config()).to_dict())
  config.batch_size, config.grad_accum_steps = batch_size, grad_accum_steps
  info = base.DatasetInfo(num_classes=3, image_shape=(6, 6, 2), num_labelled=64,
                          num_unlabelled=0, steps_per_epoch=4, total_steps=total_steps)
  first = sharding.global_batch(toy_batch(0, batch_size), mesh)
  run = setup.build(config, info, example_batch=first, mesh=mesh, rng=jax.random.PRNGKey(0),
                    method_cls=method_cls)
  return mesh, run.state, run.train_step, run.state_shardings, run.method
