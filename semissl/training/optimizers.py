"""Optimizers and schedules, all from optax.

- `lars`: optax.lars; weight decay and trust-ratio adaptation skip biases and
  norm parameters (matched by path regex), weight decay added before the trust
  ratio (SimCLR).
- `sgd`: SGD with (Nesterov) momentum and masked decoupled-from-nothing L2
  (weight decay added to the gradient, as torch SGD does).
- `adamw`: optax.adamw, optionally with layer-wise lr decay (ViT) through
  optax.multi_transform.
Learning rate = base_lr scaled by the batch ('linear': B/256, 'sqrt': sqrt(B),
'none'), then a schedule with warm-up; `lr_multipliers` ((regex, factor), ...)
scale the learning rate of parameter groups (optax.multi_transform).

Gradient accumulation (`config.grad_accum_steps` = k > 1): the whole optimizer
(clipping, weight decay, momentum, schedule) is wrapped in optax.MultiSteps, which
keeps the running mean of k micro-batch gradients in its state (`acc_grads`, so it
is checkpointed) and applies the inner optimizer to it on every k-th call; the
other calls return zero updates. The inner optimizer, and so its schedule, counts
optimizer updates, not micro-batches; the batch the learning rate is scaled by is
the effective one, k x the micro-batch (the train loop passes it).
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from semissl.training.sharding import path_to_str

DEFAULT_NO_DECAY = r"(bias|scale|pos_embedding|cls)$"


def scaled_learning_rate(opt: ml_collections.ConfigDict, batch_size: int) -> float:
  rule = opt.get("lr_scaling", "linear")
  if rule == "linear":
    return opt.base_lr * batch_size / opt.get("reference_batch_size", 256)
  if rule == "sqrt":
    return opt.base_lr * math.sqrt(batch_size)
  if rule == "none":
    return opt.base_lr
  raise ValueError(f"optimizer.lr_scaling={rule!r}; known: linear, sqrt, none.")


def make_schedule(opt: ml_collections.ConfigDict, *, peak_lr: float, total_steps: int,
                  warmup_steps: int) -> optax.Schedule:
  """Warm-up then 'cosine' (to end_lr), 'constant', or FixMatch's cos(7 pi k / 16 K)."""
  name = opt.get("schedule", "cosine")
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=opt.get("end_lr", 0.0))
  if name == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak_lr, max(warmup_steps, 1)),
         optax.constant_schedule(peak_lr)], [warmup_steps]) if warmup_steps else (
             optax.constant_schedule(peak_lr))
  if name == "fixmatch_cosine":
    return lambda step: peak_lr * jnp.cos(7.0 * jnp.pi * step / (16.0 * total_steps))
  if name == "step":
    # x step_decay_factor at each fraction of training (SemPPL App. A.1: x0.2 at 18/30, 24/30).
    piecewise = optax.piecewise_constant_schedule(peak_lr, {
        int(round(f * total_steps)): opt.get("step_decay_factor", 0.1)
        for f in opt.get("step_decay_fractions", ())})
    if not warmup_steps:
      return piecewise
    return lambda step: jnp.where(step < warmup_steps, peak_lr * step / warmup_steps,
                                  piecewise(step))
  raise ValueError(f"optimizer.schedule={name!r}; known: cosine, constant, fixmatch_cosine, "
                   "step.")


def path_mask(params: Any, exclude_regex: str) -> Any:
  """True for leaves whose path does not match `exclude_regex` (e.g. biases, BN)."""
  pattern = re.compile(exclude_regex)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not pattern.search(path_to_str(path)), params)


def scale_by_path(multipliers) -> optax.GradientTransformation:
  """Per-group learning rates: updates of leaves whose path matches a regex are scaled.

  `multipliers` is ((regex, factor), ...); the first match wins, others keep 1.
  An optax.multi_transform of optax.scale, chained after the optimizer (e.g. a
  classifier lr 40x the encoder's, SemPPL App. A.1).
  """
  patterns = [(re.compile(pattern), float(factor)) for pattern, factor in multipliers]

  def labels(params):
    def label(path, _):
      name = path_to_str(path)
      return next((str(i) for i, (p, _) in enumerate(patterns) if p.search(name)), "rest")
    return jax.tree_util.tree_map_with_path(label, params)

  transforms = {str(i): optax.scale(factor) for i, (_, factor) in enumerate(patterns)}
  return optax.multi_transform(dict(transforms, rest=optax.identity()), labels)


