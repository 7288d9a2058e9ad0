"""One process of a multi-process (multi-host style) CPU run; used by test_multiprocess.

  python -m tests.training.multiprocess_worker PROCESS_ID NUM_PROCESSES PORT WORKDIR [STEPS]
Each process gets 8 / NUM_PROCESSES simulated CPU devices; collectives use gloo.
With STEPS, the run is that long and a `safety.Interrupted` (a preemption notice)
exits with its status after writing `interrupted{PROCESS_ID}.json`.
"""
import json
import os
import sys


def main():
  process_id, num_processes, port, workdir = sys.argv[1:5]
  num_processes = int(num_processes)
  local_devices = 8 // num_processes
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={local_devices}")
  os.environ["JAX_NUM_CPU_DEVICES"] = str(local_devices)
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                               num_processes=num_processes, process_id=int(process_id))
  assert jax.device_count() == 8 and jax.process_count() == num_processes

  from tests.training.test_end_to_end import _config
  from semissl.training import safety, train_and_evaluate
  config = _config()
  if len(sys.argv) > 5:
    config.num_train_steps = int(sys.argv[5])
    config.log_every_steps = 1
  try:
    results = train_and_evaluate(config, workdir)
  except safety.Interrupted as interrupted:
    with open(os.path.join(workdir, f"interrupted{process_id}.json"), "w") as f:
      json.dump({"step": interrupted.step, "message": str(interrupted)}, f)
    sys.exit(interrupted.exit_code)
  with open(os.path.join(workdir, f"process{process_id}.json"), "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main()
