"""TFDS builders for the re-id datasets, and a TensorFlow-free reader of the built datasets.

The releases cannot be downloaded by TFDS: `manual_dir` is the unpacked release (the same `root`
that `load_dataset` takes). Each builder has splits train, query and gallery; every example holds
the encoded image (the release's own bytes), pid, camid, junk, label (0..C-1 for train, -1
elsewhere) and the file name relative to the release.

Build (needs the `tfds` extra, i.e. tensorflow-datasets and TensorFlow):
    python -m fmn_jax.data.tfds_builders --name=market1501 \
        --manual_dir=~/data/Market-1501-v15.09.15 --data_dir=~/tensorflow_datasets

Read (tensorflow-datasets only; TensorFlow is not imported):
    ds, arrays = read_decoded('~/tensorflow_datasets/reid_market1501/1.0.0', (128, 64))

Datasets are written as array_record files, the format `as_data_source()` reads without TF.
"""

import argparse
import glob
import hashlib
import json
import os
import sys
import time
from typing import Dict, Optional, Tuple

import numpy as np

from fmn_jax import images
from fmn_jax.data import cache
from fmn_jax.data import datasets

VERSION = '1.0.0'
BUILDER_PREFIX = 'reid_'
SPLITS = ('train', 'query', 'gallery')


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('tensorflow-datasets is needed for TFDS datasets: pip install '
                      '"fmn_jax[tfds]" (building also needs TensorFlow)') from e
  return tfds


def builder_name(dataset_name: str) -> str:
  """TFDS builder name of a dataset name, e.g. market1501 -> reid_market1501."""
  if dataset_name not in datasets.DATASET_NAMES:
    raise ValueError(f'unknown dataset name {dataset_name!r}; expected one of '
                     f'{", ".join(datasets.DATASET_NAMES)}')
  return BUILDER_PREFIX + dataset_name


_BUILDERS = {}


def get_builder_class(dataset_name: str):
  """The GeneratorBasedBuilder subclass for `dataset_name` (defined on first use)."""
  name = builder_name(dataset_name)
  if name in _BUILDERS:
    return _BUILDERS[name]
  tfds = _tfds()

  class _ReidBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A re-id dataset read from its unpacked release (manual_dir)."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): 'Initial release.'}
    # The release as `build` listed it (listed again by _split_generators when not set).
    reid_dataset = None
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f'Unpack the {dataset_name} release and pass its folder as manual_dir (the same folder '
        'that fmn_jax.data.load_dataset takes as root).')

    # The default code_path needs the `importlib_resources` backport, which tensorflow-datasets
    # does not declare on Python >= 3.9; this module's own file is the code path.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
      from etils import epath  # pylint: disable=g-import-not-at-top
      return epath.Path(__file__)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=f'{dataset_name} person re-identification dataset (train/query/gallery).',
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(None, None, 3)),
              'pid': np.int64,
              'camid': np.int64,
              'junk': np.bool_,
              'label': np.int32,
              'filename': tfds.features.Text(),
          }),
      )

    def _split_generators(self, dl_manager):
      ds = self.reid_dataset or datasets.load_dataset(dataset_name,
                                                      os.fspath(dl_manager.manual_dir))
      return {s: self._generate_examples(ds, s) for s in SPLITS}

    def _generate_examples(self, ds, split_name):
      split = getattr(ds, split_name)
      for i, path in enumerate(split.paths):
        label = -1 if split.labels is None else int(split.labels[i])
        rel = os.path.relpath(path, ds.root)
        with open(path, 'rb') as f:
          data = f.read()
        yield rel, {'image': data, 'pid': int(split.pids[i]), 'camid': int(split.camids[i]),
                    'junk': bool(split.junk[i]), 'label': label, 'filename': rel}

  _ReidBuilder.name = name
  _ReidBuilder.__module__ = 'fmn_jax.data.tfds_builders'
  _ReidBuilder.__name__ = _ReidBuilder.__qualname__ = name
  _BUILDERS[name] = _ReidBuilder
  return _ReidBuilder


