"""README.md and docs/: the concept table names real code and config keys, links resolve."""

import ast
import glob
import importlib.util
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')
CONCEPTS_HEADING = "## The paper's concepts in the code"
MAX_README_LINES = 220
FIRST_COMMANDS = (
    'pip install -e . && python -m fmn_jax.main --config=configs/demo.py --workdir=/tmp/fmn_demo',
    'pip install -e ".[test,tfds]" && python -m pytest -q tests',
)


def _read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


def _doc_files():
  return [README] + sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))


def _concept_rows():
  """(concept, ['path:symbol', ...], ['config.key', ...]) for each row of the concept table."""
  lines = _read(README).splitlines()
  start = lines.index(CONCEPTS_HEADING)
  rows = []
  for line in lines[start + 1:]:
    if line.startswith('## '):
      break
    if not line.startswith('|') or line.startswith('|---'):
      continue
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    if len(cells) != 3:
      raise AssertionError(f'README.md concept table: a row without 3 cells: {line!r}')
    if cells[0] == 'concept (paper)':
      continue
    rows.append((cells[0], re.findall(r'`([^`]+)`', cells[1]), re.findall(r'`([^`]+)`', cells[2])))
  return rows


def _module_symbols(path):
  """Names a module defines at its top level: functions, classes and assigned names."""
  tree = ast.parse(_read(path), filename=path)
  names = set()
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, ast.Assign):
      for target in node.targets:
        names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
      names.add(node.target.id)
  return names


def _default_config():
  spec = importlib.util.spec_from_file_location('_fmn_default_config',
                                                os.path.join(REPO, 'configs', 'default.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _has_key(config, key):
  """Whether `key` (a.b, `a.*` = section a, `*.b` = b in some section) is in the config."""
  first, _, rest = key.partition('.')
  if first == '*':
    return any(hasattr(v, 'keys') and _has_key(v, rest) for v in config.values())
  if first not in config:
    return False
  if not rest:
    return True
  value = config[first]
  if rest == '*':
    return hasattr(value, 'keys')
  return hasattr(value, 'keys') and _has_key(value, rest)


def test_readme_is_short_and_starts_with_the_two_setup_commands():
  lines = _read(README).splitlines()
  assert len(lines) <= MAX_README_LINES, f'README.md has {len(lines)} lines (at most {MAX_README_LINES})'
  commands = [l.strip() for l in lines if l.startswith('    ')][:2]
  assert tuple(commands) == FIRST_COMMANDS


def test_concept_table_covers_the_paper():
  concepts = ' '.join(row[0] for row in _concept_rows())
  for name in ('GRN', 'MN, Eq. 1–3', 'LAN', 'Eq. 4', 'ranking loss, Eq. 5', 'descriptor D, Eq. 6',
               'Algorithm 1', 'mAP', 're-ranking'):
    assert name in concepts, name


@pytest.mark.parametrize('concept, code, keys', _concept_rows(),
                         ids=[row[0][:40] for row in _concept_rows()])
def test_concept_table_symbols_exist(concept, code, keys):
  del keys
  assert code, f'{concept}: no file:symbol'
  problems = []
  for entry in code:
    path, _, symbol = entry.partition(':')
    full = os.path.join(REPO, path)
    if not os.path.isfile(full):
      problems.append(f'{entry}: no file {path}')
    elif symbol not in _module_symbols(full):
      problems.append(f'{entry}: {path} defines no {symbol} at module level')
  assert not problems, f'{concept}: ' + '; '.join(problems)


@pytest.mark.parametrize('concept, code, keys', _concept_rows(),
                         ids=[row[0][:40] for row in _concept_rows()])
def test_concept_table_config_keys_exist(concept, code, keys):
  del code
  assert keys, f'{concept}: no config key'
  config = _default_config()
  missing = [k for k in keys if not _has_key(config, k)]
  assert not missing, f'{concept}: not in configs/default.py get_config(): {", ".join(missing)}'


def _slug(heading):
  """The anchor GitHub gives a heading."""
  text = heading.strip().lower().replace('`', '')
  text = re.sub(r'[^\w\- ]', '', text)
  return text.replace(' ', '-')


def _anchors(path):
  anchors, fenced = set(), False
  for line in _read(path).splitlines():
    if line.startswith('```'):
      fenced = not fenced
    elif not fenced and re.match(r'#{1,6} ', line):
      anchors.add(_slug(line.lstrip('#')))
  return anchors


def _links(path):
  text = re.sub(r'```.*?```', '', _read(path), flags=re.S)
  return re.findall(r'\[[^\]]*\]\(([^)\s]+)\)', text)


@pytest.mark.parametrize('path', _doc_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_relative_links_point_to_existing_files_and_headings(path):
  bad = []
  for link in _links(path):
    if re.match(r'[a-z]+:', link):
      continue
    target, _, anchor = link.partition('#')
    full = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
    if not os.path.exists(full):
      bad.append(f'{link}: no file {os.path.relpath(full, REPO)}')
    elif anchor and full.endswith('.md') and anchor not in _anchors(full):
      bad.append(f'{link}: no heading #{anchor} in {os.path.relpath(full, REPO)}')
  assert not bad, f'{os.path.relpath(path, REPO)}: ' + '; '.join(bad)


def test_every_docs_page_is_linked_from_the_readme():
  linked = {os.path.normpath(os.path.join(REPO, l.partition('#')[0])) for l in _links(README)}
  pages = sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))
  assert pages
  assert [p for p in pages if p not in linked] == []
