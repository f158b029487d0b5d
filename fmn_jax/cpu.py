"""CPU speed settings shared by every command: one switch, read from the environment.

`FMN_JAX_CPU_FAST` (default on; '0', 'false', 'no' or 'off' turn it off) selects, when JAX runs
on the CPU, the convolution forms of `models_conv.cpu_conv`: XLA:CPU's own convolution takes
seconds for a 3x3 convolution whose output is smaller than the kernel in a dimension (ResNet-50's
res5 at 128x64 input: 4x2 maps, 0.8 GFLOP/s), so such convolutions run as one matrix product
of the gathered 3x3 patches instead. The results equal the convolution's within float32
rounding; the parameters are the same.

`configure()` is called first thing by every command's main(): it records the switch in
`os.environ` so that subprocesses see the same setting, and adds `FAST_XLA_FLAGS` to XLA_FLAGS
(flags the user already set there are kept as set). It must run before the JAX backend starts.
This module imports no other fmn_jax module.
"""

import os
from typing import Dict

ENV = 'FMN_JAX_CPU_FAST'
_OFF = ('0', 'false', 'no', 'off')
_ON = ('1', 'true', 'yes', 'on', '')

# XLA:CPU flags applied with the switch on; {flag name: value}. Of the installed jaxlib's
# oneDNN/XNNPACK flags none made ResNet-50 faster on the 2-core AVX-512 machine measured
# (see results/benchmark_cpu_vs_torch.json), so none is set.
FAST_XLA_FLAGS: Dict[str, str] = {}


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


def configure() -> bool:
  """Applies the switch (see the module docstring); returns whether it is on."""
  on = enabled()
  os.environ[ENV] = '1' if on else '0'
  if on and FAST_XLA_FLAGS:
    os.environ['XLA_FLAGS'] = merged_xla_flags(os.environ.get('XLA_FLAGS', ''), FAST_XLA_FLAGS)
  return on
