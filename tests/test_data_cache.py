"""Decoded-image cache: values, reuse, invalidation, atomic writes, errors."""

import os
import re
import time

import numpy as np
import pytest
from PIL import Image
from PIL import ImageFile

from fmn_jax.data import cache
from fmn_jax.data import datasets
from fmn_jax.data import decode_split
from fmn_jax.data import load_dataset


def _market(root, n=6, size=(16, 8), fmt='png'):
  """Market-layout folder with random images (PNG: lossless, so values can be compared)."""
  rng = np.random.default_rng(1)
  arrays = {}
  for folder, pids in (('bounding_box_train', [1, 1, 2, 2, 3, 3][:n]), ('query', [4, 5]),
                       ('bounding_box_test', [4, 5, 5, -1])):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    for i, pid in enumerate(pids):
      arr = rng.integers(0, 256, size + (3,), dtype=np.uint8)
      name = (f'{pid:04d}' if pid >= 0 else '-1') + f'_c{1 + i % 2}s1_{i:06d}_00.{fmt}'
      path = os.path.join(root, folder, name)
      Image.fromarray(arr).save(path)
      arrays[path] = arr
  return str(root), arrays


def test_decode_values_and_reuse(tmp_path, monkeypatch):
  root, arrays = _market(tmp_path / 'data')
  ds = load_dataset('market1501', root)
  cdir = str(tmp_path / 'cache')
  out = decode_split(ds.train, (16, 8), cdir, progress=False)
  assert isinstance(out, np.memmap) and out.dtype == np.uint8 and out.shape == (6, 16, 8, 3)
  assert not out.flags.writeable
  for i, p in enumerate(ds.train.paths):
    np.testing.assert_array_equal(out[i], arrays[p])
  files = os.listdir(cdir)
  assert len(files) == 1 and files[0].endswith('.npy') and 'tmp' not in files[0]

  # Second run: served from the cache, nothing decoded.
  def fail(*a, **k):
    raise AssertionError('decoded again')
  monkeypatch.setattr(cache, 'decode_image', fail)
  again = decode_split(ds.train, (16, 8), cdir, progress=False)
  np.testing.assert_array_equal(again, out)
  # The cache file is a plain .npy (no pickle).
  np.testing.assert_array_equal(np.load(os.path.join(cdir, files[0]), allow_pickle=False), out)


def test_resize_and_key_changes(tmp_path):
  root, arrays = _market(tmp_path / 'data')
  ds = load_dataset('market1501', root)
  cdir = str(tmp_path / 'cache')
  small = decode_split(ds.query, (8, 4), cdir, progress=False)
  assert small.shape == (2, 8, 4, 3)
  ref = np.asarray(Image.fromarray(arrays[ds.query.paths[0]]).resize((4, 8), cache.RESAMPLE))
  np.testing.assert_array_equal(small[0], ref)
  p1 = cache.cache_path(ds.query, (8, 4), cdir)
  assert cache.cache_path(ds.query, (16, 8), cdir) != p1
  # A changed file (new content and size) gives a new key and fresh values.
  new = np.full((16, 8, 3), 7, np.uint8)
  Image.fromarray(new).save(ds.query.paths[0], compress_level=0)
  os.utime(ds.query.paths[0], (time.time() + 5, time.time() + 5))
  assert cache.cache_path(ds.query, (8, 4), cdir) != p1
  fresh = decode_split(ds.query, (16, 8), cdir, progress=False)
  np.testing.assert_array_equal(fresh[0], new)


def test_default_cache_dir_in_dataset_root(tmp_path):
  root, _ = _market(tmp_path / 'data')
  ds = load_dataset('market1501', root)
  out = decode_split(ds.gallery, (16, 8), progress=False)
  path = cache.cache_path(ds.gallery, (16, 8))
  assert os.path.dirname(path) == os.path.join(root, '.fmn_jax_cache')
  assert os.path.basename(path).startswith('bounding_box_test_4x16x8_')
  assert os.path.isfile(path) and out.shape == (4, 16, 8, 3)
  # The cache folder does not disturb the reader.
  assert len(load_dataset('market1501', root).gallery) == 4


