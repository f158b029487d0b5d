"""Input pipeline on the device: gather by index, augment, normalise; stateless samplers.

Each training step gathers a batch of the decoded training split (uint8 [N, h, w, 3], see
`decode_split`) by index and augments it with jitted jnp code:

  resize to `image_size` (bilinear) -> pad-and-crop (zero/black padding, a random offset per
  example) -> random horizontal flip -> normalisation -> optional random erasing.

Normalisations (they must match the pretrained weights):
  'caffe_bgr'    RGB -> BGR, minus the Caffe ImageNet mean [103.939, 116.779, 123.68], no std
                 (ResNet-50 v1 from Caffe/Keras/TF.js).
  'imagenet_rgb' x / 255, minus [0.485, 0.456, 0.406], divided by [0.229, 0.224, 0.225]
                 (torchvision, ResNet-50 v1.5).

Random erasing (Zhong et al., 2020): with probability p, a rectangle of area 2-40% of the image
and aspect ratio 0.3-3.3 (height/width) is erased. It is filled with 0 after normalisation, i.e.
the ImageNet mean colour (the reference code fills with per-channel mean values as well). Up to
10 rectangle draws are made per image and the first that fits is used (the reference draws up to
100); if none fits, nothing is erased.

Samplers are stateless: `indices(step)` depends only on (seed, step), so a resumed run replays the
same order. `device_memory_budget` is the size up to which the trainer keeps the split in device
memory.
"""

import functools
from typing import Iterator, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fmn_jax.config import NORMALIZATIONS
from fmn_jax.data import cache

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 3.3)
ERASE_ATTEMPTS = 10


def _size_tuple(image_size) -> Tuple[int, int]:
  return cache.check_size(image_size, 'image_size')


def _check_mode(mode: str) -> str:
  if mode not in NORMALIZATIONS:
    raise ValueError(f'unknown normalization {mode!r}; expected one of {NORMALIZATIONS}')
  return mode


def _check_images(images) -> None:
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images must be [batch, height, width, 3], got shape {images.shape}')


def normalize(images, mode: str) -> jnp.ndarray:
  """Normalises RGB images with values in 0..255 (uint8 or float) to float32 network input."""
  _check_mode(mode)
  x = jnp.asarray(images).astype(jnp.float32)
  if mode == 'caffe_bgr':
    return x[..., ::-1] - jnp.asarray(CAFFE_BGR_MEAN, jnp.float32)
  mean = jnp.asarray(IMAGENET_RGB_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_RGB_STD, jnp.float32)
  return (x / 255.0 - mean) / std


def _resize(x: jnp.ndarray, image_size: Tuple[int, int]) -> jnp.ndarray:
  if tuple(x.shape[1:3]) == tuple(image_size):
    return x
  return jax.image.resize(x, (x.shape[0], image_size[0], image_size[1], x.shape[3]),
                          method='bilinear', antialias=True)


def _pad_and_crop(rng, x: jnp.ndarray, pad: int) -> jnp.ndarray:
  b, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(rng, (b, 2), 0, 2 * pad + 1)
  crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def _random_erasing(rng, x: jnp.ndarray, p: float) -> jnp.ndarray:
  b, h, w, _ = x.shape
  k_apply, k_area, k_aspect, k_y, k_x = jax.random.split(rng, 5)
  area = jax.random.uniform(k_area, (b, ERASE_ATTEMPTS), minval=ERASE_AREA[0],
                            maxval=ERASE_AREA[1]) * (h * w)
  aspect = jax.random.uniform(k_aspect, (b, ERASE_ATTEMPTS), minval=ERASE_ASPECT[0],
                              maxval=ERASE_ASPECT[1])
  eh = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  ew = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
  first = jnp.argmax(fits, axis=1)
  eh = jnp.take_along_axis(eh, first[:, None], 1)[:, 0]
  ew = jnp.take_along_axis(ew, first[:, None], 1)[:, 0]
  apply = jax.random.bernoulli(k_apply, p, (b,)) & jnp.any(fits, axis=1)
  y0 = jnp.floor(jax.random.uniform(k_y, (b,)) * (h - eh + 1)).astype(jnp.int32)
  x0 = jnp.floor(jax.random.uniform(k_x, (b,)) * (w - ew + 1)).astype(jnp.int32)
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  mask = ((rows >= y0[:, None, None]) & (rows < (y0 + eh)[:, None, None]) &
          (cols >= x0[:, None, None]) & (cols < (x0 + ew)[:, None, None]) &
          apply[:, None, None])
  return jnp.where(mask[..., None], jnp.zeros((), x.dtype), x)


