"""Evaluation of a trained FMN: GRN, LAN, FMN and FMN+rerank rows of the paper's tables.

As a command, re-evaluates a finished run's stage-2 checkpoint and rewrites DIR/results.json:

    python -m fmn_jax.evaluate --workdir=DIR [--rerank|--norerank] [--ap=standard|trapezoid|both]

Rows: 'GRN' ranks the L2-normalised GRN feature g, 'LAN' the L2-normalised LAN feature l, 'FMN'
the descriptor D of Eq. 6, all by Euclidean distance; 'FMN+rerank' re-ranks D with k-reciprocal
encoding (Zhong et al. 2017). Each row is `metrics.ranking_summary` (percent): rank-1/5/10/20,
mAP (standard AP), mAP_trapezoid (the official MATLAB code's AP) and mINP.
"""

import os
import sys
import time
from typing import Any, Optional

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np

from fmn_jax import config as config_lib
from fmn_jax import cpu
from fmn_jax import features
from fmn_jax import metrics
from fmn_jax import parallel
from fmn_jax import reporting
from fmn_jax import rerank as rerank_lib
from fmn_jax import workdir as workdir_lib
from fmn_jax.data import loading


def evaluate_features(qf: dict, gf: dict, query, gallery, config: ml_collections.ConfigDict,
                      rerank: Optional[bool] = None) -> dict:
  """Ranking summaries of the four methods from extracted features.

  Args:
    qf, gf: `compute_descriptors` outputs of query and gallery.
    query, gallery: `data.Split`s (pids, camids; gallery junk = pid -1).
    config: run config (eval.k1, eval.k2, eval.lambda_value, eval.rerank, eval.max_rank: the
      CMC length, at least 20; 50 when unset).
    rerank: override config.eval.rerank.
  Returns:
    {'GRN','LAN','FMN'[, 'FMN+rerank']} -> ranking summary dict (percent).
  """
  rerank = config.eval.rerank if rerank is None else rerank
  max_rank = metrics.check_max_rank(config.eval.get('max_rank', 50), 'config.eval.max_rank',
                                    minimum=metrics.SUMMARY_RANKS[-1])
  ids = (np.asarray(query.pids), np.asarray(gallery.pids), np.asarray(query.camids),
         np.asarray(gallery.camids))
  results = {}
  for method, key, normalize in (('GRN', 'g', True), ('LAN', 'l', True),
                                 ('FMN', 'descriptor', False)):
    q, g = qf[key], gf[key]
    if normalize:
      q, g = features.l2_normalize(q), features.l2_normalize(g)
    dist = metrics.pairwise_distances(q, g)
    results[method] = _summary(metrics.ranking_summary(dist, *ids, max_rank=max_rank))
  if rerank:
    dist = rerank_lib.rerank_features(qf['descriptor'], gf['descriptor'], k1=config.eval.k1,
                                      k2=config.eval.k2, lambda_value=config.eval.lambda_value)
    results['FMN+rerank'] = _summary(metrics.ranking_summary(dist, *ids,
                                                             max_rank=max_rank))
  return results


def merge_rows(previous: dict, evaluated: dict) -> dict:
  """The method rows of results.json after an evaluation: those of `evaluated`, and each row of
  `previous` that it did not compute (FMN+rerank of an evaluation without re-ranking) kept with a
  'note' that it was not recomputed, rather than dropped."""
  step = (previous.get('fmn_step') or {}).get('step')
  earlier = ('the values of an earlier evaluation'
             + (f' (stage-2 checkpoint at step {step})' if step is not None else ''))
  rows = {}
  for method in reporting.METHODS:
    if method in evaluated:
      rows[method] = evaluated[method]
    elif isinstance(previous.get(method), dict):
      why = ('the last evaluation ran without re-ranking' if method == 'FMN+rerank'
             else 'the last evaluation did not compute it')
      rows[method] = {**previous[method],
                      'note': previous[method].get('note', f'not recomputed: {why}; {earlier}')}
  return rows


def format_rows(results: dict, ap: str = 'both') -> str:
  """The results table of the rows computed by the last evaluation, then one line per row kept
  from an earlier one (see `merge_rows`)."""
  fresh = [m for m in reporting.METHODS if m in results and 'note' not in results[m]]
  lines = [reporting.format_results_table(results, methods=fresh, ap=ap)]
  lines += [f'{m}: {results[m]["note"]} (see results.json)' for m in reporting.METHODS
            if m in results and 'note' in results[m]]
  return '\n'.join(lines)


