"""Exponential moving averages of parameters: EMA teachers and their decay schedules.

theta' <- m theta' + (1 - m) theta is Semi-ViT Eq. 1 (EMA-Teacher), SimMatch Eq. 11
(student-teacher bank), Mean Teacher (survey) and SimCLRv2's MoCo encoder. The one
home of the EMA: the train step (training/step.py) moves every method's target with
`ema_update` at the decay of `ema_schedule(config.ema...)`.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


def ema_update(*, target_params: Any, online_params: Any,
               decay: jax.Array | float) -> Any:
  """theta' <- m theta' + (1 - m) theta leaf by leaf (Semi-ViT Eq. 1, SimMatch Eq. 11).

  Equivalent to `optax.incremental_update(online, target, step_size=1 - m)`, but each
  leaf keeps the target's dtype (e.g. bf16 params with an f32 traced decay).
  Non-floating leaves (integer counters) are copied from the online tree.

  Args:
    target_params: the EMA (teacher) pytree.
    online_params: the online (student) pytree, same structure.
    decay: m in [0, 1], a Python float or a traced scalar (see the schedules below).

  Returns:
    The updated target pytree; no gradient flows into it (stop-gradient applied).
  """
  online_params = jax.lax.stop_gradient(online_params)

  def update(target, online):
    if not jnp.issubdtype(jnp.result_type(target), jnp.inexact):
      return online
    updated = optax.incremental_update(online, target, 1.0 - decay)
    return updated.astype(jnp.result_type(target))

  return jax.tree.map(update, target_params, online_params)


def byol_cosine_ema_decay(*, step: jax.Array | int, total_steps: int,
                          base_decay: float) -> jax.Array:
  """BYOL's schedule tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, k in [0, K].

  Rises from tau_base at k = 0 to 1 at k = K (k is clipped to [0, K]).
  """
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
  return 1.0 - (1.0 - base_decay) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def mean_teacher_ema_decay(*, step: jax.Array | int,
                           decay: float) -> jax.Array:
  """Mean Teacher's warm-up: min(1 - 1 / (k + 1), m), so early teachers track the
  student (the true average of the params seen so far) until k + 1 = 1 / (1 - m)."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(1.0 - 1.0 / (step + 1.0), decay)


EMA_SCHEDULES = ("constant", "byol_cosine", "mean_teacher")


def ema_schedule(name: str, *, decay: float,
                 total_steps: int) -> Callable[[jax.Array | int], jax.Array]:
  """`step -> m` by name, like an optax schedule: 'constant' (m = `decay`), 'byol_cosine'
  (BYOL's ramp from `decay` to 1 over `total_steps`) or 'mean_teacher' (its warm-up
  min(1 - 1/(k + 1), `decay`)); `step` counts optimizer updates."""
  if name == "byol_cosine":
    return lambda step: byol_cosine_ema_decay(step=step, total_steps=max(total_steps, 1),
                                              base_decay=decay)
  if name == "mean_teacher":
    return lambda step: mean_teacher_ema_decay(step=step, decay=decay)
  if name != "constant":
    raise ValueError(f"ema.schedule={name!r}; known: {', '.join(EMA_SCHEDULES)}.")
  return lambda step: jnp.asarray(decay, jnp.float32)
