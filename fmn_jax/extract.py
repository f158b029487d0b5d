"""Descriptors for your own images with a trained FMN.

    python -m fmn_jax.extract --workdir=DIR --images=FOLDER_OR_LIST --out=features.npz

`--images` is a folder (searched recursively; names are paths relative to it), one image, a
`.txt` list of paths (one per line), or a comma-separated list of any of these. Images of any
size and mode (greyscale, RGBA, palette, 16-bit, PNG, JPEG, ...) are decoded exactly as the
evaluation decodes its files (`fmn_jax.images.to_rgb`, bicubic resize to
`config.dataset.cache_size`), then run through the evaluation path (`features.compute_descriptors`:
resize to `config.input.image_size`, normalisation, flip averaging) in device batches of
`config.eval.batch_size`: a file gets the descriptor it gets in evaluation.
An unreadable file stops the run with its name, or is skipped (and listed) with
`--skip_unreadable`.

The .npz holds `names` [N] (str), `descriptors` [N, D] float32 (Eq. 6), with `--parts` also `g`
and `l` (the GRN and LAN features), `paths` (absolute), `skipped` (unreadable files) and `meta`
(a JSON string: workdir, `extraction_meta`: the model's fingerprint, input and decode sizes,
normalisation, flip, alpha; descriptor size). It is read without pickle:
`np.load(path)` or `fmn_jax.extract.load_features(path)`.

Path flags may start with `~`. A run whose stage 2 was stopped before its last step is refused
unless `--allow_unfinished` (every tool: extract, search, export, visualize) takes its latest
stage-2 checkpoint.

API: `extract_features(variables, images_or_paths, config) -> (names, descriptors)`.
"""

import dataclasses
import hashlib
import json
import os
import sys
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from fmn_jax import cpu
from fmn_jax import images as images_lib
from fmn_jax import tool_flags
# `extract.restore` is the public way to load a trained run (used by the quickstart notebook).
from fmn_jax.tool_flags import restore  # pylint: disable=unused-import

FEATURES_FORMAT = 'fmn_jax.features/1'


@dataclasses.dataclass
class Features:
  """Extracted features of a set of images (row i of every array belongs to names[i])."""
  names: List[str]
  descriptors: np.ndarray
  g: Optional[np.ndarray] = None
  l: Optional[np.ndarray] = None
  paths: Optional[List[str]] = None
  skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
  meta: Dict[str, Any] = dataclasses.field(default_factory=dict)
  # Row i came from input image source_index[i] (inputs differ from rows when files are skipped).
  source_index: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return len(self.names)


def num_classes_from_variables(variables: Dict[str, Any]) -> int:
  """The identity count of a trained FMN: the output size of the GRN classifier kernel."""
  import jax  # pylint: disable=g-import-not-at-top
  params = variables.get('params', variables)
  for sub in ('grn', 'lan'):
    if sub in params:
      kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params[sub])
                 if getattr(leaf, 'ndim', 0) == 2 and 'kernel' in jax.tree_util.keystr(path)]
      if len(kernels) == 1:
        return int(kernels[0].shape[-1])
  raise ValueError("cannot find the classifier kernel in variables['params']['grn'] (expected "
                   'exactly one 2-d kernel); are these FMN variables?')


def build_model(variables: Dict[str, Any], config) -> Any:
  """The FMN of ``config.model`` with the class count read from ``variables``."""
  from fmn_jax import models  # pylint: disable=g-import-not-at-top
  return models.create_fmn(config.model, num_classes_from_variables(variables))


class LazyImages:
  """Array-like uint8 [N, H, W, 3] view of image files, decoded when a batch is sliced.

  `features.compute_descriptors` slices one batch at a time, so only one batch of decoded images
  is in host memory, and the next batch is decoded while the device runs the previous one.
  Unreadable files raise an error naming them, or (``skip_unreadable``) give a black image and
  are recorded in ``failed`` (index -> reason) so that their rows can be dropped afterwards.
  """

  def __init__(self, paths: Sequence[str], size: Tuple[int, int], skip_unreadable: bool = False,
               num_threads: int = 4):
    self.paths = list(paths)
    self.size = (int(size[0]), int(size[1]))
    self.skip_unreadable = skip_unreadable
    self.num_threads = num_threads
    self.failed: Dict[int, str] = {}
    self.shape = (len(self.paths),) + self.size + (3,)
    self.ndim = 4
    self.dtype = np.dtype(np.uint8)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      return self[int(key):int(key) + 1][0]
    if not isinstance(key, slice):
      raise TypeError(f'LazyImages supports integer and slice indexing, got {type(key)}')
    start, stop, step = key.indices(len(self))
    if step != 1:
      raise ValueError('LazyImages supports contiguous slices only')
    imgs, kept, skipped = images_lib.load_images(
        self.paths[start:stop], self.size, skip_unreadable=self.skip_unreadable,
        num_threads=self.num_threads)
    out = np.zeros((stop - start,) + self.shape[1:], np.uint8)
    out[kept] = imgs
    kept_set = set(kept)
    reasons = iter(reason for _, reason in skipped)
    for i in range(stop - start):
      if i not in kept_set:
        self.failed[start + i] = next(reasons)
    return out


