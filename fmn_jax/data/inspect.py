"""Data command line: dataset summary, cold/warm load times, input-pipeline benchmark.

    python -m fmn_jax.data.inspect summary --name=market1501 --root=~/data/Market-1501-v15.09.15
    python -m fmn_jax.data.inspect times --name=market1501 --root=~/data/Market-1501-v15.09.15
    python -m fmn_jax.data.inspect bench --image_size=224,224 --batch_size=64

`times` loads the dataset and decodes its three splits twice: first into an empty cache folder
(cold; a fresh temporary folder unless --cache_dir is given), then again in a new Python process
that finds the cache (warm). `bench` measures augmented images per second of the on-device
pipeline (gather + resize + pad-and-crop + flip + normalisation [+ random erasing]).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

SPLITS = ('train', 'query', 'gallery')


def _size(text: str) -> tuple:
  try:
    h, w = (int(v) for v in text.split(','))
  except ValueError as e:
    raise argparse.ArgumentTypeError(f'expected H,W, got {text!r}') from e
  return h, w


def load_times(name: str, root: str, size: tuple, cache_dir: str,
               skip_unreadable: bool = False) -> dict:
  """Seconds to list+check the dataset and to decode (or map) each split, in this process."""
  from fmn_jax.data import cache  # pylint: disable=g-import-not-at-top
  from fmn_jax.data import datasets  # pylint: disable=g-import-not-at-top
  out = {}
  t0 = time.perf_counter()
  ds = datasets.load_dataset(name, root, skip_unreadable=skip_unreadable)
  out['load_dataset_s'] = time.perf_counter() - t0
  for split in SPLITS:
    t = time.perf_counter()
    arr = cache.decode_split(getattr(ds, split), size, cache_dir, progress=False)
    checksum = int(arr[::97].sum(dtype=np.int64))  # Touch the data.
    out[f'{split}_s'] = time.perf_counter() - t
    out[f'{split}_shape'] = list(arr.shape)
    out[f'{split}_checksum'] = checksum
  out['total_s'] = time.perf_counter() - t0
  return out


def cmd_summary(args) -> int:
  from fmn_jax.data import datasets  # pylint: disable=g-import-not-at-top
  t = time.perf_counter()
  ds = datasets.load_dataset(args.name, args.root, skip_unreadable=args.skip_unreadable)
  print(ds.summary())
  print(f'  classes  {ds.num_classes}   (listed and checked in {time.perf_counter() - t:.2f} s)')
  return 0


def cmd_load(args) -> int:
  print(json.dumps(load_times(args.name, args.root, args.size, args.cache_dir,
                              args.skip_unreadable)))
  return 0


def cmd_times(args) -> int:
  tmp = None
  cache_dir = args.cache_dir
  if cache_dir is None:
    tmp = tempfile.mkdtemp(prefix='fmn_jax_cache_')
    cache_dir = tmp
  try:
    cold = load_times(args.name, args.root, args.size, cache_dir, args.skip_unreadable)
    cmd = [sys.executable, '-m', 'fmn_jax.data.inspect', 'load', f'--name={args.name}',
           f'--root={args.root}', f'--size={args.size[0]},{args.size[1]}',
           f'--cache_dir={cache_dir}'] + (['--skip_unreadable'] if args.skip_unreadable else [])
    t = time.perf_counter()
    res = subprocess.run(cmd, check=False, capture_output=True, text=True)
    warm_process = time.perf_counter() - t
    if res.returncode != 0:
      lines = res.stderr.strip().splitlines() or ['(no output)']
      raise RuntimeError(f'the warm pass ({" ".join(cmd[1:4])} ...) failed with exit '
                         f'{res.returncode}: {lines[-1]}')
    warm = json.loads(res.stdout.strip().splitlines()[-1])
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
  for label, r in (('cold', cold), ('warm', warm)):
    shapes = ', '.join(f'{s} {r[f"{s}_shape"][0]}' for s in SPLITS)
    print(f'{label}: load_dataset {r["load_dataset_s"]:.2f} s, decode train '
          f'{r["train_s"]:.2f} s, query {r["query_s"]:.2f} s, gallery {r["gallery_s"]:.2f} s, '
          f'total {r["total_s"]:.2f} s  ({shapes}; size {args.size[0]}x{args.size[1]})')
  print(f'warm, whole new Python process (imports included): {warm_process:.2f} s')
  if any(cold[f'{s}_checksum'] != warm[f'{s}_checksum'] for s in SPLITS):
    print('ERROR: warm cache content differs from the cold decode', file=sys.stderr)
    return 1
  return 0


def _device_steps(images, sampler, key, kw):
  """run(start, n) for the split in device memory: one jitted gather + augment per step."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fmn_jax.data import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  data = jax.device_put(images)

  @jax.jit
  def step_fn(data, idx, step):
    return ip._augment(jax.random.fold_in(key, step),  # pylint: disable=protected-access
                       jnp.take(data, idx, axis=0), **kw)

  def run(start, n):
    out = None
    for step in range(start, start + n):
      out = step_fn(data, jnp.asarray(sampler.indices(step), jnp.int32), step)
    return out
  return data, run


