"""The method interface: a method is a loss function plus its state, not a loop.

`semissl.training` runs every method with the same jitted step. A method:
- `init(rng, example_batch) -> (variables, method_state)`; variables is
  {'params': ..., 'batch_stats': ...} as flax returns them.
- `loss_fn(params, batch, *, state, rng) -> (loss, StepAux)`; `state` is the
  current TrainState (batch stats, EMA target, method state, step).
- `eval_logits(variables, images) -> logits` for top-1/top-5 evaluation of
  the online and the EMA-target variables.
- `state_sharding_rules()`: regex rules for its method_state (queues and banks
  are sharded on their slot axis over `self.mesh`, the run's mesh).
- `labelled_views` / `unlabelled_views`: the augmented views it needs.
- `defaults`: every `config.method` key it reads, with its default, read through
  `option(key)`; `check_option_keys` refuses any other key before a run starts.
- Optional epoch pass (`needs_epoch_pass`): at the start of each epoch for which
  `epoch_pass_due(epoch)`, the train loop computes the eval-mode encoder features of
  the whole training set (`EpochFeatures`, training/epoch_pass.py) and replaces the
  method state with `epoch_update(method_state, epoch=..., features=...)` (e.g.
  Label Propagation's pseudo-labels); the result is checkpointed with the state.
  A method may collect other per-example outputs than the features
  (`epoch_pass_features`, e.g. DivideMix's logits of both networks) and skip a part
  of the training set (`epoch_pass_parts`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np

from semissl.methods import networks

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a method needs to know about the data (no TensorFlow types)."""
  num_classes: int
  image_shape: tuple[int, int, int]
  num_labelled: int
  num_unlabelled: int
  steps_per_epoch: int = 1  # an epoch passes once over the unlabelled stream if any
  total_steps: int = 1
  # int32 [num_labelled]: the label of each labelled example, in labelled-bank slot
  # order (batch 'index'); None when unknown (e.g. synthetic benchmark batches).
  labelled_labels: np.ndarray | None = dataclasses.field(
      default=None, repr=False, compare=False)
  # Per-channel normalisation of the pipeline's images, (pixel / 255 - mean) / std: a
  # method that transforms images on device in pixel space (ReMixMatch's CTAugment)
  # undoes it; None when unknown (images then taken as already in [0, 1]).
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None


@dataclasses.dataclass(frozen=True)
class EpochFeatures:
  """What an epoch pass gives `Method.epoch_update` (host NumPy arrays, every process
  the same): eval-mode per-example outputs of the online weights
  (`Method.epoch_pass_features`, by default the encoder features `eval_features`); a
  part not in `Method.epoch_pass_parts` has 0 rows."""
  unlabelled: np.ndarray  # float32 [num_unlabelled, D], row = slot (batch 'index')
  labelled: np.ndarray  # float32 [num_labelled, D], row = labelled slot
  labelled_labels: np.ndarray  # int32 [num_labelled]
  # int64 [num_labelled]: each labelled example's unlabelled-stream slot, -1 if absent.
  labelled_slots: np.ndarray


class StepAux(NamedTuple):
  """What `loss_fn` returns besides the loss."""
  batch_stats: PyTree  # updated online batch-norm statistics
  method_state: PyTree  # updated queues / banks / averages
  metrics: dict[str, jax.Array]  # scalars, averaged over the global batch


class UndeclaredOptionError(KeyError):
  """`Method.option` of a key its `defaults` do not declare (a programming error)."""

  def __str__(self):
    return str(self.args[0])


