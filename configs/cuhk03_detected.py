"""CUHK03 new protocol (767/700 identities), detector boxes, the Market-1501 recipe.

    python -m fmn_jax.main --config=configs/cuhk03_detected.py --workdir=/tmp/cuhk03d \
        --config.dataset.root=~/data/cuhk03-np
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
  config.dataset.name = 'cuhk03_detected'
  config.dataset.root = '~/data/cuhk03-np'
  return config
