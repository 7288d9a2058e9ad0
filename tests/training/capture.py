"""Records what the train loop's steps receive, for end-to-end tests that check the
state itself (init_from, the EMA target) rather than only the reported metrics."""
import dataclasses

import jax

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
