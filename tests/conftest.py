"""Test set-up: 8 simulated CPU devices, set before jax initialises."""
import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)


@pytest.fixture(scope="session")
def mesh8():
  """A 1-D mesh over the 8 simulated devices, axis 'data', Auto axis type."""
  assert jax.device_count() == 8, "tests expect 8 simulated CPU devices"
  return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
