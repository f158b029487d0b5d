"""Dataset readers on small synthetic folders of every layout."""

import os
import re

import numpy as np
import pytest
from PIL import Image

from fmn_jax.data import datasets
from fmn_jax.data import load_dataset

MARKET_REAL = os.path.expanduser('~/data/Market-1501-v15.09.15')


def _img(path, colour=(10, 20, 30), fmt=None, size=(4, 8)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new('RGB', size, colour).save(path, format=fmt)
  return path


def _junk_files(folder):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'Thumbs.db'), 'wb') as f:
    f.write(b'\xd0\xcf\x11\xe0not an image')
  with open(os.path.join(folder, '.DS_Store'), 'wb') as f:
    f.write(b'\x00\x00\x00\x01Bud1')
  with open(os.path.join(folder, 'readme.txt'), 'w') as f:
    f.write('hello')


def _market(root, train, query, gallery, name_fn=None):
  name_fn = name_fn or (lambda pid, cam, i: f'{pid:04d}_c{cam}s1_{i:06d}_00.jpg'
                        if pid >= 0 else f'-1_c{cam}s1_{i:06d}_00.jpg')
  i = 0
  for folder, items in (('bounding_box_train', train), ('query', query),
                        ('bounding_box_test', gallery)):
    _junk_files(os.path.join(root, folder))
    for pid, cam in items:
      i += 1
      _img(os.path.join(root, folder, name_fn(pid, cam, i)))
  return str(root)


TRAIN = [(7, 1), (7, 2), (3, 1), (3, 3), (12, 2), (12, 2), (12, 4)]
QUERY = [(5, 1), (9, 2), (5, 3)]
GALLERY = [(5, 2), (5, 1), (9, 1), (0, 3), (0, 1), (-1, 2), (-1, 5)]


def _check_market_like(ds, cam_offset=0):
  assert (len(ds.train), len(ds.query), len(ds.gallery)) == (7, 3, 7)
  assert ds.num_classes == 3
  assert ds.pid_to_label == {3: 0, 7: 1, 12: 2}
  np.testing.assert_array_equal(ds.train.labels, [ds.pid_to_label[int(p)] for p in ds.train.pids])
  assert ds.train.labels.dtype == np.int32 and ds.train.pids.dtype == np.int64
  assert sorted(ds.train.pids.tolist()) == sorted(p for p, _ in TRAIN)
  assert sorted(zip(ds.query.pids.tolist(), ds.query.camids.tolist())) == sorted(QUERY)
  assert sorted(zip(ds.gallery.pids.tolist(), ds.gallery.camids.tolist())) == sorted(GALLERY)
  np.testing.assert_array_equal(ds.gallery.junk, ds.gallery.pids == -1)
  assert ds.gallery.junk.sum() == 2 and (ds.gallery.pids == 0).sum() == 2
  assert not ds.train.junk.any() and not ds.query.junk.any()
  assert ds.query.labels is None and ds.gallery.labels is None
  for split in (ds.train, ds.query, ds.gallery):
    assert list(split.paths) == sorted(split.paths)
    assert all(os.path.isfile(p) for p in split.paths)
    assert not any(os.path.basename(p) in ('Thumbs.db', '.DS_Store', 'readme.txt')
                   for p in split.paths)


def test_market_layout(tmp_path):
  root = _market(tmp_path, TRAIN, QUERY, GALLERY)
  ds = load_dataset('market1501', root)
  _check_market_like(ds)
  assert ds.name == 'market1501' and ds.notes == ()


def test_market_double_extension(tmp_path):
  # The official release has names like query/1488_c1s6_023021_00.jpg.jpg.
  root = _market(tmp_path, TRAIN, QUERY, GALLERY)
  os.rename(os.path.join(root, 'query', '0005_c1s1_000008_00.jpg'),
            os.path.join(root, 'query', '0005_c1s1_000008_00.jpg.jpg'))
  ds = load_dataset('market1501', root)
  assert len(ds.query) == 3 and any(p.endswith('.jpg.jpg') for p in ds.query.paths)


