"""Readers for person re-identification datasets.

`load_dataset(name, root)` returns a `ReidDataset` with train, query and gallery splits. Every split
holds the image paths (sorted), person ids, camera ids and a junk flag; the train split also holds
the labels 0..C-1 (sorted train pids, in order).

Conventions (the same for every layout):
* pid -1 is junk. In the gallery it is kept and flagged (`junk=True`); in train and query it is
  dropped, and `ReidDataset.notes` says how many were dropped. pid 0 (Market "distractors") are
  ordinary gallery items.
* Camera ids are the numbers in the file names (Market: 1..6, Duke: 1..8, MSMT17: 1..15); only
  equality matters for evaluation.
* Non-image files (`Thumbs.db`, `.DS_Store`, text files, ...) are ignored.
* A missing folder, an empty split, a file name that does not parse and an unreadable or truncated
  image raise an error that names the path. With `skip_unreadable=True`, unreadable images are
  dropped instead and the notes say how many (names that do not parse still raise).

The records and the junk rules are in `fmn_jax.data.splits`, the image checks (a quick one while
listing; every pixel with `skip_unreadable=True`) in `fmn_jax.data.image_checks`.
"""

import os
import re
from typing import Sequence

from fmn_jax.config import DATASET_NAMES
from fmn_jax.data.image_checks import check_image_file
from fmn_jax.data.image_checks import decode_image_file
from fmn_jax.data.image_checks import is_image_name
from fmn_jax.data.splits import build_dataset
from fmn_jax.data.splits import Item
from fmn_jax.data.splits import ReidDataset
from fmn_jax.data.splits import Split
from fmn_jax.images import UnreadableImageError


# Market-1501: PPPP_cCsS_FFFFFF_BB.jpg (pid may be -1). The official release has a few names
# ending in '.jpg.jpg' (e.g. query/1488_c1s6_023021_00.jpg.jpg), hence the repeated extension.
MARKET_RE = re.compile(r'^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)(?:\.[A-Za-z]+)+$')
# DukeMTMC-reID: PPPP_cC_fFFFFFFF.jpg.
DUKE_RE = re.compile(r'^(-?\d+)_c(\d+)_f(\d+)(?:\.[A-Za-z]+)+$')
# Any "Market-style" name: a pid, then _cC, then anything (CUHK03-NP: 0001_c1_1.png).
GENERIC_RE = re.compile(r'^(-?\d+)_c(\d+)(?:s\d+)?_[^/]*\.[A-Za-z]+$')


def _require_dir(path: str, what: str) -> None:
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{what} folder not found: {path}')


def _list_images(folder: str) -> list:
  """Sorted image file names directly inside `folder` (other files are ignored)."""
  _require_dir(folder, 'image')
  return sorted(n for n in os.listdir(folder) if is_image_name(n) and
                os.path.isfile(os.path.join(folder, n)))


def _parse_names(folder: str, pattern: re.Pattern, layout: str) -> list:
  """Parses every image name in `folder` with `pattern` (groups: pid, camid)."""
  items = []
  for name in _list_images(folder):
    m = pattern.match(name)
    if m is None:
      raise ValueError(f'file name does not follow the {layout} naming: '
                       f'{os.path.join(folder, name)}')
    items.append(Item(os.path.join(folder, name), int(m.group(1)), int(m.group(2))))
  return items


# --------------------------------------------------------------------------------------------------
# Layouts.

def _market_layout(name: str, root: str, pattern: re.Pattern, layout: str,
                   skip_unreadable: bool, notes: list) -> ReidDataset:
  """bounding_box_train / query / bounding_box_test folders with names parsed by `pattern`."""
  _require_dir(root, f'{layout} root')
  where = {'train': os.path.join(root, 'bounding_box_train'),
           'query': os.path.join(root, 'query'),
           'gallery': os.path.join(root, 'bounding_box_test')}
  items = {k: _parse_names(v, pattern, layout) for k, v in where.items()}
  return build_dataset(name, root, items['train'], items['query'], items['gallery'], where,
                       skip_unreadable, notes)


