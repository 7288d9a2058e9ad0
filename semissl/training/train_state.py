"""TrainState: everything that changes during training, as one pytree.

One orbax save of this captures the whole run: the step (which is also the
data-stream position), the online and EMA-target variables, the optimizer
state, the method's own state (queues, memory banks, DA windows) and the rng.
"""
from __future__ import annotations

from typing import Any

import flax
import jax

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

  @property
  def variables(self) -> dict[str, PyTree]:
    """Online variables as flax `apply` takes them."""
    return {"params": self.params, "batch_stats": self.batch_stats}

  @property
  def target_variables(self) -> dict[str, PyTree]:
    """EMA-target variables as flax `apply` takes them."""
    return {"params": self.target_params, "batch_stats": self.target_batch_stats}
