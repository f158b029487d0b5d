"""Decoded-image cache: a split is decoded once into a uint8 .npy file, then memory-mapped.

The cache file name holds a hash of the split's file list (paths relative to the split's parent
folder, file sizes and modification times) and of the storage size, so any change to the files
makes a new cache entry. Files are written to a temporary name and renamed when complete, so an
interrupted run never leaves a corrupt cache. They are plain .npy files (no pickle), opened with
`np.load(..., mmap_mode='r')`.

Default location: `<parent of the split folder>/.fmn_jax_cache` when writable (for Market-1501,
`<root>/.fmn_jax_cache`), otherwise `~/.cache/fmn_jax/decoded`.
"""

import concurrent.futures
import hashlib
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from fmn_jax import images
from fmn_jax.data import image_checks
from fmn_jax.data import splits

# The decoder's version, part of every cache key: 2 is `fmn_jax.images.to_rgb` (EXIF orientation,
# alpha over white, 16-bit data scaled). A decoder that gives other pixels takes a new number.
CACHE_VERSION = 2
# Resampling filter used when the stored size differs from the file's size.
RESAMPLE = images.RESAMPLE


def _num_workers() -> int:
  return max(1, min(8, os.cpu_count() or 2))


def split_base_dir(paths: Sequence[str]) -> str:
  """The parent of the folder that holds all `paths` (the dataset root for the usual layouts)."""
  common = os.path.commonpath([os.path.abspath(p) for p in paths])
  if len(paths) == 1 or os.path.isfile(common):
    common = os.path.dirname(common)
  return os.path.dirname(common)


def _writable_dir(path: str) -> bool:
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return False
  return os.access(path, os.W_OK)


def default_cache_dir(paths: Sequence[str]) -> str:
  """`<split parent>/.fmn_jax_cache` if writable, else ~/.cache/fmn_jax/decoded."""
  candidate = os.path.join(split_base_dir(paths), '.fmn_jax_cache')
  if _writable_dir(candidate):
    return candidate
  return os.path.join(os.path.expanduser('~'), '.cache', 'fmn_jax', 'decoded')


def split_key(paths: Sequence[str], size: tuple) -> str:
  """sha256 over (version, size, relative paths, file sizes, mtimes)."""
  base = split_base_dir(paths)
  h = hashlib.sha256()
  h.update(f'fmn_jax-decoded-v{CACHE_VERSION}|{size[0]}x{size[1]}|{len(paths)}\n'.encode())
  for p in paths:
    try:
      st = os.stat(p)
    except OSError as e:
      raise FileNotFoundError(f'cannot stat image file {p}: {e}') from e
    rel = os.path.relpath(os.path.abspath(p), base)
    h.update(f'{rel}|{st.st_size}|{int(st.st_mtime)}\n'.encode())
  return h.hexdigest()


def _folder_name(paths: Sequence[str]) -> str:
  """The name of the folder that holds all `paths` (e.g. bounding_box_train)."""
  common = os.path.commonpath([os.path.abspath(p) for p in paths])
  return os.path.basename(common if os.path.isdir(common) else os.path.dirname(common))


def cache_path(split: splits.Split, size: tuple, cache_dir: Optional[str] = None) -> str:
  """Where `decode_split(split, size, cache_dir)` stores its array."""
  paths = list(split.paths)
  if not paths:
    raise ValueError('cannot cache an empty split')
  size = check_size(size)
  cache_dir = cache_dir or default_cache_dir(paths)
  prefix = ''.join(c if c.isalnum() or c in '-_' else '_' for c in _folder_name(paths)) or 'split'
  key = split_key(paths, size)[:20]
  return os.path.join(cache_dir, f'{prefix}_{len(paths)}x{size[0]}x{size[1]}_{key}.npy')


def check_size(size, name: str = 'size') -> tuple:
  """(height, width) as two positive ints; a ValueError naming `name` and the value otherwise."""
  try:
    h, w = (int(v) for v in size)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{name} must be (height, width), got {size!r}') from e
  if h <= 0 or w <= 0:
    raise ValueError(f'{name} must be positive (height, width), got {size!r}')
  return h, w


def decode_image(path: str, size: tuple) -> np.ndarray:
  """Decodes one image file to uint8 RGB [H, W, 3], resized to `size` = (H, W).

  The pixels are those of the tools: it is `fmn_jax.images.load_image` (any mode converted by
  `images.to_rgb`, resized with `images.RESAMPLE`) after the quick file check. Raises
  `images.UnreadableImageError` naming the path on any decoding problem, truncation included
  (also when another library set PIL's LOAD_TRUNCATED_IMAGES).
  """
  image_checks.check_image_file(path)
  return image_checks.decode_image_file(path, size)


def _decode_into(out: np.ndarray, paths: Sequence[str], size: tuple, progress: bool,
                 desc: str) -> None:
  n = len(paths)
  chunk = 128
  starts = list(range(0, n, chunk))

  def work(start):
    stop = min(n, start + chunk)
    for i in range(start, stop):
      out[i] = decode_image(paths[i], size)
    return stop - start

  bar = None
  if progress:
    try:
      import tqdm  # pylint: disable=g-import-not-at-top
      bar = tqdm.tqdm(total=n, desc=desc, unit='img', file=sys.stderr, leave=False)
    except ImportError:
      bar = None
  with concurrent.futures.ThreadPoolExecutor(_num_workers()) as pool:
    for done in pool.map(work, starts):
      if bar is not None:
        bar.update(done)
  if bar is not None:
    bar.close()


def decode_paths(paths: Sequence[str], size: tuple, progress: bool = False) -> np.ndarray:
  """Decodes `paths` into an in-memory uint8 array [N, H, W, 3] (no cache)."""
  size = check_size(size)
  out = np.empty((len(paths), size[0], size[1], 3), np.uint8)
  _decode_into(out, list(paths), size, progress, 'decode')
  return out


def _open_cached(path: str, shape: tuple) -> Optional[np.ndarray]:
  if not os.path.isfile(path):
    return None
  try:
    arr = np.load(path, mmap_mode='r', allow_pickle=False)
  except (OSError, ValueError):
    return None
  if arr.shape != shape or arr.dtype != np.uint8:
    return None
  return arr


def decode_split(split: splits.Split, size: tuple, cache_dir: Optional[str] = None,
                 progress: bool = True) -> np.ndarray:
  """Decodes a split to uint8 RGB [N, H, W, 3], cached on disk and memory-mapped.

  Args:
    split: a Split (its paths are decoded in order).
    size: storage size (H, W); images of another size are resized (bicubic, antialiased).
    cache_dir: cache folder (default: see module docstring).
    progress: show a progress bar while decoding.

  Returns:
    A read-only memory-mapped uint8 array aligned with `split.paths`.
  """
  paths = list(split.paths)
  if not paths:
    raise ValueError('cannot decode an empty split')
  size = check_size(size)
  path = cache_path(split, size, cache_dir)
  shape = (len(paths), size[0], size[1], 3)
  arr = _open_cached(path, shape)
  if arr is not None:
    return arr
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}-{time.time_ns()}'
  try:
    out = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.uint8, shape=shape)
    # Labelled with the split's name (train / query / gallery), else its whole folder name.
    _decode_into(out, paths, size, progress, split.name or _folder_name(paths) or 'decode')
    out.flush()
    del out
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  arr = _open_cached(path, shape)
  if arr is None:
    raise OSError(f'decoded cache file could not be read back: {path}')
  return arr
