"""`model_info.json`: what building a trained model needs besides its config.

A method is built from its config and a `methods.DatasetInfo`, which the train loop
gets from the data pipeline (TensorFlow). `train_and_evaluate` writes those facts
into the workdir (next to `config.json`), so `semissl.load(workdir)` can build the
network, restore its weights and prepare raw images without the data pipeline:

  format           1
  method           config.method.name
  has_classifier   whether `eval_logits` exists (False: SimCLR / SemPPL pretraining)
  num_classes      K
  class_names      [K] names, or null when the dataset has none
  image_shape      [H, W, C] the eval view's output: the images the model takes
  mean, std        [C] each: the eval pipeline feeds (pixel / 255 - mean) / std
  eval_view        config.data.eval_view: how eval images were resized / cropped
  dataset_info     the `methods.DatasetInfo` fields a method reads when it is built
                   (num_classes, image_shape, num_labelled, num_unlabelled,
                   steps_per_epoch, total_steps)

TensorFlow-free.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

from semissl.methods.base import DatasetInfo
from semissl.training import workdirs

MODEL_INFO_FILENAME = "model_info.json"
FORMAT = 1
DEFAULT_EVAL_VIEW = {"name": "identity"}  # semissl.data.pipeline's default


def eval_image_shape(eval_view: dict, image_shape: Sequence[int]) -> tuple[int, int, int]:
  """[H, W, C] of the eval view's output: its 'size' (square), else `image_shape`."""
  size = eval_view.get("size")
  height, width, channels = (int(d) for d in image_shape)
  return (int(size), int(size), channels) if size else (height, width, channels)


def make_record(*, config: Any, info: DatasetInfo, mean: Sequence[float],
                std: Sequence[float], class_names: Sequence[str] | None,
                has_classifier: bool) -> dict[str, Any]:
  """The JSON record of a run (see the module docstring)."""
  eval_view = config.data.get("eval_view", None)
  eval_view = dict(eval_view.to_dict() if hasattr(eval_view, "to_dict") else eval_view
                   or DEFAULT_EVAL_VIEW)
  return {
      "format": FORMAT,
      "method": config.method.name,
      "has_classifier": bool(has_classifier),
      "num_classes": int(info.num_classes),
      "class_names": None if class_names is None else [str(n) for n in class_names],
      "image_shape": list(eval_image_shape(eval_view, info.image_shape)),
      "mean": [float(m) for m in mean],
      "std": [float(s) for s in std],
      "eval_view": eval_view,
      "dataset_info": {
          "num_classes": int(info.num_classes),
          "image_shape": [int(d) for d in info.image_shape],
          "num_labelled": int(info.num_labelled),
          "num_unlabelled": int(info.num_unlabelled),
          "steps_per_epoch": int(info.steps_per_epoch),
          "total_steps": int(info.total_steps),
      },
  }


def write(workdir: str, record: dict[str, Any]) -> None:
  workdirs.write_json(workdirs.resolve(workdir) / MODEL_INFO_FILENAME, record)


def read(workdir: str) -> dict[str, Any]:
  """The workdir's record; a one-line ValueError when it is missing or unreadable."""
  path = workdirs.resolve(workdir) / MODEL_INFO_FILENAME
  if not path.exists():
    raise ValueError(
        f"workdir {os.fspath(workdir)} has no {MODEL_INFO_FILENAME} (trained before semissl "
        "recorded it); rerun its training command once (a finished run only re-evaluates) "
        "to write it.")
  try:
    record = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} is not valid JSON ({error.msg}); rerun the training command "
                     "to rewrite it.") from None
  if record.get("format") != FORMAT:
    raise ValueError(f"{path} has format {record.get('format')!r}; this semissl reads "
                     f"format {FORMAT}.")
  return record


def dataset_info(record: dict[str, Any]) -> DatasetInfo:
  """The `DatasetInfo` the run's method was built with (no labelled labels: a built
  model never reads them outside training)."""
  fields = dict(record["dataset_info"])
  fields["image_shape"] = tuple(int(d) for d in fields["image_shape"])
  return DatasetInfo(**fields)
