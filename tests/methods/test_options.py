"""Method options: one declaration (`Method.defaults`), one reader (`Method.option`),
one check of `config.method`'s keys (`check_option_keys`, run by setup.validate_config)."""
import importlib
import pathlib
import re

import ml_collections
import pytest

from semissl import methods
from semissl.methods import base
from semissl.training import setup, sharding

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAMES = methods.known_methods()
# Every shipped config and the variants that change its `config.method`
# (stages, protocols, method variants); '' is the default variant.
CONFIG_VARIANTS = {
    "supervised_fmnist": ["", "runlocal"],
    "supervised_r50": ["", "runlocal"],
    "fixmatch_fmnist": ["", "runlocal"],
    "fixmatch_cifar": ["", "teacher=ema", "runlocal"],
    "remixmatch_fmnist": ["", "runlocal", "k=8", "da_only", "da_only,labels=40"],
    "emateacher_fmnist": ["", "mixup=False", "runlocal"],
    "semivit_vitb": ["", "stage=supervised", "labels=1pct", "runlocal"],
    "simmatch_fmnist": ["", "variant=student_teacher", "runlocal"],
    "simmatch_cifar": ["", "runlocal"],
    "simmatch_r50": ["", "runlocal"],
    "ict_fmnist": ["", "runlocal"],
    "meanteacher_fmnist": ["", "runlocal"],
    "mixmatch_fmnist": ["", "runlocal"],
    "pimodel_fmnist": ["", "runlocal"],
    "pseudolabel_fmnist": ["", "runlocal"],
    "temporal_ensembling_fmnist": ["", "runlocal"],
    "uda_fmnist": ["", "runlocal"],
    "meta_pseudo_labels_fmnist": ["", "runlocal"],
    "label_propagation_fmnist": ["", "runlocal", "labels=40,init_from=/tmp/pretrained,encoder_lr=0.05"],
    "noisy_student_fmnist": ["", "iteration=0,noise=True", "iteration=1,teacher=/w",
                             "iteration=2,teacher=/w,growth=2", "iteration=1,runlocal"],
    "dividemix_fmnist": ["", "noise=0.2", "runlocal", "ce", "noise=0.2,ce"],
    "vat_fmnist": ["", "entmin=True,finite_difference=True", "runlocal"],
    "semppl_fmnist": ["", "runlocal,small=2", "stage=finetune,init_from=/w",
                      "stage=finetune,init_from=/w,labels=40", "stage=scratch",
                      "stage=linear,init_from=/w"],
    "semppl_r50": ["", "runlocal", "stage=finetune,init_from=/w", "stage=linear,init_from=/w"],
    "simclrv2_fmnist": ["stage=pretrain", "stage=pretrain,queue=64", "stage=finetune",
                        "stage=finetune,labels=40", "stage=distill",
                        "stage=distill,teacher=semppl"],
    "simclrv2_r50": ["stage=pretrain", "stage=finetune", "stage=finetune,protocol=semppl",
                     "stage=distill", "stage=distill,teacher=r152_3x_sk", "runlocal"],
}


def _method_configs():
  """method name -> [(config spec, config.method)] over CONFIG_VARIANTS."""
  out = {}
  for module, variants in CONFIG_VARIANTS.items():
    get_config = importlib.import_module(f"configs.{module}").get_config
    for variant in variants:
      method = get_config(variant or None).method
      out.setdefault(method.name, []).append((f"{module}:{variant}", method))
  return out


METHOD_CONFIGS = _method_configs()


def _bare(cls, **method_keys):
  """An instance of `cls` whose config holds only `config.method` (no network built)."""
  method = cls.__new__(cls)
  method.config = ml_collections.ConfigDict({"method": {"name": cls.name, **method_keys}})
  return method


