"""Ramp-up of the unsupervised weight mu(t) in L = L_s + mu(t) L_u (survey).

* 'sigmoid': exp(-5 (1 - t)^2), t in [0, 1] (Laine & Aila 2017, used by the
  Pi-model, Mean Teacher and, in Oliver et al.'s evaluation, VAT).
* 'linear': t (MixMatch's linear warm-up of lambda_u; with a `start_step`, Lee
  2013's piecewise-linear alpha(t) for pseudo-labels).
* 'none': 1.

t = clip((step - start_step) / rampup_steps, 0, 1); the weight is 0 before
`start_step` and 1 once the ramp is over (rampup_steps = 0 jumps straight to 1).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

RAMPUP_SHAPES = ("sigmoid", "linear", "none")


def rampup_weight(*, step: jax.Array | int, rampup_steps: int,
                  shape: str = "sigmoid", start_step: int = 0) -> jax.Array:
  """The ramp-up factor in [0, 1] at `step` (a float32 scalar)."""
  if shape not in RAMPUP_SHAPES:
    raise ValueError(f"Unknown ramp-up shape {shape!r}; known: {RAMPUP_SHAPES}.")
  step = jnp.asarray(step, jnp.float32)
  started = (step >= start_step).astype(jnp.float32)
  if shape == "none":
    return started
  if rampup_steps:
    progress = jnp.clip((step - start_step) / rampup_steps, 0.0, 1.0)
  else:
    progress = jnp.ones_like(step)
  if shape == "linear":
    return started * progress
  return started * jnp.exp(-5.0 * jnp.square(1.0 - progress))

