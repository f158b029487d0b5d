"""Per-block CPU timing of ResNet-50's training step: JAX (`models`, CPU switch as set) beside
the same block in PyTorch, forward + backward with BatchNorm in training mode, batch 32.

    python scripts/cpu_blocks.py --size=256,128 [--only=stem,res2.0,res2.1]

Prints, for the stem and the first two blocks of each stage, milliseconds per call (best of 4)
and torch's time over JAX's, then the sum weighted by how often each block occurs in ResNet-50.
Needs torch (CPU build). The analysis behind docs/speed.md's "What is left".
"""

import argparse
import os
import time

import numpy as np

from fmn_jax import cpu


def _best(fn, calls=4):
  fn()
  times = []
  for _ in range(calls):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times) * 1e3


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--size', default='256,128', help='input height,width')
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--only', default='', help='comma-separated block names (default: all)')
  args = ap.parse_args()
  try:
    h, w = (int(v) for v in args.size.split(','))
  except ValueError:
    raise SystemExit(f'error: --size wants height,width (e.g. 256,128), got {args.size!r}') from None
  cpu.configure()
  # pylint: disable=g-import-not-at-top
  from fmn_jax import benchmark_cpu
  benchmark_cpu.passive_torch_threads()
  import jax
  import jax.numpy as jnp
  import torch
  from fmn_jax import models
  torch.set_num_threads(os.cpu_count() or 1)
  b = args.batch
  conv, norm = models.layer_defs(jnp.float32, 0.9, 1e-5)
  torch_layers = list(benchmark_cpu._torch_resnet50(0))  # pylint: disable=protected-access
  # (name, JAX module, torch module, NHWC input shape, occurrences, input gradient needed)
  blocks = [('stem', models.Stem(64, conv, norm), torch.nn.Sequential(*torch_layers[:4]),
             (b, h, w, 3), 1, False)]
  h, w, cin, index = -(-h // 4), -(-w // 4), 64, 4
  for stage, num in enumerate(benchmark_cpu.STAGE_SIZES):
    f = 64 * 2**stage
    for i in range(num):
      stride = 2 if (i == 0 and stage > 0) else 1
      if i < 2:
        blocks.append((f'res{stage + 2}.{i}', models.Bottleneck(f, conv, norm, stride),
                       torch_layers[index], (b, h, w, cin), 1 if i == 0 else num - 1, True))
      index += 1
      h, w, cin = -(-h // stride), -(-w // stride), 4 * f
  only = set(filter(None, args.only.split(',')))
  unknown = only - {blk[0] for blk in blocks}
  if unknown:
    raise SystemExit(f'error: --only names unknown blocks {sorted(unknown)}')
  total_jax = total_torch = 0.0
  for name, mod, tmod, shape, count, dx in blocks:
    if only and name not in only:
      continue
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, np.float32))
    v = mod.init(jax.random.key(0), x[:1], train=False)
    out = mod.apply(v, x, train=True, mutable=['batch_stats'])[0]
    ct = jnp.asarray(rng.standard_normal(out.shape, np.float32))

    def loss(p, x, mod=mod, v=v, ct=ct):
      y, upd = mod.apply({'params': p, 'batch_stats': v['batch_stats']}, x, train=True,
                         mutable=['batch_stats'])
      return jnp.sum(y * ct), upd

    grad = jax.jit(jax.grad(loss, argnums=(0, 1) if dx else 0, has_aux=True))
    ms_jax = _best(lambda: jax.block_until_ready(grad(v['params'], x)))
    tx = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last).requires_grad_(dx)
    tct = torch.tensor(np.asarray(ct)).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    tmod.train()

    def torch_step(tmod=tmod, tx=tx, tct=tct):
      tmod.zero_grad(set_to_none=True)
      tx.grad = None
      (tmod(tx) * tct).sum().backward()

    ms_torch = _best(torch_step)
    total_jax += ms_jax * count
    total_torch += ms_torch * count
    print(f'{name:8s} {str(shape):22s} x{count}  jax {ms_jax:7.1f} ms  torch {ms_torch:7.1f} ms  '
          f'torch/jax {ms_torch / ms_jax:.2f}', flush=True)
  print(f'weighted sum: jax {total_jax:.0f} ms, torch {total_torch:.0f} ms, '
        f'torch/jax {total_torch / max(total_jax, 1e-9):.2f}')


if __name__ == '__main__':
  main()
