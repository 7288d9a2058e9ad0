"""Workdir paths: local directories or remote ones (`gs://bucket/run`), via etils.epath.

A TPU VM's disk is lost when the VM is preempted, so runs write their workdir to a
bucket; everything the train loop writes (checkpoints, results, metrics, the
labelled ids) goes through these helpers or through orbax, never through
`open()` / `os.path`, which only know local paths.
"""
from __future__ import annotations

import json
import os
from typing import Any

from etils import epath


def resolve(workdir: str | os.PathLike) -> epath.Path:
  """Absolute local path, or the remote URI unchanged (`gs://...`, `s3://...`)."""
  text = os.fspath(workdir)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def write_json(path: epath.Path, value: Any) -> None:
  """Writes `value` as indented JSON, atomically on local disks (temp file + rename)."""
  text = json.dumps(value, indent=2, default=str)
  if "://" in os.fspath(path):
    path.write_text(text)  # object stores publish a whole object at once
    return
  temporary = path.parent / f".{path.name}.tmp-{os.getpid()}"
  temporary.write_text(text)
  temporary.replace(path)


class JsonLinesWriter:
  """Appends JSON lines to a file; on object stores (no append) rewrites the object."""

  def __init__(self, path: epath.Path):
    self._path = path
    self._remote = "://" in os.fspath(path)
    if self._remote:
      self._lines = path.read_text().splitlines(keepends=True) if path.exists() else []
      self._file = None
    else:
      self._file = path.open("a")

  def write(self, value: dict[str, Any]) -> None:
    line = json.dumps(value) + "\n"
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
    else:
      self._lines.append(line)
      self._path.write_text("".join(self._lines))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
