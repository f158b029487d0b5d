"""`--what=train` of `fmn_jax.benchmark`: training steps and feature extraction, images/s.

The ceiling (a plain ResNet-50 step of the same layers), the stage-1 and stage-2 steps as the
trainer jits them, in interleaved timed windows, and the feature extraction of the evaluation.
"""

import resource
import sys
import time
from typing import Callable, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmn_jax import features
from fmn_jax import initialization
from fmn_jax import models
from fmn_jax import parallel
from fmn_jax import stages
from fmn_jax.data import loading

NUM_CLASSES = 751   # Market-1501's training identities
GIB = 2**30


def rss_gib() -> float:
  """This process's resident memory now, GiB."""
  with open('/proc/self/statm', encoding='utf-8') as f:
    return int(f.read().split()[1]) * resource.getpagesize() / GIB


def timed(fn: Callable, repeats: int, keep: Optional[list] = None) -> dict:
  """Seconds of each call (results blocked on) and the resident memory before the first.

  If `keep` is a list, the first call's result is appended to it.
  """
  seconds = []
  rss_before = rss_gib()
  for i in range(max(1, repeats)):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    seconds.append(time.perf_counter() - t0)
    if i == 0 and keep is not None:
      keep.append(out)
    del out
  return {'seconds': seconds, 'rss_before_gib': rss_before}


def _run_steps(step: Callable, state, steps: int):
  """Runs `state = step(state)` `steps` times, blocked on; returns (seconds, state)."""
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state = step(state)
  jax.block_until_ready(state)
  return time.perf_counter() - t0, state


def _rate(windows: List[float], count: int) -> dict:
  """Items per second of the median window and the range over the windows (seconds each)."""
  rates = sorted(count / s for s in windows)
  return {'images_per_second': float(np.median(rates)),
          'images_per_second_range': [rates[0], rates[-1]]}


def bench_training(config, steps: int, warmup: int, num_images: int, rounds: int = 3) -> dict:
  """Images/s of the ceiling, stage-1 and stage-2 steps and feature extraction."""
  mesh = parallel.create_mesh()
  rng = np.random.default_rng(0)
  h, w = config.dataset.cache_size
  images = rng.integers(0, 256, (num_images, h, w, 3), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, num_images).astype(np.int32)
  model = models.create_fmn(config.model, NUM_CLASSES)
  variables = initialization.init_variables(model, config, load_pretrained=False)
  ih, iw = config.input.image_size
  out = {'device': str(jax.devices()[0].device_kind), 'backend': jax.default_backend(),
         'num_devices': jax.device_count(), 'image_size': [ih, iw],
         'dtype': config.model.dtype, 'width': config.model.width,
         'stage_sizes': list(config.model.stage_sizes), 'mask_layer': config.model.mask_layer,
         'steps': steps, 'warmup_steps': max(1, warmup), 'rounds': max(1, rounds),
         'num_images': num_images}
  # name -> (step: state -> state, state, batch size, ceiling name or None)
  runs = _ceiling_runs(config, model, mesh, labels, rng)
  runs.update(_stage_runs(config, model, variables, mesh, images, labels))
  windows = _interleaved_windows(runs, steps, warmup, rounds)
  for name, (_, _, bs, ceiling) in runs.items():
    r = dict(_rate(windows[name], steps * bs), batch_size=bs)
    if ceiling is not None:
      r['ratio_to_ceiling'] = r['images_per_second'] / out[ceiling]['images_per_second']
    out[name] = r
  out['ceiling'] = out[f'ceiling_b{config.grn.batch_size}']
  out['features'] = _feature_rate(config, model, variables, mesh, images, rounds)
  return out


