"""Weights in and out: torchvision ResNets and timm / MAE ViTs <-> semissl workdirs.

Import (`import_checkpoint`): a torch state dict (.pth / .safetensors) becomes a
semissl workdir holding one step-0 checkpoint whose `params` / `batch_stats` are the
backbone under 'backbone/...' (and, with `head=True`, the classifier as
'head/dense', the path of `models.Classifier`'s head), so `config.init_from=<it>`
loads it into any run whose `config.model` matches (conversion.json records that
`config.model`). Export (`export_workdir`): a workdir's backbone (and 'head/dense'
if present) as a .safetensors file with torchvision / timm names, which
`model.load_state_dict(safetensors.torch.load_file(path))` takes.

Layouts and what does not convert: `torchvision_resnet` and `timm_vit` (module
docstrings). Converted networks give the torch model's features and logits (eval
mode) up to float32 rounding (tests/models/test_convert.py). torch and safetensors
are imported lazily (`pip install 'semissl[convert]'`); importing this package
needs neither.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from semissl.convert import common, files, timm_vit, torchvision_resnet
from semissl.convert.common import Converted
from semissl.convert.files import read_state_dict, write_safetensors

SOURCES = {torchvision_resnet.SOURCE: torchvision_resnet, timm_vit.SOURCE: timm_vit}

__all__ = ["Converted", "SOURCES", "convert_state_dict", "export_state_dict",
           "export_workdir", "import_checkpoint", "read_state_dict", "write_safetensors"]


def check_source(source: str) -> None:
  if source not in SOURCES:
    raise ValueError(f"--from={source!r} is not a known layout; use one of "
                     f"{', '.join(SOURCES)}.")


def convert_state_dict(state: dict[str, np.ndarray], *, source: str, head: bool = False,
                       num_heads: int | None = None) -> Converted:
  """Torch state dict {name: array} of layout `source` -> `Converted` (flat semissl
  variables, `config.model`, image size, classes). `head`: also convert the
  classifier (torchvision 'fc', timm 'head') into 'head/dense'. `num_heads`: the
  ViT's heads when its width is not a registry size."""
  check_source(source)
  if source == timm_vit.SOURCE:
    return timm_vit.to_semissl(state, head=head, num_heads=num_heads)
  if num_heads is not None:
    raise ValueError("--num_heads is for --from=timm_vit; drop it for a ResNet.")
  return torchvision_resnet.to_semissl(state, head=head)


def import_checkpoint(*, source: str, checkpoint: str, workdir: str, head: bool = False,
                      num_heads: int | None = None) -> Converted:
  """Converts `checkpoint` and writes it as a semissl workdir for `config.init_from`.

  Every check (layout, file, workdir, names and shapes against the semissl model)
  runs before anything is written; errors are one-line ValueErrors.
  """
  check_source(source)
  files.check_checkpoint_path(checkpoint)
  files.check_new_workdir(workdir)
  converted = convert_state_dict(read_state_dict(checkpoint), source=source, head=head,
                                 num_heads=num_heads)
  record = {
      "source": source,
      "checkpoint": os.path.abspath(checkpoint),
      "model": converted.model,
      "image_size": converted.image_size,
      "num_classes": converted.num_classes,
      "head": common.HEAD if head else None,
      "use": "config.init_from=<this workdir> with config.model set as 'model' (and "
             "images of image_size for a ViT) loads these weights.",
  }
  files.write_workdir(workdir=workdir, converted=converted, record=record)
  return converted


def export_state_dict(params: dict[str, np.ndarray], batch_stats: dict[str, np.ndarray], *,
                      head: bool = True) -> tuple[str, dict[str, np.ndarray]]:
  """Flat semissl variables ('backbone/...', 'head/dense/...') -> (layout, torch state
  dict with torchvision / timm names). `head`: include 'head/dense' when present."""
  prefix = f"{common.BACKBONE}/"
  backbone = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
  stats = {k[len(prefix):]: v for k, v in batch_stats.items() if k.startswith(prefix)}
  if not backbone:
    raise ValueError("these weights have no 'backbone' parameters; export takes a semissl "
                     "run or converted workdir.")
  classifier = None
  if head and f"{common.HEAD}/kernel" in params:
    classifier = {leaf: params[f"{common.HEAD}/{leaf}"] for leaf in ("kernel", "bias")}
  if torchvision_resnet.is_semissl_resnet(backbone):
    return torchvision_resnet.SOURCE, torchvision_resnet.to_torch(backbone, stats,
                                                                  head=classifier)
  if timm_vit.is_semissl_vit(backbone):
    return timm_vit.SOURCE, timm_vit.to_torch(backbone, head=classifier)
  raise ValueError("this backbone is neither a semissl ResNet nor a ViT (e.g. a WideResNet "
                   "or tiny_resnet): torchvision / timm have no layout for it.")


def export_workdir(*, workdir: str, output: str, weights: str = "auto",
                   head: bool = True) -> dict[str, Any]:
  """Writes the latest checkpoint's backbone (+ head) of `workdir` to `output`
  (.safetensors) with torchvision / timm names. Returns {'layout', 'weights',
  'tensors', 'head'}."""
  if not output.endswith(files.SAFETENSORS_SUFFIX):
    raise ValueError(f"--export={output!r} must end in .safetensors.")
  directory = os.path.dirname(os.path.abspath(output))
  if not os.path.isdir(directory):
    raise ValueError(f"--export={output!r}: directory {directory} does not exist.")
  params, batch_stats, chosen = files.read_workdir_variables(workdir, weights=weights)
  layout, state = export_state_dict(params, batch_stats, head=head)
  write_safetensors(state, output, metadata={"format": "pt", "layout": layout,
                                             "semissl_workdir": os.fspath(workdir),
                                             "weights": chosen})
  return {"layout": layout, "weights": chosen, "tensors": len(state),
          "head": any(k in state for k in ("fc.weight", "head.weight"))}
