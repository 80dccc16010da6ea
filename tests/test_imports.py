"""The package's import graph: no cycles (module-level or inside functions), imports that
run down the layers only, no jaxlab import inside a function but the command line's, no
private name imported from another module, nothing from jax._src. Read from the source
with ast, so nothing is imported and the test takes milliseconds."""
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
      list((ROOT / 'experiments').glob('*.py')) + list((ROOT / 'bench').glob('*.py'))
  for path in files:
    for module, names in _imports(path):
      if module == 'jax._src' or module.startswith('jax._src.'):
        bad.append(f'{path.relative_to(ROOT)}: {module}')
      if module.startswith('jaxlab'):
        bad += [f'{path.relative_to(ROOT)}: {module}.{n}' for n in names
                if n.startswith('_') and not n.startswith('__')]
  assert bad == []


# The layers, bottom first: a module imports from its own layer or the ones below, never
# from above (docs/layout.md).
LAYERS = (('config',), ('data', 'parallel', 'kernels', 'models'), ('optim', 'growth'),
          ('train', 'rundir', 'interop', 'aot'), ('report', 'scaling'), ('launch',))


def _layer(module: str) -> int:
  parts = module.split('.')
  if len(parts) < 2:
    raise AssertionError(f'{module} is not in a package: every module belongs to a layer')
  for i, packages in enumerate(LAYERS):
    if parts[1] in packages:
      return i
  raise AssertionError(f'{module}: package {parts[1]!r} is in no layer of LAYERS')


def test_every_module_is_in_a_layer_and_imports_run_down():
  up = []
  for module, deps in _graph().items():
    if module == 'jaxlab':
      continue
    for dep in deps:
      if dep != 'jaxlab' and _layer(dep) > _layer(module):
        up.append(f'{module} -> {dep}')
  assert sorted(up) == []


# jaxlab imports inside a function, and why each is there. The command line builds its
# parser from jax-free modules and imports a command's stack only when that command runs,
# so `launch.py report` (and an argument mistake) loads no jax.
FUNCTION_IMPORTS = {
    'jaxlab/launch/cli.py': {'jaxlab.launch', 'jaxlab.launch.submit', 'jaxlab.optim.step_law'},
}


def test_no_jaxlab_import_inside_a_function_but_the_command_lines():
  found: dict[str, set] = {}
  for path in PACKAGE.rglob('*.py'):
    tree = ast.parse(path.read_text())
    for fn in ast.walk(tree):
      if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for node in ast.walk(fn):
        module = node.module if isinstance(node, ast.ImportFrom) else None
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [module]
        for name in names:
          if name and name.startswith('jaxlab'):
            found.setdefault(str(path.relative_to(ROOT)), set()).add(name)
  assert found == FUNCTION_IMPORTS


def test_package_inits_only_re_export():
  """An __init__.py holds a docstring, imports and __all__: no logic."""
  bad = []
  for path in PACKAGE.rglob('__init__.py'):
    for node in ast.parse(path.read_text()).body:
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        continue   # the docstring
      if isinstance(node, ast.Assign) and [getattr(t, 'id', None) for t in node.targets] == ['__all__']:
        continue
      bad.append(f'{path.relative_to(ROOT)}:{node.lineno}')
  assert bad == []


def test_no_package_name_hides_a_module():
  """A name a package's __init__ binds is never also one of its modules: `from pkg import x`
  then means one thing (jaxlab.kernels.flash_attention is the function, the kernel's module
  is jaxlab.kernels.flash)."""
  bad = []
  for init in PACKAGE.rglob('__init__.py'):
    modules = {p.stem for p in init.parent.glob('*.py')} | {
        p.name for p in init.parent.iterdir() if (p / '__init__.py').is_file()}
    for node in ast.parse(init.read_text()).body:
      if isinstance(node, ast.ImportFrom):
        bound = [a.asname or a.name for a in node.names]
        # `from pkg import module` binds the module itself: that is no hiding.
        bad += [f'{init.relative_to(ROOT)}: {name}' for name in bound
                if name in modules and node.module != _pkg(init)]
  assert bad == []


def _pkg(init: pathlib.Path) -> str:
  return '.'.join(init.parent.relative_to(ROOT).parts)
