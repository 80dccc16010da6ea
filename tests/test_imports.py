"""The package's import graph: no cycles (module-level or inside functions), no private
name imported from another module, nothing from jax._src. Read from the source with ast,
so nothing is imported and the test takes milliseconds."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'jaxlab'


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob('*.py'):
    parts = path.relative_to(ROOT).with_suffix('').parts
    name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
    out[name] = path
  return out


def _resolve(name: str, modules) -> str | None:
  while name and name not in modules:
    name = name.rpartition('.')[0]
  return name or None


def _imports(path: pathlib.Path):
  """(module, imported names) for every jaxlab / jax import anywhere in the file."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      yield node.module, [a.name for a in node.names]
    elif isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, []


def _graph():
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    deps = set()
    for module, names in _imports(path):
      if not module.startswith('jaxlab'):
        continue
      for n in names or [None]:
        full = f'{module}.{n}' if n else module
        dep = _resolve(full if full in modules else module, modules)
        # Importing a.b.c runs the package inits a and a.b first: those are edges too.
        while dep:
          if dep != name and not name.startswith(dep + '.'):
            deps.add(dep)
          dep = dep.rpartition('.')[0]
    graph[name] = deps
  return graph


def _cycles(graph) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_cycle_finder_finds_a_cycle():
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
  assert _cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_cycles():
  assert _cycles(_graph()) == []


def test_no_private_names_or_jax_internals():
  bad = []
  files = list(PACKAGE.rglob('*.py')) + list((ROOT / 'tests').glob('*.py')) + \
      list((ROOT / 'experiments').glob('*.py'))
  for path in files:
    for module, names in _imports(path):
      if module == 'jax._src' or module.startswith('jax._src.'):
        bad.append(f'{path.relative_to(ROOT)}: {module}')
      if module.startswith('jaxlab'):
        bad += [f'{path.relative_to(ROOT)}: {module}.{n}' for n in names
                if n.startswith('_') and not n.startswith('__')]
  assert bad == []
