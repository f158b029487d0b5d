"""MSMT17 (1,041 training identities, 15 cameras), the Market-1501 recipe.

    python -m fmn_jax.main --config=configs/msmt17.py --workdir=/tmp/msmt17 \
        --config.dataset.root=~/data/MSMT17_V1

MSMT17 has 2.5x Market's training images, so the same number of epochs is 2.5x the steps; the
lr steps stay at the paper's epochs.
"""

import importlib.util
import os


def _default():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py')
  spec = importlib.util.spec_from_file_location('fmn_configs_default', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _recipe(config):
  """Backbone lr 0.01, new layers 0.1 (see configs/market.py for why)."""
  config.grn.lr, config.grn.lr_head = 0.01, 0.1
  config.fmn.lr, config.fmn.lr_head = 0.01, 0.1
  return config


def get_config():
  config = _recipe(_default().get_config())
  config.dataset.name = 'msmt17'
  config.dataset.root = '~/data/MSMT17_V1'
  return config