def build(dataset_name: str, manual_dir: str, data_dir: str) -> str:
  """Builds the TFDS dataset (array_record files) and returns its folder."""
  tfds = _tfds()
  manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f'manual_dir not found: {manual_dir} (give the unpacked '
                            f'{dataset_name} release)')
  # The release is listed and checked here too, so that a wrong folder is one clear error before
  # TFDS starts (its own check of an empty manual_dir is an assertion).
  listed = datasets.load_dataset(dataset_name, manual_dir)
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  builder = get_builder_class(dataset_name)(data_dir=data_dir, file_format='array_record')
  builder.reid_dataset = listed
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return os.fspath(builder.data_dir)


def find_builder_dir(tfds_dir: str, name: Optional[str] = None) -> str:
  """`tfds_dir` if it holds dataset_info.json, else the newest reid_<name>/<version> under it."""
  tfds_dir = os.path.abspath(os.path.expanduser(tfds_dir))
  if os.path.isfile(os.path.join(tfds_dir, 'dataset_info.json')):
    return tfds_dir
  folder = builder_name(name) if name else BUILDER_PREFIX + '*'
  found = glob.glob(os.path.join(tfds_dir, folder, '*', 'dataset_info.json'))
  found += glob.glob(os.path.join(tfds_dir, folder, '*', '*', 'dataset_info.json'))
  candidates = sorted(os.path.dirname(p) for p in found)
  if not candidates:
    raise FileNotFoundError(f'no built TFDS dataset (dataset_info.json) found at {tfds_dir}'
                            + (f' for {builder_name(name)}' if name else ''))
  return candidates[-1]


def _dir_key(builder_dir: str, size: tuple) -> str:
  h = hashlib.sha256(f'fmn_jax-tfds-v{cache.CACHE_VERSION}|{size[0]}x{size[1]}\n'.encode())
  for p in sorted(glob.glob(os.path.join(builder_dir, '*'))):
    st = os.stat(p)
    h.update(f'{os.path.basename(p)}|{st.st_size}|{int(st.st_mtime)}\n'.encode())
  return h.hexdigest()[:20]


def _decode_record_image(image: np.ndarray, size: tuple) -> np.ndarray:
  return images.resize(image, size)


def _built_name(builder_dir: str, name: Optional[str]) -> str:
  """The builder name recorded in `builder_dir`; ValueError when it is not `name`'s."""
  with open(os.path.join(builder_dir, 'dataset_info.json'), encoding='utf-8') as f:
    info = json.load(f)
  built_name = info.get('name', '')
  if name and built_name and built_name != builder_name(name):
    raise ValueError(f'TFDS dataset at {builder_dir} is {built_name}, not {builder_name(name)}')
  return built_name


def _tfds_cache_dir(builder_dir: str, cache_dir: Optional[str]) -> str:
  """`cache_dir`, else <builder dir>/.fmn_jax_cache if writable, else ~/.cache/fmn_jax/decoded."""
  if cache_dir is None:
    cache_dir = os.path.join(builder_dir, '.fmn_jax_cache')
    try:
      os.makedirs(cache_dir, exist_ok=True)
      if not os.access(cache_dir, os.W_OK):
        raise OSError
    except OSError:
      cache_dir = os.path.join(os.path.expanduser('~'), '.cache', 'fmn_jax', 'decoded')
  os.makedirs(cache_dir, exist_ok=True)
  return cache_dir


def _read_cached(img_path: str, meta_path: str) -> Optional[tuple]:
  """(memory-mapped images, metadata) of a complete cache entry, else None."""
  if not (os.path.isfile(img_path) and os.path.isfile(meta_path)):
    return None
  with np.load(meta_path, allow_pickle=False) as z:
    meta = {k: z[k] for k in z.files}
  array = np.load(img_path, mmap_mode='r', allow_pickle=False)
  if array.shape[0] != meta['pid'].shape[0]:
    return None
  return array, meta


