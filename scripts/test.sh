#!/usr/bin/env bash
# README command 2 (what .ci/run calls): set up, then run the test suite on 8
# simulated CPU devices. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh" test
cd "$root"
export JAX_NUM_CPU_DEVICES=8 XLA_FLAGS="--xla_force_host_platform_device_count=8" TF_CPP_MIN_LOG_LEVEL=2
# worksteal: a worker that runs out of tests takes half of the other's queue, so both
# finish together (a few end-to-end tests take minutes each).
exec "$root/.venv/bin/python" -m pytest -n "${PYTEST_WORKERS:-2}" --dist=worksteal \
    --durations=15 "$@"
