"""The package's import structure: layers in one direction, no cycle, the CLI module kept out.

Layers, lowest first: config and the shared utilities -> data -> models (and their weights) ->
training -> evaluation -> the job and the tools. A module may import modules of its own layer
or of lower ones, at the top of the file or inside a function alike. A new module needs a layer
here.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'fmn_jax')

LAYERS = {
    0: ('config', 'parallel', 'reporting', 'checkpoints', 'cpu'),
    1: ('data', 'images'),
    2: ('models', 'losses', 'pretrained'),
    3: ('stages', 'initialization', 'workdir'),
    4: ('features', 'metrics', 'rerank', 'rerank_blocks', 'evaluate'),
    5: ('train', 'main', 'cli', 'tool_flags', 'figures', 'extract', 'search', 'visualize', 'export',
        'benchmark'),
}
# Modules that may import `fmn_jax.cli` (the command-line parsing of fmn_jax.main).
CLI_USERS = ('fmn_jax.main',)


def _modules():
  """{dotted module name: path} of every module in the package."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
        out[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = path
  return out


def _layer(module: str) -> int:
  top = module.split('.')[1] if module.count('.') else module
  for layer, names in LAYERS.items():
    if any(top == n or top.startswith(n + '_') for n in names):
      return layer
  raise AssertionError(f'{module} has no layer in tests/test_architecture.py LAYERS')


def _imports(module: str, path: str, known) -> set:
  """The package modules `module` imports anywhere in its file."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read(), path)
  package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      names = [f'{base}.{a.name}' for a in node.names] + [base]
    else:
      continue
    for name in names:
      while name and name not in known:
        name = name.rpartition('.')[0]
      if name and name != 'fmn_jax' and name != module:
        found.add(name)
  return found


@pytest.fixture(scope='module')
def graph():
  modules = _modules()
  return {m: _imports(m, p, modules) for m, p in modules.items()}


def test_every_module_has_a_layer(graph):
  for module in graph:
    if module != 'fmn_jax':
      _layer(module)


def test_imports_go_down_the_layers(graph):
  upward = [f'{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})'
            for m, deps in sorted(graph.items()) if m != 'fmn_jax'
            for d in sorted(deps) if _layer(d) > _layer(m)]
  assert not upward, '\n'.join(upward)


def test_no_import_cycle(graph):
  state, stack = {}, []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for d in sorted(graph.get(m, ())):
      if d.startswith(m + '.'):   # a package importing its own submodules is not a cycle
        continue
      if state.get(d) == 'open':
        cycle = stack[stack.index(d):] + [d]
        raise AssertionError('import cycle: ' + ' -> '.join(cycle))
      if d not in state:
        visit(d)
    stack.pop()
    state[m] = 'done'

  for module in sorted(graph):
    if module not in state:
      visit(module)


def test_the_library_does_not_import_the_cli_module(graph):
  users = sorted(m for m, deps in graph.items() if 'fmn_jax.cli' in deps)
  assert set(users) <= set(CLI_USERS), users


def test_no_module_is_over_400_lines():
  long = []
  for module, path in _modules().items():
    with open(path, encoding='utf-8') as f:
      n = sum(1 for _ in f)
    if n > 420:
      long.append(f'{module}: {n} lines')
  assert not long, long
