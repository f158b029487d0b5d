"""Synthetic pedestrians in the Market-1501 layout (the embedded demo dataset; no download).

Each identity has fixed appearance attributes: build, skin, hair, top (colour, pattern, sleeves,
chest logo), bottom (trousers, shorts or skirt), shoes, and maybe a bag (backpack, shoulder bag or
handbag), plus a hat (`synthetic_person`). Each camera has its own background (wall/floor colours
and texture), illumination, colour cast, blur, noise, person scale and position
(`synthetic_scene`). Each image adds a view (front, back, left or right side), a walking phase,
small colour and position jitter, and sometimes an occluder (a pole, a car-like block, a
passer-by, a sign). Identities are told apart by their clothes, which the cameras' colour casts
and lighting distort: learnable, not trivial.

Written as root/{bounding_box_train, bounding_box_test, query}/PPPP_cCsS_FFFFFF_BB.jpg, so the
real Market-1501 reader is exercised. Test identities have one query per camera they appear in
(except one camera, seen only in the gallery); the gallery also holds junk (pid -1: fragments of
test identities) and distractors (pid 0000: background clutter or unrelated people).

Deterministic: the same arguments give the same bytes. The arguments are recorded in
root/fmn_jax_synthetic.json (written first, marked complete last), so a folder is only ever
written by one set of them: the same dataset is reused, an interrupted one is finished, and a
folder holding anything else (another synthetic dataset, other files) is refused. Command line:
    python -m fmn_jax.data.synthetic --out=/tmp/synthetic_market [--seed=0]
"""

import argparse
import json
import os
import sys
import time
from typing import Optional

import numpy as np

from fmn_jax.data import synthetic_person
from fmn_jax.data import synthetic_scene
from fmn_jax.data.synthetic_scene import render

JPEG_QUALITY = 90
# Records the generation arguments in the dataset folder (see the module docstring).
MARKER = 'fmn_jax_synthetic.json'
SPLIT_FOLDERS = ('bounding_box_train', 'query', 'bounding_box_test')


def _read_marker(root: str) -> Optional[dict]:
  """The arguments recorded in root/MARKER (None when there is no such file)."""
  path = os.path.join(root, MARKER)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      marker = json.load(f)
    if not isinstance(marker, dict) or not isinstance(marker.get('arguments'), dict):
      raise ValueError('no "arguments" object')
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise ValueError(f'{path} is not a synthetic-dataset record ({e}): give an empty or new '
                     'folder') from e
  return marker