def model_fingerprint(variables: Dict[str, Any]) -> str:
  """A short hash of trained variables: every array's path, shape and up to 64 evenly spaced
  values. Two trainings never share it, so features from another model are recognised."""
  import jax  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    # One host copy of the whole leaf: a device-side gather per leaf compiles once per shape,
    # hundreds of times slower for a ResNet-50 tree.
    a = np.asarray(leaf).reshape(-1)
    picked = a[np.linspace(0, a.size - 1, min(64, a.size)).round().astype(np.int64)]
    h.update(f'{jax.tree_util.keystr(path)}|{a.shape}|'.encode())
    h.update(np.ascontiguousarray(picked, np.float32).tobytes())
  return h.hexdigest()[:16]


def extraction_meta(variables: Dict[str, Any], config) -> Dict[str, Any]:
  """What decides the descriptors besides the images: the model and its evaluation settings
  (recorded in a features file's meta; `fmn_jax.search` checks a reused file against them)."""
  from fmn_jax import features as features_lib  # pylint: disable=g-import-not-at-top
  return {
      'model': model_fingerprint(variables),
      'image_size': [int(s) for s in config.input.image_size],
      'decode_size': list(features_lib.decode_size(config)),
      'normalization': str(config.input.normalization),
      'flip': bool(config.eval.get('flip', False)),
      'alpha': float(config.model.get('alpha', 0.5)),
  }


def extract(variables: Dict[str, Any],
            images_or_paths: Union[str, Sequence[str], np.ndarray, Sequence[Any]],
            config,
            *,
            model: Any = None,
            batch_size: Optional[int] = None,
            skip_unreadable: bool = False,
            progress: bool = True,
            names: Optional[Sequence[str]] = None) -> Features:
  """Extracts descriptors (and the GRN/LAN parts) of files or in-memory images.

  Args:
    variables: trained FMN variables ({'params', 'batch_stats'}).
    images_or_paths: a folder, an image path, a .txt list, a comma-separated string or a list of
      paths; or in-memory images (uint8 batch [N, H, W, 3], list of arrays / PIL images).
    config: the training config (``config.model``, ``config.input``, ``config.eval``).
    model: the FMN (built from ``config.model`` when None).
    batch_size: device batch (default ``config.eval.batch_size``).
    skip_unreadable: skip (and list in ``Features.skipped``) files that cannot be read, instead
      of raising an error naming the file.
    progress: draw a progress bar (images done) on stderr.
    names: names of the images (default: file names relative to the folder; ``image_00000``,
      ... for in-memory images).
  Returns:
    `Features` with names, descriptors, g, l, paths and skipped files.
  """
  from fmn_jax import features as features_lib  # pylint: disable=g-import-not-at-top
  if model is None:
    model = build_model(variables, config)
  size = features_lib.decode_size(config)
  batch_size = int(batch_size or config.eval.batch_size)
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')

  in_memory = not (isinstance(images_or_paths, (str, os.PathLike)) or (
      isinstance(images_or_paths, (list, tuple)) and images_or_paths and
      all(isinstance(p, (str, os.PathLike)) for p in images_or_paths)))
  if in_memory:
    batch = images_lib.as_uint8_batch(images_or_paths, size)
    n = batch.shape[0]
    if names is None:
      names = [f'image_{i:05d}' for i in range(n)]
    elif len(names) != n:
      raise ValueError(f'{len(names)} names for {n} images')
    paths, all_names, source = None, list(names), batch
  else:
    paths, all_names = images_lib.list_images(images_or_paths)
    if names is not None:
      if len(names) != len(paths):
        raise ValueError(f'{len(names)} names for {len(paths)} images')
      all_names = list(names)
    source = LazyImages(paths, size, skip_unreadable=skip_unreadable)

  out = features_lib.compute_descriptors(model, variables, source, config,
                                         batch_size=batch_size, progress=progress,
                                         desc='extract')
  failed = getattr(source, 'failed', {})
  keep = np.asarray([i for i in range(len(all_names)) if i not in failed], np.int64)
  skipped = [(paths[i], failed[i]) for i in sorted(failed)]  # Each logged when decoded.
  if keep.size == 0:
    raise ValueError(f'no readable image in {images_or_paths!r} ({len(skipped)} unreadable, '
                     f'first: {skipped[0][0] if skipped else None})')
  cat = {k: np.asarray(v, np.float32)[keep] for k, v in out.items()}
  meta = {'format': FEATURES_FORMAT, **extraction_meta(variables, config),
          'descriptor_dim': int(cat['descriptor'].shape[1]), 'num_images': int(keep.size)}
  return Features(names=[all_names[i] for i in keep], descriptors=cat['descriptor'],
                  g=cat['g'], l=cat['l'],
                  paths=[os.path.abspath(paths[i]) for i in keep] if paths is not None else None,
                  skipped=skipped, meta=meta, source_index=keep)


