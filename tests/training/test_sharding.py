"""Mesh construction, sharding rules by path, global batches, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from semissl.training import sharding


def test_make_mesh_axis_types_are_auto():
  mesh = sharding.make_mesh({"data": -1})
  assert mesh.shape == {"data": 8}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  mesh2 = sharding.make_mesh({"data": -1, "model": 2})
  assert dict(mesh2.shape) == {"data": 4, "model": 2}


@pytest.mark.parametrize("bad,match", [({"data": 4}, "uses 4 devices"),
                                       ({"data": -1, "model": 3}, "does not divide"),
                                       ({"model": 8}, "must contain a 'data' axis"),
                                       ({"data": -1, "model": -1}, "at most one -1")])
def test_bad_mesh(bad, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(bad)


def test_rules_by_path_and_fsdp(mesh8):
  tree = {"params": {"Dense_0": {"kernel": jnp.zeros((16, 24)), "bias": jnp.zeros(24)}},
          "method_state": {"queue": {"embeddings": jnp.zeros((64, 4)), "labels": jnp.zeros(64)}}}
  rules = [(r"method_state/queue/", P("data")), (r"kernel$", sharding.FSDP)]
  out = sharding.tree_shardings(tree, mesh8, rules)
  assert out["params"]["Dense_0"]["kernel"].spec == P(None, "data")  # largest divisible dim
  assert out["params"]["Dense_0"]["bias"].spec == P()
  assert out["method_state"]["queue"]["embeddings"].spec == P("data")
  with pytest.raises(ValueError, match="does not fit"):
    sharding.tree_shardings({"x": jnp.zeros(12)}, mesh8, [("x", P("data"))])


def test_global_batch_and_divisibility(mesh8):
  local = {"image": np.arange(32, dtype=np.float32).reshape(16, 2)}
  arr = sharding.global_batch(local, mesh8)["image"]
  assert arr.shape == (16, 2) and arr.sharding.spec == P("data")
  np.testing.assert_array_equal(np.asarray(arr), local["image"])
  with pytest.raises(ValueError, match="batch_size=12 is not divisible by the 8 devices"):
    sharding.check_divisible("batch_size", 12, mesh8)
