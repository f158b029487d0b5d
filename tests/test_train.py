"""Training: frozen GRN in stage 2, optimizer, schedules, NaN stop, kill-and-resume, 1 vs 4 devices.

Every model here is a tiny ResNet (width 8, one block per stage) on 64x32 images.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fmn_jax import checkpoints
from fmn_jax import cli
from fmn_jax import config as config_lib
from fmn_jax import initialization
from fmn_jax import models
from fmn_jax import parallel
from fmn_jax import reporting
from fmn_jax import stages
from fmn_jax import train
from fmn_jax import workdir as workdir_lib
from fmn_jax.data import loading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, 'configs', 'demo.py')


def _load_demo_config(variant='ci'):
  return cli.load_config_file(f'{DEMO}:{variant}')


@pytest.fixture
def config(demo_market_root):
  c = _load_demo_config('ci')
  c.dataset.name = 'market1501'
  c.dataset.root = demo_market_root
  c.progress = False
  c.tensorboard = False
  return c


@pytest.fixture(scope='module')
def tiny():
  """(config, model, variables) of a tiny FMN with 7 classes, shared by the tests below."""
  c = _load_demo_config('ci')
  model = models.create_fmn(c.model, 7)
  return c, model, initialization.init_variables(model, c)


def _leaves_with_paths(tree):
  return [(jax.tree_util.keystr(p), np.asarray(v))
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]]


# ------------------------------------------------------------------------------------------------
# Config validation.


@pytest.mark.parametrize('key,value', [
    ('dataset.name', 'market1502'),
    ('model.mask_layer', 'res5'),
    ('model.dtype', 'float8'),
    ('stages', 'grn,eavl'),
    ('input.normalization', 'rgb'),
    ('grn.batch_size', 0),
    ('fmn.decay_epochs', (-1,)),
    ('fmn.optimizer', 'adagrad'),
    ('eval.max_rank', 10),
])
def test_validate_config_names_key_and_value(config, key, value):
  section, _, name = key.rpartition('.')
  node = config[section] if section else config
  node[name] = value
  with pytest.raises(ValueError) as e:
    config_lib.validate_config(config)
  message = str(e.value)
  assert f'config.{key}' in message and repr(value) in message, message


def test_batch_size_must_split_over_devices():
  mesh = parallel.create_mesh()
  parallel.check_batch_size(16, 'config.grn.batch_size', mesh)
  with pytest.raises(ValueError, match='config.grn.batch_size=0'):
    parallel.check_batch_size(0, 'config.grn.batch_size', mesh)


def test_parse_stages():
  assert config_lib.parse_stages('eval, grn') == ('grn', 'eval')
  with pytest.raises(ValueError, match="'grn,fnm'"):
    config_lib.parse_stages('grn,fnm')


def test_tfds_dir_needs_no_dataset_root(config):
  config.dataset.root = ''
  with pytest.raises(ValueError, match='config.dataset.root is empty.*config.dataset.tfds_dir'):
    config_lib.validate_config(config)
  config.dataset.tfds_dir = '/data/tfds'
  config_lib.validate_config(config)


def test_folder_dataset_without_root_names_no_doubled_word(config):
  config.dataset.name, config.dataset.root = 'folder', ''
  with pytest.raises(ValueError, match='give your dataset folder with'):
    config_lib.validate_config(config)


def test_synthetic_root_of_another_synthetic_dataset_is_refused(tmp_path):
  from fmn_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  c = _load_demo_config('ci')
  sizes = dict(num_train_ids=2, num_test_ids=2, num_cameras=2, images_per_camera=1,
               image_size=(16, 8))
  c.dataset.synthetic.update(sizes)
  root = str(tmp_path / 'data')
  synthetic.generate(root, seed=c.seed, **sizes)
  assert len(loading.load_reid_dataset(c, str(tmp_path)).query) > 0   # the same one: read
  c.seed += 1
  with pytest.raises(ValueError, match=f'{root}.*seed'):
    loading.load_reid_dataset(c, str(tmp_path))


# ------------------------------------------------------------------------------------------------
# The workdir: a run is checked against the checkpoints already there before it writes anything.


def _copy_run(tiny_run, dest, only_grn=False):
  """A copy of the finished tiny run (or a fresh workdir holding only its stage-1 checkpoints)
  and the run's config, reading the data of the copy."""
  src = tiny_run['workdir']
  if only_grn:
    shutil.copytree(os.path.join(src, 'checkpoints', 'grn'), os.path.join(dest, 'checkpoints',
                                                                          'grn'))
  else:
    shutil.copytree(src, dest)
  c = _load_demo_config('ci')
  c.dataset.root = os.path.join(src if only_grn else dest, 'data')
  c.progress = False
  c.tensorboard = False
  return str(dest), c


