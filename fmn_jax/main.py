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

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fmn_jax import cli
from fmn_jax import cpu

FLAGS = flags.FLAGS
EXIT_STOPPED = cli.EXIT_STOPPED


def define_flags() -> None:
  """--config and --workdir (defined when run as a command, so importing this module is free)."""
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
  config_flags.DEFINE_config_file(
      'config', None, 'Training configuration file (configs/*.py).', lock_config=True)
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  cpu.configure()
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  # pylint: disable=g-import-not-at-top
  from fmn_jax import evaluate
  from fmn_jax import parallel
  from fmn_jax import reporting
  from fmn_jax import train
  if config.distributed:
    parallel.initialize_distributed()
  logging.set_verbosity(logging.INFO)
  reporting.quiet_library_logs()
  try:
    # Checks the config first; a stop is also recorded in DIR/log.jsonl when DIR exists.
    results = train.train_and_evaluate(config, FLAGS.workdir)
  except train.STOP_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_STOPPED)
  if not parallel.is_main_process():
    return
  workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
  # In stage order: train_and_evaluate returns them so.
  seconds = ', '.join(f'{k} {v:.1f} s' for k, v in results.get('stage_seconds', {}).items())
  print(f'\n{results.get("num_train_ids")} training identities; {results["num_query"]} query, '
        f'{results["num_gallery"]} gallery images; stages: {seconds}')
  if any(m in results for m in reporting.METHODS):
    print(evaluate.format_rows(results))
  print(f'results: {os.path.join(workdir, "results.json")}')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