class Method:
  """Base class; subclasses register themselves with `register`."""

  name: str = ""
  # Every `config.method` key the method reads (besides 'name') -> its default (None
  # where there is none: `validate` then says what to set). A subclass extends its
  # parent's: `defaults = {**Parent.defaults, "key": value}`.
  defaults: Mapping[str, Any] = {}
  # False for pretraining methods with no classifier (SimCLR stage 1, SemPPL):
  # their online evaluation uses `eval_features` with a k-NN monitor instead.
  has_classifier: bool = True
  # True: the train loop runs an epoch pass (`epoch_update`) at each due epoch start.
  needs_epoch_pass: bool = False
  # The parts of the training set the epoch pass runs over ('unlabelled': the
  # unlabelled stream's images, 'labelled': the labelled ones).
  epoch_pass_parts: tuple[str, ...] = ("unlabelled", "labelled")

  def __init__(self, config: ml_collections.ConfigDict, info: DatasetInfo, *,
               mesh: jax.sharding.Mesh | None = None):
    self.config = config
    self.info = info
    self.mesh = mesh  # the run's mesh (training/setup.py); None outside a run

  def option(self, key: str) -> Any:
    """`config.method.<key>`, else this method's default."""
    if key not in self.defaults:
      raise UndeclaredOptionError(f"{type(self).__name__}.option({key!r}): {key!r} is not in "
                                  f"{type(self).__name__}.defaults; declare it there.")
    return self.config.method.get(key, self.defaults[key])

  def concat_examples(self, arrays: Sequence[jax.Array]) -> jax.Array:
    """Image batches [n_i, ...] as one, each device keeping its own rows (no gather
    of the images); `split_examples` undoes it. See networks.concat_examples."""
    return networks.concat_examples(arrays, mesh=self.mesh)

  def split_examples(self, x: jax.Array, sizes: Sequence[int]) -> list[jax.Array]:
    """Per-example outputs of a `concat_examples` batch, split back into its parts."""
    return networks.split_examples(x, sizes, mesh=self.mesh)

  @property
  def data_devices(self) -> int:
    """Devices on the mesh's 'data' axis (all devices when built without a mesh)."""
    if self.mesh is None:
      return jax.device_count()
    return int(dict(self.mesh.shape).get("data", 1))

  # Views the input pipeline must produce (view name -> augmentation spec).
  @property
  def labelled_views(self) -> dict[str, Any]:
    return dict(self.config.data.labelled_views)

  @property
  def unlabelled_views(self) -> dict[str, Any]:
    return dict(self.config.data.get("unlabelled_views", {}) or {})

  def validate(self) -> None:
    """Raises a one-line ValueError for bad method config, before training."""

  def init(self, rng: jax.Array, example_batch: PyTree) -> tuple[PyTree, PyTree]:
    raise NotImplementedError

  def load_method_state(self, method_state: PyTree, *, load_variables: Any) -> PyTree:
    """Host side, once on a fresh start (not on resume), after `init`: fills
    method_state from outside the run, e.g. a fixed distillation teacher read
    from its workdir with `load_variables(workdir, template, **kwargs)` (the train
    loop passes `checkpointing.load_variables_from`). Raises a one-line ValueError
    on bad input. Default: as is."""
    return method_state

  def loss_fn(self, params: PyTree, batch: PyTree, *, state: Any,
              rng: jax.Array) -> tuple[jax.Array, StepAux]:
    raise NotImplementedError

  def eval_logits(self, variables: PyTree, images: jax.Array) -> jax.Array:
    raise NotImplementedError

  def eval_features(self, variables: PyTree, images: jax.Array) -> jax.Array:
    """Encoder features [B, D] for k-NN monitoring / linear evaluation."""
    raise NotImplementedError

  def state_sharding_rules(self) -> Sequence[tuple[str, Any]]:
    return ()

  def epoch_pass_due(self, epoch: int) -> bool:
    """Whether the epoch pass runs at the start of `epoch` (0-based; default: every
    epoch when `needs_epoch_pass`)."""
    return self.needs_epoch_pass

  def epoch_pass_features(self, variables: PyTree, images: jax.Array) -> jax.Array:
    """The per-example outputs [B, D] the epoch pass collects (`EpochFeatures`), eval
    mode, online `variables`; default: `eval_features`."""
    return self.eval_features(variables, images)

  def epoch_update(self, method_state: PyTree, *, epoch: int,
                   features: EpochFeatures) -> PyTree:
    """Host side, at the start of a due epoch: the new method_state (same structure,
    shapes and dtypes) from the features of the whole training set."""
    raise NotImplementedError


_METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
  """Class decorator: makes the method available by its `name`."""
  if not cls.name:
    raise ValueError(f"{cls.__name__} needs a non-empty `name`.")
  _METHODS[cls.name] = cls
  return cls


def check_option_keys(method_cls: type[Method], method_config: Mapping[str, Any]) -> None:
  """One-line ValueError naming the keys of `config.method` (besides 'name') that
  `method_cls` does not declare in its `defaults` (e.g. a misspelt option)."""
  unknown = sorted(set(method_config) - set(method_cls.defaults) - {"name"})
  if unknown:
    keys = ", ".join(f"config.method.{key}" for key in unknown)
    what = "is not an option" if len(unknown) == 1 else "are not options"
    raise ValueError(f"{keys} {what} of {method_cls.name}; known: "
                     f"{', '.join(sorted(method_cls.defaults)) or 'none'}.")


def get_method(name: str) -> type[Method]:
  if name not in _METHODS:
    raise ValueError(f"Unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}.")
  return _METHODS[name]


def known_methods() -> list[str]:
  return sorted(_METHODS)
