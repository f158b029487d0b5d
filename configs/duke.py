"""DukeMTMC-reID (702 training identities, 8 cameras), the Market-1501 recipe.

    python -m fmn_jax.main --config=configs/duke.py --workdir=/tmp/duke \
        --config.dataset.root=~/data/DukeMTMC-reID
"""

import os
import runpy

_DEFAULT = runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py'))


def get_config():
  config = _DEFAULT['dataset_config']('dukemtmc', '~/data/DukeMTMC-reID')
  return config
