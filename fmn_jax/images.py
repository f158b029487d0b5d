"""Reading user images of any size and mode into uint8 RGB arrays.

Used by the training and evaluation decode (`fmn_jax.data.cache`) and by the extraction, search,
visualisation and export tools, so a file gives the same pixels everywhere. Everything here is
host-side (numpy + Pillow): greyscale, 16-bit, palette, RGBA/LA (alpha composited over a
background colour), CMYK, PNG, JPEG, BMP, GIF (first frame), TIFF and WebP all come out as
``uint8 [H, W, 3]`` RGB. An unreadable file raises :class:`UnreadableImageError` naming the file
(the dataset readers and cache raise the same class), or is skipped with a warning when the
caller asks for that.
"""

import concurrent.futures
import logging
import os
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm',
                    '.pgm', '.pbm', '.pnm')

# Transparent pixels are composited over this colour (white, like most image viewers show them).
DEFAULT_BACKGROUND = (255, 255, 255)
# The one resampling filter of every resize here and of the training/evaluation decode
# (`fmn_jax.data.cache`), so that a file gives the same pixels in the tools as in evaluation.
# PIL's filters are antialiased when shrinking.
RESAMPLE = Image.Resampling.BICUBIC


class UnreadableImageError(ValueError):
  """An image file that cannot be opened or decoded, or is truncated.

  The one error for an unreadable image, raised by the tools and by the dataset readers and cache
  (`fmn_jax.data`). `path` is the file and `reason` what is wrong with it; the message names the
  file: `cannot read image 'PATH': REASON` unless the raiser gives its own `message`.
  """

  def __init__(self, path: str, reason: str, message: Optional[str] = None):
    super().__init__(f'cannot read image {path!r}: {reason}' if message is None else message)
    self.path = path
    self.reason = reason


def _to_uint8(arr: np.ndarray) -> np.ndarray:
  """Scales an integer/float array of any range to uint8 (one scale for all channels)."""
  if arr.dtype == np.uint8:
    return arr
  if arr.dtype == bool:
    return arr.astype(np.uint8) * 255
  if np.issubdtype(arr.dtype, np.floating):
    arr = np.nan_to_num(arr.astype(np.float64))
    hi = float(arr.max()) if arr.size else 1.0
    scale = 255.0 if hi <= 1.0 else (255.0 / hi if hi > 255.0 else 1.0)
    return np.clip(arr * scale, 0, 255).round().astype(np.uint8)
  # Integer modes ('I;16', 'I'): 16-bit data keeps its top 8 bits.
  hi = int(arr.max()) if arr.size else 0
  if hi > 255:
    bits = 16 if hi <= 65535 else 32
    arr = arr.astype(np.int64) >> (bits - 8)
  return np.clip(arr, 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image, background: Tuple[int, int, int] = DEFAULT_BACKGROUND) -> np.ndarray:
  """Converts a PIL image of any mode to ``uint8 [H, W, 3]`` RGB."""
  try:
    img = ImageOps.exif_transpose(img)
  except Exception:  # pylint: disable=broad-except
    pass  # A damaged EXIF block does not prevent using the pixels.
  mode = img.mode
  if mode == 'P':
    img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
  elif mode == 'PA':
    img = img.convert('RGBA')
  mode = img.mode
  if mode in ('RGBA', 'LA', 'RGBa', 'La'):
    rgba = img.convert('RGBA')
    base = Image.new('RGBA', rgba.size, tuple(background) + (255,))
    return np.asarray(Image.alpha_composite(base, rgba).convert('RGB'), dtype=np.uint8)
  if mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'):
    gray = _to_uint8(np.asarray(img))
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode != 'RGB':
    img = img.convert('RGB')  # L, 1, CMYK, YCbCr, LAB, HSV
  return np.asarray(img, dtype=np.uint8)


