"""scripts/results_tables.py: the result tables of README.md and docs/, from the files in results/."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'scripts', 'results_tables.py')

sys.path.insert(0, os.path.join(REPO, 'scripts'))
try:
  import results_tables  # pylint: disable=g-import-not-at-top
finally:
  sys.path.pop(0)


def _row(r1, ap):
  return {'rank1': r1, 'rank5': r1 + 5, 'rank10': r1 + 7, 'rank20': r1 + 9, 'mAP': ap,
          'mAP_trapezoid': ap - 1, 'mINP': ap / 2, 'num_valid': 3368}


def _results(fmn_r1=86.5, fmn_ap=68.0, stage_seconds=(200.0, 400.0, 30.0)):
  return {'GRN': _row(80.0, 59.0), 'LAN': _row(81.0, 60.0), 'FMN': _row(fmn_r1, fmn_ap),
          'FMN+rerank': _row(88.5, 81.0), 'device': 'NVIDIA H100 80GB HBM3',
          'jax_version': '0.11.2', 'seed': 0,
          'stage_seconds': dict(zip(('grn', 'fmn', 'eval'), stage_seconds))}


def _rate(ips, low, high, batch, **extra):
  return dict(images_per_second=ips, images_per_second_range=[low, high], batch_size=batch,
              **extra)


def _benchmark(stage1_ratio=0.95, stage2_ratio=0.60, pipeline=(9.5, 8.25)):
  return {
      'what': 'all', 'jax_version': '0.11.2',
      'train': {'device': 'NVIDIA H100 80GB HBM3',
                'ceiling': _rate(4400.0, 4300.0, 4450.0, 64),
                'stage1': _rate(4400.0 * stage1_ratio, 4100.0, 4200.0, 64,
                                ratio_to_ceiling=stage1_ratio),
                'stage2': _rate(4400.0 * stage2_ratio, 2600.0, 2700.0, 64,
                                ratio_to_ceiling=stage2_ratio),
                'features': _rate(12000.0, 11000.0, 12500.0, 256, flip=True)},
      'eval': {'num_query': 3368, 'num_gallery': 19732, 'dim': 4096,
               'parts': {'pipeline': {'steps': {'evaluate_features: all': {
                   'seconds': list(pipeline)}}}}},
  }


def _write(folder, name, data):
  with open(os.path.join(folder, name), 'w') as f:
    json.dump(data, f)


def _full_results(folder):
  _write(folder, 'market_fmn.json', _results())
  for i, layer in enumerate(('pool1', 'res2', 'res3', 'res4')):
    _write(folder, f'market_mask_{layer}.json', _results(fmn_r1=86.5 - i, fmn_ap=68.0 - i))
  _write(folder, 'benchmark_h100.json', _benchmark())
  epochs = [{'epoch': 1, 'mask_mean': 1.5, 'mask_dead': 0.25, 'mask_saturated': 0.0,
             'mask_log_std': 0.125}]
  with open(os.path.join(folder, 'mask_pool1_log.jsonl'), 'w') as f:
    for record in ({'kind': 'epoch', 'stage': 'grn', 'epoch': 1, 'mask_mean': 9.0},
                   dict(epochs[0], kind='epoch', stage='fmn', mask_mean=7.0),
                   dict(epochs[0], kind='epoch', stage='fmn', epoch=2, mask_mean=1.25)):
      f.write(json.dumps(record) + '\n')
    f.write('{"kind": "epo')   # a line cut by a kill is skipped
  _write(folder, 'market_lr_mn_study.json', {'runs': {
      '1e-06': {'epochs': epochs, 'metrics': _results(fmn_r1=84.0)},
      '1.0': {'error': 'exit 4: NaN loss at step 12'}}})


def test_missing_files_give_not_yet_run_rows_and_no_numbers(tmp_path):
  tables = {name: fn(str(tmp_path)) for name, fn in results_tables.TABLES.items()}
  for name in ('paper', 'masks'):
    for line in tables[name].splitlines()[2:]:
      ours = line.split('|')[3]
      assert ours.strip() == 'not yet run', (name, line)
  assert tables['speed'].count('not yet run') == 2
  assert 'not yet run' in tables['lr_study']


def test_tables_put_the_measured_numbers_beside_the_paper(tmp_path):
  _full_results(str(tmp_path))
  paper = results_tables.table_paper(str(tmp_path))
  assert ('| FMN | 85.99 / 93.74 / 97.51 / 67.12 | 86.50 (+0.51) | 91.50 | 95.50 | '
          '68.00 (+0.88) | 67.00 |') in paper
  assert '| FMN + re-ranking (Table 2) | 87.92 / – / – / 80.62 | 88.50 (+0.58) |' in paper
  assert 'NVIDIA H100 80GB HBM3, jax 0.11.2, seed 0; grn 3.3 min, fmn 6.7 min, eval 0.5 min' in paper
  masks = results_tables.table_masks(str(tmp_path))
  assert '| res4 (14×14) | 82.39 / 61.95 | 83.50 / 65.00 (+1.11 / +3.05) | 88.50 / 81.00 |' in masks
  speed = results_tables.table_speed(str(tmp_path))
  assert '| stage 1 (GRN) step, batch 64 | 4,180 (4,100–4,200): 0.95 of the ceiling | ≥ 0.90 | meets |' in speed
  assert '0.60 of the ceiling | ≥ 0.65 | misses |' in speed
  assert '8.25 s (best of 2; all: 9.50, 8.25) | ≤ 10 s | meets |' in speed
  assert '| 10.5 min | ≤ 15 min | meets |' in speed
  study = results_tables.table_lr_study(str(tmp_path))
  lines = study.splitlines()
  assert lines[2].startswith('| default (`market_fmn.json`) | 1.25 | 0.25 | 0.00 | 0.12 | '
                             '81.00 / 60.00 | 86.50 / 68.00 |')
  assert lines[3] == ('| 1e-06 | 1.50 | 0.25 | 0.00 | 0.12 | 81.00 / 60.00 | 84.00 / 68.00 | '
                      '88.50 / 81.00 |')
  assert lines[4].startswith('| 1.0 | failed: exit 4: NaN loss at step 12 |')


def test_slow_recipe_and_evaluation_are_marked_as_missing_the_target(tmp_path):
  _write(str(tmp_path), 'market_fmn.json', _results(stage_seconds=(400.0, 600.0, 20.0)))
  _write(str(tmp_path), 'benchmark_nvidia_h100.json', _benchmark(pipeline=(12.0,)))
  speed = results_tables.table_speed(str(tmp_path))
  assert '| 17.0 min | ≤ 15 min | misses |' in speed
  assert '12.00 s (best of 1; all: 12.00) | ≤ 10 s | misses |' in speed
  assert '`benchmark_nvidia_h100.json`' in speed


@pytest.mark.parametrize('name, content, message', [
    ('market_fmn.json', '{"GRN": {"rank1": 1}', 'market_fmn.json: not a readable JSON file'),
    ('market_fmn.json', '[1, 2]', 'market_fmn.json: expected a JSON object, got list'),
    ('market_mask_res2.json', '{"FMN": {"rank1": 80}}', 'market_mask_res2.json: no number at FMN.mAP'),
    ('benchmark_h100.json', '{"eval": {}}', 'benchmark_h100.json: no "train" part'),
])
def test_bad_result_files_are_named(tmp_path, capsys, name, content, message):
  (tmp_path / name).write_text(content)
  assert results_tables.main([f'--results={tmp_path}']) == 2
  assert message in capsys.readouterr().err


def test_write_replaces_only_the_marked_blocks_and_is_idempotent(tmp_path):
  (tmp_path / 'results').mkdir()
  _full_results(str(tmp_path / 'results'))
  readme = tmp_path / 'README.md'
  blocks = ''.join(f'text {n}\n<!-- tables:{n} -->\nold\n<!-- /tables:{n} -->\n'
                   for n in results_tables.TABLES)
  readme.write_text('# top\n' + blocks + 'end\n')
  args = [f'--results={tmp_path / "results"}', f'--write={readme}']
  assert results_tables.main(args) == 0
  text = readme.read_text()
  assert 'old' not in text and text.startswith('# top\ntext paper\n') and text.endswith('end\n')
  assert '86.50 (+0.51)' in text and 'meets' in text
  assert results_tables.main(args) == 0
  assert readme.read_text() == text


def test_write_refuses_a_file_without_the_named_block_and_leaves_it(tmp_path, capsys):
  readme = tmp_path / 'README.md'
  readme.write_text('<!-- tables:paper -->\n<!-- /tables:paper -->\n')
  args = [f'--results={tmp_path}', f'--write={readme}', '--tables=paper,masks']
  assert results_tables.main(args) == 2
  assert 'needs exactly one <!-- tables:masks --> followed by one <!-- /tables:masks -->' in (
      capsys.readouterr().err)
  assert readme.read_text() == '<!-- tables:paper -->\n<!-- /tables:paper -->\n'


def test_write_to_a_file_updates_the_blocks_it_holds(tmp_path):
  (tmp_path / 'results').mkdir()
  _full_results(str(tmp_path / 'results'))
  page = tmp_path / 'page.md'
  page.write_text('a `<!-- tables:NAME -->` in a sentence is no block\n'
                  '<!-- tables:masks -->\nold\n<!-- /tables:masks -->\n')
  assert results_tables.main([f'--results={tmp_path / "results"}', f'--write={page}']) == 0
  text = page.read_text()
  assert 'old' not in text and '| res4 (14×14) | 82.39 / 61.95 | 83.50 / 65.00' in text
  assert text.startswith('a `<!-- tables:NAME -->` in a sentence is no block\n')


@pytest.mark.parametrize('content, message', [
    ('<!-- tables:paper -->\nx\n', 'page.md:1: <!-- tables:paper --> has no <!-- /tables:paper -->'),
    ('x\n<!-- /tables:paper -->\n', 'page.md:2: <!-- /tables:paper --> without a'),
    ('<!-- tables:paper -->\n<!-- tables:masks -->\n', 'page.md:2: <!-- tables:masks --> inside'),
    ('<!-- tables:papers -->\n<!-- /tables:papers -->\n', 'page.md:1: <!-- tables:papers --> is no table'),
    ('<!-- tables:paper -->\n<!-- /tables:paper -->\n' * 2, 'page.md:3: a second <!-- tables:paper -->'),
    ('no blocks\n', 'page.md: holds no <!-- tables:NAME --> block'),
])
def test_write_refuses_a_bad_block_and_leaves_the_file(tmp_path, capsys, content, message):
  page = tmp_path / 'page.md'
  page.write_text(content)
  assert results_tables.main([f'--results={tmp_path}', f'--write={page}']) == 2
  err = capsys.readouterr().err
  assert message in err and err.count('\n') == 1
  assert page.read_text() == content


def _doc_tree(root, files):
  (root / 'docs').mkdir()
  for name, names in files.items():
    (root / name).write_text(''.join(f'text {n}\n<!-- tables:{n} -->\nold\n<!-- /tables:{n} -->\n'
                                     for n in names) + 'end\n')


@pytest.mark.parametrize('write', ['--write', '--write=all'])
def test_write_all_updates_each_block_in_the_file_that_holds_it(tmp_path, write):
  (tmp_path / 'results').mkdir()
  _full_results(str(tmp_path / 'results'))
  files = {'README.md': ['paper'], 'docs/speed.md': ['speed'],
           'docs/study.md': ['masks', 'lr_study'], 'docs/plain.md': []}
  _doc_tree(tmp_path, files)
  args = [f'--results={tmp_path / "results"}', f'--root={tmp_path}', write]
  assert results_tables.main(args) == 0
  texts = {name: (tmp_path / name).read_text() for name in files}
  assert all('old' not in text for text in texts.values())
  assert '86.50 (+0.51)' in texts['README.md'] and 'meets' in texts['docs/speed.md']
  assert '83.50 / 65.00' in texts['docs/study.md'] and '| 1e-06 |' in texts['docs/study.md']
  assert texts['docs/plain.md'] == 'end\n'
  assert results_tables.main(args) == 0
  assert {name: (tmp_path / name).read_text() for name in files} == texts


@pytest.mark.parametrize('files, message', [
    ({'README.md': ['paper', 'masks', 'speed', 'lr_study'], 'docs/a.md': ['speed']},
     '<!-- tables:speed -->: needs exactly one block among README.md, docs/a.md, found in 2 '
     'files (README.md, docs/a.md)'),
    ({'README.md': ['paper', 'masks'], 'docs/a.md': ['speed']},
     '<!-- tables:lr_study -->: needs exactly one block among README.md, docs/a.md, found in none'),
])
def test_write_all_refuses_a_table_twice_or_missing_and_writes_nothing(tmp_path, capsys, files,
                                                                       message):
  (tmp_path / 'results').mkdir()
  _full_results(str(tmp_path / 'results'))
  _doc_tree(tmp_path, files)
  before = {name: (tmp_path / name).read_text() for name in files}
  assert results_tables.main([f'--results={tmp_path / "results"}', f'--root={tmp_path}',
                              '--write']) == 2
  err = capsys.readouterr().err
  assert message in err and err.count('\n') == 1
  assert {name: (tmp_path / name).read_text() for name in files} == before


def test_unknown_table_and_missing_folder_are_named(tmp_path):
  proc = subprocess.run([sys.executable, SCRIPT, '--tables=paper,speeds'], capture_output=True,
                        text=True, check=False)
  assert proc.returncode == 2 and '--tables: unknown speeds' in proc.stderr
  proc = subprocess.run([sys.executable, SCRIPT, f'--results={tmp_path / "nope"}'],
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 2 and 'nope: no such folder' in proc.stderr


def test_docs_tables_match_the_committed_results():
  """Each table has one block in README.md or docs/*.md, and it is what results/ says now.

  Run `python scripts/results_tables.py --write` after changing results/.
  """
  files = results_tables.doc_files(REPO)
  assert 'README.md' in files and any(f.startswith('docs') for f in files)
  texts = {name: open(os.path.join(REPO, name), encoding='utf-8').read() for name in files}
  by_file = results_tables.locate_blocks(texts, list(results_tables.TABLES))
  assert sorted(n for names in by_file.values() for n in names) == sorted(results_tables.TABLES)
  assert {'paper', 'masks'} <= set(by_file['README.md'])
  tables = {name: fn(os.path.join(REPO, 'results')) for name, fn in results_tables.TABLES.items()}
  for path, names in by_file.items():
    text = texts[path]
    assert results_tables.replace_marked(text, {n: tables[n] for n in names}, path) == text, path
