"""The one jitted train step (every method) and the eval step.

The step is a pure function TrainState x batch -> TrainState x metrics, jitted
with NamedShardings on the mesh and the state donated. The batch is sharded
over `data`; batch norm inside the method's apply sees the global batch (XLA
inserts the cross-device reductions, no `axis_name`).

Gradient accumulation (`grad_accum_steps` = k > 1, the optimizer an optax.MultiSteps):
one call is one micro-step on one batch; `state.step` counts micro-steps (it is
the data-stream position and the rng's fold-in) and `state.step // k` the optimizer
updates. Parameters move on every k-th micro-step only; the learning-rate metric,
the EMA decay and the step the method sees (`state.step` inside `loss_fn`: its
ramps and warm-ups) are those of the update count, and the EMA target moves once
per update, after the parameters. Batch-norm statistics and `method_state` (queues,
banks, distribution-alignment windows) still change on every micro-step, from that
micro-batch alone, and `loss` / `grad_norm` are the micro-batch's (README, gradient
accumulation).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from semissl import losses
from semissl.methods.base import Method
from semissl.training.optimizers import check_grad_accum_steps
from semissl.training.sharding import batch_sharding, replicated
from semissl.training.train_state import TrainState


def make_train_step(method: Method, optimizer: optax.GradientTransformation, *,
                    lr_schedule: optax.Schedule, ema_decay_fn: Callable[[jax.Array], jax.Array],
                    mesh: jax.sharding.Mesh, state_shardings: Any,
                    grad_accum_steps: int = 1) -> Callable:
  """Returns jitted `train_step(state, batch) -> (state, metrics)`.

  `grad_accum_steps` must be the k `optimizer` accumulates over (optax.MultiSteps,
  `optimizers.make_optimizer(..., grad_accum_steps=k)`); `lr_schedule` and
  `ema_decay_fn` (`losses.ema_schedule`) take the optimizer update count.
  """
  k = check_grad_accum_steps(grad_accum_steps)

  def train_step(state: TrainState, batch: Any):
    rng = jax.random.fold_in(state.rng, state.step)
    update_step = state.step // k  # optimizer updates before this micro-step
    method_view = state.replace(step=update_step) if k > 1 else state
    grad_fn = jax.value_and_grad(method.loss_fn, has_aux=True)
    (loss, aux), grads = grad_fn(state.params, batch, state=method_view, rng=rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)  # zero updates mid-accumulation
    decay = ema_decay_fn(update_step)
    moving = decay
    if k > 1:  # the target moves with the parameters: on the update's last micro-step
      moving = jnp.where(state.step % k == k - 1, decay, 1.0)
    # target <- decay * target + (1 - decay) * online (losses/ema.py)
    target_params = losses.ema_update(target_params=state.target_params,
                                      online_params=params, decay=moving)
    target_batch_stats = losses.ema_update(target_params=state.target_batch_stats,
                                           online_params=aux.batch_stats, decay=moving)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=aux.batch_stats, opt_state=opt_state,
        target_params=target_params, target_batch_stats=target_batch_stats,
        method_state=aux.method_state)
    metrics = dict(aux.metrics, loss=loss, learning_rate=lr_schedule(update_step),
                   grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params),
                   ema_decay=decay)
    return new_state, metrics

  return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding(mesh)),
                 out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0)


def make_eval_step(method: Method, *, mesh: jax.sharding.Mesh, state_shardings: Any) -> Callable:
  """Returns jitted `eval_step(state, batch) -> sums` for online and EMA variables.

  The batch carries a `mask` (0 for padding); the sums are of correct top-1 and
  top-5 predictions and of the mask, so the host divides once at the end.
  """

  def correct_counts(logits, labels, mask):
    top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    top5 = jnp.any(topk == labels[:, None], axis=-1).astype(jnp.float32)
    return jnp.sum(top1 * mask), jnp.sum(top5 * mask)

  def eval_step(state: TrainState, batch: Any):
    images, labels, mask = batch["images"]["image"], batch["label"], batch["mask"]
    sums = {"count": jnp.sum(mask)}
    for prefix, variables in (("", state.variables), ("ema_", state.target_variables)):
      logits = method.eval_logits(variables, images)
      sums[prefix + "top1"], sums[prefix + "top5"] = correct_counts(logits, labels, mask)
    return sums

  return jax.jit(eval_step, in_shardings=(state_shardings, batch_sharding(mesh)),
                 out_shardings=replicated(mesh))
