"""Source tensor names -> the parameter tree of `models.ResNet`, with BatchNorm folding.

Keras convolutions carry a bias and their BatchNorm uses eps 1e-3 (1.001e-5 for the newer
names); both are folded exactly into the model's bias-free conv + BatchNorm (eps 1e-5):
  BN(conv(x) + b; mean, var, eps_k) = BN(conv(x); mean - b, var + eps_k - 1e-5, 1e-5).
The width of the network is read from the stem and the class count from the head. Every
missing, unexpected or mis-shaped tensor is named in one error.
"""

import functools
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fmn_jax import models

STAGE_SIZES = (3, 4, 6, 3)          # ResNet-50

FLAX_BN_EPS = 1e-5                  # models.ResNet's BatchNorm epsilon

Variables = Dict[str, Any]


def _units():
  """(flax path, (stage, block, conv) or 'stem') of every conv+BN pair of ResNet-50."""
  units = [(('stem', 'conv1'), ('stem', 'bn1'), 'stem')]
  for s, blocks in enumerate(STAGE_SIZES, start=2):
    for i in range(blocks):
      prefix = (f'res{s}', f'block{i}')
      for j in (1, 2, 3):
        units.append((prefix + (f'conv{j}',), prefix + (f'bn{j}',), (s, i, j)))
      if i == 0:
        units.append((prefix + ('proj_conv',), prefix + ('proj_bn',), (s, i, 0)))
  return units

def _keras_names(unit) -> Tuple[str, str]:
  """keras-applications (<=1.0.8) names: conv1/bn_conv1, res2a_branch2a/bn2a_branch2a, ..."""
  if unit == 'stem':
    return 'conv1', 'bn_conv1'
  s, i, j = unit
  branch = 'branch1' if j == 0 else 'branch2' + 'abc'[j - 1]
  block = 'abcdefghijklmnopqrstuvwxyz'[i]
  return f'res{s}{block}_{branch}', f'bn{s}{block}_{branch}'

def _keras_v2_names(unit) -> Tuple[str, str]:
  """tf.keras.applications names: conv1_conv/conv1_bn, conv2_block1_1_conv, ..."""
  if unit == 'stem':
    return 'conv1_conv', 'conv1_bn'
  s, i, j = unit
  return f'conv{s}_block{i + 1}_{j}_conv', f'conv{s}_block{i + 1}_{j}_bn'

def _torch_names(unit) -> Tuple[str, str]:
  if unit == 'stem':
    return 'conv1', 'bn1'
  s, i, j = unit
  if j == 0:
    return f'layer{s - 1}.{i}.downsample.0', f'layer{s - 1}.{i}.downsample.1'
  return f'layer{s - 1}.{i}.conv{j}', f'layer{s - 1}.{i}.bn{j}'

class _Family:
  """How one naming family stores a conv+BN pair and the classifier."""

  def __init__(self, name, names, sep, conv_kernel, conv_bias, bn_keys, bn_eps, head,
               head_kernel_to_flax, conv_to_flax, ignore=()):
    self.name, self.names, self.sep = name, names, sep
    self.conv_kernel, self.conv_bias, self.bn_keys, self.bn_eps = (conv_kernel, conv_bias,
                                                                   bn_keys, bn_eps)
    self.head, self.head_kernel_to_flax, self.conv_to_flax = head, head_kernel_to_flax, conv_to_flax
    self.ignore = ignore

_KERAS_BN = ('gamma', 'beta', 'moving_mean', 'moving_variance')

_FAMILIES = {
    'keras': _Family('keras', _keras_names, '/', 'kernel', 'bias', _KERAS_BN, 1e-3, 'fc1000',
                     lambda k: k, lambda k: k),
    'keras_v2': _Family('keras_v2', _keras_v2_names, '/', 'kernel', 'bias', _KERAS_BN, 1.001e-5,
                        'predictions', lambda k: k, lambda k: k),
    'torchvision': _Family('torchvision', _torch_names, '.', 'weight', 'bias',
                           ('weight', 'bias', 'running_mean', 'running_var'), 1e-5, 'fc',
                           lambda k: k.T, lambda k: k.transpose(2, 3, 1, 0),
                           ignore=('num_batches_tracked',)),
}

def detect_family(tensors: Dict[str, np.ndarray], path: str) -> str:
  """'keras' | 'keras_v2' | 'torchvision' from the stem's name."""
  for name, family in _FAMILIES.items():
    conv, _ = family.names('stem')
    if f'{conv}{family.sep}{family.conv_kernel}' in tensors:
      return name
  sample = sorted(tensors)[:8]
  raise ValueError(
      f'{path}: not a ResNet-50 in a known layout: no stem convolution (Keras `conv1/kernel`, '
      f'tf.keras `conv1_conv/kernel` or torchvision `conv1.weight`) among {len(tensors)} '
      f'tensors; first names: {sample}')

@functools.lru_cache(maxsize=8)
def expected_shapes(width: int, num_classes: Optional[int]) -> Dict[str, Tuple[int, ...]]:
  """{'params/stem/conv1/kernel': shape, ...} of `models.ResNet(width, num_classes)`."""
  model = models.ResNet(stage_sizes=STAGE_SIZES, width=width, num_classes=num_classes)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  return {k: tuple(v.shape) for k, v in flatten(shapes).items()}

