"""Heads on top of a backbone's pooled features.

* `ProjectionHead`: SimCLRv2's deeper projection head g(.) (SimCLRv2 §2,
  item 2): per layer dense + BN (+ ReLU except the last; the last BN has no
  centering). Returns all intermediate outputs so that a classifier can be
  fine-tuned "from layer k" (SimCLRv2 §2; SemPPL App. A.1 fine-tunes from the
  first layer).
* `MLPHead`: BYOL / SemPPL projector and predictor: dense(4096) -> BN -> ReLU ->
  dense(256) (SemPPL §3 "Architecture"); with `batch_norm=False` the plain
  dense -> ReLU -> dense of SimMatch's official projection head.
* `LinearClassifier`: one dense layer to logits.
* `Classifier`: backbone -> `LinearClassifier` (supervised baseline).

All take `train` (BatchNorm mode) and return float32.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class ProjectionHead(nn.Module):
  """SimCLRv2 projection head g(.) with `num_layers` dense + BN layers.

  Attributes:
    num_layers: number of dense layers (SimCLRv2: 3; 0 is the identity).
    hidden_dim: width of the middle layers (None: the input width, as SimCLRv2
      footnote 2 sets it).
    out_dim: output width of the last layer (SimCLR: 128).
    bn_momentum: BatchNorm running-average momentum (flax convention).
    bn_epsilon: BatchNorm epsilon.
    dtype: computation dtype; parameters stay float32.
  """

  num_layers: int = 3
  hidden_dim: int | None = None
  out_dim: int = 128
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, x: jax.Array, *, train: bool
  ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Returns (output, hiddens): hiddens[0] = x, hiddens[k] = layer k out."""
    hidden_dim = self.hidden_dim or x.shape[-1]
    hiddens = [x.astype(jnp.float32)]
    h = x.astype(self.dtype)
    for layer in range(1, self.num_layers + 1):
      last = layer == self.num_layers
      h = nn.Dense(
          self.out_dim if last else hidden_dim,
          use_bias=False,
          dtype=self.dtype,
          name=f"dense{layer}",
      )(h)
      h = nn.BatchNorm(
          use_running_average=not train,
          momentum=self.bn_momentum,
          epsilon=self.bn_epsilon,
          use_bias=not last,
          dtype=self.dtype,
          name=f"bn{layer}",
      )(h)
      if not last:
        h = nn.relu(h)
      hiddens.append(h.astype(jnp.float32))
    return hiddens[-1], tuple(hiddens)


class MLPHead(nn.Module):
  """BYOL / SemPPL MLP: dense(hidden_dim) -> BN -> ReLU -> dense(out_dim).

  Both dense layers have biases. Without `batch_norm` the head is
  dense -> ReLU -> dense (SimMatch's official head: nn.Linear, ReLU, nn.Linear)
  and has no 'bn1' parameters or batch statistics.

  Attributes:
    hidden_dim: hidden width (SemPPL: 4096).
    out_dim: output width (SemPPL: 256).
    batch_norm: BN after the first dense layer (BYOL / SemPPL: True).
    bn_momentum: BatchNorm running-average momentum (flax convention).
    bn_epsilon: BatchNorm epsilon.
    dtype: computation dtype; parameters stay float32.
  """

  hidden_dim: int = 4096
  out_dim: int = 256
  batch_norm: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    h = nn.Dense(self.hidden_dim, dtype=self.dtype, name="dense1")(
        x.astype(self.dtype)
    )
    if self.batch_norm:
      h = nn.BatchNorm(
          use_running_average=not train,
          momentum=self.bn_momentum,
          epsilon=self.bn_epsilon,
          dtype=self.dtype,
          name="bn1",
      )(h)
    h = nn.Dense(self.out_dim, dtype=self.dtype, name="dense2")(nn.relu(h))
    return h.astype(jnp.float32)


class LinearClassifier(nn.Module):
  """Dense layer from features to logits.

  Attributes:
    num_classes: number of logits.
    kernel_init: weight initialiser (SimCLR's supervised head: normal, stddev
      0.01).
    dtype: computation dtype; parameters stay float32.
  """

  num_classes: int
  kernel_init: Any = nn.initializers.normal(stddev=0.01)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """`train` is accepted for a uniform head interface; there is no BN here."""
    del train
    logits = nn.Dense(
        self.num_classes,
        kernel_init=self.kernel_init,
        dtype=self.dtype,
        name="dense",
    )(x.astype(self.dtype))
    return logits.astype(jnp.float32)


class Classifier(nn.Module):
  """Backbone then linear classifier: images [B, H, W, C] -> logits [B, K].

  Attributes:
    backbone: any backbone following `__call__(x, *, train) -> [B, D]`.
    num_classes: number of logits K.
    dropout_rate: dropout on the features before the classifier in train mode
      (Noisy Student: 0.5); > 0 needs the 'dropout' rng when train=True.
  """

  backbone: nn.Module
  num_classes: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    features = self.backbone(x, train=train)
    if self.dropout_rate > 0.0:
      features = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
    return LinearClassifier(self.num_classes, name="head")(
        features, train=train
    )
