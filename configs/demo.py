"""Demo: the whole FMN job (both stages + evaluation) on synthetic data, a few minutes on a CPU.

    python -m fmn_jax.main --config=configs/demo.py --workdir=/tmp/demo

The synthetic dataset (Market-1501 layout, no download) is generated into DIR/data on the first
run. The network is a narrow ResNet-50 (width 16, 64x32 input, so pool1 is 16x8) trained from
random initialisation; give `--config.model.pretrained=imagenet` (and width 64) for the real
ImageNet weights. Chance rank-1 is 1/num_test_ids.
"""

import importlib.util
import os

import ml_collections


def _default():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py')
  spec = importlib.util.spec_from_file_location('fmn_configs_default', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(variant: str = ''):
  """Demo config; variant 'ci' is a much smaller end-to-end run for the test-suite."""
  config = _default().get_config()
  config.dataset.name = 'synthetic'
  config.dataset.root = ''   # '' = DIR/data
  config.dataset.cache_size = (64, 32)
  config.dataset.synthetic = ml_collections.ConfigDict(dict(
      num_train_ids=50, num_test_ids=50, num_cameras=4, images_per_camera=3,
      image_size=(64, 32)))
  config.log_every_steps = 10

  config.input.image_size = (64, 32)
  config.input.pad = 4

  config.model.width = 16
  config.model.dtype = 'float32'   # bfloat16 is slow on most CPUs
  config.model.pretrained = ''     # random initialisation

  config.grn.epochs = 12
  config.grn.batch_size = 32
  config.grn.lr = 0.1
  config.grn.decay_epochs = (9,)
  config.fmn.epochs = 12
  config.fmn.batch_size = 32
  config.fmn.lr = 0.1
  config.fmn.decay_epochs = (9,)

  config.eval.batch_size = 128
  config.checkpoint.every_steps = 100

  if variant == 'ci':
    config.dataset.synthetic.num_train_ids = 10
    config.dataset.synthetic.num_test_ids = 10
    config.dataset.synthetic.num_cameras = 3
    config.dataset.synthetic.images_per_camera = 2
    config.model.width = 8
    config.model.stage_sizes = (1, 1, 1, 1)
    config.grn.epochs, config.grn.decay_epochs = 3, (2,)
    config.fmn.epochs, config.fmn.decay_epochs = 3, (2,)
    config.grn.batch_size = config.fmn.batch_size = 16
  elif variant:
    raise ValueError(f"configs/demo.py: unknown variant {variant!r} (expected '' or 'ci')")
  return config
