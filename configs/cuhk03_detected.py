"""CUHK03 new protocol (767/700 identities), detector boxes, the Market-1501 recipe.

    python -m fmn_jax.main --config=configs/cuhk03_detected.py --workdir=/tmp/cuhk03d \
        --config.dataset.root=~/data/cuhk03-np
"""

import os
import runpy

_DEFAULT = runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py'))


def get_config():
  config = _DEFAULT['dataset_config']('cuhk03_detected', '~/data/cuhk03-np')
  return config
