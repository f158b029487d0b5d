"""TFDS builders: build on a tiny synthetic Market folder, read back without TensorFlow.

Needs the `tfds` extra (tensorflow-datasets); skipped where it is not installed.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('tensorflow_datasets')

from fmn_jax.data import loading
from fmn_jax.data import cache  # pylint: disable=g-import-not-at-top,wrong-import-position
from fmn_jax.data import load_dataset  # pylint: disable=g-import-not-at-top,wrong-import-position
from fmn_jax.data import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position
from fmn_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top,wrong-import-position

_READ_SCRIPT = r'''
import json, sys
from fmn_jax.data import load_decoded
ds, arrays = load_decoded('market1501', None, (32, 16), tfds_dir=sys.argv[1],
                          cache_dir=sys.argv[2], progress=False)
out = {s: {'n': len(getattr(ds, s)), 'pids': sorted(getattr(ds, s).pids.tolist()),
           'junk': int(getattr(ds, s).junk.sum()), 'shape': list(arrays[s].shape)}
       for s in ('train', 'query', 'gallery')}
out['num_classes'] = ds.num_classes
out['tensorflow_imported'] = 'tensorflow' in sys.modules
print(json.dumps(out))
'''


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  base = tmp_path_factory.mktemp('tfds')
  root = synthetic.generate(str(base / 'market'), seed=2, num_train_ids=4, num_test_ids=4,
                            num_cameras=2, images_per_camera=2, image_size=(32, 16))
  builder_dir = tfds_builders.build('market1501', root, str(base / 'tensorflow_datasets'))
  return root, builder_dir, base


def test_build_layout(built):
  _, builder_dir, base = built
  assert os.path.isfile(os.path.join(builder_dir, 'dataset_info.json'))
  files = os.listdir(builder_dir)
  for split in ('train', 'query', 'gallery'):
    assert any(f.startswith(f'reid_market1501-{split}.array_record') for f in files)
  assert tfds_builders.find_builder_dir(str(base / 'tensorflow_datasets'),
                                        'market1501') == builder_dir
  with pytest.raises(FileNotFoundError, match='reid_dukemtmc'):
    tfds_builders.find_builder_dir(str(base / 'tensorflow_datasets'), 'dukemtmc')


def test_read_without_tensorflow_matches_folder(built, tmp_path):
  root, builder_dir, _ = built
  env = dict(os.environ)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = repo + os.pathsep + env.get('PYTHONPATH', '')
  res = subprocess.run([sys.executable, '-c', _READ_SCRIPT, builder_dir, str(tmp_path / 'c')],
                       capture_output=True, text=True, env=env, check=False, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  out = json.loads(res.stdout.strip().splitlines()[-1])
  assert out['tensorflow_imported'] is False
  ref = load_dataset('market1501', root)
  for s in ('train', 'query', 'gallery'):
    split = getattr(ref, s)
    assert out[s]['n'] == len(split)
    assert out[s]['pids'] == sorted(split.pids.tolist())
    assert out[s]['junk'] == int(split.junk.sum())
    assert out[s]['shape'] == [len(split), 32, 16, 3]
  assert out['num_classes'] == ref.num_classes


def test_read_values_labels_and_cache(built, tmp_path):
  root, builder_dir, _ = built
  ds, arrays = tfds_builders.read_decoded(builder_dir, (32, 16), name='market1501',
                                          cache_dir=str(tmp_path), progress=False)
  ref = load_dataset('market1501', root)
  for s in ('train', 'query', 'gallery'):
    split, mine = getattr(ref, s), getattr(ds, s)
    order = np.argsort(mine.paths)
    assert [os.path.join(root, p) for p in np.array(mine.paths)[order]] == list(split.paths)
    np.testing.assert_array_equal(mine.camids[order], split.camids)
    np.testing.assert_array_equal(mine.junk[order], split.junk)
    np.testing.assert_array_equal(arrays[s][order], cache.decode_paths(split.paths, (32, 16)))
  order = np.argsort(ds.train.paths)
  np.testing.assert_array_equal(ds.train.labels[order], ref.train.labels)
  assert ds.pid_to_label == ref.pid_to_label
  # Second read comes from the cache (memory-mapped).
  _, again = tfds_builders.read_decoded(builder_dir, (32, 16), cache_dir=str(tmp_path),
                                        progress=False)
  assert isinstance(again['train'], np.memmap)
  np.testing.assert_array_equal(again['gallery'], arrays['gallery'])
  with pytest.raises(ValueError, match='not reid_dukemtmc'):
    tfds_builders.read_decoded(builder_dir, (32, 16), name='dukemtmc', cache_dir=str(tmp_path))


def test_training_reads_config_dataset_tfds_dir(built, tmp_path):
  """config.dataset.tfds_dir replaces dataset.root for the trainer's splits and images."""
  from fmn_jax import cli  # pylint: disable=g-import-not-at-top
  root, builder_dir, base = built
  config = cli.load_config_file(os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'configs', 'demo.py') + ':ci')
  config.dataset.name, config.dataset.root = 'market1501', str(tmp_path / 'not_there')
  config.dataset.tfds_dir = str(base / 'tensorflow_datasets')   # the data_dir: builder found
  config.dataset.cache_size, config.dataset.cache_dir = (32, 16), str(tmp_path / 'c')
  config.progress = False
  ds = loading.load_reid_dataset(config, str(tmp_path))
  ref = load_dataset('market1501', root)
  assert ds.root == builder_dir and ds.num_classes == ref.num_classes
  for s in ('train', 'query', 'gallery'):
    split = getattr(ds, s)
    images = loading.decode(config, split)
    order = np.argsort(split.paths)
    np.testing.assert_array_equal(np.asarray(images)[order],
                                  cache.decode_paths(getattr(ref, s).paths, (32, 16)))
  config.dataset.name = 'synthetic'
  with pytest.raises(ValueError, match="tfds_dir is set, but config.dataset.name='synthetic'"):
    loading.load_reid_dataset(config, str(tmp_path))


def test_build_cli_errors_are_one_line(tmp_path, capsys):
  for manual_dir, named in ((tmp_path / 'nowhere', str(tmp_path / 'nowhere')),
                            (tmp_path, os.path.join(str(tmp_path), 'bounding_box_train'))):
    assert tfds_builders.main(['--name=market1501', f'--manual_dir={manual_dir}',
                               f'--data_dir={tmp_path / "tfds"}']) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and named in err and err.count('\n') == 1, err
  assert not (tmp_path / 'tfds').exists()
