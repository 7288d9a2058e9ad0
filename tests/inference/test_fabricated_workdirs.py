"""semissl.load on workdirs written without training (no data pipeline): methods
without a classifier (SimCLR / SemPPL pretraining), a dataset without class names,
and views of several sizes. The workdirs are written the train loop's way
(config.json, model_info.json, an orbax TrainState)."""
import os

import jax
import numpy as np
import pytest

import semissl
from configs import semppl_fmnist, simclrv2_fmnist
from experiments import predict
from semissl import methods
from semissl.training import TrainState, checkpointing, model_info, workdirs

MEAN, STD = (0.25,), (0.5,)
CASES = {  # name -> (config module, variant)
    "simclr": (simclrv2_fmnist, "stage=pretrain,runlocal"),
    "semppl": (semppl_fmnist, "runlocal,small=2"),  # 28 and 20 px views
    "simclr_finetune": (simclrv2_fmnist, "stage=finetune,runlocal"),
}


def _example_batch(config, rs):
  """A train batch of the config's views (each at its own size), float32."""
  size = config.data.image_size
  def views(specs, n):
    return {name: rs.normal(size=(n, spec.get("size") or size, spec.get("size") or size,
                                  1)).astype(np.float32) for name, spec in specs.items()}
  batch = {}
  if config.data.labelled_views:
    n = config.batch_size
    batch["labelled"] = {"images": views(config.data.labelled_views, n),
                         "label": np.arange(n, dtype=np.int32) % 10,
                         "id": np.arange(n, dtype=np.int32),
                         "index": np.arange(n, dtype=np.int32)}
  if config.data.get("unlabelled_views"):
    n = int(config.mu * config.batch_size) if config.mu else config.batch_size
    batch["unlabelled"] = {"images": views(config.data.unlabelled_views, n),
                           "id": np.arange(n, dtype=np.int32),
                           "index": np.arange(n, dtype=np.int32),
                           "true_label": np.arange(n, dtype=np.int32) % 10}
  return batch


def _fabricate(name, workdir):
  """A workdir with config.json, model_info.json (no class names) and one checkpoint
  (a TrainState at step 4 whose EMA target is half the online weights). Returns
  (method, state)."""
  module, variant = CASES[name]
  config = module.get_config(variant)
  info = methods.DatasetInfo(num_classes=10, image_shape=(28, 28, 1), num_labelled=100,
                             num_unlabelled=1000, steps_per_epoch=10, total_steps=6)
  method = methods.get_method(config.method.name)(config, info)
  batch = _example_batch(config, np.random.RandomState(0))
  variables, _ = jax.device_get(jax.jit(method.init)(jax.random.PRNGKey(0), batch))
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  state = TrainState.create(step=4, params=params, batch_stats=batch_stats,
                            target_params=jax.tree.map(lambda x: x * 0.5, params),
                            rng=np.zeros(2, np.uint32))
  workdirs.check_and_record_config(str(workdir), config)
  model_info.write(str(workdir), model_info.make_record(
      config=config, info=info, mean=MEAN, std=STD, class_names=None,
      has_classifier=method.has_classifier))
  manager = checkpointing.make_manager(str(workdir), async_save=False)
  checkpointing.save(manager, state, force=True)
  manager.wait_until_finished()
  manager.close()
  return method, state


def _normalised(raw):
  return (raw.astype(np.float32) / 255.0 - np.float32(MEAN[0])) / np.float32(STD[0])


@pytest.mark.parametrize("name", ["simclr", "semppl"])
def test_without_classifier_features_only(name, tmp_path):
  method, state = _fabricate(name, tmp_path)
  raw = np.random.RandomState(1).randint(0, 256, (5, 28, 28, 1)).astype(np.uint8)
  for weights, variables in (("online", state.variables), ("ema", state.target_variables)):
    model = semissl.load(str(tmp_path), weights=weights)
    assert not model.has_classifier and model.step == 4 and model.class_names is None
    features = model.features(raw)
    width = method.config.model.get("stage_widths", (32, 64, 128))[-1]  # tiny_resnet
    assert features.shape == (5, width)
    expected = jax.jit(method.eval_features)(variables, _normalised(raw))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
  for call in (model.predict, model.logits):
    with pytest.raises(ValueError, match=f"method '{name}' has no classifier") as error:
      call(raw)
    assert "\n" not in str(error.value) and "features(images)" in str(error.value)
  with pytest.raises(ValueError, match="has no classifier"):
    predict.predictions(str(tmp_path), str(tmp_path))


def test_classes_without_names_are_indices(tmp_path):
  from PIL import Image

  method, state = _fabricate("simclr_finetune", tmp_path / "run")
  folder = tmp_path / "images"
  folder.mkdir()
  raw = np.random.RandomState(2).randint(0, 256, (3, 28, 28, 1)).astype(np.uint8)
  for i, image in enumerate(raw):
    Image.fromarray(image[..., 0]).save(folder / f"{i}.png")
  rows = predict.predictions(str(tmp_path / "run"), str(folder), weights="ema")
  logits = jax.jit(method.eval_logits)(state.target_variables, _normalised(raw))
  probabilities = np.asarray(jax.nn.softmax(logits))
  assert [r[0] for r in rows] == ["0.png", "1.png", "2.png"]
  assert [r[1] for r in rows] == [str(k) for k in probabilities.argmax(-1)]
  np.testing.assert_allclose([r[2] for r in rows], probabilities.max(-1), atol=1e-5)
  assert os.path.exists(tmp_path / "run" / "model_info.json")
