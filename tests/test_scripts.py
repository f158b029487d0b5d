"""The reproduction scripts in scripts/: argument checks, and the lr_mn study on the suite's run."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reproduce_market_names_a_missing_root(tmp_path):
  weights = tmp_path / 'w.npz'
  weights.write_bytes(b'')
  proc = subprocess.run(['bash', os.path.join(REPO, 'scripts', 'reproduce_market.sh'),
                         str(tmp_path / 'nowhere'), str(weights), str(tmp_path / 'work')],
                        capture_output=True, text=True)
  assert proc.returncode == 2
  assert f'{tmp_path}/nowhere/bounding_box_train not found' in proc.stderr
  usage = subprocess.run(['bash', os.path.join(REPO, 'scripts', 'reproduce_market.sh')],
                         capture_output=True, text=True)
  assert usage.returncode == 2 and 'MASKS' in usage.stdout and 'set -e' not in usage.stdout


_FAKE_MAIN = """
import json, os, sys
args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
workdir = args['workdir']
os.makedirs(os.path.join(workdir, 'checkpoints', 'grn'), exist_ok=True)
if args['config.stages'] == 'grn':
  results = {'stage_seconds': {'grn': 1.0}}
else:
  layer = args['config.model.mask_layer']
  rc = int(os.environ.get('FAKE_EXIT_' + layer, '0'))
  if rc:
    sys.exit(rc)
  results = {'config': {'seed': 0}, 'stage_seconds': {'fmn': 2.0}, 'FMN': {'rank1': 1.0}}
with open(os.path.join(workdir, 'results.json'), 'w') as f:
  json.dump(results, f)