def extract_features(variables: Dict[str, Any], images_or_paths, config, **kwargs
                     ) -> Tuple[List[str], np.ndarray]:
  """``(names, descriptors [N, D])`` for a folder, list of paths or in-memory images.

  Keyword arguments are those of `extract` (model, batch_size, skip_unreadable, progress, names).
  """
  feats = extract(variables, images_or_paths, config, **kwargs)
  return feats.names, feats.descriptors


def save_features(path: str, feats: Features, parts: bool = True) -> str:
  """Writes `Features` as .npz (strings as unicode arrays: loads without pickle)."""
  arrays = {
      'names': np.asarray(feats.names, dtype=str),
      'descriptors': np.asarray(feats.descriptors, np.float32),
      'skipped': np.asarray([p for p, _ in feats.skipped], dtype=str).reshape(-1),
      'meta': np.asarray(json.dumps(feats.meta)),
  }
  if feats.paths is not None:
    arrays['paths'] = np.asarray(feats.paths, dtype=str)
  if parts:
    for key in ('g', 'l'):
      if getattr(feats, key) is not None:
        arrays[key] = np.asarray(getattr(feats, key), np.float32)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  if not path.endswith('.npz'):
    raise ValueError(f'features file must end with .npz, got {path!r}')
  np.savez(path, **arrays)
  return path


def load_features(path: str) -> Features:
  """Reads a features .npz written by `save_features` / ``python -m fmn_jax.extract``."""
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'features file not found: {path!r}')
  not_ours = f'{path!r} is not a features .npz written by fmn_jax.extract'
  if os.path.isdir(path) or not zipfile.is_zipfile(path):
    raise ValueError(f'{not_ours}: not an .npz (zip) archive')
  try:
    data = np.load(path, allow_pickle=False)
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    raise ValueError(f'cannot read features file {path!r}: {e}') from None
  with data:
    for key in ('names', 'descriptors'):
      if key not in data.files:
        raise ValueError(f'{not_ours}: it has no {key!r} array (arrays: {data.files})')
    try:
      names = [str(s) for s in data['names']]
      desc = np.asarray(data['descriptors'], np.float32)
      meta = json.loads(str(data['meta'])) if 'meta' in data.files else {}
      g = np.asarray(data['g'], np.float32) if 'g' in data.files else None
      l = np.asarray(data['l'], np.float32) if 'l' in data.files else None
      paths = [str(s) for s in data['paths']] if 'paths' in data.files else None
      skipped = [(str(s), '') for s in data['skipped']] if 'skipped' in data.files else []
    except (ValueError, TypeError, OSError, zipfile.BadZipFile) as e:
      # Object (pickled) arrays, damaged members, a meta that is not JSON.
      reason = ('it holds pickled (object) arrays, which are not loaded' if 'pickle' in str(e)
                else f'{type(e).__name__}: {(str(e).splitlines() or [""])[0]}')
      raise ValueError(f'{not_ours}: {reason}') from None
    if desc.ndim != 2 or desc.shape[0] != len(names):
      raise ValueError(f'features file {path!r}: descriptors shape {desc.shape} does not match '
                       f'{len(names)} names')
    return Features(names=names, descriptors=desc, g=g, l=l, paths=paths, skipped=skipped,
                    meta=meta if isinstance(meta, dict) else {})


def main(argv):
  cpu.configure()
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  out = tool_flags.expand_path(f.out)
  model, variables, config = tool_flags.restore_from_flags()
  feats = extract(variables, tool_flags.expand_paths(f.images), config, model=model,
                  batch_size=f.batch_size or None, skip_unreadable=f.skip_unreadable,
                  progress=f.progress)
  feats.meta['workdir'] = os.path.abspath(tool_flags.expand_path(f.workdir))
  save_features(out, feats, parts=f.parts)
  print(f'wrote {out}: {len(feats)} images, descriptors {feats.descriptors.shape[1]}-d'
        + (f', {len(feats.skipped)} unreadable skipped' if feats.skipped else ''))
  for p, reason in feats.skipped:
    print(f'  skipped {p}: {reason}', file=sys.stderr)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  tool_flags.define_workdir_flags()
  flags.DEFINE_string('images', None, 'Folder, image, .txt list or comma-separated list.',
                      required=True)
  flags.DEFINE_string('out', 'features.npz', 'Output .npz.')
  flags.DEFINE_integer('batch_size', 0, 'Device batch size (0: config.eval.batch_size).')
  flags.DEFINE_bool('skip_unreadable', False,
                    'Skip unreadable image files (listed in the output) instead of failing.')
  flags.DEFINE_bool('parts', False, 'Also store the GRN (g) and LAN (l) features.')
  flags.DEFINE_bool('progress', True, 'Show a progress bar.')


if __name__ == '__main__':
  tool_flags.run_cli(main, _define_flags)
