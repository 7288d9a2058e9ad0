"""semissl.convert: torchvision ResNet / timm (MAE) ViT weights in and out.

The reference outputs are the real torchvision / timm models' (eval mode, float32),
recorded by make_convert_goldens.py with the deterministic weights of
convert_fixtures, which these tests rebuild; so torchvision and timm are not needed
here (PyPI's torchvision does not import beside the CPU torch build the test extra
installs). Tolerance 1e-4 (absolute, on features / logits of magnitude <= 31):
XLA and torch sum convolutions and matmuls in other orders, so float32 rounding
differs by ~1e-6 relative per layer (seen: <= 1.5e-5 over ResNet-50's 53 layers).
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from configs import semivit_vitb, supervised_fmnist
from semissl import convert, methods, models
from semissl.convert import common
from semissl.training import checkpointing, setup, train_loop
from semissl.inference import loading
from tests.models import convert_fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = {"resnet50": "torchvision_resnet50", "resnet_basic_1111": "torchvision_resnet50",
          "vit_base_patch16_224": "timm_vit", "vit_gap_small": "timm_vit"}
NUM_HEADS = {"vit_gap_small": 4}
TOL = 1e-4


def _case(name):
  """(spec, torch-layout weights, images [B, H, W, C], features, logits) of a golden."""
  spec, features, logits = convert_fixtures.load_goldens(name)
  weights = convert_fixtures.random_state_dict(spec["shapes"])
  x = convert_fixtures.images(size=spec["image_size"], channels=spec["channels"],
                              batch=spec["batch"])
  return spec, weights, x, features, logits


def _forward(converted, x):
  """(features [B, D], logits [B, K]) of the converted weights, eval mode."""
  kwargs = {k: v for k, v in converted.model.items() if k != "name"}
  net = models.Classifier(backbone=models.get_backbone(converted.model["name"], **kwargs),
                          num_classes=converted.num_classes)
  variables = common.unflatten(converted.variables)
  logits = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, x)
  features = jax.jit(lambda v, x: net.apply(
      v, x, train=False, method=lambda m, x, train: m.backbone(x, train=train)))(variables, x)
  return np.asarray(features), np.asarray(logits)


def _save_pth(state, path):
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)
  return str(path)


def _timm_vit_shapes(*, width, depth, mlp_dim, patch, channels, grid, class_token):
  """timm VisionTransformer state-dict shapes (no head)."""
  shapes = {"patch_embed.proj.weight": (width, channels, patch, patch),
            "patch_embed.proj.bias": (width,),
            "pos_embed": (1, grid * grid + int(class_token), width),
            "norm.weight": (width,), "norm.bias": (width,)}
  if class_token:
    shapes["cls_token"] = (1, 1, width)
  for i in range(depth):
    for name, shape in {"norm1.weight": (width,), "norm1.bias": (width,),
                        "attn.qkv.weight": (3 * width, width), "attn.qkv.bias": (3 * width,),
                        "attn.proj.weight": (width, width), "attn.proj.bias": (width,),
                        "norm2.weight": (width,), "norm2.bias": (width,),
                        "mlp.fc1.weight": (mlp_dim, width), "mlp.fc1.bias": (mlp_dim,),
                        "mlp.fc2.weight": (width, mlp_dim), "mlp.fc2.bias": (width,)}.items():
      shapes[f"blocks.{i}.{name}"] = shape
  return shapes


def _mae_decoder(width):
  """A few entries of MAE's pretraining decoder, which the import ignores."""
  return convert_fixtures.random_state_dict({
      "mask_token": (1, 1, 16), "decoder_embed.weight": (16, width),
      "decoder_pos_embed": (1, 17, 16), "decoder_blocks.0.attn.qkv.weight": (48, 16),
      "decoder_norm.weight": (16,), "decoder_pred.weight": (48, 16)})


def test_torchvision_resnet50_pth_matches_torchvision(tmp_path):
  spec, weights, x, features, logits = _case("resnet50")
  path = _save_pth(weights, tmp_path / "resnet50.pth")
  converted = convert.convert_state_dict(convert.read_state_dict(path),
                                         source="torchvision_resnet50", head=True)
  assert converted.model == {"name": "resnet50"} and converted.num_classes == 1000
  ours_features, ours_logits = _forward(converted, x)
  np.testing.assert_allclose(ours_features, features, atol=TOL, rtol=TOL)
  np.testing.assert_allclose(ours_logits, logits, atol=TOL, rtol=TOL)