"""


def _fake_reproduce_env(tmp_path, **env):
  """Market root, weights file and an environment whose PYTHON runs `_FAKE_MAIN` for
  `-m fmn_jax.main` (and the real interpreter for everything else)."""
  root, weights = tmp_path / 'market', tmp_path / 'w.npz'
  (root / 'bounding_box_train').mkdir(parents=True)
  weights.write_bytes(b'')
  (tmp_path / 'fake_main.py').write_text(_FAKE_MAIN)
  py = tmp_path / 'python3'
  py.write_text('#!/usr/bin/env bash\n'
                'if [ "$1 $2" = "-m fmn_jax.main" ]; then shift 2; '
                f'exec {sys.executable} {tmp_path / "fake_main.py"} "$@"; fi\n'
                f'exec {sys.executable} "$@"\n')
  py.chmod(0o755)
  env = dict(os.environ, PYTHON=str(py), RESULTS=str(tmp_path / 'results'),
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''), JAX_PLATFORMS='cpu',
             **env)
  return ['bash', os.path.join(REPO, 'scripts', 'reproduce_market.sh'), str(root),
          str(weights)], env


def test_reproduce_market_workroot_is_optional_before_overrides(tmp_path):
  cmd, env = _fake_reproduce_env(tmp_path)
  proc = subprocess.run(cmd + ['--', '--config.grn.epochs=1'], env=env, cwd=tmp_path,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert (tmp_path / 'workdir_market' / 'mask_pool1' / 'reproduce.json').exists()
  assert '--config.grn.epochs=1' in (tmp_path / 'workdir_market' / 'grn' /
                                     'reproduce.args').read_text()


def test_reproduce_market_exit_codes_of_a_layer(tmp_path):
  """Exit 4 (EXIT_STOPPED) marks a layer failed for good; any other failure stops the script so
  that the same command resumes the layer (fmn_jax.main replaced by a stand-in of its exits)."""
  from fmn_jax import main  # pylint: disable=g-import-not-at-top
  work, results = tmp_path / 'work', tmp_path / 'results'
  cmd, env = _fake_reproduce_env(tmp_path, MASKS='pool1 res2 res3',
                                 FAKE_EXIT_res2=str(main.EXIT_STOPPED), FAKE_EXIT_res3='1')
  cmd.append(str(work))
  first = subprocess.run(cmd, env=env, capture_output=True, text=True)
  assert first.returncode == 1, first.stdout + first.stderr
  assert 'mask res2 failed (exit 4); going on with the next layer' in first.stdout
  assert (work / 'mask_res2' / 'failed.txt').exists()
  assert not (work / 'mask_res3' / 'failed.txt').exists()  # a crash: resumed, not skipped
  assert json.loads((results / 'market_fmn.json').read_text())['mask_layer'] == 'pool1'
  assert not (results / 'market_mask_res3.json').exists()
  env['FAKE_EXIT_res3'] = '0'
  second = subprocess.run(cmd, env=env, capture_output=True, text=True)
  assert second.returncode == 1, second.stdout + second.stderr  # res2 still failed
  assert 'market_mask_pool1.json (finished before)' in second.stdout
  assert 'mask res2 failed before, not run again' in second.stdout
  assert json.loads((results / 'market_mask_res3.json').read_text())['mask_layer'] == 'res3'


def test_mask_lr_study_exit_code_matches_main():
  from fmn_jax import main  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      'mask_lr_study', os.path.join(REPO, 'scripts', 'mask_lr_study.py'))
  study = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(study)
  assert study.EXIT_STOPPED == main.EXIT_STOPPED


def test_mask_lr_study_on_the_suite_run(tiny_run, tmp_path):
  out = tmp_path / 'study.json'
  run = tiny_run['workdir']
  cmd = [sys.executable, os.path.join(REPO, 'scripts', 'mask_lr_study.py'),
         f'--grn_workdir={run}', f'--work={tmp_path / "work"}', '--lr_mn=1e-3', f'--out={out}',
         '--', f'--config={REPO}/configs/demo.py:ci', f'--config.dataset.root={run}/data',
         '--config.progress=false', '--config.eval.rerank=false']
  subprocess.run(cmd, env=tiny_run['env'], cwd=REPO, check=True)
  study = json.loads(out.read_text())
  (value, result), = study['runs'].items()
  assert value == '1e-3'
  first = result['epochs'][0]
  assert abs(first['lr_mn'] - 1e-3) < 1e-9 and first['epoch'] == 1
  for key in ('mask_mean', 'mask_dead', 'mask_saturated', 'mask_log_std'):
    assert all(key in e for e in result['epochs'])
  assert 0.0 <= first['mask_dead'] <= 1.0 and first['mask_mean'] >= 1.0
  assert set(result['metrics']) == {'GRN', 'LAN', 'FMN'}
  assert 0.0 <= result['metrics']['FMN']['rank1'] <= 100.0
  # Stage 2 started from the suite run's stage-1 checkpoint: the GRN rows agree.
  with open(os.path.join(run, 'results.json')) as f:
    grn = json.load(f)['GRN']
  assert abs(result['metrics']['GRN']['mAP'] - grn['mAP']) < 1e-6
  # A second call finds the finished run and only rewrites the summary.
  again = subprocess.run(cmd, env=tiny_run['env'], cwd=REPO, check=True, capture_output=True,
                         text=True)
  assert '+ ' not in again.stdout and json.loads(out.read_text()) == study
  # A run that stops by itself (here a bad value; a NaN loss ends the same way) is recorded, the
  # study goes on, and a later call does not start it again.
  failing = [c.replace('--lr_mn=1e-3', '--lr_mn=2e-3,1e-3') for c in cmd] + [
      '--config.fmn.margin=-1']
  first = subprocess.run(failing, env=tiny_run['env'], cwd=REPO, capture_output=True, text=True)
  assert first.returncode == 0, first.stderr[-3000:]
  runs = json.loads(out.read_text())['runs']
  # The run's own error record in log.jsonl gives the message.
  assert runs['2e-3'] == {'error': 'config.fmn.margin=-1.0 must be a non-negative number'}
  assert runs['1e-3'] == study['runs']['1e-3']
  assert (tmp_path / 'work' / 'lr_mn_2e-3' / 'failed.txt').exists()
  second = subprocess.run(failing, env=tiny_run['env'], cwd=REPO, capture_output=True, text=True)
  assert second.returncode == 0 and '+ ' not in second.stdout


def test_mask_lr_study_needs_a_stage1_run(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'mask_lr_study.py'),
                         f'--grn_workdir={tmp_path}', f'--work={tmp_path}/w', f'--out={tmp_path}/o'],
                        capture_output=True, text=True)
  assert proc.returncode == 2 and 'checkpoints/grn not found' in proc.stderr


def test_mask_lr_study_names_a_bad_rate(tmp_path):
  (tmp_path / 'checkpoints' / 'grn').mkdir(parents=True)
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'mask_lr_study.py'),
                         f'--grn_workdir={tmp_path}', f'--work={tmp_path}/w', '--lr_mn=1e-4,1e-4x',
                         f'--out={tmp_path}/o'], capture_output=True, text=True)
  assert proc.returncode == 2 and "--lr_mn: '1e-4x' is neither" in proc.stderr
  assert not (tmp_path / 'w').exists()


def test_market_subset_picks_by_sorted_name(tmp_path):
  sys.path.insert(0, os.path.join(REPO, 'scripts'))
  try:
    import market_subset  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  root = tmp_path / 'market'
  names = {'bounding_box_train': ['0002_c1s1_000001_01.jpg', '0002_c2s1_000002_01.jpg',
                                  '0007_c1s1_000003_01.jpg', '0010_c1s1_000004_01.jpg'],
           'query': ['0001_c1s1_000005_00.jpg', '0003_c2s1_000006_00.jpg',
                     '0005_c1s1_000007_00.jpg'],
           'bounding_box_test': ['-1_c1s1_000008_01.jpg', '-1_c1s1_000009_01.jpg',
                                 '0000_c1s1_000010_01.jpg', '0000_c1s1_000011_01.jpg',
                                 '0001_c3s1_000012_01.jpg', '0003_c1s1_000013_01.jpg',
                                 '0005_c1s1_000014_01.jpg']}
  for split, files in names.items():
    (root / split).mkdir(parents=True)
    for n in files:
      (root / split / n).write_bytes(n.encode())
  (root / 'query' / 'Thumbs.db').write_bytes(b'')
  counts = market_subset.make_subset(str(root), str(tmp_path / 'out'), train_ids=2, test_ids=2,
                                     distractors=1, junk=1)
  assert counts == {'bounding_box_train': 3, 'query': 2, 'bounding_box_test': 4}
  listing = {s: sorted(os.listdir(tmp_path / 'out' / s)) for s in names}
  assert listing['bounding_box_train'] == names['bounding_box_train'][:3]
  assert listing['query'] == names['query'][:2]
  assert listing['bounding_box_test'] == sorted(['-1_c1s1_000008_01.jpg', '0000_c1s1_000010_01.jpg',
                                                 '0001_c3s1_000012_01.jpg', '0003_c1s1_000013_01.jpg'])
  assert (tmp_path / 'out' / 'query' / '0001_c1s1_000005_00.jpg').read_bytes() == b'0001_c1s1_000005_00.jpg'
  with pytest.raises(SystemExit, match='not found'):
    market_subset.make_subset(str(tmp_path / 'nowhere'), str(tmp_path / 'o2'))


# The synthetic run's data as Market-1501, and a network small enough for the suite.
_TINY_MARKET = (
    '--config.model.pretrained= --config.model.width=8 --config.model.stage_sizes=1,1,1,1 '
    '--config.input.image_size=64,32 --config.dataset.cache_size=64,32 --config.input.pad=4 '
    '--config.model.dtype=float32 --config.grn.epochs=1 --config.fmn.epochs=1 '
    '--config.grn.decay_epochs=(1,) --config.fmn.decay_epochs=(1,) --config.grn.batch_size=16 '
    '--config.fmn.batch_size=16 --config.eval.batch_size=64')


def _write_wheel(folder, name):
  """A minimal pure-Python wheel NAME-0.1 holding the empty module NAME."""
  import zipfile  # pylint: disable=g-import-not-at-top
  info = f'{name}-0.1.dist-info'
  files = {f'{name}/__init__.py': '',
           f'{info}/METADATA': f'Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n',
           f'{info}/WHEEL': 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n'
                            'Tag: py3-none-any\n'}
  files[f'{info}/RECORD'] = ''.join(f'{f},,\n' for f in [*files, f'{info}/RECORD'])
  with zipfile.ZipFile(folder / f'{name}-0.1-py3-none-any.whl', 'w') as whl:
    for path, text in files.items():
      whl.writestr(path, text)


def test_gpu_calls_steps_on_a_synthetic_market(tiny_run, tmp_path):
  """scripts/gpu_calls.sh as the GPU machine runs it: setup, train, train again, a cut step."""
  import tarfile  # pylint: disable=g-import-not-at-top
  devdata = tmp_path / 'devdata'
  (devdata / 'wheels' / 'deps').mkdir(parents=True)
  # A dependency the "image" lacks is installed; one it has (pytest) is left alone.
  for name in ('fmnjaxprobe', 'pytest'):
    _write_wheel(devdata / 'wheels' / 'deps', name)
  data = os.path.join(tiny_run['workdir'], 'data')
  with tarfile.open(devdata / 'market_trainquery.tgz', 'w:gz') as tar:
    for split in ('bounding_box_train', 'query'):
      tar.add(os.path.join(data, split), arcname=f'market/{split}')
  with tarfile.open(devdata / 'market_gallery.tgz', 'w:gz') as tar:
    tar.add(os.path.join(data, 'bounding_box_test'), arcname='market/bounding_box_test')
  # Never read: the runs override model.pretrained with '' (random initialisation).
  (devdata / 'resnet50_imagenet_f16.npz').write_bytes(b'unused')
  env = dict(tiny_run['env'], DEVDATA=str(devdata), DATA=str(tmp_path / 'data'),
             SITE=str(tmp_path / 'site'), WORK=str(tmp_path / 'work'), PYTHON=sys.executable,
             CACHE_SIZE='64,32', EXTRA=_TINY_MARKET,
             BENCH_ARGS='--what=eval --parts=distances,evaluation --num_query=20 '
                        '--num_gallery=60 --dim=16 --repeats=1')
  script = os.path.join(REPO, 'scripts', 'gpu_calls.sh')

  def call(step, out, **extra):
    return subprocess.run(['bash', script] + ([step] if step else []),
                          env=dict(env, OUT=str(tmp_path / out), **extra), capture_output=True,
                          text=True, cwd=tmp_path)

  usage = call('', 'o0')
  assert usage.returncode == 2 and 'lr_study' in usage.stdout and 'set -uo' not in usage.stdout
  early = call('train', 'o1')
  assert early.returncode == 2 and f'no Market-1501 under {tmp_path}/data' in early.stdout

  setup = call('setup', 'o2')
  assert setup.returncode == 0, setup.stdout[-3000:]
  assert 'STATUS: done' in setup.stdout
  assert 'fmnjaxprobe is not in the image: installing' in setup.stdout
  assert (tmp_path / 'site' / 'fmnjaxprobe' / '__init__.py').exists()
  assert 'pytest is not' not in setup.stdout and not (tmp_path / 'site' / 'pytest').exists()
  out = tmp_path / 'o2'
  assert {'setup.log', 'smoke.log', 'env.json', 'data_times.txt'} <= set(os.listdir(out))
  assert not any(n.startswith('benchmark_') for n in os.listdir(out))  # left to the bench step
  versions = json.loads((out / 'env.json').read_text())
  assert versions['device_count'] >= 1 and versions['pinned_wheels'] is False
  assert versions['flax'] != 'missing' and versions['orbax-checkpoint'] != 'missing'
  assert 'cold:' in (out / 'data_times.txt').read_text()
  bench_call = call('bench', 'o2b')
  assert bench_call.returncode == 0, bench_call.stdout[-3000:]
  bench = json.loads((tmp_path / 'o2b' / 'benchmark_cpu.json').read_text())
  assert 'distances' in json.dumps(bench)

  train = call('train', 'o3')
  assert train.returncode == 0, train.stdout[-3000:]
  out = tmp_path / 'o3'
  result = json.loads((out / 'market_fmn.json').read_text())
  assert {'GRN', 'LAN', 'FMN', 'FMN+rerank'} <= set(result)
  assert result['mask_layer'] == 'pool1' and result['seed'] == 0 and result['device']
  assert result['jax_version'] and set(result['stage_seconds']) == {'grn', 'fmn', 'eval'}
  assert json.loads((out / 'market_mask_pool1.json').read_text()) == result
  assert (out / 'grn_log.jsonl').exists() and (out / 'mask_pool1_log.jsonl').exists()

  # The same step again (a fresh output folder, as each device call has): nothing is trained or
  # evaluated again, and the result files come back as they were.
  again = call('train', 'o4')
  assert again.returncode == 0 and '(finished before)' in again.stdout, again.stdout[-3000:]
  assert 'stage 1 finished before' in again.stdout
  assert json.loads((tmp_path / 'o4' / 'market_fmn.json').read_text()) == result

  # A step without the time to run says so and asks to be called again.
  cut = call('ablation', 'o5', DEADLINE='5')
  assert cut.returncode == 3 and 'STATUS: again' in cut.stdout, cut.stdout[-3000:]


def test_gpu_image_versions_script_names_a_missing_python(tmp_path):
  env = dict(os.environ, PYTHON312=str(tmp_path / 'no_python3.12'))
  proc = subprocess.run(['bash', os.path.join(REPO, 'scripts', 'test_gpu_image_versions.sh'),
                         str(tmp_path / 'venv')], env=env, capture_output=True, text=True)
  assert proc.returncode == 2
  assert 'no Python 3.12 found; set PYTHON312' in proc.stderr
  assert not (tmp_path / 'venv').exists()


def test_pack_for_gpu_wheels_needs_a_destination():
  proc = subprocess.run(['bash', os.path.join(REPO, 'scripts', 'pack_for_gpu.sh'), '--wheels'],
                        capture_output=True, text=True)
  assert proc.returncode != 0 and 'usage: pack_for_gpu.sh --wheels DEST' in proc.stderr
