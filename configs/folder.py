"""Your own data: ROOT/{train,query,gallery}/ with PID/ sub-folders or Market-style names.

    python -m fmn_jax.main --config=configs/folder.py --workdir=/tmp/mydata \
        --config.dataset.root=/path/to/ROOT

Without camera ids in the names, query and gallery get different camera ids (else the
same-camera rule would remove every match); the run prints a note when that happens.
ImageNet weights in torchvision form: add --config.model.pretrained=resnet50.safetensors
--config.input.normalization=imagenet_rgb --config.model.stride_layout=v1.5
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
  config.dataset.name = 'folder'
  config.dataset.root = ''   # required: --config.dataset.root=...
  return config