def test_market_junk_in_train_and_query_dropped_with_notes(tmp_path):
  root = _market(tmp_path, TRAIN + [(-1, 1)], QUERY + [(-1, 2), (-1, 3)], GALLERY)
  ds = load_dataset('market1501', root)
  _check_market_like(ds)
  assert any('train: dropped 1 junk' in n for n in ds.notes)
  assert any('query: dropped 2 junk' in n for n in ds.notes)


def test_dukemtmc_layout(tmp_path):
  root = _market(tmp_path, TRAIN, QUERY, GALLERY,
                 lambda pid, cam, i: f'{pid:04d}_c{cam}_f{i:07d}.jpg' if pid >= 0
                 else f'-1_c{cam}_f{i:07d}.jpg')
  _check_market_like(load_dataset('dukemtmc', root))
  with pytest.raises(ValueError, match='Market-1501.*_c1_f'):
    load_dataset('market1501', root)


@pytest.mark.parametrize('kind', ['labeled', 'detected'])
def test_cuhk03_np_folder(tmp_path, kind):
  names = lambda pid, cam, i: f'{pid:04d}_c{cam}_{i}.png' if pid >= 0 else f'-1_c{cam}_{i}.png'
  _market(tmp_path / 'cuhk03-np' / kind, TRAIN, QUERY, GALLERY, names)
  other = 'detected' if kind == 'labeled' else 'labeled'
  _market(tmp_path / 'cuhk03-np' / other, [(1, 1), (2, 2)], [(4, 1)], [(4, 2)], names)
  for root in (tmp_path, tmp_path / 'cuhk03-np'):  # The parent or cuhk03-np itself.
    ds = load_dataset(f'cuhk03_{kind}', str(root))
    _check_market_like(ds)
    assert all(f'{os.sep}{kind}{os.sep}' in p for p in ds.train.paths)
  ds_other = load_dataset(f'cuhk03_{other}', str(tmp_path))
  assert len(ds_other.train) == 2


def test_cuhk03_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match='labeled'):
    load_dataset('cuhk03_labeled', str(tmp_path))


def test_cuhk03_mat_form(tmp_path):
  h5py = pytest.importorskip('h5py')
  scipy_io = pytest.importorskip('scipy.io')
  rng = np.random.default_rng(0)
  # cuhk-03.mat (v7.3 = HDF5): labeled -> 2 camera pairs -> [pids x 10] image cells (some empty).
  with h5py.File(tmp_path / 'cuhk-03.mat', 'w') as f:
    refs = f.create_group('#refs#')
    counter = [0]

    def put(arr):
      counter[0] += 1
      return refs.create_dataset(str(counter[0]), data=arr).ref

    pair_refs = []
    for pair, num_pids in enumerate((3, 2)):
      cells = np.empty((10, num_pids), dtype=h5py.ref_dtype)  # Stored transposed.
      for pid in range(num_pids):
        for idx in range(10):
          if idx in (2, 7) or (pid == 1 and idx == 9):  # Empty cells.
            cells[idx, pid] = put(np.zeros(2, np.uint64))
          else:
            img = rng.integers(0, 255, (3, 5, 9), dtype=np.uint8)  # (C, W, H) on disk
            cells[idx, pid] = put(img)
      pair_refs.append(put(cells))
    labeled = np.empty((1, 2), dtype=h5py.ref_dtype)
    labeled[0, :] = pair_refs
    f.create_dataset('labeled', data=labeled)
  # Split file: train = pair 1 pids 1-2 (pids 11, 12), test = pair 2 (pids 21, 22).
  files, labels = [], []
  for pair, num_pids in enumerate((3, 2)):
    for pid in range(num_pids):
      for idx in range(10):
        if idx in (2, 7) or (pid == 1 and idx == 9):
          continue
        files.append(f'{pair + 1}_{pid + 1:03d}_{1 if idx < 5 else 2}_{idx + 1:02d}.png')
        labels.append(10 * (pair + 1) + pid + 1)
  labels = np.array(labels)
  idx = np.arange(1, len(files) + 1)
  train = idx[labels < 20]
  test = idx[labels >= 20]
  query = np.array([i for i in test if files[i - 1].endswith(('_01.png', '_06.png'))])
  gallery = np.array([i for i in test if i not in set(query)])
  cell = np.empty((len(files), 1), dtype=object)
  for i, n in enumerate(files):
    cell[i, 0] = n
  scipy_io.savemat(str(tmp_path / 'cuhk03_new_protocol_config_labeled.mat'), {
      'filelist': cell, 'labels': labels[:, None], 'camId': np.ones((len(files), 1)),
      'train_idx': train[:, None], 'query_idx': query[:, None], 'gallery_idx': gallery[:, None]})
  ds = load_dataset('cuhk03_labeled', str(tmp_path))
  assert (len(ds.train), len(ds.query), len(ds.gallery)) == (len(train), 4, len(test) - 4)
  assert ds.num_classes == 3 and ds.pid_to_label == {11: 0, 12: 1, 13: 2}
  assert set(ds.query.pids.tolist()) == {21, 22} and set(ds.query.camids.tolist()) == {1, 2}
  im = Image.open(ds.train.paths[0])
  assert im.size == (5, 9)  # W x H after the MATLAB transpose.
  assert any('extracted' in n for n in ds.notes)
  with pytest.raises(FileNotFoundError, match='cuhk03_new_protocol_config_detected.mat'):
    load_dataset('cuhk03_detected', str(tmp_path))


