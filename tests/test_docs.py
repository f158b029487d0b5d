"""README.md and docs/: the concept table names real code and config keys, and every link works."""

import ast
import collections
import glob
import importlib.util
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')
CONCEPTS_HEADING = "## The paper's concepts in the code"
MAX_README_LINES = 220

_LINK = re.compile(r'\[[^\]\n]*\]\(([^)\s]+)\)')
_FENCE = re.compile(r'^```.*?^```', re.M | re.S)
_CODE = re.compile(r'`([^`]+)`')


def _read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


def _pages():
  return [README] + sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))


def _concept_rows():
  """(concept, [`path:symbol`], [config key]) of each row of the README's concept table."""
  lines = _read(README).split('\n')
  start = lines.index(CONCEPTS_HEADING)
  table = []
  for line in lines[start + 1:]:
    if line.startswith('## '):
      break
    if line.startswith('|'):
      table.append(line)
  rows = []
  for line in table[2:]:   # after the header and the |---| line
    cells = [c.strip() for c in line.strip('|').split('|')]
    assert len(cells) == 3, line
    rows.append((cells[0], _CODE.findall(cells[1]), _CODE.findall(cells[2])))
  return rows


def _module_names(tree):
  """Names a module defines or imports at its top level (inside top-level if/try blocks too)."""
  names = set()
  statements = list(tree.body)
  while statements:
    node = statements.pop()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, ast.Assign):
      for target in node.targets:
        names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
      names.add(node.target.id)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split('.')[0] for a in node.names)
    elif isinstance(node, (ast.If, ast.Try)):
      statements.extend(node.body + node.orelse + getattr(node, 'finalbody', []))
      for handler in getattr(node, 'handlers', []):
        statements.extend(handler.body)
  return names


def _code_problem(ref):
  """None when `path:symbol` names a module-level symbol of that file or package, else why not."""
  path, sep, symbol = ref.partition(':')
  if not sep or not symbol:
    return f'{ref!r} is not path:symbol'
  full = os.path.join(REPO, path)
  if os.path.isdir(full):
    full = os.path.join(full, '__init__.py')
  if not os.path.isfile(full):
    return f'{path}: no such file or package'
  if symbol not in _module_names(ast.parse(_read(full), filename=full)):
    return f'{path}: defines or imports no {symbol!r} at module level'
  return None


def _default_config():
  spec = importlib.util.spec_from_file_location('default_config', os.path.join(REPO, 'configs',
                                                                               'default.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _has_key(config, key):
  node = config
  for part in key.split('.'):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return False
  return True


def test_concept_table_lists_the_papers_concepts():
  concepts = ' '.join(row[0] for row in _concept_rows())
  for name in ('GRN', 'MN', 'Eq. 1–3', 'LAN', 'Eq. 4', 'Eq. 5', 'Eq. 6', 'Algorithm 1', 're-ranking',
               'mAP'):
    assert name in concepts, name
  for concept, refs, keys in _concept_rows():
    assert refs and keys, concept


@pytest.mark.parametrize('ref', sorted({r for _, refs, _ in _concept_rows() for r in refs}))
def test_concept_table_code_exists(ref):
  problem = _code_problem(ref)
  assert problem is None, problem


def test_concept_table_config_keys_exist():
  config = _default_config()
  missing = sorted({k for _, _, keys in _concept_rows() for k in keys if not _has_key(config, k)})
  assert not missing, f'not in configs/default.py get_config(): {missing}'


def test_code_check_refuses_what_is_not_there():
  assert _code_problem('fmn_jax/models.py:FMN') is None
  assert _code_problem('fmn_jax/data:load_dataset') is None   # a package: its __init__.py
  assert 'no such file' in _code_problem('fmn_jax/nope.py:FMN')
  assert 'no \'Nope\'' in _code_problem('fmn_jax/models.py:Nope')
  assert 'not path:symbol' in _code_problem('fmn_jax/models.py')


def _slug(heading):
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
  text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
  return text.replace(' ', '-')


def _anchors(path):
  seen = collections.Counter()
  anchors = set()
  for line in _FENCE.sub('', _read(path)).split('\n'):
    match = re.match(r'#{1,6} (.*)', line)
    if match:
      slug = _slug(match.group(1))
      anchors.add(slug if not seen[slug] else f'{slug}-{seen[slug]}')
      seen[slug] += 1
  return anchors


def _broken_links(page):
  broken = []
  for target in _LINK.findall(_FENCE.sub('', _read(page))):
    if re.match(r'[a-z]+:', target):
      continue   # https:, mailto:, ...
    path, _, anchor = target.partition('#')
    full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    if not os.path.exists(full):
      broken.append(f'{target}: no such file')
    elif anchor and full.endswith('.md') and anchor not in _anchors(full):
      broken.append(f'{target}: no heading #{anchor}')
  return broken


@pytest.mark.parametrize('page', [os.path.relpath(p, REPO) for p in _pages()])
def test_relative_links_point_to_existing_files_and_headings(page):
  broken = _broken_links(os.path.join(REPO, page))
  assert not broken, f'{page}: {broken}'


def test_link_check_finds_a_broken_link(tmp_path):
  (tmp_path / 'b.md').write_text('# A heading\n')
  page = tmp_path / 'a.md'
  page.write_text('[ok](b.md#a-heading) [web](https://example.org/x) [gone](c.md) '
                  '[bad](b.md#other)\n```\n[in code](d.md)\n```\n')
  assert _broken_links(str(page)) == ['c.md: no such file', 'b.md#other: no heading #other']


def test_readme_is_short_starts_with_the_set_up_commands_and_links_every_page():
  text = _read(README)
  assert len(text.split('\n')) <= MAX_README_LINES
  commands = [line.strip() for line in text.split('\n')[:20] if line.startswith('    ')]
  assert commands[:2] == [
      'pip install -e . && python -m fmn_jax.main --config=configs/demo.py '
      '--workdir=/tmp/fmn_demo',
      'pip install -e ".[test,tfds]" && python -m pytest -q tests']
  linked = {os.path.normpath(t.partition('#')[0]) for t in _LINK.findall(text)}
  for page in _pages()[1:]:
    assert os.path.relpath(page, REPO) in linked, page