def _find_subdir(root: str, candidates: Sequence[str], marker: str) -> str:
  """The first of root/c (c in candidates, '' = root itself) that contains `marker`."""
  for c in candidates:
    d = os.path.join(root, c) if c else root
    if os.path.exists(os.path.join(d, marker)):
      return d
  tried = ', '.join(os.path.join(root, c, marker) if c else os.path.join(root, marker)
                    for c in candidates)
  raise FileNotFoundError(f'dataset folder not found under {root} (looked for {tried})')


def _load_cuhk03(name: str, root: str, skip_unreadable: bool, notes: list) -> ReidDataset:
  """CUHK03 new protocol (767/700): folder form, or the original .mat form."""
  kind = 'labeled' if name == 'cuhk03_labeled' else 'detected'
  _require_dir(root, 'CUHK03 root')
  folder_candidates = (kind, os.path.join('cuhk03-np', kind), os.path.join('cuhk03_np', kind))
  for c in folder_candidates:
    if os.path.isdir(os.path.join(root, c, 'bounding_box_train')):
      return _market_layout(name, os.path.join(root, c), GENERIC_RE, 'CUHK03-NP',
                            skip_unreadable, notes)
  from fmn_jax.data import cuhk03_mat  # pylint: disable=g-import-not-at-top
  mat_dir = cuhk03_mat.find_mat_dir(root)
  if mat_dir is not None:
    config = os.path.join(mat_dir, cuhk03_mat.config_name(kind))
    if not os.path.isfile(config):
      raise FileNotFoundError(f'CUHK03 new-protocol split file not found: {config}')
    image_dir = cuhk03_mat.extract_images(mat_dir, kind)
    train, query, gallery = cuhk03_mat.new_protocol_items(mat_dir, kind, image_dir)
    where = {k: os.path.join(mat_dir, f'cuhk03_new_protocol_config_{kind}.mat')
             for k in ('train', 'query', 'gallery')}
    notes.append(f'images extracted from cuhk-03.mat into {image_dir}')
    mk = lambda rows: [Item(*r) for r in rows]
    return build_dataset(name, root, mk(train), mk(query), mk(gallery), where, skip_unreadable,
                         notes)
  tried = ', '.join(os.path.join(root, c, 'bounding_box_train') for c in folder_candidates)
  raise FileNotFoundError(
      f'CUHK03-NP {kind} not found under {root}: looked for {tried} and for cuhk-03.mat with '
      f'cuhk03_new_protocol_config_{kind}.mat')


def msmt17_camid(filename: str) -> int:
  """Camera id of an MSMT17 image name (third field, 01..15)."""
  fields = os.path.basename(filename).split('_')
  if len(fields) < 3 or not fields[2].isdigit():
    raise ValueError(f'MSMT17 file name has no camera field (PID_IDX_CAM_...): {filename}')
  return int(fields[2])


def _read_msmt_list(list_path: str, image_dir: str) -> list:
  if not os.path.isfile(list_path):
    raise FileNotFoundError(f'MSMT17 list file not found: {list_path}')
  items = []
  with open(list_path, encoding='utf-8') as f:
    for lineno, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      parts = line.split()
      if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
        raise ValueError(f'{list_path}:{lineno}: expected "path label", got {line!r}')
      rel, pid = parts[0], int(parts[1])
      path = os.path.join(image_dir, rel)
      try:
        camid = msmt17_camid(rel)
      except ValueError as e:
        raise ValueError(f'{list_path}:{lineno}: {e}') from e
      items.append(Item(path, pid, camid))
  return items