def _snapshot(workdir):
  out = {}
  for folder, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(folder, name)
      if name != 'log.jsonl' and '.fmn_jax_cache' not in path:
        with open(path, 'rb') as f:
          out[os.path.relpath(path, workdir)] = f.read()
  return out


@pytest.mark.parametrize('key,value,names', [
    ('model.mask_layer', 'res4',
     ['checkpoints/fmn (step 9)', "config.model.mask_layer ('pool1' there, 'res4' here)"]),
    ('model.width', 16, ['checkpoints/grn (step 9)', 'config.model.width (8 there, 16 here)']),
    ('grn.epochs', 1, ['checkpoints/grn holds step 9', 'config.grn.epochs=1 gives only 3']),
])
def test_run_of_another_config_is_refused_and_changes_nothing(tiny_run, tmp_path, monkeypatch,
                                                             key, value, names):
  workdir, c = _copy_run(tiny_run, tmp_path / 'run')
  section, name = key.split('.')
  c[section][name] = value
  before = _snapshot(workdir)
  monkeypatch.setattr(loading, 'decode', lambda *a: pytest.fail('decoded images'))
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(c, workdir)
  message = str(e.value)
  assert '\n' not in message and 'fresh --workdir' in message, message
  for name in names:
    assert name in message, message
  assert _snapshot(workdir) == before   # config.json, run.json, results.json, checkpoints
  last = json.loads(open(os.path.join(workdir, 'log.jsonl')).read().splitlines()[-1])
  assert (last['kind'], last['stage'], last['message']) == ('error', 'setup', message)


def test_workdir_check_allows_what_keeps_the_checkpoints(tiny_run, tmp_path):
  # Stage 1 copied into a fresh workdir, stage 2 with another mask layer
  # (scripts/reproduce_market.sh): the GRN does not depend on the mask layer.
  workdir, c = _copy_run(tiny_run, tmp_path / 'fresh', only_grn=True)
  c.model.mask_layer, c.stages = 'res4', 'fmn,eval'
  dataset = loading.load_reid_dataset(c, workdir)
  assert workdir_lib.check_workdir(c, workdir, dataset, ('fmn', 'eval')) == {
      'grn': 9, 'fmn': None}
  # Keys outside the checkpoints' arrays may change on a finished run.
  workdir, c = _copy_run(tiny_run, tmp_path / 'done')
  c.eval.rerank, c.eval.k1, c.checkpoint.every_steps, c.log_every_steps = False, 5, 1, 1
  c.grn.lr, c.model.dtype = 0.5, 'bfloat16'
  assert workdir_lib.check_workdir(c, workdir, dataset, ('eval',)) == {'grn': 9, 'fmn': 9}


def test_restore_of_another_model_is_a_one_line_error(tiny_run, monkeypatch):
  c = _load_demo_config('ci')
  c.model.mask_layer = 'res4'
  repl = parallel.replicated(parallel.create_mesh())
  abstract = workdir_lib.with_sharding(
      workdir_lib.abstract_state('fmn', models.create_fmn(c.model, 10), c, 1), repl)
  reader = checkpoints.StageCheckpoints(
      checkpoints.stage_dir(tiny_run['workdir'], 'fmn'), read_only=True)
  try:
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match=r'checkpoint step 9 in .*checkpoints/fmn was written with another '
                       r'config: .*e\.g\. params\.lan\.res'):
      reader.restore(abstract)
    # Orbax's own tree check, when the saved metadata cannot be read first: one line too.
    monkeypatch.setattr(reader, 'signature', lambda step: None)
    with pytest.raises(checkpoints.CheckpointMismatchError) as e:
      reader.restore(abstract)
  finally:
    reader.close()
  assert 'cannot be restored into the model' in str(e.value) and '\n' not in str(e.value)


