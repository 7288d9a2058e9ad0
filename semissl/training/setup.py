"""A run assembled from its config, in one place: mesh, dataset info, method, optimizer,
the TrainState in its shardings, and the train step.

`build(config, info, example_batch=...)` is the constructor the train loop, offline
evaluation (training/offline_evaluation.py), the benchmarks, fit_check and the tests
use; `build(..., abstract=True)` traces the state without allocating it (fit_check,
and tests that place a host copy of the state themselves). The parts (`dataset_info`,
`build_method`, `build_optimizer`, `create_state`) are public for callers that need
only one of them (e.g. a test with its own optimizer).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import ml_collections
import optax

from semissl import losses
from semissl import methods
from semissl.training import evaluators, optimizers, sharding
from semissl.training.step import make_train_step
from semissl.training.train_state import TrainState


def make_mesh(config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """`config.mesh` (axis name -> size, -1 = the rest; default all devices on 'data')."""
  return sharding.make_mesh(config.get("mesh", None), devices=devices)


def grad_accum_steps(config: ml_collections.ConfigDict) -> int:
  """k, the micro-batches per optimizer update (`config.grad_accum_steps`, default 1)."""
  return optimizers.check_grad_accum_steps(config.get("grad_accum_steps", 1))


def validate_config(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """One-line errors for bad input, raised before any data is read or compiled."""
  # Unknown names list the known ones; unknown config.method keys (e.g. misspelt) name
  # the method's options.
  methods.check_option_keys(methods.get_method(config.method.name), config.method)
  grad_accum_steps(config)
  if config.batch_size <= 0:
    raise ValueError(f"batch_size={config.batch_size} must be positive.")
  sharding.check_divisible("batch_size", config.batch_size, mesh)
  mu = config.get("mu", 0)
  if mu:
    sharding.check_divisible("mu*batch_size", int(mu * config.batch_size), mesh)
  sharding.check_divisible("eval_batch_size", config.eval_batch_size, mesh)
  if not (config.get("num_train_steps") or config.get("num_epochs")):
    raise ValueError("Set config.num_train_steps or config.num_epochs.")
  evaluator = config.get("evaluator", None)
  if evaluator and evaluator not in evaluators.EVALUATORS:
    raise ValueError(f"evaluator={evaluator!r}; known: {', '.join(evaluators.EVALUATORS)}.")


def steps_per_epoch(config: ml_collections.ConfigDict, *, num_labelled: int,
                    num_unlabelled: int) -> int:
  """Optimizer updates per epoch: an epoch is a pass over the unlabelled stream if
  there is one, else the labelled, in effective batches (x `grad_accum_steps`)."""
  mu, k = config.get("mu", 0), grad_accum_steps(config)
  if mu and config.data.get("unlabelled_views"):
    return max(num_unlabelled // (int(mu * config.batch_size) * k), 1)
  return max(num_labelled // (config.batch_size * k), 1)


def lr_batch_size(config: ml_collections.ConfigDict) -> int:
  """The batch the learning rate is scaled by: `optimizer.lr_batch_size` if set, else the
  effective batch, `batch_size` x `grad_accum_steps`."""
  return int(config.optimizer.get("lr_batch_size", 0) or
             config.batch_size * grad_accum_steps(config))


def dataset_info(config: ml_collections.ConfigDict, *, num_classes: int,
                 image_shape: Sequence[int], num_labelled: int, num_unlabelled: int,
                 labelled_labels=None, mean=None, std=None) -> methods.DatasetInfo:
  """What the method needs to know about the data, with the run's epoch length and
  total optimizer updates (`num_train_steps`, else `num_epochs` epochs)."""
  per_epoch = steps_per_epoch(config, num_labelled=num_labelled,
                              num_unlabelled=num_unlabelled)
  total_steps = int(config.get("num_train_steps") or round(config.num_epochs * per_epoch))
  return methods.DatasetInfo(num_classes=num_classes, image_shape=tuple(image_shape),
                             num_labelled=num_labelled, num_unlabelled=num_unlabelled,
                             steps_per_epoch=per_epoch, total_steps=total_steps,
                             labelled_labels=labelled_labels,
                             mean=None if mean is None else tuple(float(m) for m in mean),
                             std=None if std is None else tuple(float(v) for v in std))


def dataset_info_of(data: Any, config: ml_collections.ConfigDict) -> methods.DatasetInfo:
  """`dataset_info` of an input pipeline (`semissl.data.build_input`'s result)."""
  return dataset_info(config, num_classes=data.info.num_classes,
                      image_shape=data.info.image_shape, num_labelled=data.info.num_labelled,
                      num_unlabelled=data.info.num_unlabelled,
                      labelled_labels=getattr(data, "labelled_labels", None),
                      mean=data.info.mean, std=data.info.std)


def build_method(config: ml_collections.ConfigDict, info: methods.DatasetInfo, *,
                 mesh: jax.sharding.Mesh | None,
                 method_cls: type[methods.Method] | None = None) -> methods.Method:
  """`config.method.name` from the registry (or `method_cls`, e.g. a variant under
  study), given the mesh, validated."""
  method_cls = method_cls or methods.get_method(config.method.name)
  method = method_cls(config, info, mesh=mesh)
  method.validate()
  return method


def build_optimizer(config: ml_collections.ConfigDict,
                    method: methods.Method) -> tuple[optax.GradientTransformation,
                                                     optax.Schedule]:
  """(optimizer, learning-rate schedule) of `config.optimizer` over the method's run."""
  return optimizers.make_optimizer(
      config.optimizer, batch_size=lr_batch_size(config),
      total_steps=method.info.total_steps, steps_per_epoch=method.info.steps_per_epoch,
      layer_id_fn=getattr(method, "layer_id_fn", None),
      grad_accum_steps=grad_accum_steps(config))


def ema_decay_fn(config: ml_collections.ConfigDict,
                 total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """`update -> m` of `config.ema` (losses.ema_schedule)."""
  return losses.ema_schedule(config.ema.get("schedule", "constant"),
                             decay=config.ema.decay, total_steps=total_steps)


def state_init_fn(method: methods.Method, optimizer: optax.GradientTransformation, *,
                  rng: jax.Array) -> Callable[[Any], TrainState]:
  """`init_fn(batch) -> TrainState` at step 0 (the EMA target starts at the params)."""
  init_rng, state_rng = jax.random.split(rng)

  def init_fn(batch):
    variables, method_state = method.init(init_rng, batch)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState.create(params=params, batch_stats=batch_stats, rng=state_rng,
                             opt_state=optimizer.init(params), method_state=method_state)

  return init_fn


def create_state(method: methods.Method, optimizer: optax.GradientTransformation, *,
                 rng: jax.Array, example_batch: Any, mesh: jax.sharding.Mesh,
                 extra_rules: Sequence = (), abstract: bool = False) -> tuple[Any, Any]:
  """(TrainState at step 0, its shardings): replicated, except `extra_rules`
  (`config.sharding_rules`) and the method's (queues, banks). Initialised directly
  into the shardings, or with `abstract` only traced (ShapeDtypeStructs)."""
  init_fn = state_init_fn(method, optimizer, rng=rng)
  shapes = jax.eval_shape(init_fn, example_batch)
  rules = list(extra_rules) + list(method.state_sharding_rules())
  shardings = sharding.tree_shardings(shapes, mesh, rules)
  if abstract:
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         shapes, shardings)
  else:
    state = jax.jit(init_fn, out_shardings=shardings)(example_batch)
  return state, shardings


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a train loop needs besides the data and the workdir."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  method: methods.Method
  optimizer: optax.GradientTransformation
  lr_schedule: optax.Schedule
  state: Any  # TrainState at step 0 in its shardings (ShapeDtypeStructs if abstract)
  state_shardings: Any
  train_step: Callable  # jitted (state, batch) -> (state, metrics), state donated
  grad_accum_steps: int

  @property
  def info(self) -> methods.DatasetInfo:
    return self.method.info


def build(config: ml_collections.ConfigDict, info: methods.DatasetInfo, *,
          example_batch: Any, mesh: jax.sharding.Mesh | None = None,
          rng: jax.Array | None = None, abstract: bool = False,
          method_cls: type[methods.Method] | None = None) -> Run:
  """The run of `config` on `mesh` (default `config.mesh` over all devices).

  `example_batch`: a global batch (arrays or ShapeDtypeStructs) fixing the shapes;
  `rng` defaults to PRNGKey(config.seed). With `abstract` the state is traced only:
  ShapeDtypeStructs carrying their shardings, nothing allocated or compiled.
  `method_cls`: instead of the registered class of `config.method.name`.
  """
  mesh = mesh if mesh is not None else make_mesh(config)
  method = build_method(config, info, mesh=mesh, method_cls=method_cls)
  optimizer, schedule = build_optimizer(config, method)
  state, shardings = create_state(
      method, optimizer, rng=rng if rng is not None else jax.random.PRNGKey(config.seed),
      example_batch=example_batch, mesh=mesh, extra_rules=config.get("sharding_rules", ()),
      abstract=abstract)
  k = grad_accum_steps(config)
  train_step = make_train_step(method, optimizer, lr_schedule=schedule,
                               ema_decay_fn=ema_decay_fn(config, info.total_steps),
                               mesh=mesh, state_shardings=shardings, grad_accum_steps=k)
  return Run(config=config, mesh=mesh, method=method, optimizer=optimizer,
             lr_schedule=schedule, state=state, state_shardings=shardings,
             train_step=train_step, grad_accum_steps=k)
