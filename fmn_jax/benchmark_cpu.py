"""`--what=cpu` of `fmn_jax.benchmark`: ResNet-50 on the CPU beside PyTorch, in one process.

Times, in interleaved windows on the same inputs (batch 32, float32): the forward of
`models.ResNet` (ResNet-50 v1, no head) at 256x128 and 128x64, and a training step (softmax
cross-entropy over 751 classes, SGD with momentum), each with the CPU speed switch on
(`fmn_jax.cpu`, the default) and off, against the same architecture written in PyTorch (torch's
CPU build; torchvision is not needed). Achieved GFLOP/s count the convolutions and the
classifier (2 FLOPs per multiply-add; a training step as 3 forwards) and are compared with the
best float32 matrix product of the same machine (JAX and torch, 2048x2048).
"""

import functools
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmn_jax import cpu

try:
  import resource  # pylint: disable=g-import-not-at-top
except ImportError:  # not Unix: page faults are not counted
  resource = None
from fmn_jax import models

STAGE_SIZES = (3, 4, 6, 3)
NUM_CLASSES = 751
BATCH = 32
SIZES = ((256, 128), (128, 64))


def resnet50_forward_flops(h: int, w: int, num_classes: int = 0,
                           stage_sizes: Tuple[int, ...] = STAGE_SIZES) -> float:
  """FLOPs (2 per multiply-add) of the convolutions and the classifier of ResNet-50 v1."""
  def out(n, k, s, p):
    return (n + 2 * p - k) // s + 1
  macs = 0
  h, w = out(h, 7, 2, 3), out(w, 7, 2, 3)
  macs += h * w * 7 * 7 * 3 * 64
  h, w = out(h, 3, 2, 1), out(w, 3, 2, 1)
  cin = 64
  for i, blocks in enumerate(stage_sizes):
    f = 64 * 2**i
    for b in range(blocks):
      s = 2 if (b == 0 and i > 0) else 1
      ho, wo = out(h, 1, s, 0), out(w, 1, s, 0)
      macs += ho * wo * cin * f + ho * wo * 9 * f * f + ho * wo * f * 4 * f
      if b == 0:
        macs += ho * wo * cin * 4 * f
      h, w, cin = ho, wo, 4 * f
  return 2.0 * (macs + cin * num_classes)


