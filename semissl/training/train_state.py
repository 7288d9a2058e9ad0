"""TrainState: everything that changes during training, as one pytree.

One orbax save of this captures the whole run: the step (which is also the
data-stream position), the online and EMA-target variables, the optimizer
state, the method's own state (queues, memory banks, DA windows) and the rng.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  target_params: PyTree
  target_batch_stats: PyTree
  method_state: PyTree
  rng: jax.Array  # raw uint32 key; the step's key is fold_in(rng, step)

  @classmethod
  def create(cls, *, params: PyTree, batch_stats: PyTree, rng: jax.Array,
             opt_state: PyTree = None, method_state: PyTree = None, step: Any = 0,
             target_params: PyTree = None, target_batch_stats: PyTree = None) -> "TrainState":
    """The one constructor (as flax's `TrainState.create`): the EMA target starts at
    the online variables unless given; no optimizer / method state means empty."""
    return cls(step=jnp.asarray(step, jnp.int32), params=params, batch_stats=batch_stats,
               opt_state={} if opt_state is None else opt_state,
               target_params=params if target_params is None else target_params,
               target_batch_stats=(batch_stats if target_batch_stats is None
                                   else target_batch_stats),
               method_state={} if method_state is None else method_state, rng=rng)

  @property
  def variables(self) -> dict[str, PyTree]:
    """Online variables as flax `apply` takes them."""
    return {"params": self.params, "batch_stats": self.batch_stats}

  @property
  def target_variables(self) -> dict[str, PyTree]:
    """EMA-target variables as flax `apply` takes them."""
    return {"params": self.target_params, "batch_stats": self.target_batch_stats}
