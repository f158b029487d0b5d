"""CUHK03 new protocol (767/700 identities), hand-labelled boxes, the Market-1501 recipe.

    python -m fmn_jax.main --config=configs/cuhk03_labeled.py --workdir=/tmp/cuhk03l \
        --config.dataset.root=~/data/cuhk03-np

`root` is the folder holding `labeled/` and `detected/` (Market layout each), or the original
`cuhk-03.mat` with the `cuhk03_new_protocol_config_*.mat` files beside it.
"""

import os
import runpy

_DEFAULT = runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py'))


def get_config():
  config = _DEFAULT['dataset_config']('cuhk03_labeled', '~/data/cuhk03-np')
  return config
