"""The import graph of semissl: layered, without cycles (function-level imports count).

Layers, bottom up: losses / models / data, methods, training, inference, the package
root and its command line. A module imports only from its own layer or below, and no
chain of imports leads back to where it started.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"semissl.losses": 0, "semissl.models": 0, "semissl.data": 0,
          "semissl.methods": 1, "semissl.training": 2, "semissl.inference": 3,
          "semissl.convert": 3, "semissl.cli": 4, "semissl": 4}


def _modules() -> dict[str, str]:
  """Module name -> file of every module in the semissl package."""
  found = {}
  for directory, _, files in os.walk(os.path.join(ROOT, "semissl")):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        found[".".join(parts)] = path
  return found


def _imports(path: str, module: str, known: set[str]) -> set[str]:
  """The semissl modules `path` imports anywhere in its body: `from a import b` is
  module a.b when that is a module, else a (its package's __init__)."""
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  targets = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      targets.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] +
                        ([base] if base else []))
      for alias in node.names:
        targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
  return {t for t in targets if t in known and t != module}


def _layer(module: str) -> int:
  while module not in LAYERS:
    module = module.rpartition(".")[0]
  return LAYERS[module]


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  known = set(modules)
  return {module: _imports(path, module, known) for module, path in modules.items()}


def _is_own_package(module: str, target: str) -> bool:
  """`semissl.training.setup` importing the package `semissl.training` (its __init__ runs
  first anyway): not an edge of the module graph."""
  return module.startswith(target + ".")


def test_the_graph_is_read():
  graph = _graph()
  assert "semissl.training.setup" in graph["semissl.training.train_loop"]
  assert "semissl.methods.base" in graph["semissl.training.step"]


def test_no_module_imports_from_a_layer_above():
  graph = _graph()
  upward = sorted(f"{module} -> {target}" for module, targets in graph.items()
                  for target in targets
                  if not _is_own_package(module, target) and _layer(target) > _layer(module))
  assert not upward, "\n".join(upward)


def test_no_import_cycles():
  graph = {module: {t for t in targets if not _is_own_package(module, t)}
           for module, targets in _graph().items()}
  cycles = []
  state: dict[str, int] = {}  # 1 on the path, 2 done

  def visit(module, path):
    state[module] = 1
    for target in sorted(graph[module]):
      if state.get(target) == 1:
        cycles.append(" -> ".join(path[path.index(target):] + [target]))
      elif target not in state:
        visit(target, path + [target])
    state[module] = 2

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("source,layer", [("semissl.methods.distill", 1),
                                          ("semissl.data.augment", 0)])
def test_known_offenders_fixed(source, layer):
  # methods/distill.py once reached up into training/checkpointing.py, and
  # data/augment.py imported the two modules that import it.
  graph = _graph()
  assert all(_layer(t) <= layer for t in graph[source]), graph[source]
  assert not {"semissl.data.augment_simclr", "semissl.data.augment_strong"} & graph[
      "semissl.data.augment"]
