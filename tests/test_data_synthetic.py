"""Synthetic pedestrian dataset: layout, counts, determinism, defaults, CLI."""

import hashlib
import json
import os
import re
import shutil
import time

import numpy as np
import pytest

from fmn_jax.data import cache
from fmn_jax.data import load_dataset
from fmn_jax.data import synthetic

SMALL = dict(num_train_ids=5, num_test_ids=4, num_cameras=3, images_per_camera=2,
             image_size=(64, 32))


def _digest(root):
  h = hashlib.sha256()
  for dirpath, _, files in sorted(os.walk(root)):
    for name in sorted(files):
      path = os.path.join(dirpath, name)
      h.update(os.path.relpath(path, root).encode())
      h.update(open(path, 'rb').read())
  return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
  a = synthetic.generate(str(tmp_path / 'a'), seed=3, **SMALL)
  b = synthetic.generate(str(tmp_path / 'b'), seed=3, **SMALL)
  c = synthetic.generate(str(tmp_path / 'c'), seed=4, **SMALL)
  assert a == str(tmp_path / 'a')
  assert _digest(a) == _digest(b)
  assert _digest(a) != _digest(c)


def test_layout_and_protocol(demo_market_root):
  ds = load_dataset('market1501', demo_market_root)
  names = {os.path.basename(p) for s in (ds.train, ds.query, ds.gallery) for p in s.paths}
  assert all(n.endswith('.jpg') for n in names)
  assert ds.num_classes == 12
  # Every identity is seen by at least two cameras; every query has a match in another camera.
  for pid in np.unique(ds.train.pids):
    assert np.unique(ds.train.camids[ds.train.pids == pid]).size >= 2
  for pid, cam in zip(ds.query.pids, ds.query.camids):
    other = (ds.gallery.pids == pid) & (ds.gallery.camids != cam)
    assert other.any()
  # Junk and distractors in the gallery.
  assert ds.gallery.junk.sum() >= 2 and (ds.gallery.pids == 0).sum() >= 2
  images = cache.decode_paths(ds.query.paths, (64, 32))
  assert images.std() > 20  # Not blank.
  # Different identities look different; the same identity is closer on average (learnable).
  tr = cache.decode_paths(ds.train.paths, (64, 32)).astype(np.float32)
  centre = tr[:, 8:56, 8:24].reshape(len(tr), -1, 3)
  feats = centre / (centre.mean(1, keepdims=True) + 1)
  feats = np.concatenate([feats.mean(1), feats.std(1)], 1)
  d = ((feats[:, None] - feats[None]) ** 2).sum(-1)
  same = ds.train.pids[:, None] == ds.train.pids[None]
  off_diag = ~np.eye(len(tr), dtype=bool)
  assert d[same & off_diag].mean() < d[~same].mean()


def test_defaults_size_and_speed(tmp_path):
  t = time.time()
  root = synthetic.generate(str(tmp_path / 'default'))
  elapsed = time.time() - t
  ds = load_dataset('market1501', root)
  assert ds.num_classes >= 100
  assert np.unique(ds.query.pids).size >= 100
  assert len(ds.train) >= 100 * 2 * 3
  assert set(ds.train.camids.tolist()) == set(range(1, 7))
  assert elapsed < 60, f'default dataset took {elapsed:.1f} s'


def test_cli(tmp_path, capsys):
  out = str(tmp_path / 'cli')
  assert synthetic.main([f'--out={out}', '--seed=1', '--num_train_ids=3', '--num_test_ids=3',
                         '--num_cameras=2', '--images_per_camera=1',
                         '--image_size=32,16']) == 0
  assert 'wrote' in capsys.readouterr().out
  ds = load_dataset('market1501', out)
  assert ds.num_classes == 3 and len(ds.train) >= 6
  assert len(ds.query) >= 3  # One camera per test identity is gallery-only.


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match='num_cameras'):
    synthetic.generate(str(tmp_path), num_cameras=12)
  with pytest.raises(ValueError, match='image_size'):
    synthetic.generate(str(tmp_path), image_size=(8, 4))


TINY = dict(num_train_ids=3, num_test_ids=3, num_cameras=2, images_per_camera=1,
            image_size=(32, 16))


