"""Imports run one way (GUIDE.md): model -> data / memory -> agent -> rollout -> config_lib ->
train -> the entry points. Every `atommem_jax` import of every module, at the top or inside a
function, is read from the source (ast) and checked against the layers below."""

from __future__ import annotations

import ast
import os
import pathlib

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "atommem_jax")
# Layer of each package / module; a higher layer may import a lower one, never the reverse.
# Modules not named here (evaluate, export, demo, ..., train.__main__) are entry points: top.
LAYERS = {"atommem_jax.fileio": 0, "atommem_jax.model": 1, "atommem_jax.data": 2,
          "atommem_jax.memory": 2, "atommem_jax.agent": 3, "atommem_jax.rollout": 4,
          "atommem_jax.config_lib": 5, "atommem_jax.train": 6}
ENTRY_POINTS = ("atommem_jax", "atommem_jax.train.__main__")
TOP = max(LAYERS.values()) + 1


def _layer(module: str) -> int:
  if module in ENTRY_POINTS:
    return TOP
  for prefix, layer in sorted(LAYERS.items(), key=lambda item: -len(item[0])):
    if module == prefix or module.startswith(prefix + "."):
      return layer
  return TOP


def _imports(path: str) -> list[tuple[int, str]]:
  """(line, imported atommem_jax module) of every import statement in the file."""
  found = []
  for node in ast.walk(ast.parse(pathlib.Path(path).read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("atommem_jax"):
      for alias in node.names:
        name = f"{node.module}.{alias.name}"
        # `from package import module` imports the module; `from module import name` the module.
        found.append((node.lineno, name if os.path.exists(_source(name)) else node.module))
    elif isinstance(node, ast.Import):
      found += [(node.lineno, a.name) for a in node.names if a.name.startswith("atommem_jax")]
  return found


def _source(module: str) -> str:
  base = os.path.join(os.path.dirname(PACKAGE), *module.split("."))
  return base + ".py" if os.path.isfile(base + ".py") else os.path.join(base, "__init__.py")


def test_no_module_imports_a_higher_layer():
  upward = []
  for root, _, files in os.walk(PACKAGE):
    for name in sorted(files):
      if not name.endswith(".py"):
        continue
      path = os.path.join(root, name)
      module = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
      module = module.removesuffix(".__init__")
      for line, imported in _imports(path):
        if _layer(imported) > _layer(module):
          upward.append(f"{os.path.relpath(path, os.path.dirname(PACKAGE))}:{line}: {module} "
                        f"(layer {_layer(module)}) imports {imported} (layer {_layer(imported)})")
  assert not upward, ("imports against the layer order; move what both need to the lower "
                      "layer:\n" + "\n".join(upward))


def _modules() -> dict[str, str]:
  """Module name -> source path, for every module of the package."""
  modules = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        module = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
        modules[module.removesuffix(".__init__")] = path
  return modules


def _top_level_imports(path: str) -> set[str]:
  tree = ast.parse(pathlib.Path(path).read_text())
  top = {id(node) for node in tree.body}
  return {module for line, module in _imports(path)
          if any(id(node) in top and node.lineno == line for node in tree.body)}


def test_no_import_inside_a_function_hides_a_cycle():
  """Each import made inside a function could move to the top of its module: the module it
  imports does not import it back, through any chain of top-level imports."""
  modules = _modules()
  top = {module: _top_level_imports(path) for module, path in modules.items()}

  def reached(start: str) -> set[str]:
    # Only explicit imports: a parent package being initialised is already in sys.modules.
    seen, stack = set(), [start]
    while stack:
      for other in top.get(stack.pop(), set()):
        if other not in seen:
          seen.add(other)
          stack.append(other)
    return seen

  hidden = [f"{os.path.relpath(path, os.path.dirname(PACKAGE))}:{line}: {module} -> {imported}"
            for module, path in sorted(modules.items())
            for line, imported in _imports(path)
            if imported not in top[module] and module in reached(imported)]
  assert not hidden, ("imports inside functions that hide a cycle; move the code both need "
                      "to the lower module:\n" + "\n".join(hidden))
