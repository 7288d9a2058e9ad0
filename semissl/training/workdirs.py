"""Workdir paths: local directories or remote ones (`gs://bucket/run`), via etils.epath.

A TPU VM's disk is lost when the VM is preempted, so runs write their workdir to a
bucket; everything the train loop writes (checkpoints, results, metrics, the
labelled ids) goes through these helpers or through orbax, never through
`open()` / `os.path`, which only know local paths.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable

from etils import epath

CONFIG_FILENAME = "config.json"
# Config keys a resumed run may change without becoming another experiment: how often
# it logs, evaluates and saves, how the input is read, and the device layout. Every
# other key (data, split, labels, model, method, batch, optimizer, schedule, steps,
# seed) must match the config the workdir was started with.
RESUMABLE_KEYS = (
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "eval_batch_size", "mesh", "sharding_rules", "init_from", "knn_monitor",
    "evaluator", "data.eval_examples",
    "data.data_dir", "data.tf_threads", "data.prefetch", "data.storage",
    "data.max_memory_bytes", "data.index_cache_dir", "data.index_wait_s",
)
# Keys added after workdirs were written, with the value a config without them has in
# effect: a config.json (or config) without the key compares as that value.
# `grad_accum_steps` is not resumable: it changes the effective batch. (Not here:
# SimMatch's `method.embedding_batch_norm`, whose old behaviour is True, not its new
# default, so an old SimMatch workdir is refused rather than resumed without its BN.)
ADDED_KEY_DEFAULTS = {"grad_accum_steps": 1, "model.dtype": "float32", "method.tsa": "none",
                      "data.unlabelled_dataset": None, "data.eval_examples": 0}


def resolve(workdir: str | os.PathLike) -> epath.Path:
  """Absolute local path, or the remote URI unchanged (`gs://...`, `s3://...`)."""
  text = os.fspath(workdir)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def json_safe(value: Any) -> Any:
  """`value` with NaN / infinite floats as None (null), so the JSON stays valid."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_json(path: epath.Path, value: Any) -> None:
  """Writes `value` as indented JSON, atomically on local disks (temp file + rename);
  non-finite floats become null."""
  _write_atomically(path, json.dumps(json_safe(value), indent=2, default=str,
                                     allow_nan=False))


def _write_atomically(path: epath.Path, text: str) -> None:
  if "://" in os.fspath(path):
    path.write_text(text)  # object stores publish a whole object at once
    return
  temporary = path.parent / f".{path.name}.tmp-{os.getpid()}"
  temporary.write_text(text)
  temporary.replace(path)


def truncate_json_lines(path: epath.Path, *, max_step: int,
                        last_with_prefix: str = "") -> dict[str, Any]:
  """Drops the records of `path` (JSON lines with a 'step') after `max_step`; returns
  the keys starting with `last_with_prefix` of the last kept record that has any.
  Rewrites the file (atomically on local disks) only when something is dropped."""
  lines = path.read_text().splitlines(keepends=True)
  kept, last = [], {}
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut by a crash mid-write
      continue
    if int(record.get("step", 0)) > max_step:
      continue
    kept.append(line if line.endswith("\n") else line + "\n")
    chosen = {k: v for k, v in record.items() if k.startswith(last_with_prefix)}
    if last_with_prefix and chosen:
      last = chosen
  if kept != lines:
    _write_atomically(path, "".join(kept))
  return last


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
    line = json.dumps(json_safe(value), allow_nan=False) + "\n"
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
    else:
      self._lines.append(line)
      self._path.write_text("".join(self._lines))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict) and tree:
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: tree}


def _resumable(key: str, allowed: Iterable[str]) -> bool:
  return any(key == k or key.startswith(k + ".") for k in (*RESUMABLE_KEYS, *allowed))


def config_changes(recorded: dict, current: dict, *, allowed: Iterable[str] = ()) -> list[str]:
  """'key (old -> new)' for each leaf that differs, except `RESUMABLE_KEYS` and
  `allowed` (keys or key prefixes)."""
  old = {**ADDED_KEY_DEFAULTS, **_flatten(recorded)}
  new = {**ADDED_KEY_DEFAULTS, **_flatten(current)}
  changes = []
  for key in sorted(set(old) | set(new)):
    if _resumable(key, allowed):
      continue
    if old.get(key, "<unset>") != new.get(key, "<unset>"):
      changes.append(f"{key} ({old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r})")
  return changes


def config_record(config: Any) -> dict:
  """The JSON form of a config, as `config.json` holds it (tuples become lists)."""
  return json.loads(json.dumps(json_safe(config.to_dict()), default=str))


def check_and_record_config(workdir: str, config: Any, *, allowed: Iterable[str] = (),
                            write: bool = True) -> list[str]:
  """Refuses (ValueError, one line) to continue a workdir started with another config.

  The first run in `workdir` writes `config.json`; a later one compares against it
  and raises, listing the changed keys, before anything in the workdir is written.
  Changes to keys in `allowed` are accepted, and `config.json` then records the new
  config. Returns the accepted changes.
  """
  path = resolve(workdir) / CONFIG_FILENAME
  current = config_record(config)
  accepted: list[str] = []
  if path.exists():
    recorded = json.loads(path.read_text())
    changes = config_changes(recorded, current, allowed=allowed)
    if changes:
      keys = ",".join(c.split(" ", 1)[0] for c in changes)
      raise ValueError(
          f"workdir {os.fspath(workdir)} was started with another config: changed "
          f"{'; '.join(changes)}. Use a new workdir, restore those values, or accept the "
          f"change with --allow_config_change={keys}.")
    accepted = config_changes(recorded, current)  # the allowed ones, now accepted
    if not accepted:
      return []
  if write:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, current)
  return accepted
