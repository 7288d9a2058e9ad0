"""Every make_results entry builds: each stage's config variant loads and every
--config.* override it adds names a key of that config (a typo would only show up
after an hour of training otherwise)."""
import importlib

import pytest

from experiments import results_entries


def _settings(entry):
  if entry.labels:
    return [entry.labels]
  return ["noise0.2"] if entry.noisy else ["40", "1pct"]


CASES = [(entry, index, labels) for entry in results_entries.ENTRIES
         for labels in _settings(entry) for index in range(len(entry.stages))]


def _has_key(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if part not in node:
      return False
    node = node[part]
  return True


@pytest.mark.parametrize("entry,index,labels", CASES,
                         ids=[f"{e.name}-{i}-{l}" for e, i, l in CASES])
def test_stage_command_builds_its_config(entry, index, labels):
  command = results_entries.stage_command(entry, index, labels=labels, seed=1,
                                          previous="workdirs/previous_stage",
                                          workdir="workdirs/this_stage")
  assert command[0] == "experiments/main.py"
  flags = dict(arg[2:].split("=", 1) for arg in command[1:])
  path, _, variant = flags.pop("config").partition(":")
  assert path.startswith("configs/") and path.endswith(".py"), path
  module = importlib.import_module(path[:-3].replace("/", "."))
  config = module.get_config(variant or None)
  assert flags.pop("workdir") == "workdirs/this_stage"
  overrides = {key[len("config."):]: value for key, value in flags.items()}
  assert overrides.pop("seed") == "1" and overrides.pop("data.split_seed") == "1"
  for key in overrides:
    assert _has_key(config, key), f"{entry.name} stage {index}: no config key {key!r}"


def test_longer_budget_entries_set_their_steps():
  by_name = {e.name: e for e in results_entries.ENTRIES}
  simmatch = results_entries.stage_command(by_name["6000-step simmatch"], 0, labels="40",
                                           seed=0, previous=None, workdir="w")
  assert "--config.num_train_steps=6000" in simmatch
  semppl = by_name["5000-step semppl -> label propagation"]
  first = results_entries.stage_command(semppl, 0, labels="1pct", seed=0, previous=None,
                                        workdir="w0")
  second = results_entries.stage_command(semppl, 1, labels="1pct", seed=0, previous="w0",
                                         workdir="w1")
  assert "--config.num_train_steps=5000" in first
  assert "init_from=w0" in second[1]
