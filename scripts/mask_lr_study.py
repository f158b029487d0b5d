"""Controlled stage-2 runs: the mixing network's learning rate (`fmn.lr_mn`) against mask health.

Every run starts from the same trained stage-1 (GRN) checkpoint, so the runs differ only in
`--config.fmn.lr_mn` (and in whatever `--variant NAME:OVERRIDE...` adds). For each run it keeps the
per-epoch mask diagnostics of `log.jsonl` (mask_mean, mask_dead, mask_saturated, mask_log_std) and
the final GRN / LAN / FMN / FMN+rerank metrics of `results.json`, and writes one JSON summary.

    python scripts/mask_lr_study.py --grn_workdir=WORK/grn --work=/tmp/mn_study \
        --lr_mn=none,1e-3,1e-4 --out=results/cpu_check/mask_lr_study.json -- \
        --config=configs/market.py --config.dataset.root=... [same overrides as stage 1]

`none` leaves lr_mn unset (the MN then trains at lr_head). Everything after `--` goes to every run
of `python -m fmn_jax.main` and must describe the same model as the stage-1 run. A finished run is
not trained again. A run that stops by itself (exit 4, `fmn_jax.main.EXIT_STOPPED`: a NaN loss, a
bad value) is recorded as `{"error": ...}` and in its folder's `failed.txt` (delete it to retry),
and the study goes on; a run that crashes or is killed (the caller's time limit) stops the study,
and the next call resumes it.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

EXIT_STOPPED = 4  # fmn_jax.main.EXIT_STOPPED; not imported, so this script needs the stdlib only


def _summary(workdir: str) -> dict:
  epochs = []
  with open(os.path.join(workdir, 'log.jsonl')) as f:
    for line in f:
      rec = json.loads(line)
      if rec.get('kind') == 'epoch' and rec.get('stage') == 'fmn':
        epochs.append({k: rec[k] for k in (
            'epoch', 'lr', 'lr_head', 'lr_mn', 'loss', 'cross_entropy', 'ranking_loss', 'accuracy', 'accuracy_grn',
            'mask_mean', 'mask_dead', 'mask_saturated', 'mask_log_std', 'images_per_second')
                       if k in rec})
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  metrics = {name: {k: results[name][k] for k in ('rank1', 'rank5', 'rank20', 'mAP',
                                                  'mAP_trapezoid')}
             for name in ('GRN', 'LAN', 'FMN', 'FMN+rerank') if name in results}
  return {'epochs': epochs, 'metrics': metrics,
          'stage_seconds': results.get('stage_seconds', {})}


def _last_error(workdir: str) -> str:
  """The message of the run log's last 'error' record ('' when none)."""
  message = ''
  path = os.path.join(workdir, 'log.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        rec = json.loads(line)
        if rec.get('kind') == 'error':
          message = rec.get('message', '')
  return message


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  extra = []
  if '--' in argv:
    i = argv.index('--')
    argv, extra = argv[:i], argv[i + 1:]
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--grn_workdir', required=True,
                      help='workdir of a finished stage-1 run (holds checkpoints/grn)')
  parser.add_argument('--work', required=True, help='folder for the runs (one subfolder each)')
  parser.add_argument('--lr_mn', default='none,1e-3,1e-4',
                      help="comma-separated fmn.lr_mn values; 'none' = unset (lr_head)")
  parser.add_argument('--out', required=True, help='summary JSON to write')
  args = parser.parse_args(argv)

  grn_ckpt = os.path.join(args.grn_workdir, 'checkpoints', 'grn')
  if not os.path.isdir(grn_ckpt):
    parser.error(f'--grn_workdir: {grn_ckpt} not found (run stage 1 there first)')
  values = [v.strip() for v in args.lr_mn.split(',') if v.strip()]
  for value in values:
    try:
      if value != 'none' and float(value) <= 0:
        raise ValueError
    except ValueError:
      parser.error(f"--lr_mn: {value!r} is neither a positive number nor 'none'")
  runs = {}
  for value in values:
    workdir = os.path.join(args.work, f'lr_mn_{value}')
    ckpts = os.path.join(workdir, 'checkpoints')
    failed = os.path.join(workdir, 'failed.txt')
    if os.path.exists(failed):  # Stopped for good (e.g. a NaN loss): not run again.
      with open(failed) as f:
        runs[value] = {'error': f.read().strip()}
    elif not os.path.exists(os.path.join(workdir, 'results.json')):
      os.makedirs(ckpts, exist_ok=True)
      shutil.rmtree(os.path.join(ckpts, 'grn'), ignore_errors=True)
      shutil.copytree(grn_ckpt, os.path.join(ckpts, 'grn'))
      # `extra` holds --config=...: it must come before any --config.x override.
      cmd = [sys.executable, '-m', 'fmn_jax.main', f'--workdir={workdir}', *extra,
             '--config.stages=fmn,eval']
      if value != 'none':
        cmd.append(f'--config.fmn.lr_mn={value}')
      print('+', ' '.join(cmd), flush=True)
      t0 = time.time()
      rc = subprocess.run(cmd, check=False).returncode
      print(f'lr_mn={value}: {time.time() - t0:.0f} s, exit {rc}', flush=True)
      if rc == EXIT_STOPPED:
        # fmn_jax.main stopped by itself (a NaN loss, a bad value): it would stop the same way
        # again on resume, so the run is recorded as failed and the study goes on.
        message = _last_error(workdir) or f'exit {EXIT_STOPPED}'
        with open(failed, 'w') as f:
          f.write(message)
        runs[value] = {'error': message}
      elif rc != 0:
        sys.exit(rc if rc > 0 else 1)  # crashed, killed or cut: the next call resumes this run
    if value not in runs:
      runs[value] = _summary(workdir)
    with open(args.out, 'w') as f:  # after every run, so a stopped study keeps what it has
      json.dump({'command_extra': extra, 'grn_workdir': args.grn_workdir, 'runs': runs}, f,
                indent=2, sort_keys=True)
    print('wrote', args.out, flush=True)


if __name__ == '__main__':
  main()
