"""Loading for the trainer and the tools: a configured dataset, its decoded images, and the
training split as the step reads it.

Reads either the released folders (`load_dataset` + `decode_split`, cached) or a TFDS dataset
built by `fmn_jax.data.tfds_builders` (read without TensorFlow); the 'synthetic' dataset is
generated (once) into its root first.
"""

import functools
import os
from typing import Dict, Optional, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np

from fmn_jax import parallel
from fmn_jax.data import cache
from fmn_jax.data import datasets
from fmn_jax.data import input_pipeline
from fmn_jax.data import synthetic


def load_decoded(name: str, root: Optional[str], size, *, cache_dir: Optional[str] = None,
                 skip_unreadable: bool = False, tfds_dir: Optional[str] = None,
                 progress: bool = True) -> Tuple[datasets.ReidDataset, Dict[str, np.ndarray]]:
  """Returns (ReidDataset, {'train','query','gallery': uint8 [N, H, W, 3]}) at storage `size`.

  Args:
    name: dataset name (see `load_dataset`); with `tfds_dir`, only used to check the builder.
    root: the unpacked release (ignored when `tfds_dir` is given).
    size: storage size (H, W).
    cache_dir: decoded-cache folder (default: see `fmn_jax.data.cache`).
    skip_unreadable: see `load_dataset`.
    tfds_dir: a built TFDS dataset folder (holding dataset_info.json), or a TFDS data_dir that
      holds the builder for `name`; when given, the images come from it.
    progress: progress bars while decoding.
  """
  if tfds_dir:
    from fmn_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
    return tfds_builders.read_decoded(tfds_dir, size, name=name, cache_dir=cache_dir,
                                      progress=progress)
  if not root:
    raise ValueError(f'dataset {name!r}: no root folder given (config.dataset.root)')
  ds = datasets.load_dataset(name, root, skip_unreadable=skip_unreadable)
  arrays = {s: cache.decode_split(getattr(ds, s), size, cache_dir, progress)
            for s in ('train', 'query', 'gallery')}
  return ds, arrays


def dataset_root(config: ml_collections.ConfigDict, workdir: str) -> str:
  root = os.path.expanduser(config.dataset.root) if config.dataset.root else ''
  if config.dataset.name == 'synthetic':
    return os.path.abspath(root or os.path.join(workdir, 'data'))
  return os.path.abspath(root)


@functools.lru_cache(maxsize=2)
def _tfds_decoded(tfds_dir: str, name: str, size: tuple, cache_dir: str, progress: bool) -> tuple:
  # Memory-mapped after the first read, so holding the result costs no memory.
  # pylint: disable=g-import-not-at-top
  from fmn_jax.data import tfds_builders
  return tfds_builders.read_decoded(tfds_dir, size, name=name, cache_dir=cache_dir or None,
                                    progress=progress)


def _tfds_config(config: ml_collections.ConfigDict) -> tuple:
  if config.dataset.name == 'synthetic':
    raise ValueError("config.dataset.tfds_dir is set, but config.dataset.name='synthetic' is "
                     'generated as folders: build it with fmn_jax.data.tfds_builders '
                     "(--name=market1501) and set config.dataset.name='market1501'")
  return (os.path.abspath(os.path.expanduser(config.dataset.tfds_dir)), config.dataset.name,
          tuple(int(v) for v in config.dataset.cache_size), config.dataset.cache_dir,
          bool(config.progress and parallel.is_main_process()))