def _load_msmt17(name: str, root: str, skip_unreadable: bool, notes: list) -> ReidDataset:
  """MSMT17 (V1 or V2): list files; training uses list_train + list_val."""
  _require_dir(root, 'MSMT17 root')
  base = _find_subdir(root, ('', 'MSMT17_V1', 'MSMT17_V2', 'MSMT17'), 'list_query.txt')
  train_dir = next((os.path.join(base, d) for d in ('train', 'mask_train_v2')
                    if os.path.isdir(os.path.join(base, d))), os.path.join(base, 'train'))
  test_dir = next((os.path.join(base, d) for d in ('test', 'mask_test_v2')
                   if os.path.isdir(os.path.join(base, d))), os.path.join(base, 'test'))
  _require_dir(train_dir, 'MSMT17 train image')
  _require_dir(test_dir, 'MSMT17 test image')
  train = _read_msmt_list(os.path.join(base, 'list_train.txt'), train_dir)
  val_path = os.path.join(base, 'list_val.txt')
  if os.path.isfile(val_path):
    train += _read_msmt_list(val_path, train_dir)
    notes.append('train split = list_train.txt + list_val.txt')
  query = _read_msmt_list(os.path.join(base, 'list_query.txt'), test_dir)
  gallery = _read_msmt_list(os.path.join(base, 'list_gallery.txt'), test_dir)
  # A missing image listed in a list file is an unreadable image (named by the check).
  where = {'train': os.path.join(base, 'list_train.txt'),
           'query': os.path.join(base, 'list_query.txt'),
           'gallery': os.path.join(base, 'list_gallery.txt')}
  return build_dataset(name, root, train, query, gallery, where, skip_unreadable, notes)


def _walk_images(folder: str) -> list:
  """All image files under `folder`, recursively, sorted."""
  out = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    out.extend(os.path.join(dirpath, n) for n in filenames if is_image_name(n))
  return sorted(out)


def _identity_folder_entries(folder: str, entry: str) -> list:
  """(path, pid_name, camid or None) of the images under the identity folder `folder`/`entry`."""
  entries = []
  for path in _walk_images(os.path.join(folder, entry)):
    m = GENERIC_RE.match(os.path.basename(path))
    camid = None
    if m is not None:
      if m.group(1).lstrip('-').isdigit() and entry.lstrip('-').isdigit() and \
          int(m.group(1)) != int(entry):
        raise ValueError(f'pid in file name ({m.group(1)}) differs from its folder '
                         f'({entry}): {path}')
      camid = int(m.group(2))
    entries.append((path, entry, camid))
  return entries


def _split_folder_entries(folder: str) -> list:
  """(path, pid_name, camid or None) of every image of the split folder `folder`: in PID/
  sub-folders, or directly inside with a Market-style name."""
  entries = []
  for entry in sorted(os.listdir(folder)):
    full = os.path.join(folder, entry)
    if entry.startswith('.'):
      continue
    if os.path.isdir(full):
      entries.extend(_identity_folder_entries(folder, entry))
    elif is_image_name(entry):
      m = GENERIC_RE.match(entry)
      if m is None:
        raise ValueError(
            f'image directly in a split folder must have a Market-style name '
            f'(PID_cCAM_....ext) or sit in a PID/ sub-folder: {full}')
      entries.append((full, m.group(1), int(m.group(2))))
  return entries


def _number_identities(names: list, notes: list) -> dict:
  """Identity name -> pid: integers when every name is one; else the sorted names are numbered
  1..N, junk (-1) and distractors (0) keeping their meaning."""
  if all(re.fullmatch(r'-?\d+', n) for n in names):
    return {n: int(n) for n in names}
  special = {n: int(n) for n in names if re.fullmatch(r'-?0*[01]', n) and int(n) in (-1, 0)}
  others = [n for n in names if n not in special]
  to_pid = {n: i + 1 for i, n in enumerate(others)}
  to_pid.update(special)
  notes.append(f'identity folder names are not all integers: the {len(others)} names were '
               f'numbered 1..{len(others)} in sorted order'
               + (' (-1 junk and 0 distractors kept)' if special else ''))
  return to_pid