def test_truncated_image_fails_cleanly_and_leaves_no_cache(tmp_path):
  root, _ = _market(tmp_path / 'data', fmt='jpg', size=(64, 32))
  ds = load_dataset('market1501', root)
  victim = ds.train.paths[3]
  data = open(victim, 'rb').read()
  with open(victim, 'wb') as f:
    f.write(data[:len(data) // 2])
  cdir = str(tmp_path / 'cache')
  with pytest.raises(datasets.UnreadableImageError, match=re.escape(victim)):
    decode_split(ds.train, (64, 32), cdir, progress=False)
  assert os.listdir(cdir) == []  # No partial or temporary file left behind.
  # Also when another library made PIL accept truncated files.
  old = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = True
  try:
    with pytest.raises(datasets.UnreadableImageError, match=re.escape(victim)):
      cache.decode_image(victim, (64, 32))
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = old


def test_corrupt_jpeg_body_raises_with_path(tmp_path):
  path = str(tmp_path / 'x.jpg')
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(path)
  data = bytearray(open(path, 'rb').read())
  data[2:40] = b'\x00' * 38  # Destroy the headers; start and end markers stay.
  open(path, 'wb').write(bytes(data))
  with pytest.raises(datasets.UnreadableImageError, match=re.escape(path)):
    cache.decode_image(path, (64, 32))


def test_stale_or_foreign_cache_file_is_rebuilt(tmp_path):
  root, arrays = _market(tmp_path / 'data')
  ds = load_dataset('market1501', root)
  cdir = str(tmp_path / 'cache')
  path = cache.cache_path(ds.train, (16, 8), cdir)
  os.makedirs(cdir)
  np.save(path, np.zeros((2, 2), np.float32))  # Wrong shape/dtype under the right name.
  out = decode_split(ds.train, (16, 8), cdir, progress=False)
  np.testing.assert_array_equal(out[0], arrays[ds.train.paths[0]])


def test_bad_sizes_and_empty_split(tmp_path):
  root, _ = _market(tmp_path / 'data')
  ds = load_dataset('market1501', root)
  with pytest.raises(ValueError, match='size'):
    decode_split(ds.train, (0, 8), str(tmp_path), progress=False)
  with pytest.raises(ValueError, match='size'):
    decode_split(ds.train, 'big', str(tmp_path), progress=False)
  empty = datasets.Split(paths=(), pids=np.zeros(0, np.int64), camids=np.zeros(0, np.int64),
                         junk=np.zeros(0, bool), labels=None)
  with pytest.raises(ValueError, match='empty split'):
    decode_split(empty, (16, 8), str(tmp_path), progress=False)


def test_load_decoded_folder_form(tmp_path):
  from fmn_jax.data import load_decoded
  root, arrays = _market(tmp_path / 'data')
  ds, arr = load_decoded('market1501', root, (16, 8), cache_dir=str(tmp_path / 'c'),
                         progress=False)
  assert {k: v.shape[0] for k, v in arr.items()} == {'train': 6, 'query': 2, 'gallery': 4}
  np.testing.assert_array_equal(arr['gallery'][3], arrays[ds.gallery.paths[3]])
  with pytest.raises(ValueError, match='root'):
    load_decoded('market1501', None, (16, 8))


def test_progress_bar_names_the_split(tmp_path, capsys):
  pytest.importorskip('tqdm')
  root, _ = _market(tmp_path / 'data')
  ds = load_dataset('market1501', root)
  assert (ds.train.name, ds.query.name, ds.gallery.name) == ('train', 'query', 'gallery')
  for split in (ds.train, ds.query, ds.gallery):
    decode_split(split, (16, 8), str(tmp_path / 'cache'), progress=True)
    err = capsys.readouterr().err
    assert f'{split.name}:' in err and 'bounding:' not in err, err
  # A split made elsewhere, without a name: its whole folder name.
  unnamed = datasets.Split(paths=ds.gallery.paths, pids=ds.gallery.pids,
                           camids=ds.gallery.camids, junk=ds.gallery.junk)
  decode_split(unnamed, (8, 4), str(tmp_path / 'cache'), progress=True)
  assert 'bounding_box_test:' in capsys.readouterr().err