def _layer_decay_labels(params: Any, num_layers: int, layer_id_fn) -> Any:
  return jax.tree_util.tree_map_with_path(
      lambda path, _: str(layer_id_fn(tuple(path_to_str((p,)) for p in path), num_layers)),
      params)


def check_grad_accum_steps(value: Any) -> int:
  """`config.grad_accum_steps` as an int >= 1, else a one-line ValueError."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"config.grad_accum_steps={value!r} must be an integer >= 1 (the "
                     "micro-batches averaged per optimizer update; 1: no accumulation).")
  return int(value)


def make_optimizer(opt: ml_collections.ConfigDict, *, batch_size: int, total_steps: int,
                   steps_per_epoch: int,
                   layer_id_fn: Callable[[tuple[str, ...], int], int] | None = None,
                   grad_accum_steps: int = 1
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, learning-rate schedule) for config `opt`.

  `batch_size` is the batch the learning rate is scaled by (the effective batch,
  micro-batch x `grad_accum_steps`); `total_steps` and `steps_per_epoch` count
  optimizer updates, as the schedule does. With `grad_accum_steps` > 1 the optimizer
  is optax.MultiSteps around the one below (see the module docstring); 1 returns it
  unwrapped, so its state keeps the layout of runs without accumulation.
  """
  grad_accum_steps = check_grad_accum_steps(grad_accum_steps)
  peak_lr = scaled_learning_rate(opt, batch_size)
  warmup_steps = int(opt.get("warmup_steps", 0) or
                     round(opt.get("warmup_epochs", 0) * steps_per_epoch))
  schedule = make_schedule(opt, peak_lr=peak_lr, total_steps=total_steps,
                           warmup_steps=warmup_steps)
  wd = opt.get("weight_decay", 0.0)
  no_decay = opt.get("exclude_from_weight_decay", DEFAULT_NO_DECAY)
  mask = lambda params: path_mask(params, no_decay)
  name = opt.name
  if name == "lars":
    tx = optax.lars(schedule, weight_decay=wd, weight_decay_mask=mask,
                    trust_coefficient=opt.get("trust_coefficient", 0.001),
                    trust_ratio_mask=mask, momentum=opt.get("momentum", 0.9),
                    nesterov=opt.get("nesterov", False))
  elif name == "sgd":
    tx = optax.chain(
        optax.add_decayed_weights(wd, mask) if wd else optax.identity(),
        optax.sgd(schedule, momentum=opt.get("momentum", 0.9),
                  nesterov=opt.get("nesterov", True)))
  elif name == "adamw":
    adamw = lambda lr: optax.adamw(lr, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999),
                                   weight_decay=wd, mask=mask)
    layer_decay = opt.get("layer_decay", None)
    if layer_decay:
      if layer_id_fn is None:
        raise ValueError("optimizer.layer_decay needs a model with layer ids (ViT).")
      num_layers = opt.layer_decay_num_layers
      scales = {str(i): layer_decay ** (num_layers + 1 - i) for i in range(num_layers + 2)}
      tx = optax.multi_transform(
          {i: adamw(lambda step, s=s: schedule(step) * s) for i, s in scales.items()},
          lambda params: _layer_decay_labels(params, num_layers, layer_id_fn))
    else:
      tx = adamw(schedule)
  else:
    raise ValueError(f"optimizer.name={name!r}; known: lars, sgd, adamw.")
  multipliers = opt.get("lr_multipliers", None)
  if multipliers:
    tx = optax.chain(tx, scale_by_path(multipliers))
  clip = opt.get("grad_clip_norm", None)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  if grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=grad_accum_steps,
                          use_grad_mean=True).gradient_transformation()
  return tx, schedule