def _ceiling_runs(config, model, mesh, labels, rng) -> dict:
  """The same ResNet-50 layers, a plain softmax step on a fixed normalised batch, at each
  stage's batch size."""
  repl, shard = parallel.replicated(mesh), parallel.data_sharded(mesh)
  ih, iw = config.input.image_size
  net = models.ResNet(num_classes=NUM_CLASSES, width=config.model.width,
                      stage_sizes=tuple(config.model.stage_sizes),
                      stride_layout=config.model.stride_layout, dtype=model.dtype)
  tx = optax.sgd(0.01, momentum=0.9)

  def plain_step(s, x, y):
    def loss_fn(p):
      logits, upd = net.apply({'params': p, 'batch_stats': s['batch_stats']}, x, train=True,
                              mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), y).mean(), upd['batch_stats']
    (_, bstats), g = jax.value_and_grad(loss_fn, has_aux=True)(s['params'])
    upd, opt = tx.update(g, s['opt'], s['params'])
    return {'params': optax.apply_updates(s['params'], upd), 'batch_stats': bstats, 'opt': opt}

  plain_jit = jax.jit(plain_step, in_shardings=(repl, shard, shard), out_shardings=repl,
                      donate_argnums=(0,))
  init = jax.jit(lambda k: net.init(k, jnp.zeros((1, ih, iw, 3), jnp.float32), train=False))
  runs = {}
  for bs in sorted({config.grn.batch_size, config.fmn.batch_size}):
    x = parallel.global_array(rng.standard_normal((bs, ih, iw, 3), np.float32), shard)
    y = parallel.global_array(labels[np.arange(bs) % labels.size], shard)
    v = init(jax.random.key(0, impl='unsafe_rbg'))
    # Placed with the step's sharding, so the first call and the next compile the same program.
    plain = jax.device_put({'params': v['params'], 'batch_stats': v['batch_stats'],
                            'opt': tx.init(v['params'])}, repl)
    runs[f'ceiling_b{bs}'] = (lambda s, x=x, y=y: plain_jit(s, x, y), plain, bs, None)
  return runs


def _stage_runs(config, model, variables, mesh, images, labels) -> dict:
  """Stage 1 and stage 2, as the trainer runs them (gather and augmentation included)."""
  repl = parallel.replicated(mesh)
  num_images = images.shape[0]
  timages = loading.TrainImages(images, labels, mesh, on_device=True)
  key = jax.random.key(0)
  runs = {}
  for name, stage in (('stage1', 'grn'), ('stage2', 'fmn')):
    bs = config[stage].batch_size
    parallel.check_batch_size(bs, f'{name} batch_size', mesh)
    tx = stages.make_optimizer(config[stage], max(1, num_images // bs))
    start = stages.grn_state if stage == 'grn' else stages.fmn_state
    state = jax.device_put(start(model, variables, tx), repl)
    step_fn = stages.make_train_step(stage, model, config, mesh, on_device=True)
    batches = [timages.batch(np.arange(i * bs, (i + 1) * bs) % num_images) for i in range(4)]
    counter = [0]

    def one(s, step_fn=step_fn, batches=batches, counter=counter):
      counter[0] += 1
      return step_fn(s, batches[counter[0] % len(batches)], key)[0]

    runs[name] = (one, state, bs, f'ceiling_b{bs}')
  return runs


def _interleaved_windows(runs: dict, steps: int, warmup: int, rounds: int) -> dict:
  """Warm-up (compilation included), then `rounds` interleaved timed windows of every run."""
  states = {}
  for name, (step, state, _, _) in runs.items():
    _, states[name] = _run_steps(step, state, max(1, warmup))
  windows = {name: [] for name in runs}
  for _ in range(max(1, rounds)):
    for name, (step, _, _, _) in runs.items():
      seconds, states[name] = _run_steps(step, states[name], steps)
      windows[name].append(seconds)
  return windows


def _feature_rate(config, model, variables, mesh, images, rounds: int) -> dict:
  """Feature extraction (evaluation forward, flip as configured), weights on the device."""
  variables = parallel.replicate_tree(variables, mesh)
  n = min(images.shape[0], max(8 * config.eval.batch_size, 256))
  features.compute_descriptors(model, variables, images[:config.eval.batch_size], config,
                               mesh=mesh, progress=False)   # compile
  seconds = timed(lambda: features.compute_descriptors(
      model, variables, images[:n], config, mesh=mesh, progress=False), rounds)['seconds']
  return dict(_rate(seconds, n), batch_size=config.eval.batch_size,
              flip=bool(config.eval.flip), num_images=n)


def print_training(r: dict) -> None:
  print(f'[train] {r["backend"]}: {r["device"]} x{r["num_devices"]}, input {r["image_size"]}, '
        f'{r["dtype"]}, width {r["width"]}')
  names = [n for n in r if n.startswith('ceiling_b')] + ['stage1', 'stage2', 'features']
  for name in names:
    m = r[name]
    ratio = f'  ({m["ratio_to_ceiling"]:.2f} of the ceiling)' if 'ratio_to_ceiling' in m else ''
    lo, hi = m['images_per_second_range']
    print(f'  {name:12s} {m["images_per_second"]:9.1f} images/s (windows {lo:.1f}-{hi:.1f})  '
          f'batch {m["batch_size"]}{ratio}')
  sys.stdout.flush()
