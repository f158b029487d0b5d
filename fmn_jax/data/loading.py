"""One call for the trainer: a dataset's splits and their decoded uint8 arrays.

Reads either the released folders (`load_dataset` + `decode_split`, cached) or a TFDS dataset
built by `fmn_jax.data.tfds_builders` (read without TensorFlow).
"""

from typing import Dict, Optional, Tuple

import numpy as np

from fmn_jax.data import cache
from fmn_jax.data import datasets


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
