"""Workdir paths: remote URIs are kept as URIs; local writes are atomic / appending."""
import json
import os

from semissl.training import workdirs


def test_resolve_keeps_remote_uris_and_absolutises_local_paths(tmp_path, monkeypatch):
  assert os.fspath(workdirs.resolve("gs://bucket/run")) == "gs://bucket/run"
  assert os.fspath(workdirs.resolve("gs://bucket/run") / "checkpoints") == (
      "gs://bucket/run/checkpoints")
  monkeypatch.chdir(tmp_path)
  assert os.fspath(workdirs.resolve("runs/a")) == os.path.join(str(tmp_path), "runs", "a")


def test_write_json_replaces_whole_file_and_leaves_no_temporary(tmp_path):
  path = workdirs.resolve(tmp_path) / "results.json"
  workdirs.write_json(path, {"a": 1, "long": "x" * 1000})
  workdirs.write_json(path, {"a": 2})
  assert json.loads(path.read_text()) == {"a": 2}
  assert os.listdir(tmp_path) == ["results.json"]


def test_json_lines_append_across_writers_like_a_resumed_run(tmp_path):
  path = workdirs.resolve(tmp_path) / "metrics.jsonl"
  for step in (1, 2):
    writer = workdirs.JsonLinesWriter(path)
    writer.write({"step": step})
    writer.close()
  assert [json.loads(line) for line in path.read_text().splitlines()] == [
      {"step": 1}, {"step": 2}]


class _ObjectStorePath:
  """Stands in for a gs:// object: whole-object reads and writes, no append."""

  def __init__(self, text=None):
    self.text = text

  def __fspath__(self):
    return "gs://bucket/run/metrics.jsonl"

  def exists(self):
    return self.text is not None

  def read_text(self):
    return self.text

  def write_text(self, text):
    self.text = text

  def open(self, mode="r"):
    raise AssertionError(f"object stores cannot open({mode!r})")


def test_json_lines_on_object_stores_rewrite_the_object_and_keep_old_lines():
  path = _ObjectStorePath('{"step": 1}\n')
  writer = workdirs.JsonLinesWriter(path)
  writer.write({"step": 2})
  writer.write({"step": 3})
  writer.close()
  assert [json.loads(line)["step"] for line in path.text.splitlines()] == [1, 2, 3]


def test_keys_added_later_compare_as_their_old_behaviour():
  """A config.json written before model.dtype / grad_accum_steps / method.tsa existed
  resumes under today's defaults, and is refused when the new key is changed."""
  recorded = {"batch_size": 64, "model": {"name": "tiny_resnet"}, "method": {"name": "uda"}}
  current = {"batch_size": 64, "grad_accum_steps": 1,
             "model": {"name": "tiny_resnet", "dtype": "float32"},
             "method": {"name": "uda", "tsa": "none"}}
  assert workdirs.config_changes(recorded, current) == []
  current["model"]["dtype"] = "bfloat16"
  current["method"]["tsa"] = "exp"
  assert workdirs.config_changes(recorded, current) == [
      "method.tsa ('none' -> 'exp')", "model.dtype ('float32' -> 'bfloat16')"]