def test_every_shipped_config_is_listed():
  shipped = {path.stem for path in (ROOT / "configs").glob("*.py")
             if "def get_config(" in path.read_text()}
  assert shipped == set(CONFIG_VARIANTS)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_key_names_the_key_and_the_method(name):
  cls = methods.get_method(name)
  assert cls.defaults, f"{name} declares no options"
  config = {"name": name, "tau_x": 1.0, next(iter(cls.defaults)): None}
  with pytest.raises(ValueError) as info:
    methods.check_option_keys(cls, ml_collections.ConfigDict(config))
  message = str(info.value)
  assert message.startswith(f"config.method.tau_x is not an option of {name}; known: ")
  for key in cls.defaults:  # the known ones listed
    assert re.search(rf"\b{key}\b", message.split("known: ")[1]), key
  assert "\n" not in message
  two = ml_collections.ConfigDict({"name": name, "tau_x": 1, "b_y": 2})
  with pytest.raises(ValueError, match=rf"^config\.method\.b_y, config\.method\.tau_x are "
                     rf"not options of {name}; known: "):
    methods.check_option_keys(cls, two)


@pytest.mark.parametrize("name", NAMES)
def test_declared_keys_pass(name):
  cls = methods.get_method(name)
  methods.check_option_keys(cls, ml_collections.ConfigDict({"name": name, **cls.defaults}))


def test_validate_config_runs_the_check_before_anything_else():
  config = importlib.import_module("configs.fixmatch_fmnist").get_config("runlocal")
  mesh = sharding.make_mesh({"data": -1})
  setup.validate_config(config, mesh)
  config.method.tau = 0.95  # FixMatch's key is `threshold`
  with pytest.raises(ValueError, match=r"^config\.method\.tau is not an option of fixmatch; "
                     r"known: .*\bthreshold\b"):
    setup.validate_config(config, mesh)


@pytest.mark.parametrize("name", NAMES)
def test_every_config_key_is_declared(name):
  assert METHOD_CONFIGS.get(name), f"no shipped config uses {name}"
  declared = set(methods.get_method(name).defaults)
  for spec, method_config in METHOD_CONFIGS[name]:
    undeclared = set(method_config) - {"name"} - declared
    assert not undeclared, f"{spec}: {sorted(undeclared)} not declared by {name}"


class _Sentinel:
  """A value no default equals."""


@pytest.mark.parametrize("name", NAMES)
def test_option_returns_default_or_config_value(name):
  cls = methods.get_method(name)
  for key, default in cls.defaults.items():
    assert _bare(cls).option(key) == default, key
    sentinel = _Sentinel()
    method = _bare(cls)
    method.config.method[key] = sentinel
    assert method.option(key) is sentinel, key
  with pytest.raises(KeyError) as info:
    _bare(cls).option("not_declared")
  assert str(info.value) == (f"{cls.__name__}.option('not_declared'): 'not_declared' is not "
                             f"in {cls.__name__}.defaults; declare it there.")


def test_subclasses_extend_their_parents_defaults():
  classes = [methods.get_method(name) for name in NAMES]
  pairs = [(child, parent) for child in classes for parent in child.__mro__[1:]
           if parent is not base.Method and issubclass(parent, base.Method) and
           parent.defaults]
  assert pairs  # the classic family, EMA-Teacher
  for child, parent in pairs:
    assert set(parent.defaults) <= set(child.defaults), (child.name, parent.__name__)
  fixmatch, emateacher = methods.get_method("fixmatch"), methods.get_method("emateacher")
  assert (fixmatch.defaults["teacher"], emateacher.defaults["teacher"]) == ("self", "ema")
  assert {k: v for k, v in emateacher.defaults.items() if k != "teacher"} == {
      k: v for k, v in fixmatch.defaults.items() if k != "teacher"}


def test_methods_read_config_method_only_through_option():
  """One style: no `config.method.get(...)` / `config.method.<key>` in the methods."""
  pattern = re.compile(r"(config|cfg)\.method\.(get\(|[a-z_]+\b(?!`))|\bcfg\.get\(")
  offenders = []
  for path in sorted((ROOT / "semissl" / "methods").glob("*.py")):
    if path.name == "base.py":  # `option` itself
      continue
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if pattern.search(line):
        offenders.append(f"{path.name}:{number}: {line.strip()}")
  assert not offenders, "\n".join(offenders)
