"""Records what the train loop's steps receive, for end-to-end tests that check the
state itself (init_from, the EMA target) rather than only the reported metrics."""
import dataclasses

import jax
import numpy as np

from semissl.training import setup


@dataclasses.dataclass
class Recording:
  """Host copies of the TrainState and batch each train step received, in order, and
  the last run's `setup.Run` (its method gives the loss)."""
  states: list = dataclasses.field(default_factory=list)
  batches: list = dataclasses.field(default_factory=list)
  run: object = None


def record_train_steps(monkeypatch) -> Recording:
  """Wraps `setup.build` (what `train_and_evaluate` calls) so that every train step
  first copies its input state and batch to the host (before the step donates them)."""
  recording = Recording()
  build = setup.build

  def recording_build(*args, **kwargs):
    run = build(*args, **kwargs)
    recording.states.clear()
    recording.batches.clear()

    def train_step(state, batch):
      recording.states.append(jax.device_get(state))
      recording.batches.append(jax.device_get(batch))
      return run.train_step(state, batch)

    recording.run = dataclasses.replace(run, train_step=train_step)
    return recording.run

  monkeypatch.setattr(setup, "build", recording_build)
  return recording


def _float64(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def assert_ema_followed(states, decay_of_update):
  """Between consecutive recorded states, every EMA-target leaf (params and batch
  statistics) follows ema_t = d ema_{t-1} + (1 - d) theta_t, with d =
  `decay_of_update(update count before the step)`, recomputed here in NumPy; and the
  target differs from the online variables (an EMA that copied them would pass the
  equation only with d = 0). Needs at least two states."""
  assert len(states) >= 2, "record at least two steps"
  for before, after in zip(states[:-1], states[1:]):
    d = decay_of_update(int(before.step))
    for field, online in (("target_params", "params"), ("target_batch_stats", "batch_stats")):
      previous, target = _float64(getattr(before, field)), _float64(getattr(after, field))
      theta = _float64(getattr(after, online))
      assert len(previous) == len(target) == len(theta), field
      for p, t, o in zip(previous, target, theta):
        np.testing.assert_allclose(t, d * p + (1 - d) * o, rtol=1e-6, atol=1e-7,
                                   err_msg=field)
  gap = max(float(np.abs(t - o).max()) for t, o in zip(_float64(states[-1].target_params),
                                                        _float64(states[-1].params)))
  assert gap > 1e-6, "the EMA target equals the online parameters"


def assert_started_from(state, workdir, *, module="backbone"):
  """The recorded `state` holds `workdir`'s latest checkpointed params and batch
  statistics of `module`, exactly (what `config.init_from=workdir` promises)."""
  from semissl.training import checkpointing  # noqa: PLC0415
  saved = checkpointing.restore_collections(workdir)
  for collection in ("params", "batch_stats"):
    expected = jax.tree_util.tree_leaves_with_path(saved.get(collection, {}).get(module, {}))
    loaded = dict(jax.tree_util.tree_leaves_with_path(getattr(state, collection)[module]))
    assert len(expected) == len(loaded), collection
    for path, value in expected:
      np.testing.assert_array_equal(np.asarray(loaded[path]), np.asarray(value),
                                    err_msg=f"{collection}/{module}{path}")


def crashed_copy(finished, workdir, *, stop: int, last: int):
  """`workdir` as `finished` (a run saving every step to `last`) would be had it crashed
  after its step-`stop` checkpoint: the later checkpoints and results.json removed."""
  import os
  import shutil
  shutil.copytree(finished, workdir)
  for step in range(stop + 1, last + 1):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
  os.remove(os.path.join(workdir, "results.json"))
  return workdir
