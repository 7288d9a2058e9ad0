"""Unlabelled images from their own source (`config.data.unlabelled_dataset`).

- `'folder:<root>'`: every .png/.jpg/.jpeg file under `root`, at any depth (class
  directories, if any, are just subdirectories; hidden files and directories, names
  starting with '.', are skipped). Example id = rank of the file's relative path in
  sorted order. Every image is read into memory and decoded once before training.
- `'<tfds name>:<split>'` (e.g. `'stl10:unlabelled'`, `'cifar10:train[:50%]'`): a split
  of a prepared TFDS image dataset in `data.data_dir`, read as the labelled source's
  TFDS splits are (`sources.open_tfds`: in memory, or streamed by id from ArrayRecord
  files, `data.storage`). Example id = record index.

With such a source the unlabelled stream shows only its images (ids and stream
'index' 0..N-1, so per-example stores have N unique slots); the labelled source's
train split gives the validation split and the labelled subset, and the rest of it
is not used. Images of any size and channel count are accepted: decoded with their
own channels, converted to the model's (`data.num_channels`, else the labelled
source's) and resized to `data.image_size` by the views, like a folder source's.
Hidden true labels ('true_label', telemetry only) come only from a TFDS split with
the labelled source's class names and no label -1; otherwise batches have none.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from etils import epath
import numpy as np

from semissl.data import sources

FOLDER_PREFIX = "folder:"
RECORD_FILENAME = "unlabelled_source.json"
_FORMS = "'folder:<root>' or '<tfds name>:<split>' (e.g. 'stl10:unlabelled')"


@dataclasses.dataclass(frozen=True)
class UnlabelledSource:
  """The loaded unlabelled source.

  examples: the images by id; labels are the hidden true labels or -1.
  channels: native channels of the stored images (1 or 3).
  has_true_labels: whether `examples.labels` are in the labelled source's classes.
  fingerprint: identifies the images (file names or TFDS split), for resumes.
  """
  spec: str
  examples: sources.SplitExamples
  channels: int
  has_true_labels: bool
  fingerprint: str

  def record(self) -> dict:
    """What `<workdir>/unlabelled_source.json` holds."""
    return {"unlabelled_dataset": self.spec, "num_examples": len(self.examples),
            "fingerprint": self.fingerprint}


def parse_spec(spec) -> tuple[str, str] | None:
  """('folder', root) or ('tfds', '<name>:<split>'); None when unset (None or '')."""
  if spec is None or spec == "":
    return None
  if not isinstance(spec, str):
    raise ValueError(f"data.unlabelled_dataset={spec!r} must be a string: {_FORMS}.")
  if spec.startswith(FOLDER_PREFIX):
    root = spec[len(FOLDER_PREFIX):]
    if not root:
      raise ValueError("data.unlabelled_dataset='folder:' needs a root: "
                       "'folder:/path/to/images'.")
    return "folder", root
  name, sep, split = spec.partition(":")
  if not (name and sep and split):
    raise ValueError(f"data.unlabelled_dataset={spec!r} names no split; use {_FORMS}.")
  return "tfds", spec


def load(spec: str, *, labelled: sources.SourceData, labelled_dataset: str,
         eval_split: str, data_dir: str | None,
         read_options: sources.ReadOptions) -> UnlabelledSource:
  """Loads `spec` (see `parse_spec`); one-line ValueErrors say what to change."""
  kind, argument = parse_spec(spec)
  if kind == "folder":
    return _load_folder(spec, argument, labelled_dataset=labelled_dataset,
                        eval_split=eval_split)
  return _load_tfds(spec, labelled=labelled, labelled_dataset=labelled_dataset,
                    eval_split=eval_split, data_dir=data_dir, read_options=read_options)


def _load_folder(spec: str, root: str, *, labelled_dataset: str,
                 eval_split: str) -> UnlabelledSource:
  if not os.path.isdir(root):
    raise ValueError(f"data.unlabelled_dataset folder {root} does not exist or is not a "
                     "directory; fix data.unlabelled_dataset.")
  name, _, labelled_root = labelled_dataset.partition(":")
  if name == "folder" and labelled_root:
    eval_dir = os.path.realpath(os.path.join(labelled_root, eval_split))
    real_root = os.path.realpath(root)
    if (eval_dir == real_root or eval_dir.startswith(real_root + os.sep)
        or real_root.startswith(eval_dir + os.sep)):
      raise ValueError(
          f"data.unlabelled_dataset folder {root} holds the eval images of "
          f"{os.path.join(labelled_root, eval_split)}; point it at a folder without "
          "them.")
  names = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = [d for d in subdirs if not d.startswith(".")]
    relative = os.path.relpath(directory, root)
    for file_name in files:
      if (file_name.lower().endswith(sources.IMAGE_EXTENSIONS)
          and not file_name.startswith(".")
          and os.path.isfile(os.path.join(directory, file_name))):
        names.append(file_name if relative == "." else
                     "/".join(relative.split(os.sep) + [file_name]))
  names.sort()
  if not names:
    raise ValueError(f"data.unlabelled_dataset folder {root} holds no .png/.jpg/.jpeg "
                     "images (at any depth); add images or fix data.unlabelled_dataset.")
  encoded = np.empty(len(names), dtype=object)
  for i, name in enumerate(names):
    with open(os.path.join(root, name), "rb") as f:
      encoded[i] = f.read()
  examples = sources.SplitExamples(labels=np.full(len(names), -1, np.int64),
                                   encoded=encoded, names=tuple(names))
  channels = sources.check_decodable(examples, root)
  fingerprint = hashlib.sha1("\n".join(names).encode()).hexdigest()
  return UnlabelledSource(spec=spec, examples=examples, channels=channels,
                          has_true_labels=False, fingerprint=fingerprint)


def _load_tfds(spec: str, *, labelled: sources.SourceData, labelled_dataset: str,
               eval_split: str, data_dir: str | None,
               read_options: sources.ReadOptions) -> UnlabelledSource:
  name, _, split = spec.partition(":")
  if name == labelled_dataset and split == eval_split:
    raise ValueError(f"data.unlabelled_dataset={spec!r} is the eval split of "
                     "data.dataset; use another split.")
  try:
    dataset = sources.open_tfds(name, data_dir=data_dir)
  except ValueError as error:
    raise ValueError(f"data.unlabelled_dataset={spec!r}: {error}") from error
  # Hidden labels are only meaningful in the labelled source's classes.
  same_classes = (dataset.label_key is not None and labelled.class_names is not None
                  and dataset.class_names == labelled.class_names)
  examples = dataset.read_split(split, config_key="unlabelled_dataset",
                                read_options=read_options, with_labels=same_classes)
  has_true_labels = same_classes and bool(examples.labels.min() >= 0)
  if same_classes and not has_true_labels:
    examples = dataclasses.replace(examples,
                                   labels=np.full(len(examples), -1, np.int64))
  return UnlabelledSource(
      spec=spec, examples=examples, channels=dataset.channels,
      has_true_labels=has_true_labels,
      fingerprint=f"{dataset.builder.info.full_name}[{split}]")


def check_record(workdir: str, source: UnlabelledSource) -> bool:
  """Whether `<workdir>/unlabelled_source.json` is still to be written; ValueError if
  it records other images than `source` has now (a resume would not be exact)."""
  path = epath.Path(workdir) / RECORD_FILENAME
  if not path.exists():
    return True
  recorded = json.loads(path.read_text())
  if recorded != source.record():
    raise ValueError(
        f"{path}: this workdir's run read {recorded.get('num_examples')} unlabelled "
        f"images from {recorded.get('unlabelled_dataset')!r}, now there are "
        f"{len(source.examples)} (or other files); restore them or use a new workdir.")
  return False


def write_record(workdir: str, source: UnlabelledSource) -> None:
  path = epath.Path(workdir) / RECORD_FILENAME
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(source.record(), indent=2) + "\n")
