"""`--config` name resolution of the training command (semissl/cli.py)."""
import os

import pytest

from semissl import cli


def test_shipped_name_becomes_the_config_path():
  path = cli.config_path("semppl_r50:labels=1pct")
  assert path.endswith(os.path.join("configs", "semppl_r50.py") + ":labels=1pct")
  assert cli.config_path("configs/semppl_fmnist.py:runlocal") == (
      "configs/semppl_fmnist.py:runlocal")


@pytest.mark.parametrize("spec,use", [
    ("sempl_r50:labels=1pct", "--config=semppl_r50:labels=1pct"),
    ("sempl_fmnist", "--config=semppl_fmnist"),
    ("configs/sempl_fmnist.py:stage=finetune",
     "--config=configs/semppl_fmnist.py:stage=finetune"),
])
def test_renamed_config_fails_with_one_line_naming_the_new_name(spec, use, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.config_path(spec)
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: --config={spec}: ")
  assert lines[0].endswith(f"use {use}")
