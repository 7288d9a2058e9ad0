"""Nothing corrupts the last good checkpoint.

A training process is killed for real (SIGKILL / os._exit in a subprocess) while
orbax writes the async save of step 3 in its background thread, at a point fixed
by a hook in orbax (see checkpoint_crash_worker), with keep-last-1 retention.
A new process must then see step 2 as the latest, restore exactly what was
saved, resume over the leftover temporary directory and save step 3. A save that
fails with an I/O error instead must also keep step 2 and stop the run.
"""
import os
import shutil
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.path import atomicity

from semissl.training import checkpointing, sharding
from tests.training import checkpoint_crash_worker as worker
from tests.training import toy_method

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOOD, CRASH = "2", str(worker.CRASH_STEP)
LEFTOVER = CRASH + atomicity.TMP_DIR_SUFFIX  # '3.orbax-checkpoint-tmp'
CRASHES = [("arrays_written", "sigkill"), ("final_rename", "exit")]


@pytest.fixture(scope="module")
def toy():
  """This (new) process's mesh, a fresh step-0 state and the train step."""
  return worker.toy_setup()


@pytest.fixture(scope="module", params=CRASHES, ids=[c for c, _ in CRASHES])
def crashed(request, tmp_path_factory):
  """A workdir whose training process died while saving step 3."""
  crash_point, how = request.param
  workdir = tmp_path_factory.mktemp(crash_point)
  proc = subprocess.run(
      [sys.executable, "-m", "tests.training.checkpoint_crash_worker", str(workdir),
       crash_point, how], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
      timeout=300)
  expected_rc = -signal.SIGKILL if how == "sigkill" else 1
  assert proc.returncode == expected_rc, (proc.returncode, (proc.stdout + proc.stderr)[-3000:])
  return crash_point, workdir


def _assert_same(restored: dict, expected: dict):
  assert sorted(restored) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(restored[name], value, err_msg=name)
    assert restored[name].dtype == value.dtype, name


def test_killed_save_leaves_last_good_checkpoint_intact(crashed, toy):
  crash_point, workdir = crashed
  checkpoints = workdir / "checkpoints"
  # The crash left step 3 half-done in its temporary directory, step 2 untouched
  # (keep-last-1 had scheduled it for deletion once step 3 was finalised).
  assert sorted(os.listdir(checkpoints)) == [GOOD, LEFTOVER]
  item = checkpoints / LEFTOVER / ("state" + atomicity.TMP_DIR_SUFFIX
                                   if crash_point == "arrays_written" else "state")
  assert os.listdir(item / "ocdbt.process_0" / "d")  # array data was written
  if crash_point == "arrays_written":
    assert not (item / "_METADATA").exists()
  else:  # everything but the final rename, the success marker included
    assert (checkpoints / LEFTOVER / atomicity.COMMIT_SUCCESS_FILE).exists()
    assert (item / "_METADATA").exists()

  # A new process: the manager sees only the finalised step and restores it.
  checkpointing.require_checkpoint(str(workdir))
  manager = checkpointing.make_manager(str(workdir), max_to_keep=1)
  assert manager.latest_step() == 2 and list(manager.all_steps()) == [2]
  _, fresh, _ = toy
  restored = checkpointing.restore(manager, fresh)
  manager.close()
  assert int(restored.step) == 2
  assert (restored.params["Dense_0"]["kernel"].sharding
          == fresh.params["Dense_0"]["kernel"].sharding)
  expected = dict(np.load(workdir / "expected.npz"))
  _assert_same(worker.flat_host_state(restored), expected)
  assert not np.array_equal(expected[".params['Dense_0']['kernel']"],
                            np.asarray(fresh.params["Dense_0"]["kernel"]))


def test_resume_over_leftover_temporary_directory_saves_next_step(crashed, toy, tmp_path):
  _, crashed_workdir = crashed
  workdir = tmp_path / "run"
  shutil.copytree(crashed_workdir, workdir)
  mesh, fresh, train_step = toy
  # What train_and_evaluate does: make_manager, latest_step, restore, train, save.
  manager = checkpointing.make_manager(str(workdir), max_to_keep=1)
  assert manager.latest_step() == 2
  state = checkpointing.restore(manager, fresh)
  state, _ = train_step(state, sharding.global_batch(toy_method.toy_batch(2), mesh))
  assert checkpointing.save(manager, state)
  manager.wait_until_finished()
  manager.close()
  saved = worker.flat_host_state(state)

  # The leftover was replaced by the new step 3, then step 2 was retired.
  assert sorted(os.listdir(workdir / "checkpoints")) == [CRASH]
  manager = checkpointing.make_manager(str(workdir), max_to_keep=1)
  assert manager.latest_step() == 3
  _assert_same(worker.flat_host_state(checkpointing.restore(manager, fresh)), saved)
  manager.close()


def test_failed_save_keeps_last_good_checkpoint_and_stops_the_run(toy, tmp_path, monkeypatch):
  """An I/O error while finalising step 1 (keep-last-1): step 0 is not deleted,
  and the error surfaces at the train loop's next `save`."""
  _, state, _ = toy
  manager = checkpointing.make_manager(str(tmp_path), max_to_keep=1)
  assert checkpointing.save(manager, state)
  manager.wait_until_finished()

  async def disk_full(self):
    raise OSError("No space left on device")
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
  assert checkpointing.save(manager, state.replace(step=jnp.ones((), jnp.int32)))
  with pytest.raises(OSError, match="No space left"):
    checkpointing.save(manager, state.replace(step=jnp.full((), 2, jnp.int32)))
  monkeypatch.undo()

  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["0", "1" + atomicity.TMP_DIR_SUFFIX]
  fresh_manager = checkpointing.make_manager(str(tmp_path), max_to_keep=1)
  assert fresh_manager.latest_step() == 0
  _assert_same(worker.flat_host_state(checkpointing.restore(fresh_manager, state)),
               worker.flat_host_state(state))
  fresh_manager.close()
