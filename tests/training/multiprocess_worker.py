"""One process of a multi-process (multi-host style) CPU run; used by test_multiprocess.

  python -m tests.training.multiprocess_worker PROCESS_ID NUM_PROCESSES PORT WORKDIR
Each process gets 8 / NUM_PROCESSES simulated CPU devices; collectives use gloo.
"""
import json
import os
import sys


def main():
  process_id, num_processes, port, workdir = sys.argv[1:5]
  num_processes = int(num_processes)
  local_devices = 8 // num_processes
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
  os.environ["JAX_NUM_CPU_DEVICES"] = str(local_devices)
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                               num_processes=num_processes, process_id=int(process_id))
  assert jax.device_count() == 8 and jax.process_count() == num_processes

  from tests.training.test_end_to_end import _config
  from semissl.training import train_and_evaluate
  results = train_and_evaluate(_config(), workdir)
  with open(os.path.join(workdir, f"process{process_id}.json"), "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main()
