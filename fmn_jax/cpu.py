"""CPU speed settings shared by every command: one switch, read from the environment.

`FMN_JAX_CPU_FAST` (default on; '0', 'false', 'no' or 'off' turn it off) selects, when JAX runs
on the CPU, the convolution forms of `models_conv.cpu_conv`: XLA:CPU's own convolution takes
seconds for a 3x3 convolution whose output is smaller than the kernel in a dimension (ResNet-50's
res5 at 128x64 input: 4x2 maps, 0.8 GFLOP/s), so such convolutions run as one matrix product
of the gathered 3x3 patches instead. The results equal the convolution's within float32
rounding; the parameters are the same.

The switch also sets XLA:CPU flags, `FAST_XLA_FLAGS`: convolutions run in XLA's own (Eigen)
kernels rather than YNNPACK's, which are slower on these shapes (dots and reductions stay with
YNNPACK). Same HLO, other kernels: results equal within float32 rounding.

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
`os.environ` so that subprocesses see the same setting, adds those of `FAST_XLA_FLAGS` that the
installed jaxlib knows to XLA_FLAGS (flags the user already set there are kept as set) and
applies the allocator settings. It must run before the JAX backend starts (XLA reads XLA_FLAGS
once; the allocator's arena limit binds threads started after it).
This module imports no other fmn_jax module.
"""

import ctypes
import ctypes.util
import importlib.metadata
import mmap
import os
from typing import Dict

ENV = 'FMN_JAX_CPU_FAST'
_OFF = ('0', 'false', 'no', 'off')
_ON = ('1', 'true', 'yes', 'on', '')

# XLA:CPU flags applied with the switch on, {flag name: value}, where the installed jaxlib has
# the flag (`known_xla_flags`; an unknown flag in XLA_FLAGS would stop XLA). jaxlib 0.10 hands
# dots, convolutions and reductions to YNNPACK (`DEFAULT_XLA_FLAGS`); its convolutions are slower
# here than XLA's own (Eigen) ones, the dots and reductions are not (without YNNPACK the
# BatchNorm reductions take 5x longer). Measured interleaved in one process on the 2-core
# machine (`scripts/cpu_blocks.py`, `benchmark --what=cpu`): a res2 3x3 convolution's kernel
# gradient 116 -> 36 ms, the stem's convolution forward + kernel gradient 162 -> 69 ms, the
# ResNet-50 training step at 256x128 3.60 -> 3.34 s and its forward 1.06 -> 0.94 s.
_YNN = 'xla_cpu_experimental_ynn_fusion_type'
FAST_XLA_FLAGS: Dict[str, str] = {
    _YNN: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE',
}
# The installed jaxlib's own values of the same flags, for a jit that wants XLA's defaults back
# in a process where the switch set `FAST_XLA_FLAGS` (`jax.jit(..., compiler_options=...)`; the
# benchmark's switch-off column).
DEFAULT_XLA_FLAGS: Dict[str, str] = {
    _YNN: ('LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,'
           'LIBRARY_FUSION_TYPE_REDUCE'),
}

# What `configure` added to XLA_FLAGS in this process ({flag: value}), for benchmark records.
applied_xla_flags: Dict[str, str] = {}


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


def known_xla_flags(names, library_dir=None) -> set:
  """Those of `names` that the installed jaxlib's shared libraries define (found as strings in
  them: a few milliseconds). XLA exits on a flag in XLA_FLAGS that it does not know, and these
  flags come and go between jaxlib versions."""
  if library_dir is None:
    import jaxlib  # pylint: disable=g-import-not-at-top
    library_dir = os.path.dirname(jaxlib.__file__)
  wanted, found = {n.encode(): n for n in names}, set()
  for entry in sorted(os.listdir(library_dir)):
    path = os.path.join(library_dir, entry)
    if not (entry.endswith('.so') or '.so.' in entry) or not os.path.isfile(path):
      continue
    with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
      found.update(n for b, n in wanted.items() if n not in found and m.find(b) >= 0)
    if len(found) == len(wanted):
      break
  return found


def fast_xla_flags(library_dir=None) -> Dict[str, str]:
  """`FAST_XLA_FLAGS` that the installed jaxlib knows."""
  known = known_xla_flags(FAST_XLA_FLAGS, library_dir)
  return {k: v for k, v in FAST_XLA_FLAGS.items() if k in known}


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
    flags = os.environ.get('XLA_FLAGS', '')
    extra = {k: v for k, v in fast_xla_flags().items() if f'--{k}' not in _flag_names(flags)}
    os.environ['XLA_FLAGS'] = merged_xla_flags(flags, extra)
    applied_xla_flags.update(extra)
  if on and not _accelerator_expected():
    configure_malloc()
  return on
