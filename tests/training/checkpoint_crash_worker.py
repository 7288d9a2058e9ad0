"""A training process that dies for real in the middle of an async checkpoint save.

  python -m tests.training.checkpoint_crash_worker WORKDIR CRASH_POINT HOW
Trains the toy method 2 steps, saves step 2 with `checkpointing.save` and waits
for it (the last good checkpoint; its values also go to WORKDIR/expected.npz),
trains step 3, starts the async save of step 3 and keeps training while orbax
writes it in its background thread, where a hook kills the process (HOW:
`exit` = os._exit(1), `sigkill` = SIGKILL to itself) at CRASH_POINT:
  arrays_written: the arrays are in the temporary directory, the pytree
                  metadata and everything after it are not (a partial write);
  final_rename:   everything is written, commit_success.txt included; only the
                  rename of `3.orbax-checkpoint-tmp` to `3` is missing.
The hooks replace orbax internals of orbax-checkpoint 0.12 (named below); if
the process is not killed it exits with status 3, which the tests reject.
"""
import os
import signal
import sys

import jax
import numpy as np

from semissl.training import checkpointing, sharding
from tests.training import toy_method

CRASH_STEP = 3


def toy_setup(total_steps=10):
  """(mesh, state at step 0, train_step) of the toy method on all devices."""
  return toy_method.toy_training_setup(total_steps=total_steps)[:3]


def flat_host_state(state):
  """{'params/Conv_0/kernel': np.ndarray, ...}: every leaf of the TrainState."""
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _die(how):
  sys.stdout.flush()
  sys.stderr.flush()
  if how == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
  os._exit(1)


def install_crash_hook(crash_point, how):
  if crash_point == "arrays_written":
    # Runs in orbax's background commit, after the array writes have completed
    # and before `_METADATA` (then the item and step finalisation) is written.
    from orbax.checkpoint._src.handlers import base_pytree_checkpoint_handler as base
    async def write_metadata_file(self, directory, **kwargs):
      _die(how)
    base.BasePyTreeCheckpointHandler._write_metadata_file = write_metadata_file
  elif crash_point == "final_rename":
    # AtomicRenameTemporaryPath.finalize writes commit_success.txt, then calls
    # async_path.rename(tmp, final): first for the item ('state'), last for the
    # step directory. Die at the step's rename.
    from orbax.checkpoint._src.path import async_path
    original_rename = async_path.rename
    async def rename(src, dst):
      if os.path.basename(str(dst)) == str(CRASH_STEP):
        _die(how)
      return await original_rename(src, dst)
    async_path.rename = rename
  else:
    raise ValueError(crash_point)


def main():
  workdir, crash_point, how = sys.argv[1:4]
  mesh, state, train_step = toy_setup()
  batch = lambda seed: sharding.global_batch(toy_method.toy_batch(seed), mesh)
  # keep-last-1: the most aggressive retention; orbax schedules step 2 for
  # deletion as soon as the save of step 3 starts.
  manager = checkpointing.make_manager(workdir, max_to_keep=1, save_interval_steps=1)
  for seed in range(2):
    state, _ = train_step(state, batch(seed))
  assert checkpointing.save(manager, state)
  manager.wait_until_finished()
  np.savez(os.path.join(workdir, "expected.npz"), **flat_host_state(state))

  state, _ = train_step(state, batch(2))
  assert int(state.step) == CRASH_STEP
  install_crash_hook(crash_point, how)
  assert checkpointing.save(manager, state)  # async: returns while orbax writes
  state, _ = train_step(state, batch(3))    # training goes on meanwhile
  manager.wait_until_finished()              # the background thread dies in here
  print("not killed: the crash hook never ran", flush=True)
  os._exit(3)


if __name__ == "__main__":
  main()
