"""One process of a two-process (multi-host) run on the CPU, for tests/test_train.py.

    python tests/two_process_worker.py PROCESS_ID PORT WORKDIR DATA_ROOT DELAY [SEED]

Both processes train configs/demo.py:ci stages grn,fmn on one workdir, data-parallel over the
two processes (gloo collectives). Process 1 reads the dataset DELAY seconds later, as a slower
host would. Prints 'OK' or 'STOPPED: message' (a one-line refusal) as its last line.
"""

import os
import sys
import time

os.environ['JAX_PLATFORMS'] = 'cpu'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  pid, port, workdir, root, delay = sys.argv[1:6]
  seed = int(sys.argv[6]) if len(sys.argv) > 6 else None
  pid, delay = int(pid), float(delay)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2,
                             process_id=pid, initialization_timeout=120)
  # pylint: disable=g-import-not-at-top
  from fmn_jax import cli
  from fmn_jax import reporting
  from fmn_jax import train
  from fmn_jax.data import loading
  reporting.quiet_library_logs()
  config = cli.load_config_file(os.path.join(REPO, 'configs', 'demo.py') + ':ci')
  config.dataset.root = root
  config.progress, config.tensorboard, config.stages = False, False, 'grn,fmn'
  if seed is not None:
    config.seed = seed
  if pid == 1 and delay:
    load = loading.load_reid_dataset

    def slow(*args, **kwargs):
      time.sleep(delay)
      return load(*args, **kwargs)
    loading.load_reid_dataset = slow
  try:
    train.train_and_evaluate(config, workdir)
  except train.STOP_ERRORS as e:
    print(f'STOPPED: {e}', flush=True)
    return
  print('OK', flush=True)


if __name__ == '__main__':
  main()
