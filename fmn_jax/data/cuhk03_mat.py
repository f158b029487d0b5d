"""CUHK03 in its original form: cuhk-03.mat (MATLAB v7.3 / HDF5) + the new-protocol split files.

`cuhk-03.mat` holds, for `labeled` and `detected`, a cell per camera pair of [num_pids x 10]
image cells (empty cells allowed). `cuhk03_new_protocol_config_{labeled,detected}.mat`
(Zhong et al. 2017; MATLAB v5) holds `filelist` (image names), `labels` (pids), `camId`,
and 1-based `train_idx`, `query_idx`, `gallery_idx`.

Images are extracted once to PNG files named `{pair}_{pid:03d}_{view}_{index:02d}.png` (the
names used by `filelist`; view 1 = images 1-5, view 2 = images 6-10), in `<mat dir>/images_{kind}`
or, if that is not writable, `~/.cache/fmn_jax/cuhk03/images_{kind}`. The camera id of an image is
its view (1 or 2).
"""

import os
from typing import Optional

import numpy as np
from PIL import Image

MAT_NAME = 'cuhk-03.mat'
_DONE = '.extracted'


def config_name(kind: str) -> str:
  return f'cuhk03_new_protocol_config_{kind}.mat'


def find_mat_dir(root: str) -> Optional[str]:
  """The folder (root, root/cuhk03_release or root/cuhk03) holding cuhk-03.mat, or None."""
  for c in ('', 'cuhk03_release', 'cuhk03', os.path.join('cuhk03', 'cuhk03_release')):
    d = os.path.join(root, c) if c else root
    if os.path.isfile(os.path.join(d, MAT_NAME)):
      return d
  return None


def _image_dir(mat_dir: str, kind: str) -> str:
  d = os.path.join(mat_dir, f'images_{kind}')
  try:
    os.makedirs(d, exist_ok=True)
    if os.access(d, os.W_OK):
      return d
  except OSError:
    pass
  d = os.path.join(os.path.expanduser('~'), '.cache', 'fmn_jax', 'cuhk03', f'images_{kind}')
  os.makedirs(d, exist_ok=True)
  return d


def extract_images(mat_dir: str, kind: str) -> str:
  """Writes the `kind` ('labeled'|'detected') images of cuhk-03.mat as PNGs; returns the folder."""
  import h5py  # pylint: disable=g-import-not-at-top
  out = _image_dir(mat_dir, kind)
  if os.path.isfile(os.path.join(out, _DONE)):
    return out
  mat_path = os.path.join(mat_dir, MAT_NAME)
  try:
    mat = h5py.File(mat_path, 'r')
  except OSError as e:
    raise ValueError(f'cannot read {mat_path} as a MATLAB v7.3 (HDF5) file: {e}') from e
  with mat:
    if kind not in mat:
      raise ValueError(f'{mat_path} has no "{kind}" entry (found: {", ".join(mat.keys())})')
    for pair, pair_ref in enumerate(mat[kind][0]):
      cells = mat[pair_ref][:].T  # [num_pids, 10] references
      for pid in range(cells.shape[0]):
        for index, ref in enumerate(cells[pid]):
          img = mat[ref][:].T
          if img.size == 0 or img.ndim != 3:
            continue  # Empty cell.
          view = 1 if index < 5 else 2
          name = f'{pair + 1}_{pid + 1:03d}_{view}_{index + 1:02d}.png'
          Image.fromarray(np.ascontiguousarray(img.astype(np.uint8))).save(
              os.path.join(out, name))
  with open(os.path.join(out, _DONE), 'w', encoding='utf-8') as f:
    f.write(mat_path + '\n')
  return out


def new_protocol_items(mat_dir: str, kind: str, image_dir: str):
  """(train, query, gallery) lists of (path, pid, camid) from the new-protocol config file."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  path = os.path.join(mat_dir, config_name(kind))
  if not os.path.isfile(path):
    raise FileNotFoundError(f'CUHK03 new-protocol split file not found: {path}')
  cfg = scipy.io.loadmat(path)
  for key in ('filelist', 'labels', 'train_idx', 'query_idx', 'gallery_idx'):
    if key not in cfg:
      raise ValueError(f'{path} has no "{key}" entry')
  names = [str(np.asarray(x).ravel()[0]) for x in cfg['filelist'].ravel()]
  labels = cfg['labels'].ravel().astype(np.int64)
  out = []
  for key in ('train_idx', 'query_idx', 'gallery_idx'):
    items = []
    for i in cfg[key].ravel().astype(np.int64) - 1:
      if not 0 <= i < len(names):
        raise ValueError(f'{path}: {key} holds index {i + 1} outside 1..{len(names)}')
      name = names[i]
      fields = name.split('_')
      if len(fields) != 4 or not fields[2].isdigit():
        raise ValueError(f'{path}: file name {name!r} is not PAIR_PID_VIEW_INDEX.png')
      items.append((os.path.join(image_dir, name), int(labels[i]), int(fields[2])))
    out.append(items)
  return tuple(out)
