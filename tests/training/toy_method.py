"""A tiny method (conv + BN + dense, cross-entropy) to test the engine alone."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from semissl.methods import base


class ToyNet(nn.Module):
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x).mean(axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class ToyMethod(base.Method):
  name = "toy"

  def __init__(self, config, info):
    super().__init__(config, info)
    self.model = ToyNet(info.num_classes)

  def init(self, rng, example_batch):
    return dict(self.model.init(rng, example_batch["labelled"]["images"]["image"], train=False)), {
        "seen": jnp.zeros((), jnp.int32)}

  def loss_fn(self, params, batch, *, state, rng):
    labelled = batch["labelled"]
    logits, updates = self.model.apply({"params": params, "batch_stats": state.batch_stats},
                                       labelled["images"]["image"], train=True,
                                       mutable=["batch_stats"])
    # rng-dependent term, so resume tests also check the step rng.
    noise = 1e-3 * jax.random.normal(rng, logits.shape)
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