def _decode_source(source, split_name: str, builder_dir: str, size: tuple, img_path: str,
                   meta_path: str, progress: bool) -> dict:
  """Decodes one split's records into the cache entry (img_path, meta_path); its metadata."""
  n = len(source)
  if n == 0:
    raise ValueError(f'empty {split_name} split in TFDS dataset {builder_dir}')
  tmp = f'{img_path}.tmp-{os.getpid()}-{time.time_ns()}'
  fields = {'pid': np.empty(n, np.int64), 'camid': np.empty(n, np.int64),
            'junk': np.empty(n, bool), 'label': np.empty(n, np.int32)}
  names = []
  try:
    out = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.uint8,
                                    shape=(n, size[0], size[1], 3))
    for i in range(n):
      ex = source[i]
      out[i] = _decode_record_image(np.asarray(ex['image']), size)
      for k in fields:
        fields[k][i] = ex[k]
      fn = ex['filename']
      names.append(fn.decode('utf-8') if isinstance(fn, bytes) else str(fn))
      if progress and (i + 1) % 5000 == 0:
        print(f'{split_name}: {i + 1}/{n}', file=sys.stderr)
    out.flush()
    del out
    fields['filename'] = np.array(names, dtype=str)
    meta_tmp = meta_path + f'.tmp-{os.getpid()}.npz'
    np.savez(meta_tmp, **fields)
    os.replace(meta_tmp, meta_path)
    os.replace(tmp, img_path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return fields


def _reid_dataset(meta: dict, name: str, builder_dir: str) -> datasets.ReidDataset:
  """The ReidDataset of the splits' metadata."""
  splits = {}
  for split_name in SPLITS:
    m = meta[split_name]
    splits[split_name] = datasets.Split(
        paths=tuple(str(x) for x in m['filename']), pids=m['pid'].astype(np.int64),
        camids=m['camid'].astype(np.int64), junk=m['junk'].astype(bool),
        labels=m['label'].astype(np.int32) if split_name == 'train' else None, name=split_name)
  train = splits['train']
  pid_to_label = {int(p): int(l) for p, l in zip(train.pids, train.labels)}
  return datasets.ReidDataset(
      name=name, root=builder_dir, train=train,
      query=splits['query'], gallery=splits['gallery'], num_classes=len(pid_to_label),
      pid_to_label=pid_to_label, notes=(f'read from the TFDS dataset at {builder_dir}',))


def read_decoded(tfds_dir: str, size, *, name: Optional[str] = None,
                 cache_dir: Optional[str] = None,
                 progress: bool = True) -> Tuple[datasets.ReidDataset, Dict[str, np.ndarray]]:
  """Reads a built dataset without TensorFlow: (ReidDataset, decoded uint8 arrays per split).

  Decoded arrays and metadata are cached like `decode_split` (default: <builder dir>/
  .fmn_jax_cache if writable, else ~/.cache/fmn_jax/decoded), keyed by the builder's files.
  Split paths are the file names relative to the release (the images live in the records).
  """
  size = cache.check_size(size)
  builder_dir = find_builder_dir(tfds_dir, name)
  built_name = _built_name(builder_dir, name)
  cache_dir = _tfds_cache_dir(builder_dir, cache_dir)
  key = _dir_key(builder_dir, size)
  sources = None
  arrays, meta = {}, {}
  for split_name in SPLITS:
    base = os.path.join(cache_dir, f'tfds_{built_name or "reid"}_{split_name}_{size[0]}x'
                                   f'{size[1]}_{key}')
    img_path, meta_path = base + '.npy', base + '.meta.npz'
    cached = _read_cached(img_path, meta_path)
    if cached is not None:
      arrays[split_name], meta[split_name] = cached
      continue
    if sources is None:
      sources = _tfds().builder_from_directory(builder_dir).as_data_source()
    meta[split_name] = _decode_source(sources[split_name], split_name, builder_dir, size,
                                      img_path, meta_path, progress)
    arrays[split_name] = np.load(img_path, mmap_mode='r', allow_pickle=False)
  ds = _reid_dataset(meta, name or built_name[len(BUILDER_PREFIX):], builder_dir)
  return ds, arrays


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description='Build a TFDS re-id dataset from its release.')
  parser.add_argument('--name', required=True, choices=datasets.DATASET_NAMES)
  parser.add_argument('--manual_dir', required=True, help='the unpacked release')
  parser.add_argument('--data_dir', default='~/tensorflow_datasets')
  args = parser.parse_args(argv)
  t = time.time()
  try:
    out = build(args.name, args.manual_dir, args.data_dir)
  except (ValueError, OSError, ImportError) as e:
    # A missing or wrong --manual_dir, an unwritable --data_dir: one line naming it.
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'built {out} in {time.time() - t:.1f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