def _write_marker(root: str, arguments: dict, complete: bool) -> None:
  path = os.path.join(root, MARKER)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump({'generator': 'fmn_jax.data.synthetic', 'arguments': arguments,
               'complete': complete}, f, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


def _check_root(root: str, arguments: dict) -> bool:
  """True when `root` already holds the complete dataset of `arguments`; False when it may be
  written (absent, empty, or an unfinished generation with the same arguments). Raises
  ValueError naming the folder when it holds anything else."""
  if not os.path.exists(root):
    return False
  if not os.path.isdir(root):
    raise ValueError(f'synthetic dataset folder {root} is a file, not a folder')
  marker = _read_marker(root)
  if marker is None:
    entries = sorted(os.listdir(root))
    if not entries:
      return False
    shown = ', '.join(entries[:3]) + (', ...' if len(entries) > 3 else '')
    raise ValueError(f'synthetic dataset folder {root} is not empty and holds no {MARKER} '
                     f'(it holds {shown}): give an empty or new folder')
  recorded = marker['arguments']
  if recorded != arguments:
    diff = ', '.join(f'{k}={recorded.get(k)!r} (asked {arguments.get(k)!r})'
                     for k in sorted(set(recorded) | set(arguments))
                     if recorded.get(k) != arguments.get(k))
    raise ValueError(f'synthetic dataset folder {root} holds another synthetic dataset ({diff}):'
                     ' give an empty or new folder, or the same arguments')
  return bool(marker.get('complete'))


def _arguments(seed, num_train_ids, num_test_ids, num_cameras, images_per_camera,
               image_size) -> dict:
  """The checked generation arguments, as root/MARKER records them."""
  if not 2 <= num_cameras <= 9:
    raise ValueError(f'num_cameras must be in 2..9 (Market names hold one digit), got '
                     f'{num_cameras}')
  if num_train_ids < 1 or num_test_ids < 1 or images_per_camera < 1:
    raise ValueError('num_train_ids, num_test_ids and images_per_camera must be >= 1')
  size = (int(image_size[0]), int(image_size[1]))
  if size[0] < 16 or size[1] < 8:
    raise ValueError(f'image_size too small: {image_size}')
  return {'seed': int(seed), 'num_train_ids': int(num_train_ids),
          'num_test_ids': int(num_test_ids), 'num_cameras': int(num_cameras),
          'images_per_camera': int(images_per_camera), 'image_size': list(size)}


def check_folder(root: str, *, seed: int = 0, num_train_ids: int = 100, num_test_ids: int = 100,
                 num_cameras: int = 6, images_per_camera: int = 3, image_size=(128, 64)) -> bool:
  """Read-only: True when `root` holds this complete dataset, False when `generate` may write
  it; ValueError naming the folder when `generate` would refuse it. Every host of a multi-host
  run can call it, so that all of them refuse a folder alike."""
  return _check_root(root, _arguments(seed, num_train_ids, num_test_ids, num_cameras,
                                      images_per_camera, image_size))


class _Writer:
  """Saves the images of one dataset as JPEGs named PPPP_cCs1_FFFFFF_BB.jpg, frames numbered
  in the order of writing."""

  def __init__(self, root: str):
    self.dirs = {s: os.path.join(root, s) for s in SPLIT_FOLDERS}
    self.frame = 0

  def save(self, folder: str, pid: int, cam_index: int, img, box: int = 0) -> None:
    self.frame += 1
    name = f'{pid:04d}' if pid >= 0 else '-1'
    path = os.path.join(self.dirs[folder], f'{name}_c{cam_index + 1}s1_{self.frame * 25:06d}_'
                                           f'{box:02d}.jpg')
    img.save(path, quality=JPEG_QUALITY)


def _start_folder(root: str, arguments: dict) -> _Writer:
  """Creates root and its split folders with an incomplete marker; ValueError naming root."""
  writer = _Writer(root)
  try:
    os.makedirs(root, exist_ok=True)
    _write_marker(root, arguments, complete=False)
    for d in writer.dirs.values():
      os.makedirs(d, exist_ok=True)
  except OSError as e:
    raise ValueError(f'cannot write the synthetic dataset folder {root}: {e.strerror or e}') from e
  return writer


def _views_of(seed: int, pid, num_cameras: int) -> tuple:
  """(attributes, sorted cameras that see it, its generator) of identity `pid`."""
  rng = np.random.default_rng([seed, 1, int(pid)])
  ident = synthetic_person.random_identity(rng)
  n_cams = rng.integers(2, num_cameras + 1)
  cam_set = np.sort(rng.choice(num_cameras, n_cams, replace=False))
  return ident, cam_set, rng


def _write_identities(writer: _Writer, seed: int, cams: list, train_pids, test_pids,
                      images_per_camera: int, size: tuple) -> None:
  """The train identities' images, then the test identities' queries and gallery images."""
  for pid in train_pids:
    ident, cam_set, _ = _views_of(seed, pid, len(cams))
    for c in cam_set:
      for k in range(images_per_camera):
        rng = np.random.default_rng([seed, 2, int(pid), int(c), k])
        writer.save('bounding_box_train', int(pid), c, render(ident, cams[c], rng, size))
  for pid in test_pids:
    ident, cam_set, id_rng = _views_of(seed, pid, len(cams))
    gallery_only = cam_set[id_rng.integers(cam_set.size)]
    for c in cam_set:
      for k in range(images_per_camera):
        rng = np.random.default_rng([seed, 2, int(pid), int(c), k])
        folder = 'query' if (k == 0 and c != gallery_only) else 'bounding_box_test'
        writer.save(folder, int(pid), c, render(ident, cams[c], rng, size))


def _write_junk_and_distractors(writer: _Writer, seed: int, cams: list, test_pids, extra: int,
                                size: tuple) -> None:
  """`extra` junk images (-1: fragments of test identities), then `extra` distractors (0000:
  clutter or unrelated people), in the gallery."""
  for j in range(extra):
    rng = np.random.default_rng([seed, 4, j])
    ident, _, _ = _views_of(seed, test_pids[rng.integers(test_pids.size)], len(cams))
    c = int(rng.integers(len(cams)))
    writer.save('bounding_box_test', -1, c,
                render(ident, cams[c], rng, size, fragment=True), box=1)
  for j in range(extra):
    rng = np.random.default_rng([seed, 5, j])
    c = int(rng.integers(len(cams)))
    other = synthetic_person.random_identity(rng) if rng.random() < 0.5 else None
    writer.save('bounding_box_test', 0, c, render(other, cams[c], rng, size, occlusion=0.6),
                box=2)


def generate(root: str, *, seed: int = 0, num_train_ids: int = 100, num_test_ids: int = 100,
             num_cameras: int = 6, images_per_camera: int = 3, image_size=(128, 64)) -> str:
  """Writes a synthetic dataset in the Market-1501 layout; returns `root`.

  `root` must be absent, empty, or hold this very dataset (recorded in root/MARKER): a complete
  one is reused as it is, an unfinished one is written again (same names, same bytes); a folder
  holding another synthetic dataset or other files raises ValueError naming it.

  Args:
    root: output folder.
    seed: everything is a function of the seed (same seed, same bytes).
    num_train_ids: identities in bounding_box_train.
    num_test_ids: identities in query + bounding_box_test.
    num_cameras: cameras (1..9, as in Market names); each identity is seen by 2..num_cameras.
    images_per_camera: images of an identity per camera that sees it.
    image_size: (H, W) of the written JPEGs.
  """
  arguments = _arguments(seed, num_train_ids, num_test_ids, num_cameras, images_per_camera,
                         image_size)
  size = tuple(arguments['image_size'])
  if _check_root(root, arguments):
    return root
  writer = _start_folder(root, arguments)
  master = np.random.default_rng([seed, 0])
  total = num_train_ids + num_test_ids
  pids = master.permutation(np.arange(1, max(2 * total, 10) + 1))[:total]
  train_pids = np.sort(pids[:num_train_ids])
  test_pids = np.sort(pids[num_train_ids:])
  cams = [synthetic_scene.random_camera(np.random.default_rng([seed, 3, c]))
          for c in range(num_cameras)]
  _write_identities(writer, seed, cams, train_pids, test_pids, images_per_camera, size)
  _write_junk_and_distractors(writer, seed, cams, test_pids, max(2, num_test_ids // 8), size)
  _write_marker(root, arguments, complete=True)
  return root


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='output folder')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num_train_ids', type=int, default=100)
  parser.add_argument('--num_test_ids', type=int, default=100)
  parser.add_argument('--num_cameras', type=int, default=6)
  parser.add_argument('--images_per_camera', type=int, default=3)
  parser.add_argument('--image_size', default='128,64', help='H,W')
  args = parser.parse_args(argv)
  out = os.path.abspath(os.path.expanduser(args.out))
  t = time.time()
  try:
    try:
      size = tuple(int(v) for v in args.image_size.split(','))
      if len(size) != 2:
        raise ValueError
    except ValueError:
      raise ValueError(f'--image_size={args.image_size!r}: expected H,W') from None
    kwargs = dict(seed=args.seed, num_train_ids=args.num_train_ids,
                  num_test_ids=args.num_test_ids, num_cameras=args.num_cameras,
                  images_per_camera=args.images_per_camera, image_size=size)
    reused = check_folder(out, **kwargs)
    generate(out, **kwargs)
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  counts = ', '.join(f'{s} {len(os.listdir(os.path.join(out, s)))}' for s in SPLIT_FOLDERS)
  if reused:
    print(f'{out} already holds this dataset (reused as it is): {counts}')
  else:
    print(f'wrote {out} in {time.time() - t:.1f} s: {counts}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
