"""Fixed teachers read from another run's workdir (SimCLRv2 distillation, Noisy Student).

A fixed teacher lives in `method_state[key]` as {'params', 'batch_stats'}: initialised
with the method (`init_variables`, its shapes the template), filled once on a fresh
start from the latest checkpoint of a teacher workdir (`load`, every variable required:
another architecture is a one-line error naming the option), applied in inference mode
and never updated. Being part of the TrainState it is checkpointed, so a resumed run
does not read the teacher workdir again.
"""
from __future__ import annotations

from typing import Any, Callable

import jax


def init_variables(network, rng: jax.Array, images: jax.Array, **init_kwargs) -> dict:
  """{'params', 'batch_stats'} of `network` at init (empty batch_stats if it has none)."""
  variables = network.init(rng, images, train=False, **init_kwargs)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def load(method_state: Any, *, load_variables: Callable[..., Any], workdir: str,
         option: str = "method.teacher_workdir", key: str = "teacher") -> Any:
  """`method_state` with `method_state[key]` read from `workdir`'s latest checkpoint
  (`load_variables(workdir, template, require_all=True)`); errors name `option`."""
  try:
    teacher = load_variables(workdir, method_state[key], require_all=True)
  except ValueError as error:
    raise ValueError(f"{option}: {error}") from None
  return dict(method_state, **{key: teacher})