def test_bad_imagenet_weights_stop_before_any_image_is_decoded(config, tmp_path, monkeypatch):
  bad = tmp_path / 'trunc.npz'
  bad.write_bytes(b'PK\x03\x04' + b'\x00' * 64)
  config.model.pretrained = str(bad)
  monkeypatch.setattr(loading, 'decode', lambda *a: pytest.fail('decoded images'))
  with pytest.raises(ValueError, match=f"config.model.pretrained='{bad}': .*trunc.npz"):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()   # refused before it started: nothing created


def test_weights_of_another_network_are_named_before_any_image_is_decoded(config, tmp_path,
                                                                        monkeypatch):
  from fmn_jax import pretrained  # pylint: disable=g-import-not-at-top
  # A readable ResNet-50 of width 4: deeper than the config's (1, 1, 1, 1) network.
  shapes = pretrained.expected_shapes(4, None)
  arrays = {k: np.ones(shape, np.float32) for k, shape in shapes.items()}
  arrays.update({'meta/family': np.array('keras'),
                 'meta/stride_layout': np.array(config.model.stride_layout),
                 'meta/normalization': np.array(config.input.normalization)})
  weights = tmp_path / 'resnet50_w4.npz'
  np.savez(weights, **arrays)
  config.model.pretrained = str(weights)
  monkeypatch.setattr(loading, 'decode', lambda *a: pytest.fail('decoded images'))
  with pytest.raises(ValueError, match=f"config.model.pretrained='{weights}' \\({weights}\\): "
                     'cannot initialise the FMN'):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_stop_errors_go_to_the_log_of_an_existing_workdir(config, tmp_path):
  config.dataset.root = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError):
    train.train_and_evaluate(config, str(tmp_path / 'new'))
  assert not (tmp_path / 'new').exists()
  (tmp_path / 'old').mkdir()
  with pytest.raises(FileNotFoundError) as e:
    train.train_and_evaluate(config, str(tmp_path / 'old'))
  assert os.listdir(tmp_path / 'old') == ['log.jsonl']   # no config.json for a refused run
  records = [json.loads(l) for l in open(tmp_path / 'old' / 'log.jsonl')]
  assert [(r['kind'], r['stage'], r['message']) for r in records] == [
      ('error', 'setup', str(e.value))]


def test_bad_gallery_image_stops_before_training(config, demo_market_root, tmp_path,
                                                 monkeypatch):
  root = tmp_path / 'data'
  shutil.copytree(demo_market_root, root, ignore=shutil.ignore_patterns('.fmn_jax_cache'))
  bad = sorted((root / 'bounding_box_test').glob('*.jpg'))[3]
  bad.write_bytes(b'\xff\xd8\xff\xe0' + b'\x17' * 300 + b'\xff\xd9')  # complete, not decodable
  config.dataset.root = str(root)
  config.stages = 'grn,eval'
  monkeypatch.setattr(train, 'run_stage', lambda *a, **k: pytest.fail('training started'))
  workdir = tmp_path / 'w'
  with pytest.raises(ValueError, match=f'cannot decode image {bad}'):
    train.train_and_evaluate(config, str(workdir))
  last = json.loads(open(workdir / 'log.jsonl').read().splitlines()[-1])
  assert (last['kind'], last['stage']) == ('error', 'data') and bad.name in last['message']


# ------------------------------------------------------------------------------------------------
# Optimizer and schedule.


def test_lr_schedule_steps_at_epoch_boundaries():
  c = ml_collections.ConfigDict(dict(decay_epochs=(2, 3), decay_factor=0.1))
  sched = stages.lr_schedule(c, steps_per_epoch=5, base_lr=0.1)
  got = [float(sched(s)) for s in (0, 9, 10, 14, 15, 100)]
  np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
  c.warmup_epochs = 1
  sched = stages.lr_schedule(c, steps_per_epoch=5, base_lr=0.1)
  got = [float(sched(s)) for s in (0, 4, 5, 9, 10, 15)]
  np.testing.assert_allclose(got, [0.01, 0.082, 0.1, 0.1, 0.01, 0.001], rtol=1e-5)


