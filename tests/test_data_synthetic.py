"""Synthetic pedestrian dataset: layout, counts, determinism, defaults, CLI."""

import hashlib
import os
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