def _host_steps(images, sampler, key, kw):
  """run(start, n) for the split on the host: numpy gather, copy to the device, jitted augment."""
  import jax  # pylint: disable=g-import-not-at-top
  from fmn_jax.data import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  aug = jax.jit(lambda x, step: ip._augment(  # pylint: disable=protected-access
      jax.random.fold_in(key, step), x, **kw))

  def run(start, n):
    out = None
    for step in range(start, start + n):
      out = aug(jax.device_put(np.asarray(images[sampler.indices(step)])), step)
    return out
  return None, run


def benchmark_pipeline(*, image_size=(224, 224), stored_size=(128, 64), batch_size: int = 64,
                       num_examples: int = 12936, steps: int = 50, warmup: int = 5,
                       pad: int = 10, flip: bool = True, random_erasing: float = 0.5,
                       normalization: str = 'caffe_bgr', images=None, host: bool = False,
                       seed: int = 0) -> dict:
  """Augmented images per second of the training input pipeline on the default device.

  Each step: sampler indices (host) -> gather on the device -> augment (one jitted call). With
  `host=True` the split stays on the host, as the trainer keeps one too large for the devices:
  each step gathers its batch with numpy and copies it to the device before augmenting.
  `images` defaults to random uint8 [num_examples, *stored_size, 3].
  """
  import jax  # pylint: disable=g-import-not-at-top
  from fmn_jax.data import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  if images is None:
    images = np.random.default_rng(seed).integers(
        0, 256, (num_examples,) + tuple(stored_size) + (3,), dtype=np.uint8)
  kw = dict(image_size=tuple(image_size), pad=pad, flip=flip,
            random_erasing=float(random_erasing), normalization=normalization)
  sampler = ip.EpochSampler(images.shape[0], batch_size, seed)
  t = time.perf_counter()
  placed, run = (_host_steps if host else _device_steps)(images, sampler, jax.random.key(seed),
                                                          kw)
  jax.block_until_ready(placed if placed is not None else 0)
  put_s = time.perf_counter() - t
  jax.block_until_ready(run(0, warmup))
  t = time.perf_counter()
  jax.block_until_ready(run(warmup, steps))
  dt = time.perf_counter() - t
  return {
      'images_per_s': steps * batch_size / dt, 'step_ms': 1000 * dt / steps,
      'batch_size': batch_size, 'steps': steps, 'image_size': list(image_size),
      'stored_size': list(images.shape[1:3]), 'num_examples': int(images.shape[0]),
      'random_erasing': float(random_erasing), 'mode': 'host' if host else 'device',
      'device': str(jax.devices()[0]), 'dataset_to_device_s': put_s,
  }


def cmd_bench(args) -> int:
  images = None
  if args.root:
    from fmn_jax.data import cache, datasets  # pylint: disable=g-import-not-at-top
    ds = datasets.load_dataset(args.name, args.root)
    images = cache.decode_split(ds.train, args.stored_size, args.cache_dir)
  r = benchmark_pipeline(image_size=args.image_size, stored_size=args.stored_size,
                         batch_size=args.batch_size, num_examples=args.num_examples,
                         steps=args.steps, random_erasing=args.random_erasing,
                         normalization=args.normalization, images=images, host=args.host)
  print(json.dumps(r))
  print(f'{r["images_per_s"]:.0f} augmented {r["image_size"][0]}x{r["image_size"][1]} '
        f'images/s on {r["device"]} ({r["mode"]} dataset, batch {r["batch_size"]}, '
        f'{r["step_ms"]:.2f} ms/step)')
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True)
  for cmd in ('summary', 'load', 'times'):
    p = sub.add_parser(cmd)
    p.add_argument('--name', default='market1501')
    p.add_argument('--root', required=True)
    p.add_argument('--size', type=_size, default=(128, 64), help='storage size H,W')
    p.add_argument('--cache_dir', default=None,
                   help='decoded-cache folder (times: default a fresh temporary folder, so the '
                   'first pass is cold; a given folder is kept and may already be warm)')
    p.add_argument('--skip_unreadable', action='store_true')
  p = sub.add_parser('bench')
  p.add_argument('--image_size', type=_size, default=(224, 224))
  p.add_argument('--stored_size', type=_size, default=(128, 64))
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--num_examples', type=int, default=12936)
  p.add_argument('--steps', type=int, default=50)
  p.add_argument('--random_erasing', type=float, default=0.5)
  p.add_argument('--normalization', default='caffe_bgr')
  p.add_argument('--host', action='store_true',
                 help='measure the split kept on the host (numpy gather and copy per step)')
  p.add_argument('--name', default='market1501')
  p.add_argument('--root', default=None, help='use this dataset\'s decoded train split')
  p.add_argument('--cache_dir', default=None)
  args = parser.parse_args(argv)
  if getattr(args, 'root', None):
    args.root = os.path.expanduser(args.root)
  command = {'summary': cmd_summary, 'load': cmd_load, 'times': cmd_times,
             'bench': cmd_bench}[args.command]
  try:
    return command(args)
  except (ValueError, OSError, RuntimeError) as e:
    # A wrong --name or --root, an unparsable file name, an unreadable image: one line naming it.
    print(f'error: {e}', file=sys.stderr)
    return 1


if __name__ == '__main__':
  sys.exit(main())