def _summary(summary: dict) -> dict:
  return {k: (int(v) if k == 'num_valid' else float(v)) for k, v in summary.items()}


def evaluate_model(model, variables: Any, config: ml_collections.ConfigDict, dataset, *,
                   mesh=None, rerank: Optional[bool] = None) -> dict:
  """Extracts query and gallery features with `model` and evaluates them (see module doc)."""
  mesh = parallel.create_mesh() if mesh is None else mesh
  variables = parallel.replicate_tree(variables, mesh)
  out = {}
  for name in ('query', 'gallery'):
    split = getattr(dataset, name)
    images = loading.decode(config, split)
    t0 = time.time()
    out[name] = features.compute_descriptors(model, variables, images, config, mesh=mesh,
                                             desc=f'{name} features')
    logging.info('%s: %d images, features in %.1f s', name, len(split), time.time() - t0)
  return evaluate_features(out['query'], out['gallery'], dataset.query, dataset.gallery, config,
                           rerank=rerank)


def reevaluate(workdir: str, rerank: Optional[bool] = None, dataset_root: Optional[str] = None,
               batch_size: Optional[int] = None, allow_unfinished: bool = False) -> dict:
  """Re-evaluates the run in `workdir` from its checkpoint and rewrites DIR/results.json.

  `allow_unfinished`: evaluate the latest stage-2 checkpoint even when stage 2 was stopped before
  its last step (otherwise a ValueError); results.json then records the step in `fmn_step`.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  model, variables, config = workdir_lib.restore_model(workdir, allow_unfinished=allow_unfinished)
  with config.unlocked():
    if dataset_root:
      config.dataset.root = dataset_root
    if batch_size:
      config.eval.batch_size = int(batch_size)
  dataset = loading.load_reid_dataset(config, workdir)
  mesh = parallel.create_mesh()
  t0 = time.time()
  results = evaluate_model(model, variables, config, dataset, mesh=mesh, rerank=rerank)
  seconds = time.time() - t0
  path = os.path.join(workdir, 'results.json')
  previous = workdir_lib.read_json(path)
  merged = {k: v for k, v in previous.items() if k not in reporting.METHODS}
  merged.update(merge_rows(previous, results))
  merged.setdefault('stage_seconds', {})['eval'] = seconds
  merged['fmn_step'] = workdir_lib.fmn_progress(workdir)
  merged.update({'num_train_ids': dataset.num_classes, 'num_query': len(dataset.query),
                 'num_gallery': len(dataset.gallery), 'jax_version': jax.__version__,
                 'devices': workdir_lib.devices_summary()})
  merged.setdefault('config', config_lib.config_to_dict(config))
  if parallel.is_main_process():
    workdir_lib.write_json(path, merged)
  return merged


def define_flags() -> None:
  """Command-line flags of `python -m fmn_jax.evaluate` (only defined when run as a command)."""
  flags.DEFINE_string('workdir', None, 'Folder of a trained run (fmn_jax.main --workdir).')
  flags.DEFINE_bool('rerank', None, "Also evaluate FMN+rerank (default: the run's "
                    'config.eval.rerank).')
  flags.DEFINE_enum('ap', 'both', ['standard', 'trapezoid', 'both'],
                    'Which mAP column(s) the printed table shows (results.json has both).')
  flags.DEFINE_string('dataset_root', None, 'Dataset folder if it moved since training.')
  flags.DEFINE_integer('batch_size', None, 'Images per forward pass.')
  flags.DEFINE_bool('allow_unfinished', False, 'Evaluate the latest stage-2 checkpoint even when '
                    'stage 2 was stopped before its last step.')
  flags.mark_flag_as_required('workdir')


def main(argv):
  cpu.configure()
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  reporting.quiet_library_logs()
  try:
    results = reevaluate(f.workdir, rerank=f.rerank, dataset_root=f.dataset_root,
                         batch_size=f.batch_size, allow_unfinished=f.allow_unfinished)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(format_rows(results, ap=f.ap))
  print(f'wrote {os.path.join(os.path.abspath(os.path.expanduser(f.workdir)), "results.json")}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