def test_timm_vit_b16_mae_checkpoint_matches_timm(tmp_path):
  """MAE's pretrain file layout: {'model': encoder + decoder}; the decoder is ignored."""
  spec, weights, x, features, logits = _case("vit_base_patch16_224")
  path = _save_pth({**weights, **_mae_decoder(768)}, tmp_path / "x.pth")
  torch.save({"model": torch.load(path, weights_only=True)}, path)
  converted = convert.convert_state_dict(convert.read_state_dict(path), source="timm_vit",
                                         head=True)
  assert converted.model == {"name": "vit_b", "patch_size": 16, "posemb": "learn",
                             "pool": "tok"}
  assert converted.image_size == 224 and converted.num_classes == 1000
  ours_features, ours_logits = _forward(converted, x)
  np.testing.assert_allclose(ours_features, features, atol=TOL, rtol=TOL)
  np.testing.assert_allclose(ours_logits, logits, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("name", ["resnet_basic_1111", "vit_gap_small"])
def test_small_layouts_safetensors_match_torch(name, tmp_path):
  """Basic blocks with non-registry block counts; the class-token-free 'gap' ViT."""
  spec, weights, x, features, logits = _case(name)
  path = str(tmp_path / "w.safetensors")
  convert.write_safetensors(weights, path)
  converted = convert.convert_state_dict(convert.read_state_dict(path), source=SOURCE[name],
                                         head=True, num_heads=NUM_HEADS.get(name))
  ours_features, ours_logits = _forward(converted, x)
  np.testing.assert_allclose(ours_features, features, atol=TOL, rtol=TOL)
  np.testing.assert_allclose(ours_logits, logits, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("name", sorted(SOURCE))
def test_export_has_torch_names_and_round_trips(name):
  spec, weights, _, _, _ = _case(name)
  converted = convert.convert_state_dict(weights, source=SOURCE[name], head=True,
                                         num_heads=NUM_HEADS.get(name))
  tree = common.unflatten(converted.variables)
  layout, exported = convert.export_state_dict(common.flatten(tree["params"]),
                                               common.flatten(tree.get("batch_stats", {})))
  assert layout == SOURCE[name]
  # Exactly the torch model's state dict: load_state_dict(strict=True) takes it.
  assert {k: list(v.shape) for k, v in exported.items()} == spec["shapes"]
  folded = {"cls_token", "pos_embed"} if "cls_token" in weights else set()
  for key in set(weights) - folded:
    np.testing.assert_array_equal(exported[key], weights[key], err_msg=key)
  if folded:  # the class row of pos_embed is folded into cls_token: same inputs to block 0
    np.testing.assert_array_equal(exported["cls_token"],
                                  weights["cls_token"] + weights["pos_embed"][:, :1])
    np.testing.assert_array_equal(exported["pos_embed"][:, 0], 0.0)
    np.testing.assert_array_equal(exported["pos_embed"][:, 1:], weights["pos_embed"][:, 1:])
  again = convert.convert_state_dict(exported, source=SOURCE[name], head=True,
                                     num_heads=NUM_HEADS.get(name))
  assert again.model == converted.model and set(again.variables) == set(converted.variables)
  for key, value in converted.variables.items():
    np.testing.assert_array_equal(again.variables[key], value, err_msg=key)


def _semivit_state(config, *, num_classes=10):
  """The TrainState train_loop builds for `config` (step 0, before init_from)."""
  info = methods.DatasetInfo(num_classes=num_classes, image_shape=(28, 28, 1),
                             num_labelled=100, num_unlabelled=1000, steps_per_epoch=1,
                             total_steps=2)
  method = setup.build_method(config, info, mesh=None)
  optimizer, _ = setup.build_optimizer(config, method)
  return _zero_state(method, optimizer, config, info)


def _zero_state(method, optimizer, config, info):
  """The run's step-0 TrainState structure (`setup.state_init_fn`), filled with zeros on
  the first device: its values do not matter to init_from, and a real init compiles
  for ~30 s on CPU."""
  abstract = jax.eval_shape(setup.state_init_fn(method, optimizer, rng=jax.random.PRNGKey(1)),
                            loading._abstract_batch(config, info))  # noqa: SLF001
  return jax.tree.map(lambda s: jax.device_put(np.zeros(s.shape, s.dtype)), abstract)


def test_mae_checkpoint_to_workdir_init_from_and_export(tmp_path):
  """MAE layout (class token, decoder) -> workdir -> Semi-ViT run's init_from ('gap'
  ViT: cls skipped, head fresh) -> export -> the same weights."""
  shapes = _timm_vit_shapes(width=32, depth=2, mlp_dim=64, patch=7, channels=1, grid=4,
                            class_token=True)
  weights = convert_fixtures.random_state_dict(shapes)
  path = _save_pth({**weights, **_mae_decoder(32)}, tmp_path / "mae.pth")
  torch.save({"model": torch.load(path, weights_only=True), "epoch": 799}, path)
  workdir = str(tmp_path / "mae")
  converted = convert.import_checkpoint(source="timm_vit", checkpoint=path, workdir=workdir,
                                        num_heads=2)
  record = json.load(open(os.path.join(workdir, "conversion.json")))
  assert record["model"] == converted.model and record["image_size"] == 28
  assert checkpointing.latest_step(workdir) == 0

  config = semivit_vitb.get_config(f"stage=supervised,runlocal,init_from={workdir}")
  assert {k: converted.model[k] for k in ("width", "depth", "num_heads", "mlp_dim",
                                          "patch_size")} == {
      k: config.model[k] for k in ("width", "depth", "num_heads", "mlp_dim", "patch_size")}
  fresh = _semivit_state(config)
  state = train_loop.init_from(fresh, config.init_from)
  loaded = {f"params/{k}": np.asarray(v) for k, v in common.flatten(state.params).items()}
  backbone = [k for k in loaded if k.startswith("params/backbone/")]
  assert backbone and "params/backbone/cls" not in loaded  # 'gap': no class token
  for key in backbone:
    np.testing.assert_array_equal(loaded[key], converted.variables[key], err_msg=key)
  jax.tree.map(np.testing.assert_array_equal, state.target_params, state.params)
  np.testing.assert_array_equal(state.params["head"]["dense"]["kernel"],
                                fresh.params["head"]["dense"]["kernel"])

  output = str(tmp_path / "out.safetensors")
  result = convert.export_workdir(workdir=workdir, output=output)
  assert result == {"layout": "timm_vit", "weights": "online", "tensors": len(shapes),
                    "head": False}
  exported = convert.read_state_dict(output)
  assert set(exported) == set(shapes)
  np.testing.assert_array_equal(exported["blocks.1.attn.qkv.weight"],
                                weights["blocks.1.attn.qkv.weight"])


def test_resnet_workdir_init_from_loads_batch_stats_and_head(tmp_path):
  spec, weights, _, _, _ = _case("resnet_basic_1111")
  workdir = str(tmp_path / "r")
  converted = convert.import_checkpoint(source="torchvision_resnet50", head=True,
                                        checkpoint=_save_pth(weights, tmp_path / "r.pth"),
                                        workdir=workdir)
  config = supervised_fmnist.get_config("runlocal")
  config.model = dict(converted.model)
  info = methods.DatasetInfo(num_classes=10, image_shape=(32, 32, 3), num_labelled=100,
                             num_unlabelled=0, steps_per_epoch=1, total_steps=2)
  method = setup.build_method(config, info, mesh=None)
  optimizer, _ = setup.build_optimizer(config, method)
  fresh = _zero_state(method, optimizer, config, info)
  state = train_loop.init_from(fresh, workdir)
  for collection in ("params", "batch_stats", "target_params", "target_batch_stats"):
    source = "batch_stats" if "batch_stats" in collection else "params"
    flat = common.flatten(getattr(state, collection))
    assert len(flat) == len([k for k in converted.variables if k.startswith(source + "/")])
    for key, value in flat.items():
      np.testing.assert_array_equal(value, converted.variables[f"{source}/{key}"], err_msg=key)


def _write_vit(tmp_path, name="v", **extra):
  """A tiny timm ViT checkpoint (width 32: heads unknown), plus `extra` entries."""
  shapes = _timm_vit_shapes(width=32, depth=1, mlp_dim=64, patch=4, channels=3, grid=2,
                            class_token=True)
  return _save_pth({**convert_fixtures.random_state_dict(shapes), **extra},
                   tmp_path / f"{name}.pth")


def test_import_errors_are_one_line_and_write_nothing(tmp_path):
  vit = _write_vit(tmp_path)
  workdir = str(tmp_path / "new")
  cases = [
      (dict(source="resnet", checkpoint=vit), "is not a known layout"),
      (dict(source="timm_vit", checkpoint=str(tmp_path / "none.pth")), "does not exist"),
      (dict(source="timm_vit", checkpoint=str(tmp_path)), "does not exist"),
      (dict(source="torchvision_resnet50", checkpoint=vit), "--from=timm_vit"),
      (dict(source="timm_vit", checkpoint=vit), "pass --num_heads"),
      (dict(source="timm_vit", checkpoint=vit, num_heads=3), "does not divide"),
      (dict(source="timm_vit", checkpoint=vit, num_heads=2, head=True), "drop --head"),
      (dict(source="timm_vit", num_heads=2, checkpoint=_write_vit(
          tmp_path, "ls", **{"blocks.0.ls1.gamma": torch.ones(32)})), "'blocks.0.ls1.gamma'"),
      (dict(source="timm_vit", num_heads=2, checkpoint=_write_vit(
          tmp_path, "fc_norm", **{"fc_norm.weight": torch.ones(32)})), "fc_norm"),
  ]
  for kwargs, message in cases:
    with pytest.raises(ValueError, match=message) as error:
      convert.import_checkpoint(workdir=workdir, **kwargs)
    assert "\n" not in str(error.value), str(error.value)
  assert not os.path.exists(workdir)
  text = tmp_path / "w.txt"
  text.write_text("x")
  with pytest.raises(ValueError, match="neither .safetensors nor a torch file"):
    convert.import_checkpoint(source="timm_vit", checkpoint=str(text), workdir=workdir)
  with pytest.raises(ValueError, match="holds no state dict"):
    convert.import_checkpoint(source="timm_vit", workdir=workdir,
                              checkpoint=_save_pth({}, tmp_path / "empty.pth"))


def test_export_errors():
  sk = models.get_backbone("resnet50", sk="simclrv2", stage_sizes=(1, 1, 1, 1))
  cifar = models.get_backbone("resnet18", cifar_stem=True)
  sincos = models.get_backbone("vit_ti", depth=1, patch_size=8, posemb="sincos2d")
  for model, message in ((sk, "selective kernels"), (cifar, "CIFAR stem"),
                         (sincos, "sine-cosine"),
                         (models.get_backbone("wrn28_2"), "neither a semissl ResNet")):
    variables = jax.eval_shape(lambda x, m=model: m.init(jax.random.key(0), x, train=False),
                               jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
    flat = lambda c, v=variables: {f"backbone/{k}": np.zeros(s.shape, np.float32)  # noqa: E731
                                   for k, s in common.flatten(dict(v).get(c, {})).items()}
    with pytest.raises(ValueError, match=message):
      convert.export_state_dict(flat("params"), flat("batch_stats"))


def test_command_line_and_lazy_torch(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  command = [sys.executable, os.path.join(ROOT, "experiments", "convert_weights.py")]
  vit = _write_vit(tmp_path)
  workdir = str(tmp_path / "wd")
  bad = subprocess.run(command + ["--from=timm_vit", f"--checkpoint={vit}",
                                  f"--workdir={workdir}"], env=env, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
      "error: width 32 is not a ViT"), bad.stderr
  assert not os.path.exists(workdir)
  script = ("import sys; import semissl.convert; assert 'torch' not in sys.modules; "
            "from absl import app; sys.argv = ['convert_weights'] + sys.argv[1:]; "
            f"sys.path.insert(0, {os.path.join(ROOT, 'experiments')!r}); "
            "import convert_weights; app.run(convert_weights.main)")
  good = subprocess.run([sys.executable, "-c", script, "--from=timm_vit", "--num_heads=2",
                         f"--checkpoint={vit}", f"--workdir={workdir}"], env=env,
                        capture_output=True, text=True, timeout=300)
  assert good.returncode == 0, good.stderr
  assert good.stdout.startswith(f"wrote {workdir}: use config.init_from={workdir} with "
                                'config.model {"name": "vit_b", "width": 32')
  assert checkpointing.latest_step(workdir) == 0
