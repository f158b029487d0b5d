"""Trains and evaluates the Feature Mask Network.

    python -m fmn_jax.main --config=configs/demo.py --workdir=/tmp/demo
    python -m fmn_jax.main --config=configs/market.py --workdir=/tmp/market \
        --config.dataset.root=~/data/Market-1501-v15.09.15 --config.stages=grn

Runs stage 1 (GRN), stage 2 (MN + LAN) and the evaluation, resuming from the latest checkpoint
in --workdir, and writes DIR/results.json, DIR/log.jsonl, DIR/curves.png (and DIR/tensorboard/
when tensorboard is installed). Any config value can be overridden with --config.KEY=VALUE; the
config is locked, so an unknown key is an error.

Exit status 4 (`EXIT_STOPPED`): the run stopped by itself on a bad config key or value, a bad
input file or a non-finite loss, and the same command would stop the same way; the error is on stderr and in
log.jsonl. Any other non-zero status (a crash, a lost device, a kill) is worth a retry: the same
command resumes from the last checkpoint.
"""

import importlib.util
import os
import sys

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


def parse_flags(argv):
  """absl flag parsing; an unknown --config.KEY ends with a one-line error naming KEY."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f'FATAL Flags parsing error: {e}', file=sys.stderr)
    sys.exit(EXIT_STOPPED)
  except (AttributeError, KeyError) as e:
    message = _unknown_override(argv) or f'bad --config override: {e}'
    print(f'FATAL Flags parsing error: {message}', file=sys.stderr)
    sys.exit(EXIT_STOPPED)


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
  try:
    train.validate_config(config)
    results = train.train_and_evaluate(config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, train.NonFiniteLossError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_STOPPED)
  if not parallel.is_main_process():
    return
  workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
  seconds = ', '.join(f'{k} {v:.1f} s' for k, v in results.get('stage_seconds', {}).items())
  print(f'\n{results.get("num_train_ids")} training identities; {results["num_query"]} query, '
        f'{results["num_gallery"]} gallery images; stages: {seconds}')
  if any(m in results for m in reporting.METHODS):
    print(reporting.format_results_table(results))
  print(f'results: {os.path.join(workdir, "results.json")}')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
