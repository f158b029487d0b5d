"""Command-line parsing of `python -m fmn_jax.main`: config-file and override errors in one line.

A bad --config file or variant, or an unknown --config.KEY, ends the command with one line naming
it (and a record in DIR/log.jsonl when DIR exists) and exit status EXIT_STOPPED, instead of
absl's and ml_collections' tracebacks.
"""

import importlib.util
import os
import sys

from absl import flags
import ml_collections

from fmn_jax import reporting

FLAGS = flags.FLAGS
# The run stopped by itself (bad config or input, non-finite loss): the same command would stop
# the same way. scripts/reproduce_market.sh and scripts/mask_lr_study.py rely on this value.
EXIT_STOPPED = 4


def load_config_file(spec: str):
  """get_config() of a config file given as PATH[:ARG] (as config_flags reads it)."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('fmn_config_file', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _unknown_override(argv) -> str:
  """The first --config.KEY=... in argv whose KEY the config does not have, with suggestions."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if spec is None:
    return ''
  try:
    config = load_config_file(spec)
  except Exception:  # The config file itself is broken: config_flags reports that.
    return ''
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    key = arg[len('--config.'):].split('=', 1)[0]
    node = config
    for i, part in enumerate(key.split('.')):
      if isinstance(node, ml_collections.ConfigDict) and part in node:
        node = node[part]
        continue
      known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      where = 'config.' + '.'.join(key.split('.')[:i]) if i else 'config'
      return (f"unknown config key 'config.{key}' in {arg!r}: {where} has no {part!r}"
              + (f" (it has: {', '.join(known)})" if known else ''))
  return ''


def _flag_value(argv, name: str):
  """The value of --NAME=VALUE or --NAME VALUE in argv (the last one), or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _config_file_error(spec: str) -> str:
  """'' when --config=PATH[:ARG] loads, else a one-line reason naming the file or variant."""
  path, _, arg = spec.partition(':')
  if not path:
    return f'--config={spec!r}: give a config file, e.g. --config=configs/market.py'
  if not os.path.exists(path):
    return f'--config={spec}: no such config file {path!r}'
  if os.path.isdir(path):
    return f'--config={spec}: {path!r} is a folder, not a config file (e.g. configs/market.py)'
  try:
    load_config_file(spec)
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [''])[0]
    if isinstance(e, TypeError) and arg:
      reason = f'its get_config() takes no variant (got {arg!r}): {reason}'
    elif not isinstance(e, ValueError):
      reason = f'{type(e).__name__}: {reason}'
    return f'--config={spec}: {reason}'
  return ''


# Process-rank variables of the usual multi-host launchers (SLURM, Open MPI, MPICH/PMI, torchrun
# style). Flags are parsed before jax.distributed is initialised, so the rank comes from them.
_RANK_VARIABLES = ('SLURM_PROCID', 'OMPI_COMM_WORLD_RANK', 'PMI_RANK', 'RANK')


def _rank() -> int:
  for name in _RANK_VARIABLES:
    value = os.environ.get(name, '')
    if value.isdigit():
      return int(value)
  return 0


def log_error(workdir, message: str) -> None:
  """`reporting.append_error` for a flag error, on process 0 only (as far as the launcher's
  rank variable tells: flags are parsed before jax.distributed is initialised)."""
  if workdir and _rank() == 0:
    reporting.append_error(workdir, message)


def _stop(argv, message: str) -> None:
  print(f'FATAL Flags parsing error: {message}', file=sys.stderr)
  log_error(_flag_value(argv, 'workdir'), message)
  sys.exit(EXIT_STOPPED)


def parse_flags(argv):
  """absl flag parsing; a bad --config file or variant, or an unknown --config.KEY, ends with a
  one-line error naming it (exit status EXIT_STOPPED)."""
  spec = _flag_value(argv, 'config')
  if spec is not None:
    problem = _config_file_error(spec)
    if problem:
      _stop(argv, problem)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _stop(argv, '; '.join(line.strip() for line in str(e).splitlines() if line.strip()))
  except (AttributeError, KeyError) as e:
    _stop(argv, _unknown_override(argv) or f'bad --config override: {e}')