def test_param_labels(tiny):
  _, _, variables = tiny
  grn_labels = dict(_leaves_with_paths(stages.param_labels(variables['params']['grn'])))
  assert grn_labels["['fc']['kernel']"] == 'head' and grn_labels["['fc']['bias']"] == 'head'
  assert grn_labels["['stem']['conv1']['kernel']"] == 'backbone'
  stage2 = {k: v for k, v in variables['params'].items() if k != 'grn'}
  labels = dict(_leaves_with_paths(stages.param_labels(stage2)))
  assert all(v == 'head' for k, v in labels.items() if k.startswith("['mn']"))
  assert labels["['lan']['fc']['kernel']"] == 'head'
  assert labels["['lan']['res2']['block0']['conv1']['kernel']"] == 'backbone'


def test_stage2_optimizer_has_no_grn_state(tiny):
  config, model, variables = tiny
  config = config.copy_and_resolve_references()
  config.fmn.lr_head = 0.5
  tx = stages.make_optimizer(config.fmn, steps_per_epoch=3)
  state = stages.fmn_state(model, variables, tx)
  assert set(state.params) == {'mn', 'lan'} and set(state.batch_stats) == {'lan'}
  opt_paths = [p for p, _ in _leaves_with_paths(state.opt_state)]
  assert opt_paths and not any("'grn'" in p for p in opt_paths)
  # Exactly one momentum buffer per trainable parameter (plus scalar schedule counters).
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  n_opt = sum(np.size(x) for x in jax.tree_util.tree_leaves(state.opt_state) if np.ndim(x) > 0)
  assert n_opt == n_params


# ------------------------------------------------------------------------------------------------
# Stage 2 leaves the GRN alone.


def test_stage2_gradients_of_grn_are_zero(tiny):
  _, model, variables = tiny
  loss_fn = stages.fmn_loss_fn(model, margin=0.3, rank_weight=1.0)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 64, 32, 3)).astype(np.float32) * 50)
  y = jnp.asarray([0, 1, 2, 3])
  grads, _ = jax.jit(jax.grad(loss_fn, has_aux=True))(
      variables['params'], variables['batch_stats'], x, y)
  grn = _leaves_with_paths(grads['grn'])
  assert len(grn) > 10
  for path, g in grn:
    assert np.all(g == 0.0), f'GRN gradient {path} is not zero'
  # The trained parts do get gradients.
  assert any(np.any(g != 0) for _, g in _leaves_with_paths(grads['lan']))
  assert any(np.any(g != 0) for _, g in _leaves_with_paths(grads['mn']))


def test_bfloat16_compute_keeps_float32_params_and_optimizer_state(demo_market_root):
  c = _load_demo_config('ci')
  c.dataset.name, c.dataset.root = 'market1501', demo_market_root
  c.model.dtype = 'bfloat16'
  c.grn.lr_head = 0.1
  mesh = parallel.create_mesh()
  dataset = loading.load_reid_dataset(c, '/nonexistent')
  model = models.create_fmn(c.model, dataset.num_classes)
  images = loading.load_train_images(c, dataset.train, mesh)
  tx = stages.make_optimizer(c.grn, 4)
  state = parallel.replicate_tree(
      stages.grn_state(model, initialization.init_variables(model, c), tx), mesh)
  step_fn = stages.make_train_step('grn', model, c, mesh)
  key = parallel.global_array(np.asarray(jax.random.PRNGKey(0)), parallel.replicated(mesh))
  batch = images.batch(np.arange(16))
  state, _, (loss, finite) = step_fn(state, batch, key)
  assert np.isfinite(float(loss)) and bool(finite)
  for tree in (state.params, state.batch_stats, state.opt_state):
    for path, leaf in _leaves_with_paths(tree):
      if leaf.ndim:
        assert leaf.dtype == np.float32, path
  # The convolutions do run in bfloat16.
  hlo = step_fn.lower(state, batch, key).as_text()
  assert 'bf16' in hlo