def _torch_resnet50(num_classes: int, stage_sizes: Tuple[int, ...] = STAGE_SIZES):
  """ResNet-50 v1 (stride on the first 1x1 of a block) in PyTorch, channels_last."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class Block(nn.Module):

    def __init__(self, cin, f, stride):
      super().__init__()
      self.body = nn.Sequential(
          nn.Conv2d(cin, f, 1, stride, bias=False), nn.BatchNorm2d(f), nn.ReLU(inplace=True),
          nn.Conv2d(f, f, 3, 1, 1, bias=False), nn.BatchNorm2d(f), nn.ReLU(inplace=True),
          nn.Conv2d(f, 4 * f, 1, bias=False), nn.BatchNorm2d(4 * f))
      self.proj = (nn.Sequential(nn.Conv2d(cin, 4 * f, 1, stride, bias=False),
                                 nn.BatchNorm2d(4 * f))
                   if cin != 4 * f or stride != 1 else nn.Identity())

    def forward(self, x):
      return torch.relu(self.body(x) + self.proj(x))

  layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1)]
  cin = 64
  for i, blocks in enumerate(stage_sizes):
    f = 64 * 2**i
    for b in range(blocks):
      layers.append(Block(cin, f, 2 if (b == 0 and i > 0) else 1))
      cin = 4 * f
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
  if num_classes:
    layers.append(nn.Linear(cin, num_classes))
  return nn.Sequential(*layers).to(memory_format=torch.channels_last)


def _jax_tasks(h: int, w: int, fast: bool, rng, batch: int,
               stage_sizes: Tuple[int, ...]) -> Dict[str, Callable[[], object]]:
  """{'forward', 'train'}: one call each, jitted with the switch `fast`: traced in, and with
  `fast` off compiled with XLA's default values of the flags the switch set in XLA_FLAGS."""
  os.environ[cpu.ENV] = '1' if fast else '0'
  options = {} if fast else {k: cpu.DEFAULT_XLA_FLAGS[k] for k in cpu.applied_xla_flags}
  jit = functools.partial(jax.jit, compiler_options=options or None)
  x = jnp.asarray(rng.standard_normal((batch, h, w, 3), np.float32))
  y = jnp.asarray(rng.integers(0, NUM_CLASSES, batch), jnp.int32)
  body = models.ResNet(stage_sizes=stage_sizes, num_classes=None)
  net = models.ResNet(stage_sizes=stage_sizes, num_classes=NUM_CLASSES)
  v = jit(lambda k: net.init(k, x[:1]))(jax.random.key(0))
  vb = {'params': {k: p for k, p in v['params'].items() if k != 'fc'},
        'batch_stats': v['batch_stats']}
  tx = optax.sgd(0.01, momentum=0.9)
  forward = jit(lambda v, x: body.apply(v, x, train=False))

  def step(s, x, y):
    def loss_fn(p):
      logits, upd = net.apply({'params': p, 'batch_stats': s['batch_stats']}, x, train=True,
                              mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
    (_, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(s['params'])
    u, opt = tx.update(g, s['opt'], s['params'])
    return {'params': optax.apply_updates(s['params'], u), 'opt': opt, **upd}

  step = jit(step, donate_argnums=(0,))
  # The training state gets its own copies: the step donates them, the forward keeps `vb`.
  own = jax.tree_util.tree_map(jnp.copy, v)
  state = [{'params': own['params'], 'batch_stats': own['batch_stats'],
            'opt': tx.init(own['params'])}]

  def train():
    state[0] = step(state[0], x, y)
    return state[0]['params']

  tasks = {'forward': lambda: jax.block_until_ready(forward(vb, x)),
           'train': lambda: jax.block_until_ready(train())}
  for fn in tasks.values():   # compile now, with the switch as set
    fn()
  return tasks


def _torch_tasks(h: int, w: int, rng, batch: int,
                 stage_sizes: Tuple[int, ...]) -> Dict[str, Callable[[], object]]:
  import torch  # pylint: disable=g-import-not-at-top
  x = torch.from_numpy(rng.standard_normal((batch, 3, h, w)).astype(np.float32)).to(
      memory_format=torch.channels_last)
  y = torch.from_numpy(rng.integers(0, NUM_CLASSES, batch))
  body = _torch_resnet50(0, stage_sizes).eval()
  net = _torch_resnet50(NUM_CLASSES, stage_sizes).train()
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

  def forward():
    with torch.no_grad():
      return body(x)

  def train():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return loss

  for fn in (forward, train):
    fn()
  return {'forward': forward, 'train': train}


def _window(fn: Callable[[], object], calls: int) -> float:
  """Seconds per call of `fn` (which returns once its work is done), over `calls` calls."""
  return _window_with_faults(fn, calls)[0]


def _minor_faults() -> int:
  return 0 if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _window_with_faults(fn: Callable[[], object], calls: int) -> Tuple[float, float]:
  """(seconds, minor page faults of the process) per call of `fn`, over `calls` calls."""
  f0, t0 = _minor_faults(), time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - t0) / calls, (_minor_faults() - f0) / calls


def matmul_ceiling(n: int = 2048, calls: int = 5) -> Dict[str, float]:
  """GFLOP/s of an n x n float32 matrix product in JAX and in torch (best of `calls`)."""
  import torch  # pylint: disable=g-import-not-at-top
  a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
  ja = jnp.asarray(a)
  mm = jax.jit(lambda a: a @ a)
  jax.block_until_ready(mm(ja))
  ta = torch.from_numpy(a)
  torch.mm(ta, ta)
  out = {}
  for name, fn in (('jax', lambda: jax.block_until_ready(mm(ja))),
                   ('torch', lambda: torch.mm(ta, ta))):
    best = min(_window(fn, 1) for _ in range(calls))
    out[name] = 2 * n**3 / best / 1e9
  return out


def _warm_up(impls: Dict[str, Dict[str, Callable[[], object]]], max_rounds: int = 5,
             quiet_faults: int = 1000) -> int:
  """Untimed rounds of every call until one round takes under `quiet_faults` page faults (at
  most `max_rounds`); returns how many ran. Interleaved programs fragment the heap, so it keeps
  growing for a few rounds (a 256x128 JAX step in the first timed round after a single warm-up
  round: 312,000 faults, 5.4 s instead of 4.1); a single training program settles in two steps."""
  for rounds in range(1, max_rounds + 1):
    before = _minor_faults()
    for tasks in impls.values():
      for fn in tasks.values():
        fn()
    if _minor_faults() - before < quiet_faults:
      break
  return rounds


def passive_torch_threads() -> str:
  """Makes torch's OpenMP threads wait passively unless OMP_WAIT_POLICY is set; returns the
  policy that applies. By default they spin for a while after each parallel region and so take
  the cores from the JAX call that follows in the same process: the 256x128 JAX training step
  ran at 4.1 s a call beside them, at 3.7 s with them passive (torch's own speed unchanged).
  Binds only if torch is first imported after this call."""
  policy = os.environ.get('OMP_WAIT_POLICY')
  if policy is None and 'torch' not in sys.modules:
    os.environ['OMP_WAIT_POLICY'] = policy = 'PASSIVE'
  return policy or 'libgomp default (torch imported earlier)'


def bench_cpu(rounds: int = 3, calls: int = 2, seed: int = 0, sizes=SIZES, batch: int = BATCH,
              stage_sizes: Tuple[int, ...] = STAGE_SIZES, ceiling_n: int = 2048) -> dict:
  """The comparison of the module docstring; returns the JSON-ready results. `sizes`, `batch`,
  `stage_sizes` and `ceiling_n` (the matrix size of the ceiling) make a smaller run."""
  omp_wait_policy = passive_torch_threads()
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit('error: --what=cpu compares with PyTorch, which is not installed here '
                     '(pip install torch --index-url https://download.pytorch.org/whl/cpu)') from e
  torch.set_num_threads(os.cpu_count() or 1)
  switch = os.environ.get(cpu.ENV)
  ceiling = matmul_ceiling(ceiling_n)
  peak = max(ceiling.values())
  result = {'what': 'cpu', 'batch_size': batch, 'stage_sizes': list(stage_sizes),
            'dtype': 'float32', 'rounds': rounds, 'calls_per_window': calls,
            'cpu_count': os.cpu_count(), 'torch_version': torch.__version__, 'torch_threads': torch.get_num_threads(),
            'matmul_ceiling_gflops': ceiling, 'loadavg_before': list(os.getloadavg()),
            # Process-wide: torch and jax_switch_off run under the same allocator settings.
            'malloc_settings': dict(cpu.applied_malloc) or {
                k: os.environ[k] for k in cpu.MALLOC_SETTINGS if k in os.environ},
            'omp_wait_policy': omp_wait_policy,
            # XLA_FLAGS the switch set (jax_switch_off compiles with XLA's defaults of them).
            'xla_flags_set': dict(cpu.applied_xla_flags),
            'sizes': {}, 'warmup_rounds': {}}
  rng = np.random.default_rng(seed)
  try:
    for h, w in sizes:
      impls = {'jax': _jax_tasks(h, w, True, rng, batch, stage_sizes),
               'jax_switch_off': _jax_tasks(h, w, False, rng, batch, stage_sizes),
               'torch': _torch_tasks(h, w, rng, batch, stage_sizes)}
      warmup = _warm_up(impls)
      windows: Dict[Tuple[str, str], List[float]] = {}
      faults: Dict[Tuple[str, str], List[float]] = {}
      for _ in range(rounds):
        for impl, tasks in impls.items():
          for task, fn in tasks.items():
            secs, flt = _window_with_faults(fn, calls)
            windows.setdefault((impl, task), []).append(secs)
            faults.setdefault((impl, task), []).append(flt)
      flops = {'forward': resnet50_forward_flops(h, w, 0, stage_sizes) * batch,
               'train': 3 * resnet50_forward_flops(h, w, NUM_CLASSES, stage_sizes) * batch}
      size = {}
      for (impl, task), secs in windows.items():
        med = float(np.median(secs))
        size.setdefault(task, {})[impl] = {
            'seconds_per_batch': med, 'seconds_range': [min(secs), max(secs)],
            'images_per_second': batch / med, 'gflops': flops[task] / med / 1e9,
            'of_matmul_ceiling': flops[task] / med / 1e9 / peak,
            'page_faults_per_call': float(np.median(faults[(impl, task)])),
            'page_faults_per_call_range': [min(faults[(impl, task)]), max(faults[(impl, task)])]}
      for task, rows in size.items():
        rows['jax_over_torch'] = (rows['jax']['images_per_second']
                                  / rows['torch']['images_per_second'])
        rows['switch_speedup'] = (rows['jax']['images_per_second']
                                  / rows['jax_switch_off']['images_per_second'])
      result['sizes'][f'{h}x{w}'] = size
      result['warmup_rounds'][f'{h}x{w}'] = warmup
  finally:
    if switch is None:
      os.environ.pop(cpu.ENV, None)
    else:
      os.environ[cpu.ENV] = switch
  result['loadavg_after'] = list(os.getloadavg())
  return result


def print_cpu(r: dict) -> None:
  c = r['matmul_ceiling_gflops']
  print(f'[cpu] {r["cpu_count"]} CPUs, torch {r["torch_version"]} ({r["torch_threads"]} '
        f'threads); float32 matmul ceiling: jax {c["jax"]:.0f}, torch {c["torch"]:.0f} GFLOP/s')
  for size, tasks in r['sizes'].items():
    for task, rows in tasks.items():
      cells = '  '.join(
          f'{impl} {rows[impl]["images_per_second"]:7.1f} img/s ({rows[impl]["gflops"]:.0f} '
          f'GFLOP/s, {rows[impl]["of_matmul_ceiling"]:.0%})'
          for impl in ('jax', 'jax_switch_off', 'torch'))
      print(f'  {size:7s} {task:8s} {cells}  jax/torch {rows["jax_over_torch"]:.2f}')