@functools.partial(jax.jit, static_argnames=('image_size', 'pad', 'flip', 'random_erasing',
                                             'normalization'))
def _augment(rng, images, image_size, pad, flip, random_erasing, normalization):
  k_crop, k_flip, k_erase = jax.random.split(rng, 3)
  x = _resize(images.astype(jnp.float32), image_size)
  if pad > 0:
    x = _pad_and_crop(k_crop, x, pad)
  if flip:
    do_flip = jax.random.bernoulli(k_flip, 0.5, (x.shape[0],))
    x = jnp.where(do_flip[:, None, None, None], x[:, :, ::-1], x)
  x = normalize(x, normalization)
  if random_erasing > 0:
    x = _random_erasing(k_erase, x, random_erasing)
  return x


def augment(rng, images_uint8, *, image_size, pad: int = 10, flip: bool = True,
            random_erasing: float = 0.0, normalization: str = 'caffe_bgr') -> jnp.ndarray:
  """Training augmentation of a gathered batch (jitted; deterministic given `rng`).

  Args:
    rng: a jax PRNG key.
    images_uint8: [B, h, w, 3] RGB images with values 0..255 (uint8 or float).
    image_size: output (H, W); the batch is resized bilinearly if (h, w) differs.
    pad: pad each side by `pad` black pixels, then crop (H, W) at a random offset (0 disables).
    flip: random horizontal flip with probability 0.5.
    random_erasing: probability of random erasing (0 disables).
    normalization: 'caffe_bgr' or 'imagenet_rgb'.

  Returns:
    float32 [B, H, W, 3].
  """
  _check_images(images_uint8)
  if not 0.0 <= float(random_erasing) <= 1.0:
    raise ValueError(f'random_erasing must be a probability in [0, 1], got {random_erasing}')
  if int(pad) < 0:
    raise ValueError(f'pad must be >= 0, got {pad}')
  return _augment(rng, images_uint8, image_size=_size_tuple(image_size), pad=int(pad),
                  flip=bool(flip), random_erasing=float(random_erasing),
                  normalization=_check_mode(normalization))


@functools.partial(jax.jit, static_argnames=('image_size', 'normalization'))
def _preprocess_eval(images, image_size, normalization):
  return normalize(_resize(images.astype(jnp.float32), image_size), normalization)


def preprocess_eval(images_uint8, *, image_size, normalization) -> jnp.ndarray:
  """Evaluation preprocessing: resize (bilinear) and normalise, no randomness."""
  _check_images(images_uint8)
  return _preprocess_eval(images_uint8, image_size=_size_tuple(image_size),
                          normalization=_check_mode(normalization))


# --------------------------------------------------------------------------------------------------
# Samplers.

class EpochSampler:
  """Shuffled epochs: epoch e is np.random.default_rng([seed, e]).permutation(N).

  `indices(step)` gives the batch of global step `step` (epoch = step // steps_per_epoch). With
  drop_last=False the last, short batch of an epoch is completed with the first indices of the
  same permutation, so every batch has `batch_size` entries (static shapes under jit).
  """

  def __init__(self, num_examples: int, batch_size: int, seed: int, drop_last: bool = True):
    if num_examples <= 0:
      raise ValueError(f'num_examples must be positive, got {num_examples}')
    if batch_size <= 0:
      raise ValueError(f'batch_size must be positive, got {batch_size}')
    if drop_last and batch_size > num_examples:
      raise ValueError(f'batch_size {batch_size} exceeds num_examples {num_examples} with '
                       'drop_last=True (no full batch)')
    self.num_examples = int(num_examples)
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.drop_last = drop_last
    n, b = self.num_examples, self.batch_size
    self.steps_per_epoch = n // b if drop_last else -(-n // b)
    self._cache = (None, None)

  def permutation(self, epoch: int) -> np.ndarray:
    if self._cache[0] != epoch:
      perm = np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)
      self._cache = (epoch, perm)
    return self._cache[1]

  def indices(self, step: int) -> np.ndarray:
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}')
    epoch, i = divmod(int(step), self.steps_per_epoch)
    perm = self.permutation(epoch)
    idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
    if idx.size < self.batch_size:
      idx = np.concatenate([idx, np.resize(perm, self.batch_size - idx.size)])
    return idx.astype(np.int64)


