"""The main command end to end (demo 'ci' variant), config errors, and re-evaluation."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from fmn_jax import cli
from fmn_jax import config as config_lib
from fmn_jax import main
from fmn_jax import reporting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, 'configs', 'demo.py')
SUMMARY_KEYS = {'rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mAP_trapezoid', 'mINP'}


def _env(tmp_path):
  env = dict(os.environ)
  env.update({'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO + os.pathsep + env.get('PYTHONPATH', ''),
              'JAX_COMPILATION_CACHE_DIR': str(tmp_path / 'jax_cache'),
              'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'})
  return env


def _run(args, tmp_path, timeout=600):
  return subprocess.run([sys.executable, *args], env=_env(tmp_path), capture_output=True,
                        text=True, cwd=REPO, timeout=timeout)


@pytest.mark.parametrize('override,names', [
    ('--config.grn.lrr=0.1', ["'config.grn.lrr'", "'lrr'", 'lr_head']),
    ('--config.modle.width=8', ["'config.modle.width'", "'modle'"]),
])
def test_config_typo_is_an_error_naming_the_key(tmp_path, override, names):
  result = _run(['-m', 'fmn_jax.main', f'--config={DEMO}', f'--workdir={tmp_path / "w"}',
                 override], tmp_path, timeout=120)
  assert result.returncode == main.EXIT_STOPPED
  for name in names:
    assert name in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert not os.path.exists(tmp_path / 'w')


@pytest.mark.parametrize('override,key,value', [
    ('--config.model.mask_layer=res9', 'config.model.mask_layer', "'res9'"),
    ('--config.dataset.name=market', 'config.dataset.name', "'market'"),
    ('--config.model.dtype=fp16', 'config.model.dtype', "'fp16'"),
    ('--config.stages=grn,evl', 'config.stages', "'grn,evl'"),
])
def test_bad_config_value_is_an_error_naming_key_and_value(tmp_path, override, key, value):
  result = _run(['-m', 'fmn_jax.main', f'--config={DEMO}', f'--workdir={tmp_path / "w"}',
                 override], tmp_path, timeout=120)
  assert result.returncode == main.EXIT_STOPPED
  assert key in result.stderr and value in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr


def test_error_record_is_written_by_process_zero_only(tmp_path, monkeypatch):
  for name in cli._RANK_VARIABLES:  # pylint: disable=protected-access
    monkeypatch.delenv(name, raising=False)
  cli.log_error(str(tmp_path), 'first')
  monkeypatch.setenv('SLURM_PROCID', '1')
  cli.log_error(str(tmp_path), 'second')   # another host of a multi-host launch: not written
  records = reporting.read_jsonl(str(tmp_path / 'log.jsonl'))
  assert [(r['kind'], r['message']) for r in records] == [('error', 'first')]
  cli.log_error(str(tmp_path / 'absent'), 'third')   # no workdir: nothing created
  assert not (tmp_path / 'absent').exists()


@pytest.mark.parametrize('spec,names,existing', [
    ('configs/demoo.py', ["no such config file 'configs/demoo.py'"], False),
    ('configs', ["'configs' is a folder, not a config file"], False),
    ('configs/demo.py:cii', ['--config=configs/demo.py:cii', "unknown variant 'cii'"], True),
])
def test_bad_config_file_or_variant_is_a_one_line_error(tmp_path, spec, names, existing):
  workdir = tmp_path / 'w'
  if existing:
    workdir.mkdir()
  result = _run(['-m', 'fmn_jax.main', f'--config={spec}', f'--workdir={workdir}'], tmp_path,
                timeout=120)
  assert result.returncode == main.EXIT_STOPPED
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-2000:]
  for name in names:
    assert name in lines[0], lines[0]
  if existing:   # the error is also recorded in the workdir's log; nothing else is written
    assert os.listdir(workdir) == ['log.jsonl']
    record = json.loads(open(workdir / 'log.jsonl').read())
    assert record['kind'] == 'error' and record['message'] in lines[0]
  else:
    assert not workdir.exists()


def test_run_of_another_config_is_refused_in_one_line(tiny_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_run['workdir'], workdir)
  config_json = (workdir / 'config.json').read_bytes()
  result = _run(['-m', 'fmn_jax.main', f'--config={DEMO}:ci', f'--workdir={workdir}',
                 '--config.model.mask_layer=res4'], tmp_path, timeout=300)
  assert result.returncode == main.EXIT_STOPPED
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'Source:' not in result.stderr, result.stderr[-3000:]
  assert f'--workdir={workdir}' in errors[0] and f'{workdir}/checkpoints/fmn' in errors[0]
  assert "config.model.mask_layer ('pool1' there, 'res4' here)" in errors[0], errors[0]
  assert (workdir / 'config.json').read_bytes() == config_json


@pytest.fixture(scope='module')
def demo_run(tiny_run, tmp_path_factory):
  """The suite's end-to-end run of the demo's CI variant (conftest `tiny_run`: synthetic data,
  stage 1, stage 2, evaluation), and a copy of it for tests that rewrite files."""
  tmp = tmp_path_factory.mktemp('demo_ci')
  copy = tmp / 'run'
  shutil.copytree(tiny_run['workdir'], copy)
  return pathlib.Path(tiny_run['workdir']), copy, tmp


def test_demo_end_to_end(demo_run):
  workdir, _, _ = demo_run
  results = json.load(open(workdir / 'results.json'))
  for method in reporting.METHODS:
    assert SUMMARY_KEYS <= set(results[method]), method
    for key in SUMMARY_KEYS:
      assert 0.0 <= results[method][key] <= 100.0
    assert results[method]['mAP_trapezoid'] <= results[method]['mAP'] + 1e-9
  assert set(results['stage_seconds']) == {'grn', 'fmn', 'eval'}
  assert results['config']['model']['width'] == 8
  assert results['num_train_ids'] == 10 and results['devices']['count'] >= 1
  # Logs and curves for both stages.
  records = reporting.read_jsonl(str(workdir / 'log.jsonl'))
  epochs = reporting.epoch_records(records)
  assert [r['epoch'] for r in epochs['grn']] == [1, 2, 3]
  assert [r['epoch'] for r in epochs['fmn']] == [1, 2, 3]
  assert os.path.getsize(workdir / 'curves.png') > 10_000
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['fmn', 'grn']


def test_evaluate_rewrites_results_and_rerun_only_evaluates(demo_run):
  _, workdir, tmp = demo_run
  before = json.load(open(workdir / 'results.json'))
  # Re-evaluation from the checkpoint, without re-ranking: FMN+rerank is kept from the earlier
  # evaluation, marked as not recomputed, and left out of the printed table.
  result = _run(['-m', 'fmn_jax.evaluate', f'--workdir={workdir}', '--norerank',
                 '--ap=trapezoid'], tmp)
  assert result.returncode == 0, result.stderr[-4000:]
  after = json.load(open(workdir / 'results.json'))
  kept = dict(after['FMN+rerank'])
  assert kept.pop('note').startswith('not recomputed: the last evaluation ran without re-ranking')
  assert kept == before['FMN+rerank']
  assert not any(l.startswith('FMN+rerank ') for l in result.stdout.splitlines())
  assert 'FMN+rerank: not recomputed' in result.stdout
  for method in ('GRN', 'LAN', 'FMN'):
    for key in SUMMARY_KEYS:
      assert after[method][key] == pytest.approx(before[method][key], abs=1e-6), (method, key)
  assert after['stage_seconds']['grn'] == before['stage_seconds']['grn']
  step = after['fmn_step']['step']
  assert step is not None and step == after['fmn_step']['total_steps'], after['fmn_step']
  header = result.stdout.splitlines()[0]
  assert 'mAP(trap)' in header and ' mAP ' not in header
  # The main command again: both stages are complete, so only the evaluation runs; it prints
  # the results table.
  n_records = len(reporting.read_jsonl(str(workdir / 'log.jsonl')))
  result = _run(['-m', 'fmn_jax.main', f'--config={DEMO}:ci', f'--workdir={workdir}',
                 '--config.progress=False'], tmp)
  assert result.returncode == 0, result.stderr[-4000:]
  new = reporting.read_jsonl(str(workdir / 'log.jsonl'))[n_records:]
  assert [r['kind'] for r in new] == ['eval'], new
  again = json.load(open(workdir / 'results.json'))
  assert again['FMN+rerank'] == pytest.approx(before['FMN+rerank'])
  assert again['stage_seconds']['fmn'] == before['stage_seconds']['fmn']
  assert 'FMN+rerank' in result.stdout and 'mAP(trap)' in result.stdout
  assert 'note' not in again['FMN+rerank']   # recomputed
  assert again['fmn_step'] == after['fmn_step']   # the evaluated checkpoint, as evaluate says
  # Stage times in stage order (results.json, read back by the rerun, has its keys sorted).
  stages_line = next(l for l in result.stdout.splitlines() if 'stages:' in l)
  assert [p.split()[0] for p in stages_line.split('stages: ')[1].split(', ')] == [
      'grn', 'fmn', 'eval']
  fmn_row = next(l for l in result.stdout.splitlines() if l.startswith('FMN '))
  assert f'{again["FMN"]["rank1"]:.2f}' in fmn_row

def test_run_log_jsonl_and_tensorboard(tmp_path):
  log = reporting.RunLog(str(tmp_path), tensorboard=True)
  log.write('epoch', 'grn', 12, epoch=1, loss=2.5, accuracy=0.25)
  log.write('epoch', 'grn', 24, epoch=2, loss=1.5, accuracy=0.5)
  log.write('epoch', 'grn', 24, epoch=2, loss=1.25, accuracy=0.625)   # resumed: repeated epoch
  log.close()
  with open(tmp_path / 'log.jsonl', 'a') as f:
    f.write('{"kind": "epo')   # a line cut by kill -9 is skipped
  records = reporting.read_jsonl(str(tmp_path / 'log.jsonl'))
  assert [r['step'] for r in records] == [12, 24, 24]
  epochs = reporting.epoch_records(records)['grn']
  assert [(r['epoch'], r['loss']) for r in epochs] == [(1, 2.5), (2, 1.25)]
  assert reporting.plot_curves(str(tmp_path / 'log.jsonl'), str(tmp_path / 'c.png'))
  if not reporting.tensorboard_available():
    assert not (tmp_path / 'tensorboard').exists()
    return
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(str(tmp_path / 'tensorboard'))
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars('grn/epoch/loss')] == [
      (12, 2.5), (24, 1.5), (24, 1.25)]


@pytest.mark.parametrize('spec', ['market.py', 'market.py:paper', 'duke.py', 'cuhk03_labeled.py',
                                  'cuhk03_detected.py', 'msmt17.py', 'folder.py', 'demo.py',
                                  'demo.py:ci'])
def test_every_config_loads_and_validates(spec):
  config = cli.load_config_file(os.path.join(REPO, 'configs', spec))
  if spec == 'folder.py':
    with pytest.raises(ValueError, match='config.dataset.root'):
      config_lib.validate_config(config)
    config.dataset.root = '/data/mine'
  config_lib.validate_config(config)
  if spec == 'market.py':
    assert (config.grn.lr, config.grn.lr_head, config.grn.decay_epochs) == (0.01, 0.1, (20,))
    assert (config.fmn.decay_epochs, config.fmn.momentum) == ((35,), 0.9)
    assert (config.fmn.lr, config.fmn.lr_head, config.fmn.lr_mn) == (0.01, 0.1, None)
    assert config.model.mn_normalize_input
  if spec == 'market.py:paper':
    assert (config.fmn.lr, config.fmn.lr_head, config.fmn.lr_mn) == (0.1, None, None)
    assert not config.model.mn_normalize_input