def load_image(path: str, size: Optional[Tuple[int, int]] = None,
               background: Tuple[int, int, int] = DEFAULT_BACKGROUND) -> np.ndarray:
  """Reads one image file as ``uint8 [H, W, 3]`` RGB, optionally resized to ``size=(H, W)``.

  Raises:
    FileNotFoundError: when ``path`` does not exist.
    UnreadableImageError: when the file is not a decodable image (the message names it).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'image file not found: {path!r}')
  if os.path.isdir(path):
    raise UnreadableImageError(path, 'is a directory')
  try:
    with Image.open(path) as img:
      img.seek(0)  # First frame of animated GIF/WebP/multi-page TIFF.
      img.load()
      arr = to_rgb(img, background)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
          Image.DecompressionBombError) as e:
    raise UnreadableImageError(path, f'{type(e).__name__}: {e}') from None
  if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise UnreadableImageError(path, f'empty image of shape {arr.shape}')
  if size is not None:
    arr = resize(arr, size)
  return arr


def resize(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """Resizes a ``uint8 [H, W, 3]`` image to ``size=(H, W)`` (`RESAMPLE`: bicubic, antialiased)."""
  h, w = int(size[0]), int(size[1])
  if image.shape[:2] == (h, w):
    return image
  return np.asarray(Image.fromarray(image).resize((w, h), RESAMPLE), dtype=np.uint8)


def _is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(source: Union[str, Sequence[str]]) -> Tuple[List[str], List[str]]:
  """Resolves a folder, a single image, a list file or a list of paths to ``(paths, names)``.

  Args:
    source: one of
      * a folder: every image file below it (recursively, sorted; non-image files such as
        ``Thumbs.db`` are ignored); names are the paths relative to the folder;
      * an image file: that file; its name is the file name;
      * a ``.txt``/``.lst`` file: one image path per line (relative paths are taken relative to
        the list file; blank lines and lines starting with ``#`` are ignored);
      * a comma-separated string or a sequence of any of the above.
  Returns:
    ``paths`` as given or resolved, and unique readable ``names``.
  Raises:
    FileNotFoundError: naming a path that does not exist.
    ValueError: when nothing resolves to an image.
  """
  if isinstance(source, os.PathLike):
    source = os.fspath(source)
  if isinstance(source, str):
    items = [s for s in source.split(',') if s.strip()] if (
        ',' in source and not os.path.exists(source)) else [source]
  else:
    items = list(source)
  paths, names = [], []
  for item in items:
    item = os.fspath(item).strip()
    if not os.path.exists(item):
      raise FileNotFoundError(f'image file or folder not found: {item!r}')
    if os.path.isdir(item):
      found = []
      for dirpath, dirnames, filenames in os.walk(item):
        dirnames.sort()
        found.extend(os.path.join(dirpath, f) for f in filenames if _is_image_file(f))
      found.sort()
      paths.extend(found)
      names.extend(os.path.relpath(p, item).replace(os.sep, '/') for p in found)
    elif item.lower().endswith(('.txt', '.lst')):
      base = os.path.dirname(item)
      with open(item, encoding='utf-8') as f:
        for line_no, line in enumerate(f, 1):
          line = line.strip()
          if not line or line.startswith('#'):
            continue
          p = line if os.path.isabs(line) else os.path.join(base, line)
          if not os.path.exists(p):
            raise FileNotFoundError(f'{item}:{line_no}: image file not found: {p!r}')
          paths.append(p)
          names.append(line.replace(os.sep, '/'))
    else:
      paths.append(item)
      names.append(os.path.basename(item))
  if not paths:
    raise ValueError(f'no image files found in {source!r} '
                     f'(extensions: {", ".join(IMAGE_EXTENSIONS)})')
  return paths, _unique(names, paths)


def _unique(names: List[str], paths: List[str]) -> List[str]:
  """Makes names unique: duplicates fall back to their full path."""
  counts = {}
  for n in names:
    counts[n] = counts.get(n, 0) + 1
  if all(c == 1 for c in counts.values()):
    return names
  out, seen = [], set()
  for n, p in zip(names, paths):
    name = n if counts[n] == 1 else p.replace(os.sep, '/')
    k = 1
    base = name
    while name in seen:
      k += 1
      name = f'{base}#{k}'
    seen.add(name)
    out.append(name)
  return out


def load_images(paths: Sequence[str], size: Tuple[int, int], *, skip_unreadable: bool = False,
                num_threads: int = 4,
                background: Tuple[int, int, int] = DEFAULT_BACKGROUND
                ) -> Tuple[np.ndarray, List[int], List[Tuple[str, str]]]:
  """Decodes ``paths`` resized to ``size=(H, W)`` into one ``uint8 [N, H, W, 3]`` batch.

  Returns:
    ``(images, kept, skipped)``: the decoded batch, the indices into ``paths`` that it holds, and
    ``(path, reason)`` for every file that could not be read (only when ``skip_unreadable``).
  Raises:
    UnreadableImageError / FileNotFoundError: naming the first unreadable file, unless
      ``skip_unreadable``, in which case it is logged as a warning and left out.
  """
  h, w = int(size[0]), int(size[1])

  def _one(p):
    try:
      return load_image(p, (h, w), background), None
    except (UnreadableImageError, FileNotFoundError) as e:
      if not skip_unreadable:
        raise
      return None, str(e)

  if num_threads > 1 and len(paths) > 1:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as ex:
      results = list(ex.map(_one, paths))
  else:
    results = [_one(p) for p in paths]
  out = np.zeros((sum(r[0] is not None for r in results), h, w, 3), np.uint8)
  kept, skipped, j = [], [], 0
  for i, (arr, err) in enumerate(results):
    if arr is None:
      logging.warning('skipping unreadable image: %s', err)
      skipped.append((paths[i], err))
      continue
    out[j] = arr
    kept.append(i)
    j += 1
  return out, kept, skipped


def as_uint8_batch(images: Union[np.ndarray, Iterable], size: Optional[Tuple[int, int]] = None
                   ) -> np.ndarray:
  """Converts in-memory images (array batch, list of arrays or PIL images) to ``uint8 [N,H,W,3]``.

  Arrays may be ``[H, W]`` greyscale, ``[H, W, 1|3|4]``, uint8 or float in [0, 1]; images of
  different sizes need ``size=(H, W)``.
  """
  if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] == 3 and (
      images.dtype == np.uint8):
    return images if size is None else np.stack([resize(im, size) for im in images])
  if isinstance(images, np.ndarray) and (
      images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4))):
    images = [images]  # One image; a 3-d array with another last size is a greyscale batch.
  out = []
  for i, im in enumerate(images):
    if isinstance(im, Image.Image):
      arr = to_rgb(im)
    else:
      arr = np.asarray(im)
      if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
      if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f'image #{i}: expected [H,W], [H,W,1], [H,W,3] or [H,W,4], '
                         f'got shape {arr.shape}')
      arr = _to_uint8(arr)  # Floats in [0, 1] (or [0, 255]) and 16-bit values to uint8.
      arr = to_rgb(Image.fromarray(arr))
    if size is not None:
      arr = resize(arr, size)
    out.append(arr)
  if not out:
    raise ValueError('no images given')
  shapes = {a.shape for a in out}
  if len(shapes) > 1:
    raise ValueError(f'images have different sizes {sorted(shapes)}: pass size=(H, W)')
  return np.stack(out)