class PKSampler:
  """Identity-balanced batches: P = batch_size // num_instances identities x K instances.

  An epoch has len(labels) // batch_size steps. Within epoch e the identities are taken in the
  order of successive permutations drawn from default_rng([seed, e]) (a batch never holds an
  identity twice); each identity's images are served from its own reshuffled cycle, so all images
  are used evenly. Identities with fewer than K images repeat some (sampling with replacement, as
  usual). `indices(step)` depends only on (seed, step).
  """

  def __init__(self, labels, batch_size: int, num_instances: int, seed: int,
               drop_last: bool = True):
    del drop_last  # Every PK batch is full.
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
      raise ValueError(f'labels must be a non-empty 1-d array, got shape {labels.shape}')
    if num_instances <= 0 or batch_size % num_instances:
      raise ValueError(f'batch_size ({batch_size}) must be a positive multiple of num_instances '
                       f'({num_instances})')
    self.labels = labels
    self.batch_size = int(batch_size)
    self.num_instances = int(num_instances)
    self.num_identities = batch_size // num_instances
    self.seed = int(seed)
    self.classes, inverse = np.unique(labels, return_inverse=True)
    if self.classes.size < self.num_identities:
      raise ValueError(f'{self.num_identities} identities per batch requested but the labels hold '
                       f'only {self.classes.size}')
    order = np.argsort(inverse, kind='stable')
    counts = np.bincount(inverse)
    self._members = np.split(order, np.cumsum(counts)[:-1])
    self.num_examples = labels.size
    self.steps_per_epoch = max(1, labels.size // batch_size)
    self._cache = (None, None)

  def _epoch(self, epoch: int) -> np.ndarray:
    if self._cache[0] == epoch:
      return self._cache[1]
    rng = np.random.default_rng([self.seed, int(epoch), 17])
    c, p, k, spe = self.classes.size, self.num_identities, self.num_instances, self.steps_per_epoch
    rounds = -(-spe * p // c) + 1
    ids = np.concatenate([rng.permutation(c) for _ in range(rounds)])[:spe * p].reshape(spe, p)
    for row in ids:  # Repair batches that straddle two permutations and repeat an identity.
      if np.unique(row).size < p:
        row[:] = rng.choice(c, p, replace=False)
    streams = {}
    out = np.empty((spe, p * k), np.int64)
    for s in range(spe):
      for j, cid in enumerate(ids[s]):
        members = self._members[cid]
        if members.size < k:  # Too few images: all of them, then some again.
          taken = np.concatenate([rng.permutation(members),
                                  rng.choice(members, k - members.size)])
        else:
          buf, pos = streams.get(cid, (None, 0))
          if buf is None:
            buf = rng.permutation(members)
          elif pos + k > buf.size:  # Start a new cycle with the unused rest of this one first.
            rest = buf[pos:]
            buf = np.concatenate([rest, rng.permutation(np.setdiff1d(members, rest))])
            pos = 0
          taken = buf[pos:pos + k]
          streams[cid] = (buf, pos + k)
        out[s, j * k:(j + 1) * k] = taken
    self._cache = (epoch, out)
    return out

  def indices(self, step: int) -> np.ndarray:
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}')
    epoch, i = divmod(int(step), self.steps_per_epoch)
    return self._epoch(epoch)[i].copy()


def make_sampler(kind: str, labels, batch_size: int, seed: int, num_instances: int = 4):
  """`config.input.sampler` -> sampler: 'epoch' (shuffled epochs, the paper) or 'pk'."""
  if kind in ('epoch', 'shuffle', 'random'):
    return EpochSampler(len(labels), batch_size, seed)
  if kind in ('pk', 'identity'):
    return PKSampler(labels, batch_size, num_instances, seed)
  raise ValueError(f"unknown sampler {kind!r}; expected 'epoch' or 'pk'")


def eval_batches(num_examples: int, batch_size: int) -> Iterator[Tuple[np.ndarray, int]]:
  """Yields (indices [batch_size], num_valid) covering 0..N-1 in order.

  The last batch is padded with index 0 so every batch has the same shape; keep the first
  `num_valid` outputs.
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  for start in range(0, num_examples, batch_size):
    idx = np.arange(start, min(num_examples, start + batch_size), dtype=np.int64)
    valid = idx.size
    if valid < batch_size:
      idx = np.concatenate([idx, np.zeros(batch_size - valid, np.int64)])
    yield idx, valid


def device_memory_budget(fraction: float = 0.4) -> int:
  """Bytes of device memory a dataset may take: `fraction` of the first device's limit.

  Devices that report no limit (the CPU backend) get 4 GiB.
  """
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # Some backends do not implement memory_stats.
    stats = {}
  limit = stats.get('bytes_limit')
  if not limit:
    return 4 << 30
  return int(limit * fraction)


__all__ = [
    'NORMALIZATIONS', 'EpochSampler', 'PKSampler', 'augment', 'device_memory_budget',
    'eval_batches', 'make_sampler', 'normalize', 'preprocess_eval',
]
