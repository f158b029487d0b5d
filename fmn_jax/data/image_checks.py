"""Image-file checks of the dataset readers: the quick completeness check and the full decode.

`check_image_file` is cheap: it reads a file's first and last bytes only, and checks that the file
opens, that its magic bytes are those of an image, and that a JPEG/PNG file ends with its end
marker (which catches truncated files). `decode_image_file` decodes every pixel and fails on
anything PIL rejects. Both raise `fmn_jax.images.UnreadableImageError` naming the file.

`filter_readable` applies them to a split's items: the quick check only (a corrupt file then
stops the decode with its name), or, with `skip_unreadable=True`, the quick check and a full
decode of every image, so that a complete but corrupt file is dropped before the training labels
are made (slower: 8.9 s instead of 1.1 s for Market-1501's 36,036 images on a 2-core CPU).
"""

import concurrent.futures
import os

import numpy as np

from fmn_jax import images
from fmn_jax.images import UnreadableImageError

_MAGIC = (
    (b'\xff\xd8\xff', 'jpeg'),
    (b'\x89PNG\r\n\x1a\n', 'png'),
    (b'BM', 'bmp'),
    (b'GIF8', 'gif'),
    (b'II*\x00', 'tiff'),
    (b'MM\x00*', 'tiff'),
    (b'P1', 'pnm'),  # PBM, PGM, PPM: ASCII (P1-P3) and binary (P4-P6)
    (b'P2', 'pnm'),
    (b'P3', 'pnm'),
    (b'P4', 'pnm'),
    (b'P5', 'pnm'),
    (b'P6', 'pnm'),
)


def _unreadable(path: str, reason: str) -> UnreadableImageError:
  """The error for `path`, with the message 'REASON: PATH'."""
  return UnreadableImageError(path, reason, f'{reason}: {path}')


def _read_ends(path: str) -> tuple:
  """(size, first 16 bytes, last KB of a file over 16 bytes or b'') of the file at `path`."""
  try:
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
      head = f.read(16)
      tail = b''
      if size > 16:
        f.seek(max(0, size - 1024))
        tail = f.read()
  except OSError as e:
    raise UnreadableImageError(path, str(e), f'cannot read image file {path}: {e}') from e
  return size, head, tail


def _kind(head: bytes) -> str:
  """The image format that the first bytes `head` announce, or '' for none."""
  for magic, name in _MAGIC:
    if head.startswith(magic):
      return name
  if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
    return 'webp'
  return ''


def check_image_file(path: str) -> None:
  """Raises UnreadableImageError (naming `path`) if the file is not a complete image.

  Cheap: reads the first and last bytes only. Detects unreadable files, files whose content is not
  an image, empty files, and truncated JPEG/PNG files (missing end-of-image marker / IEND chunk).
  """
  size, head, tail = _read_ends(path)
  if size == 0:
    raise UnreadableImageError(path, 'empty file', f'empty image file {path}')
  kind = _kind(head)
  if not kind:
    raise _unreadable(path, f'not an image file (unknown header {head[:8]!r})')
  if kind == 'jpeg':
    # 0xFFD9 cannot occur in entropy-coded data (0xFF is byte-stuffed), so a file whose last KB
    # has no EOI marker was cut short.
    if b'\xff\xd9' not in tail:
      raise _unreadable(path, 'truncated JPEG (no end-of-image marker)')
  elif kind == 'png':
    if b'IEND' not in tail:
      raise _unreadable(path, 'truncated PNG (no IEND chunk)')
  elif kind == 'bmp':
    declared = int.from_bytes(head[2:6], 'little')
    if declared and size < declared:
      raise _unreadable(path, f'truncated BMP ({size} of {declared} bytes)')


def is_image_name(name: str) -> bool:
  """True for file names with an image extension (hidden files excluded)."""
  return not name.startswith('.') and name.lower().endswith(images.IMAGE_EXTENSIONS)


def decode_image_file(path: str, size=None) -> np.ndarray:
  """`images.load_image(path, size)`, the dataset cache's decoder; UnreadableImageError naming
  `path` if the file does not decode (a missing file included)."""
  try:
    return images.load_image(path, size)
  except (UnreadableImageError, FileNotFoundError) as e:
    raise UnreadableImageError(path, str(e), f'cannot decode image {path}: {e}') from e


def filter_readable(items: list, skip_unreadable: bool, split_name: str, notes: list) -> list:
  """The items (with a `path`) whose image is readable, as the module docstring describes.

  Without `skip_unreadable` the first unreadable image raises; with it, the unreadable ones are
  left out and `notes` gets a line saying how many.
  """

  def check(item):
    try:
      check_image_file(item.path)
      if skip_unreadable:
        decode_image_file(item.path)
      return None
    except UnreadableImageError as e:
      if not skip_unreadable:
        raise
      return e

  if skip_unreadable:
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 2)) as pool:
      errors = list(pool.map(check, items))
  else:
    errors = [check(item) for item in items]
  kept = [item for item, e in zip(items, errors) if e is None]
  skipped = [item.path for item, e in zip(items, errors) if e is not None]
  if skipped:
    notes.append(f'{split_name}: skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}')
  return kept