# ------------------------------------------------------------------------------------------------
# NaN stop.


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(config, tmp_path):
  workdir = str(tmp_path)
  with config.unlocked():
    config.stages = 'grn'
    config.grn.epochs = 1
  train.train_and_evaluate(config, workdir)   # a good checkpoint at the end of epoch 1 (step 3)
  # The same run continued for more epochs with an absurd learning rate diverges.
  with config.unlocked():
    config.grn.epochs = 3
    config.grn.lr = 1e30
    config.checkpoint.every_steps = 1
  with pytest.raises(stages.NonFiniteLossError) as e:
    train.train_and_evaluate(config, workdir)
  message, bad_step = str(e.value), e.value.step
  assert 3 <= bad_step < 9
  assert f'at step {bad_step}' in message and 'stage grn' in message, message
  reader = checkpoints.StageCheckpoints(checkpoints.stage_dir(workdir, 'grn'), read_only=True)
  kept = reader.latest_step()
  assert 3 <= kept <= bad_step
  assert f'last good checkpoint is step {kept}' in message, message
  abstract = workdir_lib.with_sharding(
      workdir_lib.abstract_state('grn', models.create_fmn(config.model, 12), config, 1),
      parallel.replicated(parallel.create_mesh()))
  state = reader.restore(abstract)
  reader.close()
  for path, value in _leaves_with_paths(state):
    assert np.all(np.isfinite(value)), f'{path} of the kept checkpoint is not finite'
  records = [json.loads(l) for l in open(tmp_path / 'log.jsonl')]
  assert records[-1]['kind'] == 'error' and records[-1]['step'] == bad_step


# ------------------------------------------------------------------------------------------------
# Kill -9 and resume: bit-identical final state.


def _env(tmp_path, **extra):
  env = dict(os.environ)
  env.update({'JAX_PLATFORMS': 'cpu', 'JAX_COMPILATION_CACHE_DIR': str(tmp_path / 'jax_cache'),
              'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
              'PYTHONPATH': REPO + os.pathsep + env.get('PYTHONPATH', '')})
  env.update(extra)
  return env


def _final_state(workdir, stage='fmn'):
  ckpt = checkpoints.StageCheckpoints(checkpoints.stage_dir(workdir, stage), read_only=True)
  step = ckpt.latest_step()
  state = ckpt._manager.restore(step)  # pylint: disable=protected-access
  ckpt.close()
  return step, dict(_leaves_with_paths(state))


