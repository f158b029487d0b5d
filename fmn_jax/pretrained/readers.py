"""Raw named tensors from each weight file format; nothing is unpickled.

TF.js layers-model folders (model.json + shards), Keras `.h5` (h5py), torchvision state dicts
(`.pth`/`.pt` through `torch.load(weights_only=True)`, or `.safetensors`). h5py, torch and
safetensors are imported only when a file of theirs is read.
"""

import collections
import json
import os
from typing import Any, Dict, List

import numpy as np

_TFJS_DTYPES = {'float32': np.float32, 'int32': np.int32}

def tfjs_nbytes(weight: dict) -> int:
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
      weights = [(w['name'], w, tfjs_nbytes(w)) for w in group['weights']]
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
