"""Your own data: ROOT/{train,query,gallery}/ with PID/ sub-folders or Market-style names.

    python -m fmn_jax.main --config=configs/folder.py --workdir=/tmp/mydata \
        --config.dataset.root=/path/to/ROOT

Without camera ids in the names, query and gallery get different camera ids (else the
same-camera rule would remove every match); the run prints a note when that happens.
ImageNet weights in torchvision form: add --config.model.pretrained=resnet50.safetensors
--config.input.normalization=imagenet_rgb --config.model.stride_layout=v1.5
"""

import os
import runpy

_DEFAULT = runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py'))


def get_config():
  config = _DEFAULT['dataset_config']('folder', '')   # required: --config.dataset.root=...
  return config
