"""Projection / MLP heads and classifiers."""

import jax
import jax.numpy as jnp
import numpy as np

from semissl import models


def _features(shape, seed=0):
  return jnp.asarray(
      np.random.default_rng(seed).normal(size=shape), jnp.float32
  )


def _batch_norm_train(h, epsilon=1e-5):
  return (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + epsilon)


def test_projection_head_hiddens_match_numpy():
  head = models.ProjectionHead(num_layers=3, out_dim=8)
  x = _features((6, 16))
  variables = head.init(jax.random.key(0), x, train=False)
  params = variables["params"]
  assert (
      "bias" not in params["bn3"] and "bias" in params["bn1"]
  )  # last BN: no centering
  assert all("bias" not in params[f"dense{k}"] for k in (1, 2, 3))
  (out, hiddens), _ = head.apply(
      variables, x, train=True, mutable=["batch_stats"]
  )

  # Reference in float64: initial BN scale 1 / offset 0, batch statistics.
  h = np.asarray(x, np.float64)
  expected = [h]
  for k in (1, 2, 3):
    h = _batch_norm_train(
        h @ np.asarray(params[f"dense{k}"]["kernel"], np.float64)
    )
    h = h if k == 3 else np.maximum(h, 0.0)
    expected.append(h)
  assert len(hiddens) == 4
  assert [a.shape for a in hiddens] == [
      (6, 16),
      (6, 16),
      (6, 16),
      (6, 8),
  ]  # hidden = input
  for actual, reference in zip(hiddens, expected):
    np.testing.assert_allclose(actual, reference, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(out, hiddens[-1])


def test_projection_head_hidden_dim_and_identity():
  head = models.ProjectionHead(num_layers=2, hidden_dim=32, out_dim=4)
  x = _features((2, 16))
  out, hiddens = jax.eval_shape(
      lambda x: head.init_with_output(jax.random.key(0), x, train=False)[0], x
  )
  assert [h.shape for h in hiddens] == [
      (2, 16),
      (2, 32),
      (2, 4),
  ] and out.shape == (2, 4)
  identity = models.ProjectionHead(num_layers=0)
  (out, hiddens), _ = identity.init_with_output(
      jax.random.key(0), x, train=False
  )
  np.testing.assert_array_equal(out, x)
  assert len(hiddens) == 1


def test_mlp_head_shapes_and_batch_stats():
  head = models.MLPHead(hidden_dim=32, out_dim=8)
  x = _features((4, 16))
  variables = head.init(jax.random.key(0), x, train=False)
  params = variables["params"]
  assert (
      params["dense1"]["kernel"].shape == (16, 32)
      and "bias" in params["dense1"]
  )
  assert params["dense2"]["kernel"].shape == (32, 8)
  out, updates = head.apply(variables, x, train=True, mutable=["batch_stats"])
  assert out.shape == (4, 8) and out.dtype == jnp.float32
  assert not np.allclose(updates["batch_stats"]["bn1"]["mean"], 0.0)
  assert models.MLPHead().hidden_dim == 4096 and models.MLPHead().out_dim == 256


def test_mlp_head_without_batch_norm_is_linear_relu_linear():
  """SimMatch's official head: nn.Linear -> ReLU -> nn.Linear, no BN anywhere."""
  head = models.MLPHead(hidden_dim=32, out_dim=8, batch_norm=False)
  x = _features((5, 16), seed=3)
  variables = head.init(jax.random.key(0), x, train=False)
  assert set(variables) == {"params"}  # no batch_stats collection
  params = variables["params"]
  assert set(params) == {"dense1", "dense2"}
  # Random biases so that a missing or misplaced bias shows.
  params = jax.tree.map(
      lambda p: p + 0.1 * _features(p.shape, seed=p.size), params)
  out, updates = head.apply({"params": params}, x, train=True,
                            mutable=["batch_stats"])
  assert not updates  # nothing to update in train mode either
  w1, b1 = (np.asarray(params["dense1"][k], np.float64) for k in ("kernel", "bias"))
  w2, b2 = (np.asarray(params["dense2"][k], np.float64) for k in ("kernel", "bias"))
  want = np.maximum(np.asarray(x, np.float64) @ w1 + b1, 0.0) @ w2 + b2
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out, head.apply({"params": params}, x, train=False))


def test_linear_classifier_and_classifier(numpy_variables):
  x = _features((3, 16))
  linear = models.LinearClassifier(num_classes=5)
  variables = linear.init(jax.random.key(0), x)
  np.testing.assert_allclose(
      linear.apply(variables, x, train=True),
      x @ variables["params"]["dense"]["kernel"]
      + variables["params"]["dense"]["bias"],
      rtol=1e-5,
      atol=1e-6,
  )

  classifier = models.Classifier(
      models.get_backbone("tiny_resnet"), num_classes=10
  )
  images = _features((2, 28, 28, 1))
  variables = numpy_variables(classifier, images, train=False)
  assert set(variables["params"]) == {"backbone", "head"}
  logits = jax.jit(lambda v, x: classifier.apply(v, x, train=False))(
      variables, images
  )
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