def load_reid_dataset(config: ml_collections.ConfigDict, workdir: str) -> datasets.ReidDataset:
  """The configured dataset; 'synthetic' is generated (once) into the root first.

  With config.dataset.tfds_dir set, the splits (and, in `decode`, their images) come from that
  TFDS dataset (fmn_jax.data.tfds_builders; read without TensorFlow) and dataset.root is unused.
  """
  if config.dataset.tfds_dir:
    try:
      return _tfds_decoded(*_tfds_config(config))[0]
    except FileNotFoundError as e:
      raise FileNotFoundError(f'config.dataset.tfds_dir={config.dataset.tfds_dir!r}: {e}') from None
  root = dataset_root(config, workdir)
  name = config.dataset.name
  if name == 'synthetic':
    # A folder with the generator's marker is handed to it as well: it reuses the same dataset
    # and refuses another one (seed or sizes). A Market-layout folder without the marker is read
    # as it is.
    missing = not os.path.isdir(os.path.join(root, 'query'))
    if missing or os.path.exists(os.path.join(root, synthetic.MARKER)):
      syn = config.dataset.get('synthetic') or {}
      kwargs = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in syn.items()}
      # Checked read-only on every process first, so that all of them refuse a folder alike
      # (process 0 alone stopping would leave the others waiting at the barrier below).
      synthetic.check_folder(root, seed=config.seed, **kwargs)
      if parallel.is_main_process():
        if missing:
          logging.info('Generating the synthetic dataset into %s', root)
        synthetic.generate(root, seed=config.seed, **kwargs)
      parallel.sync('synthetic dataset')
    name = 'market1501'
  if not os.path.isdir(root):
    raise FileNotFoundError(f'config.dataset.root={config.dataset.root!r}: no folder {root}')
  return datasets.load_dataset(name, root, skip_unreadable=config.dataset.skip_unreadable)


def decode(config: ml_collections.ConfigDict, split: datasets.Split) -> np.ndarray:
  """uint8 [N, H, W, 3] images of a split at config.dataset.cache_size (decoded once, cached)."""
  if config.dataset.tfds_dir:
    ds, arrays = _tfds_decoded(*_tfds_config(config))
    for name in ('train', 'query', 'gallery'):
      if tuple(getattr(ds, name).paths) == tuple(split.paths):
        return arrays[name]
    raise ValueError(f'config.dataset.tfds_dir={config.dataset.tfds_dir!r}: the split to decode '
                     f'({len(split)} images, first {split.paths[0]!r}) is not one of its splits')
  return cache.decode_split(split, tuple(config.dataset.cache_size),
                           cache_dir=config.dataset.cache_dir or None,
                           progress=config.progress and parallel.is_main_process())


class TrainImages:
  """The decoded training split as the step reads it: in device memory or on the host.

  On the devices (the default when it fits, see `data.input_pipeline.device_memory_budget`),
  images [N, H, W, 3] uint8 and labels [N] are replicated and each step gathers its batch there
  from the global indices. On the host (arrays too large for the devices), every process gathers
  only the rows of its own devices' shards from the memory-mapped cache
  (`jax.make_array_from_callback`), which is also the per-host loading of a multi-host run.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, mesh, on_device: bool):
    self.mesh, self.on_device = mesh, on_device
    self._batch_sharding = parallel.data_sharded(mesh)
    labels = np.asarray(labels, np.int32)
    if labels.shape != (images.shape[0],):
      raise ValueError(f'{labels.size} labels for {images.shape[0]} images')
    if on_device:
      repl = parallel.replicated(mesh)
      self.images = parallel.global_array(images, repl)
      self.labels = parallel.global_array(labels, repl)
    else:
      self.images, self.labels = images, labels

  def batch(self, idx: np.ndarray) -> tuple:
    """The step's `batch` argument for the global batch indices `idx`."""
    idx = np.asarray(idx, np.int64)
    if self.on_device:
      return (self.images, self.labels,
              parallel.global_array(idx.astype(np.int32), self._batch_sharding))
    shape = (idx.size,) + tuple(self.images.shape[1:])
    x = jax.make_array_from_callback(shape, self._batch_sharding,
                                     lambda s: np.asarray(self.images[idx[s[0]]]))
    return x, parallel.global_array(self.labels[idx], self._batch_sharding)


def load_train_images(config: ml_collections.ConfigDict, train: datasets.Split,
                      mesh) -> TrainImages:
  """Decodes (or reads the cache of) the training split and places it per config."""
  images = decode(config, train)
  mode = config.input.images_on_device
  if mode == 'auto':
    on_device = images.nbytes <= input_pipeline.device_memory_budget()
  else:
    on_device = mode == 'yes'
  logging.info('Training images: %s uint8 (%.0f MiB) %s', images.shape, images.nbytes / 2**20,
               'in device memory' if on_device else 'on the host')
  return TrainImages(images, train.labels, mesh, on_device)
