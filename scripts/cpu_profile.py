"""Where one ResNet-50 training step spends its time on the CPU: XLA:CPU's operations by kind.

    python scripts/cpu_profile.py --size=256,128 [--top=20]

Runs the step of `fmn_jax.benchmark --what=cpu` (batch 32, float32, CPU switch as set) under
`jax.profiler`, reads the per-operation events of the trace and names each operation from the
compiled HLO (dumped to a temporary folder): YNNPACK dots and reductions, XLA's own fusions by
their name (`add_select_fusion`: ReLU gradients and residual sums, `transpose_copy_fusion`:
layout copies, ...). Time that no traced operation accounts for is printed as such: in jaxlib
0.10 the trace events of XLA's own (Eigen) convolutions end before their work does (50 events,
about 10 ms in all, at 256x128), so that time is mostly theirs. Needs no torch. The analysis
behind docs/speed.md's "What is left".
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import numpy as np

from fmn_jax import cpu


def _hlo_kinds(hlo: str) -> dict:
  """{instruction name: kind} for the fusions and library calls of a compiled HLO module."""
  bodies = {}
  for block in hlo.split('\n\n'):
    name = re.match(r'(?:ENTRY )?%([\w.-]+) ', block.strip())
    if name:
      bodies[name.group(1)] = block
  kinds = {}
  for line in hlo.splitlines():
    m = re.match(r'\s*(?:ROOT )?%([\w.-]+) = \S+ ([\w-]+)\(', line)
    if not m:
      continue
    name, op = m.groups()
    called = re.search(r'calls=%([\w.-]+)', line)
    body = bodies.get(called.group(1), '') if called else ''
    if '"__ynn_fusion"' in line:
      core = next((k for k in ('convolution', 'dot', 'reduce') if f' {k}(' in body), 'other')
      kinds[name] = f'YNNPACK {core}'
    elif op == 'fusion':
      kinds[name] = re.sub(r'\.\d+$', '', name)
    else:
      kinds[name] = op
  return kinds


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--size', default='256,128', help='input height,width')
  ap.add_argument('--top', type=int, default=20, help='how many kinds to print')
  args = ap.parse_args()
  try:
    h, w = (int(v) for v in args.size.split(','))
  except ValueError:
    raise SystemExit(f'error: --size wants height,width (e.g. 256,128), got {args.size!r}') from None
  work = tempfile.mkdtemp(prefix='cpu_profile_')
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + f' --xla_dump_to={work}/hlo'
                             ' --xla_dump_hlo_as_text --xla_dump_hlo_module_re=jit_step').strip()
  cpu.configure()
  # pylint: disable=g-import-not-at-top
  import jax
  from fmn_jax import benchmark_cpu
  train = benchmark_cpu._jax_tasks(  # pylint: disable=protected-access
      h, w, cpu.enabled(), np.random.default_rng(0), benchmark_cpu.BATCH,
      benchmark_cpu.STAGE_SIZES)['train']
  for _ in range(3):   # the heap grows over the first steps (page faults); then it is reused
    train()
  with jax.profiler.trace(f'{work}/trace', create_perfetto_trace=True):
    t0 = time.perf_counter()
    train()
    step = time.perf_counter() - t0
  hlo_files = glob.glob(f'{work}/hlo/*jit_step.cpu_after_optimizations.txt')
  traces = glob.glob(f'{work}/trace/**/*.trace.json.gz', recursive=True)
  if not hlo_files or not traces:
    sys.exit(f'error: no compiled HLO or trace under {work}')
  with open(hlo_files[0]) as f:
    kinds = _hlo_kinds(f.read())
  with gzip.open(traces[0]) as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  ms, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e.get('name') in kinds:
      ms[kinds[e['name']]] += e['dur'] / 1e3
      count[kinds[e['name']]] += 1
  traced = sum(ms.values())
  print(f'{h}x{w} training step: {step * 1e3:.0f} ms; traced operations {traced:.0f} ms, '
        f'not accounted for {step * 1e3 - traced:.0f} ms (mostly XLA\'s own convolutions)')
  for kind, t in ms.most_common(args.top):
    print(f'  {t:8.1f} ms  {count[kind]:4d}x  {kind}')
  print(f'(trace and HLO in {work})')


if __name__ == '__main__':
  main()
