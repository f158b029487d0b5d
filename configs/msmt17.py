"""MSMT17 (1,041 training identities, 15 cameras), the Market-1501 recipe.

    python -m fmn_jax.main --config=configs/msmt17.py --workdir=/tmp/msmt17 \
        --config.dataset.root=~/data/MSMT17_V1

MSMT17 has 2.5x Market's training images, so the same number of epochs is 2.5x the steps; the
lr steps stay at the paper's epochs.
"""

import os
import runpy

_DEFAULT = runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py'))


def get_config():
  config = _DEFAULT['dataset_config']('msmt17', '~/data/MSMT17_V1')
  return config
