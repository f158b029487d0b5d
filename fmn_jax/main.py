"""Trains and evaluates the Feature Mask Network.

    python -m fmn_jax.main --config=configs/demo.py --workdir=/tmp/demo
    python -m fmn_jax.main --config=configs/market.py --workdir=/tmp/market \
        --config.dataset.root=~/data/Market-1501-v15.09.15 --config.stages=grn

Runs stage 1 (GRN), stage 2 (MN + LAN) and the evaluation, resuming from the latest checkpoint
in --workdir, and writes DIR/results.json, DIR/log.jsonl, DIR/curves.png (and DIR/tensorboard/
when tensorboard is installed). Any config value can be overridden with --config.KEY=VALUE; the
config is locked, so an unknown key is an error.

Exit status 4 (`EXIT_STOPPED`): the run stopped by itself on a bad config file, key or value, a
bad input file, checkpoints in --workdir written with another config, or a non-finite loss, and
the same command would stop the same way. The error is one line on stderr and, when DIR exists,
a {"kind": "error", "message": ...} record in DIR/log.jsonl. DIR is created, and DIR/config.json
and DIR/run.json written, only once the run is accepted (config, ImageNet weights, dataset file
lists and the checkpoints already in DIR checked), so a run refused before it starts creates
nothing (but DIR/data, where the synthetic dataset is generated first). Any other non-zero
status (a crash, a lost device, a kill) is worth a retry: the same command resumes from the last
checkpoint.
"""

import importlib.util
import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

FLAGS = flags.FLAGS
EXIT_STOPPED = 4


def define_flags() -> None:
  """--config and --workdir (defined when run as a command, so importing this module is free)."""
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
  config_flags.DEFINE_config_file(
      'config', None, 'Training configuration file (configs/*.py).', lock_config=True)
  flags.mark_flags_as_required(['config', 'workdir'])


def _load_config_file(spec: str):
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
    config = _load_config_file(spec)
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
    _load_config_file(spec)
  except Exception as e:  # pylint: disable=broad-except
    reason = (str(e).strip().splitlines() or [''])[0]
    if isinstance(e, TypeError) and arg:
      reason = f'its get_config() takes no variant (got {arg!r}): {reason}'
    elif not isinstance(e, ValueError):
      reason = f'{type(e).__name__}: {reason}'
    return f'--config={spec}: {reason}'
  return ''


def log_error(workdir, message: str) -> None:
  """Appends an error record to DIR/log.jsonl when the workdir exists (the record of
  `fmn_jax.train.log_error`, written here without importing JAX)."""
  if not workdir:
    return
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    return
  record = {'kind': 'error', 'stage': 'setup', 'step': 0, 'time': time.time(), 'message': message}
  with open(os.path.join(workdir, 'log.jsonl'), 'a', encoding='utf-8') as f:
    f.write(json.dumps(record, sort_keys=True) + '\n')


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  # pylint: disable=g-import-not-at-top
  from fmn_jax import parallel
  from fmn_jax import reporting
  from fmn_jax import train
  if config.distributed:
    parallel.initialize_distributed()
  logging.set_verbosity(logging.INFO)
  reporting.quiet_library_logs()
  from fmn_jax import evaluate
  try:
    # Checks the config first; a stop is also recorded in DIR/log.jsonl when DIR exists.
    results = train.train_and_evaluate(config, FLAGS.workdir)
  except train.STOP_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_STOPPED)
  if not parallel.is_main_process():
    return
  workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
  stage_seconds = results.get('stage_seconds', {})
  order = [s for s in train.STAGES if s in stage_seconds]
  order += sorted(s for s in stage_seconds if s not in order)
  seconds = ', '.join(f'{k} {stage_seconds[k]:.1f} s' for k in order)
  print(f'\n{results.get("num_train_ids")} training identities; {results["num_query"]} query, '
        f'{results["num_gallery"]} gallery images; stages: {seconds}')
  if any(m in results for m in reporting.METHODS):
    print(evaluate.format_rows(results))
  print(f'results: {os.path.join(workdir, "results.json")}')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