def _msmt(root, with_val=True):
  root = str(root)
  lists = {'train': [], 'val': [], 'query': [], 'gallery': []}
  specs = {'train': ('train', [(0, 1), (0, 3), (1, 2), (1, 15)]),
           'val': ('train', [(2, 4), (0, 5)]),
           'query': ('test', [(0, 1), (1, 14)]),
           'gallery': ('test', [(0, 7), (1, 2), (1, 9)])}
  for split, (folder, items) in specs.items():
    for j, (pid, cam) in enumerate(items):
      rel = f'{pid:04d}/{pid:04d}_{j:03d}_{cam:02d}_0303morning_{j:04d}_0.jpg'
      _img(os.path.join(root, folder, rel))
      lists[split].append(f'{rel} {pid}')
    if split != 'val' or with_val:
      with open(os.path.join(root, f'list_{split}.txt'), 'w') as f:
        f.write('\n'.join(lists[split]) + '\n')
  _junk_files(os.path.join(root, 'train'))
  return root


def test_msmt17_lists(tmp_path):
  root = _msmt(tmp_path / 'MSMT17_V1')
  for r in (root, str(tmp_path)):  # The release folder or its parent.
    ds = load_dataset('msmt17', r)
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (6, 2, 3)
    assert ds.num_classes == 3 and ds.pid_to_label == {0: 0, 1: 1, 2: 2}
    assert sorted(ds.train.camids.tolist()) == [1, 2, 3, 4, 5, 15]
    assert sorted(ds.query.camids.tolist()) == [1, 14]
    assert any('list_val' in n for n in ds.notes)
  assert datasets.msmt17_camid('0000_000_01_0303morning_0015_0.jpg') == 1


def test_msmt17_errors(tmp_path):
  root = _msmt(tmp_path)
  with open(os.path.join(root, 'list_query.txt'), 'a') as f:
    f.write('badline\n')
  with pytest.raises(ValueError, match='list_query.txt:3'):
    load_dataset('msmt17', root)
  with open(os.path.join(root, 'list_query.txt')) as f:
    lines = f.read().replace('badline\n', '')
  with open(os.path.join(root, 'list_query.txt'), 'w') as f:
    f.write(lines)
  os.remove(os.path.join(root, 'list_gallery.txt'))
  with pytest.raises(FileNotFoundError, match='list_gallery.txt'):
    load_dataset('msmt17', root)
  root2 = _msmt(tmp_path / 'b')
  with open(os.path.join(root2, 'list_train.txt'), 'a') as f:
    f.write('0009/0009_000_03_0303morning_0001_0.jpg 9\n')  # Listed but missing.
  with pytest.raises(ValueError, match='0009_000_03_0303morning_0001_0.jpg'):
    load_dataset('msmt17', root2)
  ds = load_dataset('msmt17', root2, skip_unreadable=True)
  assert len(ds.train) == 6 and any('skipped 1 unreadable' in n for n in ds.notes)


