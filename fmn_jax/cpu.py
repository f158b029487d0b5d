"""CPU speed settings shared by every command: one switch, read from the environment.

`FMN_JAX_CPU_FAST` (default on; '0', 'false', 'no' or 'off' turn it off) selects, when JAX runs
on the CPU, the convolution forms of `models_conv.cpu_conv`: XLA:CPU's own convolution takes
seconds for a 3x3 convolution whose output is smaller than the kernel in a dimension (ResNet-50's
res5 at 128x64 input: 4x2 maps, 0.8 GFLOP/s), so such convolutions run as one matrix product
of the gathered 3x3 patches instead. The results equal the convolution's within float32
rounding; the parameters are the same.

The switch also selects, with glibc, the allocator settings `MALLOC_SETTINGS` (through
`mallopt`): XLA:CPU's temporary buffers of a ResNet-50 step (tens of MB each) are larger than
glibc's mmap threshold, so by default every call maps them afresh and unmaps them after, from
the worker threads' own arenas: about 178,000 page faults and 0.3 s of kernel time in each 1 s
training step at 128x64 and batch 32, 18,000 in each forward. With one arena, no mmap and no
trimming, the freed buffers are reused: no page faults after the first steps, kernel time
0.3 s -> 0.01 s a step (at 256x128 trimming must be off altogether, not merely above 2 GiB:
the step frees more than that at the heap's top). The cost: the process keeps its peak heap
(its resident memory does not shrink after a large step); the same settings apply to everything
in the process (PyTorch included, in the benchmark), and variables set by the user
(MALLOC_ARENA_MAX, MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_) win.

`configure()` is called first thing by every command's main(): it records the switch in
`os.environ` so that subprocesses see the same setting, adds `FAST_XLA_FLAGS` to XLA_FLAGS
(flags the user already set there are kept as set) and applies the allocator settings. It must
run before the JAX backend starts (the allocator's arena limit binds threads started after it).
This module imports no other fmn_jax module.
"""

import ctypes
import ctypes.util
import importlib.metadata
import os
from typing import Dict

ENV = 'FMN_JAX_CPU_FAST'
_OFF = ('0', 'false', 'no', 'off')
_ON = ('1', 'true', 'yes', 'on', '')

# XLA:CPU flags applied with the switch on; {flag name: value}. Of the installed jaxlib's
# oneDNN/XNNPACK flags none made ResNet-50 faster on the 2-core AVX-512 machine measured
# (see results/benchmark_cpu_vs_torch.json), so none is set.
FAST_XLA_FLAGS: Dict[str, str] = {}


# glibc mallopt parameters (malloc.h) and their values with the switch on, keyed by the
# environment variable that sets the same parameter at process start.
MALLOC_SETTINGS: Dict[str, tuple] = {
    'MALLOC_ARENA_MAX': (-8, 1),                  # M_ARENA_MAX: every thread in one arena
    'MALLOC_MMAP_MAX_': (-4, 0),                  # M_MMAP_MAX: large blocks from the heap
    # M_TRIM_THRESHOLD: -1 never trims (mallopt(3)). The largest int (2 GiB) is not enough: a
    # training step at 256x128 frees more than that at the heap's top, which glibc then hands
    # back, and the next step faults it in again (690,000 faults, 1.4 s of kernel time a step).
    'MALLOC_TRIM_THRESHOLD_': (-1, -1),
}


# What `configure_malloc` applied in this process ({variable: value}), for benchmark records.
applied_malloc: Dict[str, int] = {}


def enabled() -> bool:
  """Whether the CPU speed settings are on (`FMN_JAX_CPU_FAST`, default on)."""
  value = os.environ.get(ENV, '1').strip().lower()
  if value in _OFF:
    return False
  if value in _ON:
    return True
  raise ValueError(f'{ENV}={os.environ[ENV]!r}: expected one of 1/true/yes/on or 0/false/no/off')


def _flag_names(xla_flags: str) -> set:
  return {f.split('=', 1)[0] for f in xla_flags.split() if f.startswith('--')}


def merged_xla_flags(xla_flags: str, fast: Dict[str, str]) -> str:
  """`xla_flags` plus each of `fast` whose flag it does not set already."""
  present = _flag_names(xla_flags)
  extra = [f'--{k}={v}' for k, v in fast.items() if f'--{k}' not in present]
  return ' '.join([xla_flags.strip()] + extra if xla_flags.strip() else extra)


def _mallopt():
  """glibc's `mallopt`, or None on another C library (macOS, musl)."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return None
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return mallopt


def configure_malloc(mallopt=None) -> Dict[str, int]:
  """Applies `MALLOC_SETTINGS` not set in the environment; returns {variable: value applied}
  ({} without glibc). A setting glibc refuses raises, naming it."""
  mallopt = mallopt or _mallopt()
  if mallopt is None:
    return {}
  applied = {}
  for name, (param, value) in MALLOC_SETTINGS.items():
    if name in os.environ:
      continue
    if mallopt(param, value) != 1:
      raise RuntimeError(f'mallopt refused {name}={value} (parameter {param}); set {ENV}=0 to '
                         'run without the CPU speed settings')
    applied[name] = value
  applied_malloc.update(applied)
  return applied


def _accelerator_expected() -> bool:
  """Whether JAX will run on an accelerator: JAX_PLATFORMS names another platform first, or
  (JAX_PLATFORMS unset) a GPU or TPU plugin of jaxlib is installed."""
  platforms = os.environ.get('JAX_PLATFORMS', '').strip().lower()
  if platforms:
    return not platforms.startswith('cpu')
  names = {(d.metadata['Name'] or '').lower() for d in importlib.metadata.distributions()}
  return any(n.startswith(('jax-cuda', 'jax_cuda', 'jax-rocm', 'jax_rocm', 'libtpu'))
             for n in names)


def configure() -> bool:
  """Applies the switch (see the module docstring); returns whether it is on. The allocator
  settings are left alone where JAX will run on an accelerator (see `_accelerator_expected`)."""
  on = enabled()
  os.environ[ENV] = '1' if on else '0'
  if on and FAST_XLA_FLAGS:
    os.environ['XLA_FLAGS'] = merged_xla_flags(os.environ.get('XLA_FLAGS', ''), FAST_XLA_FLAGS)
  if on and not _accelerator_expected():
    configure_malloc()
  return on