def _folder_items(raw: dict, to_pid: dict, notes: list) -> dict:
  """split -> Items. Train images without a camera id get camera 0; when a query or gallery image
  has none, every query gets camera 0 and every gallery image camera 1."""
  eval_has_cams = all(e[2] is not None for s in ('query', 'gallery') for e in raw[s])
  items = {}
  for split_name, entries in raw.items():
    out = []
    for path, pid_name, camid in entries:
      if split_name == 'train':
        cam = camid if camid is not None else 0
      elif eval_has_cams:
        cam = camid
      else:
        cam = 0 if split_name == 'query' else 1
      out.append(Item(path, to_pid[pid_name], cam))
    items[split_name] = out
  if not eval_has_cams:
    notes.append('camera ids missing in query/gallery: every query gets camera 0 and every '
                 'gallery image camera 1, so no gallery image is removed by the same-camera rule')
  return items


def _load_folder(name: str, root: str, skip_unreadable: bool, notes: list) -> ReidDataset:
  """A user's own data: root/{train,query,gallery}, PID/ sub-folders or Market-style names."""
  _require_dir(root, 'dataset root')
  where = {'train': os.path.join(root, 'train'), 'query': os.path.join(root, 'query'),
           'gallery': os.path.join(root, 'gallery')}
  raw = {}
  for split_name, folder in where.items():
    _require_dir(folder, f'{split_name} split')
    raw[split_name] = _split_folder_entries(folder)
  names = sorted({e[1] for entries in raw.values() for e in entries})
  items = _folder_items(raw, _number_identities(names, notes), notes)
  return build_dataset(name, root, items['train'], items['query'], items['gallery'], where,
                       skip_unreadable, notes)


def load_dataset(name: str, root: str, *, skip_unreadable: bool = False) -> ReidDataset:
  """Reads a re-id dataset.

  Args:
    name: one of market1501, dukemtmc, cuhk03_labeled, cuhk03_detected, msmt17, folder.
    root: the unpacked release (Market: the folder holding bounding_box_train; CUHK03: cuhk03-np
      or its parent, or the folder of cuhk-03.mat; MSMT17: the folder holding the list files or
      its parent; folder: the folder holding train/, query/, gallery/).
    skip_unreadable: drop unreadable/truncated images (counted in `notes`) instead of raising.

  Returns:
    A ReidDataset.
  """
  root = os.path.abspath(os.path.expanduser(str(root)))
  notes = []
  if name == 'market1501':
    return _market_layout(name, root, MARKET_RE, 'Market-1501 (PPPP_cCsS_FFFFFF_BB.jpg)',
                          skip_unreadable, notes)
  if name == 'dukemtmc':
    if not os.path.isdir(os.path.join(root, 'bounding_box_train')) and os.path.isdir(
        os.path.join(root, 'DukeMTMC-reID', 'bounding_box_train')):
      root = os.path.join(root, 'DukeMTMC-reID')
    return _market_layout(name, root, DUKE_RE, 'DukeMTMC-reID (PPPP_cC_fFFFFFFF.jpg)',
                          skip_unreadable, notes)
  if name in ('cuhk03_labeled', 'cuhk03_detected'):
    return _load_cuhk03(name, root, skip_unreadable, notes)
  if name == 'msmt17':
    return _load_msmt17(name, root, skip_unreadable, notes)
  if name == 'folder':
    return _load_folder(name, root, skip_unreadable, notes)
  raise ValueError(f'unknown dataset name {name!r}; expected one of {", ".join(DATASET_NAMES)}')


__all__ = [
    'DATASET_NAMES', 'DUKE_RE', 'GENERIC_RE', 'MARKET_RE', 'ReidDataset', 'Split',
    'UnreadableImageError', 'check_image_file', 'decode_image_file', 'is_image_name',
    'load_dataset', 'msmt17_camid',
]