def test_folder_pid_subfolders_without_cameras(tmp_path):
  for split, pids in (('train', [4, 4, 8]), ('query', [1, 2]), ('gallery', [1, 2, 2, 3])):
    for j, pid in enumerate(pids):
      _img(str(tmp_path / split / str(pid) / 'sub' / f'img{j}.png'), fmt='PNG')
    _junk_files(str(tmp_path / split))
  ds = load_dataset('folder', str(tmp_path))
  assert (len(ds.train), len(ds.query), len(ds.gallery)) == (3, 2, 4)
  assert ds.pid_to_label == {4: 0, 8: 1}
  assert (ds.query.camids == 0).all() and (ds.gallery.camids == 1).all()
  assert any('camera ids missing' in n and 'camera 0' in n and 'camera 1' in n
             for n in ds.notes)
  assert sorted(ds.gallery.pids.tolist()) == [1, 2, 2, 3]


def test_folder_market_names_with_cameras(tmp_path):
  for split, items in (('train', TRAIN), ('query', QUERY), ('gallery', GALLERY)):
    for j, (pid, cam) in enumerate(items):
      name = f'{pid:04d}_c{cam}s1_{j:06d}_00.jpg' if pid >= 0 else f'-1_c{cam}s1_{j:06d}_01.jpg'
      _img(str(tmp_path / split / name))
  ds = load_dataset('folder', str(tmp_path))
  _check_market_like(ds)
  assert not any('camera ids missing' in n for n in ds.notes)


def test_folder_named_identities(tmp_path):
  for split, names in (('train', ['bob', 'alice']), ('query', ['carol']),
                       ('gallery', ['carol', 'dave'])):
    for n in names:
      _img(str(tmp_path / split / n / 'a.jpg'))
  ds = load_dataset('folder', str(tmp_path))
  assert ds.pid_to_label == {1: 0, 2: 1}  # alice=1, bob=2, carol=3, dave=4
  assert ds.query.pids.tolist() == [3] and sorted(ds.gallery.pids.tolist()) == [3, 4]
  assert any('numbered' in n for n in ds.notes)
  # Market-style junk (-1) and distractor (0) images beside named identities keep their meaning.
  _img(str(tmp_path / 'gallery' / '-1_c2s1_000001_00.jpg'))
  _img(str(tmp_path / 'gallery' / '0000_c2s1_000002_00.jpg'))
  ds = load_dataset('folder', str(tmp_path))
  assert ds.query.pids.tolist() == [3]
  assert sorted(ds.gallery.pids.tolist()) == [-1, 0, 3, 4]
  assert ds.gallery.junk.tolist() == [p == -1 for p in ds.gallery.pids.tolist()]
  assert any('(-1 junk and 0 distractors kept)' in n for n in ds.notes)


def test_folder_errors(tmp_path):
  _img(str(tmp_path / 'train' / '1' / 'a.jpg'))
  _img(str(tmp_path / 'query' / '1' / 'a.jpg'))
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / 'gallery'))):
    load_dataset('folder', str(tmp_path))
  _img(str(tmp_path / 'gallery' / 'not_market_name.jpg'))
  with pytest.raises(ValueError, match='not_market_name.jpg'):
    load_dataset('folder', str(tmp_path))
  os.remove(tmp_path / 'gallery' / 'not_market_name.jpg')
  _img(str(tmp_path / 'gallery' / '2' / '0003_c1s1_000001_00.jpg'))
  with pytest.raises(ValueError, match='differs from its folder'):
    load_dataset('folder', str(tmp_path))


