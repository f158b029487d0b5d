"""`load_resnet50(path)`: ImageNet ResNet-50 variables from any supported file, and what the
file implies about the model (stride layout, input normalization)."""

import os
import zipfile
from typing import Callable, Dict, Tuple

import numpy as np

from fmn_jax.pretrained import names
from fmn_jax.pretrained import readers
from fmn_jax.pretrained.names import Variables

_FORMAT_INFO = {  # source family -> (stride layout, input normalization)
    'keras': ('v1', 'caffe_bgr'),
    'keras_v2': ('v1', 'caffe_bgr'),
    'torchvision': ('v1.5', 'imagenet_rgb'),
}


def _read_npz(path: str) -> Tuple[Variables, Dict[str, str]]:
  """The project's .npz: keys 'params/...', 'batch_stats/...', 'meta/...'; no pickle."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
    raise ValueError(f'{path}: cannot read as a project .npz (truncated, or holds objects '
                     f'that need pickle): {type(e).__name__}: {e}') from e
  meta = {k[len('meta/'):]: str(v) for k, v in arrays.items() if k.startswith('meta/')}
  tensors = {k: v for k, v in arrays.items() if not k.startswith('meta/')}
  stem = tensors.get('params/stem/conv1/kernel')
  if stem is None or stem.ndim != 4:
    raise ValueError(f'{path}: missing params/stem/conv1/kernel '
                     f'(keys: {names.fmt_list(sorted(tensors), 6)})')
  head, head_bias = tensors.get('params/fc/kernel'), tensors.get('params/fc/bias')
  num_classes = None
  if head is not None and head.ndim == 2:
    num_classes = int(head.shape[1])
  elif head_bias is not None and head_bias.ndim == 1:
    num_classes = int(head_bias.shape[0])
  expected = names.expected_shapes(int(stem.shape[3]), num_classes)
  missing = sorted(k for k in expected if k not in tensors)
  unexpected = sorted(k for k in tensors if k not in expected)
  misshaped = sorted(f'{k}: shape {tuple(v.shape)}, expected {expected[k]}'
                     for k, v in tensors.items() if k in expected and tuple(v.shape) != expected[k])
  names.raise_problems(path, missing, unexpected, misshaped)
  variables = names.unflatten({k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()})
  return variables, meta

def _format_of(path: str) -> str:
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, 'model.json')):
      return 'tfjs'
    raise FileNotFoundError(f'{path}: folder without a TF.js model.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no such file or folder')
  ext = os.path.splitext(path)[1].lower()
  formats = {'.json': 'tfjs', '.h5': 'h5', '.hdf5': 'h5', '.pth': 'torch', '.pt': 'torch',
             '.safetensors': 'safetensors', '.npz': 'npz'}
  if ext not in formats:
    raise ValueError(f'{path}: unknown weight file type {ext!r}; supported: a TF.js folder or '
                     'model.json, .h5, .pth/.pt, .safetensors, .npz')
  return formats[ext]

def load_resnet50_with_info(path: str) -> Tuple[Variables, Dict[str, str]]:
  """(variables, info); info = {'format', 'family', 'stride_layout', 'normalization'}."""
  path = os.path.expanduser(path)
  fmt = _format_of(path)
  if fmt == 'npz':
    variables, meta = _read_npz(path)
    info = {'format': 'npz', 'family': meta.get('family', 'unknown'),
            'stride_layout': meta.get('stride_layout', 'unknown'),
            'normalization': meta.get('normalization', 'unknown')}
    return variables, info
  reader: Callable[[str], Dict[str, np.ndarray]] = {
      'tfjs': readers.read_tfjs, 'h5': readers.read_keras_h5, 'torch': readers.read_torch,
      'safetensors': readers.read_safetensors}[fmt]
  tensors = reader(path)
  family = names.detect_family(tensors, path)
  variables = names.map_named_tensors(tensors, family, path)
  layout, normalization = _FORMAT_INFO[family]
  return variables, {'format': fmt, 'family': family, 'stride_layout': layout,
                     'normalization': normalization}

def load_resnet50(path: str) -> Variables:
  """{'params', 'batch_stats'} (float32 numpy) for `models.ResNet(num_classes=N)` from `path`.

  Build the model with the stride layout the weights were trained with (`weights_info`):
  'v1' for Keras/TF.js files, 'v1.5' for torchvision ones.
  """
  return load_resnet50_with_info(path)[0]

def weights_info(path: str) -> Dict[str, str]:
  """{'format', 'family', 'stride_layout', 'normalization'} of a weight file."""
  return load_resnet50_with_info(path)[1]

def check_matches_model(info: Dict[str, str], stride_layout: str, normalization: str,
                        what: str) -> None:
  """Raises ValueError when weights (`info` of `weights_info`) need another stride layout or
  input normalization than the model and input pipeline are configured with.

  Both layouts share one parameter tree, so torchvision (v1.5, RGB mean/std) weights would load
  into a v1 model fed Caffe-BGR images without any shape error, and start from wrong features.
  'unknown' (an .npz written without that metadata) is not checked.
  """
  wanted = {'stride_layout': ('model.stride_layout', stride_layout),
            'normalization': ('input.normalization', normalization)}
  wrong = [(key, name, have) for key, (name, have) in wanted.items()
           if info.get(key, 'unknown') not in ('unknown', have)]
  if wrong:
    raise ValueError(
        f'{what} holds {info.get("family", "?")} weights for '
        + ' and '.join(f'{key} {info[key]!r}' for key, _, _ in wrong) + ', but the config has '
        + ', '.join(f'{name}={have!r}' for _, name, have in wrong) + ': set '
        + ' '.join(f'--config.{name}={info[key]}' for key, name, _ in wrong))