def test_kill_and_resume_is_bit_identical(tiny_run, tmp_path):
  """kill -9 in the middle of stage 2, the same command again: the same final state, bit for bit.

  The uninterrupted reference is the suite's `tiny_run` (`configs/demo.py:ci`, conftest); this
  run uses the same config (its synthetic data is generated again, byte-identical) and shares
  that run's persistent compilation cache.
  """
  env = dict(tiny_run['env'], JAX_PLATFORMS='cpu')
  killed = str(tmp_path / 'killed')
  # Saving at every step makes each step wait for the previous save: a wide window to kill in.
  cmd = [sys.executable, '-m', 'fmn_jax.main', f'--config={DEMO}:ci', f'--workdir={killed}',
         '--config.stages=grn,fmn', '--config.progress=False', '--config.checkpoint.every_steps=1']
  proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  stage_dir = checkpoints.stage_dir(killed, 'fmn')
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    done = [d for d in os.listdir(stage_dir) if d.isdigit()] if os.path.isdir(stage_dir) else []
    if any(int(d) >= 2 for d in done):
      break
    time.sleep(0.005)
  assert proc.poll() is None, 'the run ended before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  step_full, full = _final_state(tiny_run['workdir'])
  steps_at_kill = sorted(int(d) for d in os.listdir(stage_dir) if d.isdigit())
  assert steps_at_kill and max(steps_at_kill) < step_full, steps_at_kill   # killed mid-stage 2
  reader = checkpoints.StageCheckpoints(stage_dir, read_only=True)
  resume_step = reader.latest_step()
  seconds_at_kill = reader.seconds(resume_step)
  assert reader.total_steps(resume_step) == step_full
  reader.close()
  assert seconds_at_kill > 0
  # The stopped run's model is refused by the tools unless asked for.
  with pytest.raises(ValueError, match=rf'at step {resume_step} of {step_full}: stage 2 was '
                     r'stopped.*--allow_unfinished'):
    workdir_lib.restore_model(killed)
  _, unfinished, _ = workdir_lib.restore_model(killed, allow_unfinished=True)
  assert unfinished['params']['lan']['fc']['kernel'].ndim == 2

  result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resuming from step' in result.stderr

  step_resumed, resumed = _final_state(killed)
  assert step_resumed == step_full
  # Wall time per stage counts the killed run too: stage 1 ended in it (it never wrote
  # results.json), and stage 2's time includes the seconds before the checkpoint it resumed from.
  seconds = json.load(open(os.path.join(killed, 'results.json')))['stage_seconds']
  assert seconds['grn'] > 0, seconds
  assert seconds['fmn'] > seconds_at_kill, (seconds, seconds_at_kill)
  assert full.keys() == resumed.keys()
  for path in full:
    assert np.array_equal(full[path], resumed[path]), f'{path} differs after kill and resume'
  # The GRN was not changed by stage 2: bit-identical to the end of stage 1.
  _, grn_end = _final_state(tiny_run['workdir'], 'grn')
  frozen = [p for p in full if p.startswith("['frozen']")]
  assert len(frozen) == len([p for p in grn_end if p.startswith(("['params']", "['batch_stats']"))])
  for path in frozen:
    sub = path[len("['frozen']"):]
    assert np.array_equal(full[path], grn_end[sub]), f'GRN {path} changed in stage 2'


# ------------------------------------------------------------------------------------------------
# 1 device vs 4 (virtual CPU) devices.

_DEVICE_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {repo!r})
    from tests.test_train import run_steps
    one, one_losses = run_steps({root!r}, num_devices=1)
    four, four_losses = run_steps({root!r}, num_devices=4)
    host, host_losses = run_steps({root!r}, num_devices=4, on_device=False, which=('grn',))
    np.savez({out!r}, **{{'1' + k: v for k, v in one.items()}},
             **{{'4' + k: v for k, v in four.items()}}, **{{'h' + k: v for k, v in host.items()}})
    print(json.dumps({{'devices': jax.device_count(), 'one': one_losses, 'four': four_losses,
                      'host': host_losses}}))