def flatten(tree: Any, prefix: str = '') -> Dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}."""
  if hasattr(tree, 'items'):
    out = {}
    for k, v in tree.items():
      out.update(flatten(v, f'{prefix}{k}/'))
    return out
  return {prefix[:-1]: tree}

def unflatten(flat: Dict[str, Any]) -> Dict[str, Any]:
  """{'a/b/c': leaf} -> nested dict."""
  out: Dict[str, Any] = {}
  for key, value in flat.items():
    node = out
    *parents, last = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = value
  return out

def fmt_list(items, limit=12):
  items = list(items)
  shown = ', '.join(items[:limit])
  return shown + (f', ... ({len(items) - limit} more)' if len(items) > limit else '')

def raise_problems(path, missing, unexpected, misshaped):
  if not (missing or unexpected or misshaped):
    return
  parts = []
  if missing:
    parts.append(f'missing {len(missing)} tensor(s): {fmt_list(missing)}')
  if unexpected:
    parts.append(f'unexpected {len(unexpected)} tensor(s): {fmt_list(unexpected)}')
  if misshaped:
    parts.append(f'mis-shaped {len(misshaped)} tensor(s): {fmt_list(misshaped)}')
  raise ValueError(f'{path}: not a ResNet-50 state this loader can map; ' + '; '.join(parts))

def map_named_tensors(tensors: Dict[str, np.ndarray], family: str, path: str = '<tensors>'
                      ) -> Variables:
  """Keras / torchvision named tensors -> ResNet variables (float32 numpy), folding biases/eps."""
  fam = _FAMILIES[family]
  sep = fam.sep
  used, missing, misshaped = set(), [], []

  def take(key):
    if key not in tensors:
      missing.append(key)
      return None
    used.add(key)
    return np.asarray(tensors[key])

  stem_conv, _ = fam.names('stem')
  stem_kernel = tensors.get(f'{stem_conv}{sep}{fam.conv_kernel}')
  if stem_kernel is None or stem_kernel.ndim != 4:
    raise ValueError(f'{path}: stem kernel {stem_conv}{sep}{fam.conv_kernel} is missing or '
                     'not 4-D')
  width = int(stem_kernel.shape[3] if family != 'torchvision' else stem_kernel.shape[0])
  conv_has_bias = f'{stem_conv}{sep}{fam.conv_bias}' in tensors
  head_kernel_key = f'{fam.head}{sep}{fam.conv_kernel}'
  head_bias_key = f'{fam.head}{sep}{fam.conv_bias}'
  has_head = head_kernel_key in tensors or head_bias_key in tensors
  num_classes = None
  if head_kernel_key in tensors and tensors[head_kernel_key].ndim == 2:
    shape = tensors[head_kernel_key].shape
    num_classes = int(shape[0] if family == 'torchvision' else shape[1])
  elif head_bias_key in tensors and tensors[head_bias_key].ndim == 1:
    num_classes = int(tensors[head_bias_key].shape[0])
  expected = expected_shapes(width, num_classes)

  flat = {}
  for conv_path, bn_path, unit in _units():
    conv_name, bn_name = fam.names(unit)
    kernel = take(f'{conv_name}{sep}{fam.conv_kernel}')
    bias = take(f'{conv_name}{sep}{fam.conv_bias}') if conv_has_bias else None
    gamma, beta, mean, var = (take(f'{bn_name}{sep}{k}') for k in fam.bn_keys)
    if kernel is not None:
      if kernel.ndim == 4:
        kernel = fam.conv_to_flax(kernel)
      flat['params/' + '/'.join(conv_path) + '/kernel'] = (
          kernel, f'{conv_name}{sep}{fam.conv_kernel}')
    # Fold the conv bias and the source eps into the BN statistics, in float64.
    if mean is not None and bias is not None:
      if mean.shape != bias.shape:
        misshaped.append(f'{conv_name}{sep}{fam.conv_bias} {tuple(bias.shape)} vs '
                         f'{bn_name}{sep}{fam.bn_keys[2]} {tuple(mean.shape)}')
      else:
        mean = mean.astype(np.float64) - bias.astype(np.float64)
    if var is not None:
      var = var.astype(np.float64) + (fam.bn_eps - FLAX_BN_EPS)
    bn_prefix = '/'.join(bn_path)
    for coll, leaf, value, src in (('params', 'scale', gamma, fam.bn_keys[0]),
                                   ('params', 'bias', beta, fam.bn_keys[1]),
                                   ('batch_stats', 'mean', mean, fam.bn_keys[2]),
                                   ('batch_stats', 'var', var, fam.bn_keys[3])):
      if value is not None:
        flat[f'{coll}/{bn_prefix}/{leaf}'] = (value, f'{bn_name}{sep}{src}')
  if has_head:
    kernel, bias = take(head_kernel_key), take(head_bias_key)
    if kernel is not None:
      flat['params/fc/kernel'] = (fam.head_kernel_to_flax(kernel) if kernel.ndim == 2 else kernel,
                                  head_kernel_key)
    if bias is not None:
      flat['params/fc/bias'] = (bias, head_bias_key)

  out = {}
  for key, (value, src) in flat.items():
    want = expected.get(key)
    if want is None:
      misshaped.append(f'{src} (no place {key} in ResNet width {width})')
    elif tuple(value.shape) != want:
      misshaped.append(f'{src} -> {key}: shape {tuple(value.shape)}, expected {want}')
    else:
      out[key] = value.astype(np.float32)
  unexpected = sorted(k for k in tensors if k not in used
                      and not any(k.endswith(sep + suffix) for suffix in fam.ignore))
  raise_problems(path, missing, unexpected, misshaped)
  return unflatten(out)
