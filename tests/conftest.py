"""Test set-up: 8 simulated CPU devices, set before jax initialises."""
import atexit
import os
import shutil
import tempfile

import importlib.metadata

from tests.compile_flags import with_fast_compile


def _jaxlib_version() -> tuple[int, ...]:
  try:
    return tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return (0, 0)


os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if _jaxlib_version() >= (0, 12) and "ynn_fusion_type" not in os.environ["XLA_FLAGS"]:
  # jaxlib 0.12's CPU backend fuses bfloat16 conv/batch-norm chains into YNNPACK
  # kernels that return NaNs (seen with 0.12.0.1; float32 unaffected; older jaxlibs
  # lack the flag, which XLA would reject). README "Known issues" has the same flag.
  os.environ["XLA_FLAGS"] += " --xla_cpu_experimental_ynn_fusion_type="
# See tests/compile_flags.py: no LLVM optimisation passes (inherited by subprocesses).
os.environ["XLA_FLAGS"] = with_fast_compile(os.environ["XLA_FLAGS"])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  # One persistent XLA compilation cache for the session: many tests (and their
  # subprocesses, and the pytest-xdist workers, which inherit this environment from
  # the process that loads this file first) compile the same train / eval steps again,
  # often from fresh closures. Compiling dominates a tiny end-to-end run on CPU; a
  # cache hit returns the same executable, so nothing a test checks changes. Removed
  # by the process that made it.
  _cache_dir = tempfile.mkdtemp(prefix="semissl-test-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)
# The same, if jax was imported before this file (its flags read the environment once).
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


@pytest.fixture(scope="session")
def mesh8():
  """A 1-D mesh over the 8 simulated devices, axis 'data', Auto axis type."""
  assert jax.device_count() == 8, "tests expect 8 simulated CPU devices"
  return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