''')


def run_steps(root: str, steps: int = 3, num_devices=None, on_device=True,
              which=('grn', 'fmn')) -> tuple:
  """A few stage-1 then stage-2 steps on the first `num_devices` devices: (flat params, losses)."""
  c = _load_demo_config('ci')
  c.dataset.name, c.dataset.root = 'market1501', root
  c.progress = False
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  mesh = jax.sharding.Mesh(np.asarray(devices), (parallel.DATA_AXIS,))
  dataset = loading.load_reid_dataset(c, '/nonexistent')
  model = models.create_fmn(c.model, dataset.num_classes)
  variables = initialization.init_variables(model, c)
  images = loading.TrainImages(loading.decode(c, dataset.train), dataset.train.labels, mesh,
                               on_device)
  key = parallel.global_array(np.asarray(jax.random.PRNGKey(0)), parallel.replicated(mesh))
  losses, results = [], {}
  for stage in which:
    sampler = stages.make_sampler(stage, c, dataset.train)
    tx = stages.make_optimizer(c[stage], sampler.steps_per_epoch)
    state = (stages.grn_state(model, variables, tx) if stage == 'grn'
             else stages.fmn_state(model, variables, tx))
    state = parallel.replicate_tree(state, mesh)
    step_fn = stages.make_train_step(stage, model, c, mesh, on_device)
    for s in range(steps):
      state, _, (loss, _) = step_fn(state, images.batch(sampler.indices(s)), key)
      losses.append(float(loss))
    # Both stages start from the same initial variables, so stage 2's comparison is not blurred
    # by stage 1's rounding differences (a width-8 network amplifies them through BatchNorm).
    results[stage] = jax.device_get(state.params)
  flat = {p: v for p, v in _leaves_with_paths(results)}
  return flat, losses


def test_one_vs_four_devices(demo_market_root, tmp_path):
  """Stage-1 and stage-2 steps over 4 virtual CPU devices match the same steps on 1 device.

  Both runs happen in one subprocess started with 4 host-platform devices (the rest of the
  suite keeps 1 device): a mesh over the first device vs a mesh over all 4.
  """
  out = str(tmp_path / 'params.npz')
  script = _DEVICE_SCRIPT.format(repo=REPO, root=demo_market_root, out=out)
  env = _env(tmp_path, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True,
                          cwd=REPO, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  info = json.loads(result.stdout.strip().splitlines()[-1])
  assert info['devices'] == 4
  arrays = np.load(out)
  one = {k[1:]: arrays[k] for k in arrays.files if k[0] == '1'}
  four = {k[1:]: arrays[k] for k in arrays.files if k[0] == '4'}
  host = {k[1:]: arrays[k] for k in arrays.files if k[0] == 'h'}
  # Batches gathered on the host (per-shard, as in multi-host runs) give the same steps.
  np.testing.assert_allclose(info['host'], info['four'][:len(info['host'])], rtol=1e-6)
  assert host and all(k.startswith("['grn']") for k in host)
  for path, value in host.items():
    np.testing.assert_allclose(value, four[path], rtol=1e-5, atol=1e-6, err_msg=path)
  # Same math; only the order of floating-point reductions (gradient all-reduce, BatchNorm
  # statistics over the global batch) differs, so agreement is to rounding, not bitwise: losses
  # to rtol 1e-5 (BatchNorm statistics per 4-example device shard instead of over the global
  # batch change the first step's loss by 1.7e-4 relative here); parameters after 3 SGD steps per tensor to 1e-3 of its L2
  # norm plus an RMS floor of 5e-5 (entries of a width-8 network differ by up to ~1e-4 where a
  # BatchNorm channel has almost no variance and magnifies rounding).
  np.testing.assert_allclose(info['one'], info['four'], rtol=1e-5)
  assert set(one) == set(four) and any(k.startswith("['fmn']['mn']") for k in one)
  for path, value in one.items():
    err = np.linalg.norm((value - four[path]).ravel())
    assert err <= 1e-3 * np.linalg.norm(value.ravel()) + 5e-5 * np.sqrt(value.size), (
        path, err, np.linalg.norm(value.ravel()))


# ------------------------------------------------------------------------------------------------
# Two processes (multi-host) on the CPU.


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _two_processes(workdir, root, delay, seed=None):
  """Runs tests/two_process_worker.py as processes 0 and 1; returns their last output lines."""
  port = _free_port()
  worker = os.path.join(REPO, 'tests', 'two_process_worker.py')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen(
      [sys.executable, worker, str(pid), str(port), str(workdir), str(root), str(delay)]
      + ([] if seed is None else [str(seed)]), env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for pid in (0, 1)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return [out.strip().splitlines()[-1] for out in outs]


def test_two_processes_train_one_run_and_refuse_alike(tmp_path):
  """Both stages data-parallel over two processes; process 1 reaches the workdir checks 5 s
  late (a checkpoint folder made meanwhile by process 0 must not desynchronise them). Then a
  synthetic folder of another seed is refused by both processes, not by process 0 alone."""
  workdir, root = tmp_path / 'w', tmp_path / 'data'
  assert _two_processes(workdir, root, delay=5) == ['OK', 'OK']
  records = reporting.read_jsonl(str(workdir / 'log.jsonl'))   # written by process 0 only
  assert [r['stage'] for r in records if r['kind'] == 'stage_end'] == ['grn', 'fmn']
  for stage in ('grn', 'fmn'):
    latest, total = workdir_lib.stage_progress(str(workdir), stage)
    assert latest == total and total > 0, (stage, latest, total)
  lines = _two_processes(tmp_path / 'w2', root, delay=0, seed=1)
  assert all(l.startswith('STOPPED: ') and 'holds another synthetic dataset' in l
             for l in lines), lines