def test_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / 'nowhere'))):
    load_dataset('market1501', str(tmp_path / 'nowhere'))
  root = _market(tmp_path / 'm', TRAIN, QUERY, GALLERY)
  with pytest.raises(ValueError, match='unknown dataset name'):
    load_dataset('market', root)
  # Missing split folder.
  os.rename(os.path.join(root, 'query'), os.path.join(root, 'query_'))
  with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(root, 'query'))):
    load_dataset('market1501', root)
  # Empty split (only non-images inside).
  os.makedirs(os.path.join(root, 'query'))
  _junk_files(os.path.join(root, 'query'))
  with pytest.raises(ValueError, match='empty query split.*' + re.escape(os.path.join(root, 'query'))):
    load_dataset('market1501', root)
  # A name that does not parse.
  root = _market(tmp_path / 'n', TRAIN, QUERY, GALLERY)
  bad = _img(os.path.join(root, 'bounding_box_test', '0001_x.jpg'))
  with pytest.raises(ValueError, match=re.escape(bad)):
    load_dataset('market1501', root)
  with pytest.raises(ValueError, match=re.escape(bad)):  # Not skippable: names are not images problems.
    load_dataset('market1501', root, skip_unreadable=True)


def test_unreadable_and_truncated_images(tmp_path):
  root = _market(tmp_path, TRAIN, QUERY, GALLERY)
  gal = os.path.join(root, 'bounding_box_test')
  # A really truncated JPEG: a real image cut in half.
  full = os.path.join(str(tmp_path), 'full.jpg')
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (128, 64, 3), dtype=np.uint8)).save(full, quality=95)
  data = open(full, 'rb').read()
  trunc = os.path.join(gal, '0005_c4s1_000100_00.jpg')
  with open(trunc, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(datasets.UnreadableImageError, match=re.escape(trunc)):
    load_dataset('market1501', root)
  # Not an image at all, and an empty file.
  fake = os.path.join(gal, '0005_c5s1_000101_00.jpg')
  with open(fake, 'w') as f:
    f.write('<html>not found</html>')
  empty = os.path.join(gal, '0005_c6s1_000102_00.jpg')
  open(empty, 'wb').close()
  trunc_png = os.path.join(root, 'query', '0009_c4s1_000103_00.png')
  _img(trunc_png, fmt='PNG', size=(16, 32))
  png = open(trunc_png, 'rb').read()
  with open(trunc_png, 'wb') as f:
    f.write(png[:-20])
  with pytest.raises(ValueError, match='truncated PNG.*0009_c4s1_000103_00.png'):
    load_dataset('market1501', root)
  ds = load_dataset('market1501', root, skip_unreadable=True)
  _check_market_like(ds)
  assert any('gallery: skipped 3 unreadable' in n for n in ds.notes)
  assert any('query: skipped 1 unreadable' in n for n in ds.notes)
  # Complete but corrupt (its frame width zeroed): passes the quick check, so only skipping,
  # which decodes every image, drops it, before its identity gets a training label.
  corrupt = os.path.join(root, 'bounding_box_train', '0777_c1s1_000009_00.jpg')
  sof = data.index(b'\xff\xc0')
  with open(corrupt, 'wb') as f:
    f.write(data[:sof + 7] + b'\x00\x00' + data[sof + 9:])
  datasets.check_image_file(corrupt)
  ds = load_dataset('market1501', root, skip_unreadable=True)
  _check_market_like(ds)
  assert any('train: skipped 1 unreadable' in n and '0777_c1s1' in n for n in ds.notes)
  assert 777 not in ds.pid_to_label


def test_one_unreadable_image_error_for_readers_cache_and_tools(tmp_path):
  from fmn_jax import data  # pylint: disable=g-import-not-at-top
  from fmn_jax import images  # pylint: disable=g-import-not-at-top
  from fmn_jax.data import cache  # pylint: disable=g-import-not-at-top
  assert datasets.UnreadableImageError is images.UnreadableImageError
  assert data.UnreadableImageError is images.UnreadableImageError
  root = _market(tmp_path, TRAIN, QUERY, GALLERY)
  cut = os.path.join(root, 'query', '0009_c4s1_000103_00.png')
  _img(cut, fmt='PNG', size=(16, 32))
  png = open(cut, 'rb').read()
  with open(cut, 'wb') as f:
    f.write(png[:-20])
  with pytest.raises(images.UnreadableImageError) as e:
    load_dataset('market1501', root)
  assert e.value.path == cut and str(e.value) == f'truncated PNG (no IEND chunk): {cut}'
  with pytest.raises(images.UnreadableImageError) as e:
    cache.decode_image(cut, (8, 4))
  assert e.value.path == cut
  garbage = os.path.join(str(tmp_path), 'garbage.jpg')
  with open(garbage, 'wb') as f:
    f.write(b'\xff\xd8\xff\xe0' + b'\x17' * 300 + b'\xff\xd9')
  with pytest.raises(images.UnreadableImageError) as e:
    datasets.decode_image_file(garbage)
  assert e.value.path == garbage and str(e.value).startswith(f'cannot decode image {garbage}: ')
  with pytest.raises(images.UnreadableImageError) as e:
    images.load_image(garbage)
  assert e.value.path == garbage and str(e.value).startswith(f'cannot read image {garbage!r}: ')


def test_split_of_only_unreadable_images_is_an_error(tmp_path):
  root = _market(tmp_path, TRAIN, QUERY, GALLERY)
  for p in os.listdir(os.path.join(root, 'query')):
    if p.endswith('.jpg'):
      with open(os.path.join(root, 'query', p), 'wb') as f:
        f.write(b'\xff\xd8\xff\xe0 cut')
  with pytest.raises(ValueError, match='empty query split'):
    load_dataset('market1501', root, skip_unreadable=True)


def test_demo_market_fixture(demo_market_root):
  ds = load_dataset('market1501', demo_market_root)
  assert ds.num_classes == 12 and np.unique(ds.train.pids).size == 12
  assert np.unique(ds.query.pids).size == 12
  assert set(np.unique(ds.query.pids)) <= set(np.unique(ds.gallery.pids))
  assert not set(ds.train.pids.tolist()) & set(ds.query.pids.tolist())
  assert ds.gallery.junk.sum() >= 1 and (ds.gallery.pids == 0).sum() >= 1
  assert set(ds.train.camids.tolist()) <= {1, 2, 3}
  im = Image.open(ds.train.paths[0])
  assert im.size == (32, 64) and im.mode == 'RGB'


@pytest.mark.skipif(not os.path.isdir(MARKET_REAL), reason='real Market-1501 not on this machine')
def test_real_market1501_counts():
  ds = load_dataset('market1501', MARKET_REAL)
  assert (len(ds.train), ds.num_classes) == (12936, 751)
  assert (len(ds.query), np.unique(ds.query.pids).size) == (3368, 750)
  assert (len(ds.gallery), int(ds.gallery.junk.sum())) == (19732, 3819)
  assert set(ds.train.camids.tolist()) == set(range(1, 7))


def test_inspect_cli_errors_are_one_line(tmp_path, capsys):
  from fmn_jax.data import inspect as data_inspect  # pylint: disable=g-import-not-at-top
  root = _market(tmp_path / 'm', TRAIN, QUERY, GALLERY)
  assert data_inspect.main(['summary', f'--root={root}']) == 0
  assert 'classes  3' in capsys.readouterr().out
  bad_name = _img(os.path.join(root, 'query', 'photo1.jpg'))
  for argv, named in ((['summary', f'--root={tmp_path / "nowhere"}'], str(tmp_path / 'nowhere')),
                      (['summary', '--name=market', f'--root={root}'], "'market'"),
                      (['summary', f'--root={root}'], bad_name),
                      (['load', f'--root={root}', f'--cache_dir={tmp_path / "c"}'], bad_name),
                      (['times', f'--root={root}'], bad_name)):
    assert data_inspect.main(argv) == 1, argv
    err = capsys.readouterr().err
    assert err.startswith('error: ') and named in err and err.count('\n') == 1, (argv, err)
