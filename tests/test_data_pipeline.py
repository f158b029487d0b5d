"""On-device input pipeline: normalisation, augmentation, samplers, datasets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmn_jax.data import input_pipeline as ip


def _images(n=6, h=16, w=8, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_normalize_modes():
  x = np.array([[[[255, 128, 0]]]], np.uint8)
  caffe = np.asarray(ip.normalize(x, 'caffe_bgr'))
  np.testing.assert_allclose(caffe[0, 0, 0], [0 - 103.939, 128 - 116.779, 255 - 123.68],
                             rtol=1e-6)
  rgb = np.asarray(ip.normalize(x, 'imagenet_rgb'))
  expect = (np.array([255, 128, 0]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  np.testing.assert_allclose(rgb[0, 0, 0], expect, rtol=1e-5)
  assert caffe.dtype == np.float32 and rgb.dtype == np.float32
  np.testing.assert_allclose(ip.normalize(x.astype(np.float32), 'caffe_bgr'), caffe)
  with pytest.raises(ValueError, match='unknown normalization'):
    ip.normalize(x, 'bgr')


def test_eval_preprocess_resize():
  x = _images()
  out = ip.preprocess_eval(x, image_size=(32, 16), normalization='imagenet_rgb')
  assert out.shape == (6, 32, 16, 3) and out.dtype == jnp.float32
  same = ip.preprocess_eval(x, image_size=[16, 8], normalization='caffe_bgr')
  np.testing.assert_allclose(same, ip.normalize(x, 'caffe_bgr'))
  const = np.full((1, 16, 8, 3), 200, np.uint8)
  up = ip.preprocess_eval(const, image_size=(64, 32), normalization='caffe_bgr')
  np.testing.assert_allclose(up, ip.normalize(np.full((1, 64, 32, 3), 200, np.uint8),
                                              'caffe_bgr'), atol=1e-3)
  with pytest.raises(ValueError, match=r'\[batch, height, width, 3\]'):
    ip.preprocess_eval(x[0], image_size=(16, 8), normalization='caffe_bgr')


def test_augment_identity_when_disabled_and_deterministic():
  x = _images()
  key = jax.random.key(0)
  plain = ip.augment(key, x, image_size=(16, 8), pad=0, flip=False, normalization='caffe_bgr')
  np.testing.assert_allclose(plain, ip.normalize(x, 'caffe_bgr'))
  a = ip.augment(key, x, image_size=(32, 16), random_erasing=0.5)
  b = ip.augment(key, x, image_size=(32, 16), random_erasing=0.5)
  c = ip.augment(jax.random.key(1), x, image_size=(32, 16), random_erasing=0.5)
  assert a.shape == (6, 32, 16, 3) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_flip_and_crop_are_per_example_and_exact():
  x = _images(n=16)
  base = np.asarray(ip.normalize(x, 'imagenet_rgb'))
  flipped = np.asarray(ip.augment(jax.random.key(3), x, image_size=(16, 8), pad=0, flip=True,
                                  normalization='imagenet_rgb'))
  is_flip = [np.allclose(flipped[i], base[i, :, ::-1]) for i in range(16)]
  is_same = [np.allclose(flipped[i], base[i]) for i in range(16)]
  assert all(f or s for f, s in zip(is_flip, is_same))
  assert 0 < sum(is_flip) < 16
  # Pad-and-crop: each output is a window of the zero(black)-padded image at some offset.
  pad = 3
  cropped = np.asarray(ip.augment(jax.random.key(4), x, image_size=(16, 8), pad=pad, flip=False,
                                  normalization='imagenet_rgb'))
  padded = np.pad(x.astype(np.float32), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  padded = np.asarray(ip.normalize(padded, 'imagenet_rgb'))
  offsets = []
  for i in range(16):
    found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
             if np.allclose(cropped[i], padded[i, dy:dy + 16, dx:dx + 8], atol=1e-5)]
    assert found, f'example {i} is not a crop of its padded image'
    offsets.append(found[0])
  assert len(set(offsets)) > 1


def test_random_erasing_rectangles():
  x = np.full((64, 32, 16, 3), 255, np.uint8)
  out = np.asarray(ip.augment(jax.random.key(5), x, image_size=(32, 16), pad=0, flip=False,
                              random_erasing=1.0, normalization='imagenet_rgb'))
  erased = np.all(out == 0, axis=-1)  # Erased pixels hold 0 (the mean colour).
  fractions = erased.mean(axis=(1, 2))
  assert (fractions > 0).mean() > 0.9
  for m in erased[fractions > 0]:
    rows, cols = np.where(m)
    box = m[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.all()  # One solid rectangle.
    assert 0.02 * 0.5 <= m.mean() <= 0.4 * 1.2
  none = np.asarray(ip.augment(jax.random.key(5), x, image_size=(32, 16), pad=0, flip=False,
                               random_erasing=0.0, normalization='imagenet_rgb'))
  assert not np.all(none == 0, axis=-1).any()
  with pytest.raises(ValueError, match='random_erasing'):
    ip.augment(jax.random.key(0), x, image_size=(32, 16), random_erasing=1.5)


def test_augment_inside_user_jit():
  x = _images()

  @jax.jit
  def f(key, images):
    return ip.augment(key, images, image_size=(24, 12), random_erasing=0.3).mean()

  assert np.isfinite(float(f(jax.random.key(0), x)))


def test_epoch_sampler_resume_and_coverage():
  s = ip.EpochSampler(103, 10, seed=7)
  assert s.steps_per_epoch == 10
  epoch0 = np.concatenate([s.indices(i) for i in range(10)])
  assert np.unique(epoch0).size == 100 and epoch0.max() < 103
  np.testing.assert_array_equal(
      epoch0, np.random.default_rng([7, 0]).permutation(103)[:100])
  resumed = ip.EpochSampler(103, 10, seed=7)
  for step in (25, 13, 0, 99):  # Any order: stateless.
    np.testing.assert_array_equal(resumed.indices(step), s.indices(step))
  assert not np.array_equal(s.indices(10), s.indices(0))
  t = ip.EpochSampler(103, 10, seed=7, drop_last=False)
  assert t.steps_per_epoch == 11
  last = t.indices(10)
  assert last.shape == (10,)
  full = np.concatenate([t.indices(i) for i in range(11)])
  assert set(full.tolist()) == set(range(103))
  with pytest.raises(ValueError):
    ip.EpochSampler(5, 10, 0)


def test_pk_sampler():
  labels = np.repeat(np.arange(30), [2 + i % 5 for i in range(30)])
  s = ip.PKSampler(labels, batch_size=32, num_instances=4, seed=1)
  assert s.steps_per_epoch == labels.size // 32
  seen = []
  for step in range(3 * s.steps_per_epoch):
    idx = s.indices(step)
    assert idx.shape == (32,)
    groups = labels[idx].reshape(8, 4)
    assert (groups == groups[:, :1]).all()  # K instances of each identity...
    assert np.unique(groups[:, 0]).size == 8  # ...of P distinct identities.
    for g, ids in zip(groups[:, 0], idx.reshape(8, 4)):
      if (labels == g).sum() >= 4:
        assert np.unique(ids).size == 4  # No repeats when the identity has enough images.
    seen.extend(idx.tolist())
  assert len(set(seen)) > 0.9 * labels.size
  again = ip.PKSampler(labels, batch_size=32, num_instances=4, seed=1)
  np.testing.assert_array_equal(again.indices(7), s.indices(7))
  with pytest.raises(ValueError, match='multiple'):
    ip.PKSampler(labels, batch_size=30, num_instances=4, seed=0)
  with pytest.raises(ValueError, match='identities'):
    ip.PKSampler(np.zeros(10, int), batch_size=8, num_instances=4, seed=0)
  assert isinstance(ip.make_sampler('pk', labels, 32, 1, num_instances=4), ip.PKSampler)
  epoch = ip.make_sampler('epoch', labels, 32, 1)
  assert isinstance(epoch, ip.EpochSampler) and epoch.num_examples == labels.size
  with pytest.raises(ValueError, match='unknown sampler'):
    ip.make_sampler('triplet', labels, 32, 1)


def test_eval_batches():
  batches = list(ip.eval_batches(10, 4))
  assert [v for _, v in batches] == [4, 4, 2]
  assert all(i.shape == (4,) for i, _ in batches)
  np.testing.assert_array_equal(np.concatenate([i[:v] for i, v in batches]), np.arange(10))


def test_benchmark_function_runs():
  from fmn_jax.data import inspect as data_inspect
  r = data_inspect.benchmark_pipeline(image_size=(32, 16), stored_size=(16, 8), batch_size=8,
                                      num_examples=64, steps=3, warmup=1)
  assert r['images_per_s'] > 0 and r['mode'] == 'device'
  r = data_inspect.benchmark_pipeline(image_size=(32, 16), stored_size=(16, 8), batch_size=8,
                                      num_examples=64, steps=3, warmup=1, host=True)
  assert r['images_per_s'] > 0 and r['mode'] == 'host'