def test_existing_folder_same_dataset_reused_other_refused(tmp_path):
  root = str(tmp_path / 'd')
  synthetic.generate(root, seed=0, **TINY)
  digest = _digest(root)
  marker = os.path.join(root, synthetic.MARKER)
  mtimes = {p: os.stat(os.path.join(root, 'query', p)).st_mtime_ns
            for p in os.listdir(os.path.join(root, 'query'))}
  # The same arguments: reused as it is (files untouched, so a decoded cache stays valid).
  assert synthetic.generate(root, seed=0, **TINY) == root
  assert _digest(root) == digest
  assert mtimes == {p: os.stat(os.path.join(root, 'query', p)).st_mtime_ns for p in mtimes}
  # Other arguments: refused, naming the folder and what differs; nothing is written. The
  # read-only check (what every host of a multi-host run calls) decides the same.
  assert synthetic.check_folder(root, seed=0, **TINY) is True
  assert synthetic.check_folder(str(tmp_path / 'new'), seed=1, **TINY) is False
  for refuse in (synthetic.generate, synthetic.check_folder):
    with pytest.raises(ValueError,
                       match=f'{re.escape(root)} holds another synthetic dataset.*seed'):
      refuse(root, seed=1, **TINY)
  with pytest.raises(ValueError, match='num_train_ids=3 \\(asked 4\\)'):
    synthetic.generate(root, seed=0, **dict(TINY, num_train_ids=4))
  assert _digest(root) == digest
  # An interrupted generation (record not marked complete) is finished with the same bytes.
  with open(marker, encoding='utf-8') as f:
    record = json.load(f)
  record['complete'] = False
  with open(marker, 'w', encoding='utf-8') as f:
    json.dump(record, f, sort_keys=True)
  shutil.rmtree(os.path.join(root, 'bounding_box_test'))
  synthetic.generate(root, seed=0, **TINY)
  assert _digest(root) == digest
  # A damaged record is named.
  with open(marker, 'w', encoding='utf-8') as f:
    f.write('{not json')
  with pytest.raises(ValueError, match=re.escape(marker)):
    synthetic.generate(root, seed=0, **TINY)


def test_foreign_folder_refused(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  synthetic.generate(str(empty), seed=0, **TINY)  # An empty folder is fine.
  foreign = tmp_path / 'notes'
  foreign.mkdir()
  (foreign / 'notes.txt').write_text('mine')
  with pytest.raises(ValueError, match=re.escape(str(foreign)) + '.*notes.txt'):
    synthetic.generate(str(foreign), seed=0, **TINY)
  assert os.listdir(foreign) == ['notes.txt']
  # A Market-layout folder written by something else is refused too.
  other = tmp_path / 'market'
  (other / 'query').mkdir(parents=True)
  with pytest.raises(ValueError, match=re.escape(str(other))):
    synthetic.generate(str(other), seed=0, **TINY)
  with pytest.raises(ValueError, match='is a file'):
    synthetic.generate(str(foreign / 'notes.txt'), seed=0, **TINY)


def test_cli_errors_are_one_line(tmp_path, capsys):
  args = ['--num_train_ids=3', '--num_test_ids=3', '--num_cameras=2', '--images_per_camera=1',
          '--image_size=32,16']
  out = str(tmp_path / 'cli')
  assert synthetic.main([f'--out={out}', '--seed=0'] + args) == 0
  assert synthetic.main([f'--out={out}', '--seed=0'] + args) == 0
  assert 'already holds this dataset' in capsys.readouterr().out
  counts = {s: len(os.listdir(os.path.join(out, s))) for s in synthetic.SPLIT_FOLDERS}
  for bad, named in (([f'--out={out}', '--seed=1'] + args, out),
                     ([f'--out={tmp_path / "x"}', '--image_size=3'], "--image_size='3'"),
                     ([f'--out={tmp_path / "x"}', '--num_cameras=12'], 'num_cameras')):
    assert synthetic.main(bad) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and named in err and err.count('\n') == 1, err
  # The refused run left the dataset as it was.
  assert counts == {s: len(os.listdir(os.path.join(out, s))) for s in synthetic.SPLIT_FOLDERS}


def test_demo_config_docstring_matches_its_network():
  import runpy  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
                      'demo.py')
  module = runpy.run_path(path)
  config = module['get_config']()
  doc = ' '.join(module['__doc__'].split())
  # Counted as ResNet-50 counts its 50: bottlenecks of 3 convolutions, the stem, the classifier.
  depth = 3 * sum(config.model.stage_sizes) + 2
  assert f'stage_sizes {tuple(config.model.stage_sizes)}: {depth} layers' in doc, doc
  assert f'width {config.model.width}' in doc, doc
  assert 'ResNet-50 (' not in doc  # The ImageNet weights are named with the overrides they need.
  assert '--config.model.stage_sizes=3,4,6,3' in doc
