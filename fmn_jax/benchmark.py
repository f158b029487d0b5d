"""Benchmarks: seconds and peak memory of the project's heavy steps on this machine.

    python -m fmn_jax.benchmark --what=all --out=results/benchmark_<device>.json
    python -m fmn_jax.benchmark --what=train [--config=configs/market.py] [--train_steps=20]
    python -m fmn_jax.benchmark --what=cpu --out=results/benchmark_cpu_vs_torch.json
    python -m fmn_jax.benchmark --what=eval
        [--parts=distances,evaluation,rerank,rerank_features,pipeline]
        [--num_query=3368 --num_gallery=19732 --dim=4096] [--repeats=2] [--out=FILE.json]

`--what=eval` times, at Market-1501 scale on clustered random features (`--dim`, default 4096:
the FMN descriptor): the Euclidean distances (`metrics.pairwise_distances`, and the re-ranking
inputs), the evaluation (`evaluate_ranking` with both AP types, `ranking_summary`) and
k-reciprocal re-ranking (`k_reciprocal_rerank` on precomputed distance matrices, and
`rerank_features` end to end), and 'pipeline': `evaluate.evaluate_features` itself, what
`fmn_jax.evaluate` runs after the feature extraction (distances and evaluation of GRN and LAN,
each --dim/2-d, and of the --dim-d descriptor, then its re-ranking and evaluation), with the
config's k1, k2 and lambda. Every part runs in a process
of its own, so the peak resident memory reported (ru_maxrss) is that part's, inputs and JAX
runtime included; on a GPU the device's peak bytes in use are reported too. The first call of
each step includes its jit compilation; later repeats do not.

`--what=train` times, on synthetic images of the config's sizes (`--config`, default
configs/market.py), the training steps exactly as the trainer jits them and the feature
extraction of the evaluation, in images per second after compilation and warm-up:
- 'ceiling': a plain ResNet-50 training step built from the same layers (`models.ResNet`,
  softmax cross-entropy, SGD momentum, input already normalised on the device, no FMN), at
  each stage's batch size and the config's compute dtype;
- 'stage1' (GRN) and 'stage2' (MN + LAN, GRN frozen) steps of `stages.make_train_step`,
  including the on-device gather and augmentation; with their ratios to the ceiling;
- 'features': `features.compute_descriptors` (GRN + MN + LAN forward, flip as configured), the
  weights already on the device as in `evaluate.evaluate_model`.
The steps are timed in `--rounds` interleaved windows of `--train_steps` steps (ceiling, stage 1,
stage 2, ceiling, ...), so a change of machine load hits all of them alike; the median window is
reported, with the range.
`--what=cpu` times ResNet-50 forward and training steps on the CPU beside the same network in
PyTorch, with the CPU speed switch on and off (`fmn_jax.benchmark_cpu`).
`--what=all` runs eval and train and, with --out, writes one JSON.
"""

import json
import os
import resource
import subprocess
import sys
import time
from typing import Dict, List, Optional

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from fmn_jax import benchmark_cpu
from fmn_jax import benchmark_train
from fmn_jax import cpu

FLAGS = flags.FLAGS

GIB = 2.0**30


# ----------------------------------------------------------------------------------------------
# Data.


def market_like_data(num_query: int = 3368, num_gallery: int = 19732, dim: int = 2048,
                     seed: int = 0, num_ids: int = 751, num_cameras: int = 6) -> dict:
  """Clustered random re-ID features with Market-1501's label proportions.

  Identity centres are N(0, s^2 I) with s = (64 / dim)^(1/4), which keeps the difficulty of
  the 64-d golden fixtures at any dimension; a sample is centre + camera bias (N(0, 0.35^2 s^2))
  + 1.3 N(0, I). Of the gallery, 19.4% (Market: 3,819 of 19,732) are junk (pid -1, noisier views
  of a random identity, noise x1.3) and 14.2% (2,793) distractors (pid 0, hard negatives:
  sqrt(1/2) centre + 1.3 N(0, I)).
  """
  rng = np.random.default_rng(seed)
  spread = np.float32((64.0 / dim)**0.25)
  centres = spread * rng.standard_normal((num_ids + 1, dim), dtype=np.float32)
  cam_bias = 0.35 * spread * rng.standard_normal((num_cameras + 1, dim), dtype=np.float32)
  num_junk = int(round(num_gallery * 3819 / 19732))
  num_distractors = int(round(num_gallery * 2793 / 19732))
  num_real = num_gallery - num_junk - num_distractors
  q_pids = rng.integers(1, num_ids + 1, num_query)
  g_pids = np.concatenate([rng.integers(1, num_ids + 1, num_real),
                           np.full(num_junk, -1), np.zeros(num_distractors, np.int64)])
  source = g_pids.copy()
  source[num_real:] = rng.integers(1, num_ids + 1, num_junk + num_distractors)
  q_camids = rng.integers(1, num_cameras + 1, num_query)
  g_camids = rng.integers(1, num_cameras + 1, num_gallery)
  noise = np.where(g_pids == -1, 1.3 * 1.3, 1.3).astype(np.float32)[:, None]

  def make(pids, camids, scale):
    x = rng.standard_normal((pids.size, dim), dtype=np.float32)
    x *= scale
    x += centres[pids]
    x += cam_bias[camids]
    return x

  qf = make(q_pids, q_camids, np.float32(1.3))
  gf = make(source, g_camids, noise)
  distractor = g_pids == 0
  gf[distractor] = (np.float32(np.sqrt(0.5)) * centres[source[distractor]] + np.float32(1.3) *
                    rng.standard_normal((int(distractor.sum()), dim), dtype=np.float32))
  perm = rng.permutation(num_gallery)
  return {'qf': qf, 'gf': gf[perm], 'q_pids': q_pids, 'g_pids': g_pids[perm],
          'q_camids': q_camids, 'g_camids': g_camids[perm]}


# ----------------------------------------------------------------------------------------------
# Measuring.




def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # kB on Linux


def _device_peak_gib() -> Optional[float]:
  import jax  # pylint: disable=g-import-not-at-top
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return stats['peak_bytes_in_use'] / GIB




# ----------------------------------------------------------------------------------------------
# Parts of --what=eval (each returns {step name: measurement}).


def _rerank_inputs(data: dict):
  """Non-squared float32 distances of L2-normalised features: what the reference is given."""
  from fmn_jax import metrics  # pylint: disable=g-import-not-at-top
  from fmn_jax import rerank  # pylint: disable=g-import-not-at-top
  qn = rerank._l2_normalize(data['qf'])  # pylint: disable=protected-access
  gn = rerank._l2_normalize(data['gf'])  # pylint: disable=protected-access
  return (np.asarray(metrics.pairwise_distances_device(qn, gn)),
          np.asarray(metrics.pairwise_distances_device(qn, qn, zero_diagonal=True)),
          np.asarray(metrics.pairwise_distances_device(gn, gn, zero_diagonal=True)))


def bench_distances(data: dict, repeats: int, config) -> Dict[str, dict]:
  del config
  from fmn_jax import metrics  # pylint: disable=g-import-not-at-top
  qf, gf = data['qf'], data['gf']

  def numpy_squared():   # what the anchors used: torchreid's addmm form with NumPy's BLAS
    d = np.add.outer(np.sum(qf * qf, axis=1), np.sum(gf * gf, axis=1))
    d -= 2.0 * (qf @ gf.T)
    return d

  res = {'q_g distances': benchmark_train.timed(lambda: metrics.pairwise_distances(qf, gf), repeats),
         'q_g squared, NumPy BLAS (for comparison)': benchmark_train.timed(numpy_squared, repeats)}
  res['re-ranking inputs q_g, q_q, g_g'] = benchmark_train.timed(lambda: _rerank_inputs(data), repeats)
  return res


def bench_evaluation(data: dict, repeats: int, config) -> Dict[str, dict]:
  del config
  from fmn_jax import metrics  # pylint: disable=g-import-not-at-top
  dist = metrics.pairwise_distances(data['qf'], data['gf'])
  ids = (data['q_pids'], data['g_pids'], data['q_camids'], data['g_camids'])
  res = {}
  for ap in ('standard', 'trapezoid'):
    res[f'evaluate_ranking ap={ap}'] = benchmark_train.timed(
        lambda ap=ap: metrics.evaluate_ranking(dist, *ids, ap=ap)['mAP'], repeats)
  out = []
  res['ranking_summary (both APs)'] = benchmark_train.timed(lambda: metrics.ranking_summary(dist, *ids), repeats,
                                             out)
  res['ranking_summary (both APs)']['summary'] = out[0]
  return res


def _rerank_params(config) -> dict:
  return {'k1': config.eval.k1, 'k2': config.eval.k2, 'lambda_value': config.eval.lambda_value}


def bench_rerank(data: dict, repeats: int, config) -> Dict[str, dict]:
  from fmn_jax import metrics  # pylint: disable=g-import-not-at-top
  from fmn_jax import rerank  # pylint: disable=g-import-not-at-top
  q_g, q_q, g_g = _rerank_inputs(data)
  name = 'k_reciprocal_rerank (float32 distance matrices given)'
  out = []
  params = _rerank_params(config)
  res = {name: benchmark_train.timed(lambda: rerank.k_reciprocal_rerank(q_g, q_q, g_g, **params), repeats, out)}
  ids = (data['q_pids'], data['g_pids'], data['q_camids'], data['g_camids'])
  res[name]['summary'] = metrics.ranking_summary(out[0], *ids)
  return res


def bench_rerank_features(data: dict, repeats: int, config) -> Dict[str, dict]:
  from fmn_jax import rerank  # pylint: disable=g-import-not-at-top
  params = _rerank_params(config)
  return {'rerank_features (distances included)': benchmark_train.timed(
      lambda: rerank.rerank_features(data['qf'], data['gf'], **params), repeats)}


def pipeline_features(data: dict, alpha: float) -> tuple:
  """Query and gallery `compute_descriptors`-like dicts: g and l are the two halves of each
  feature (each clustered by identity), the descriptor is Eq. 6 of them."""
  from fmn_jax import models  # pylint: disable=g-import-not-at-top
  out = []
  for x in (data['qf'], data['gf']):
    g, l = np.split(x, 2, axis=1)
    out.append({'g': g, 'l': l, 'descriptor': np.asarray(models.descriptor(g, l, alpha))})
  return tuple(out)


def bench_pipeline(data: dict, repeats: int, config) -> Dict[str, dict]:
  """`evaluate.evaluate_features`: GRN, LAN and FMN distances + evaluation, FMN re-ranking +
  evaluation, exactly as `fmn_jax.evaluate` runs them after the feature extraction."""
  import types  # pylint: disable=g-import-not-at-top
  from fmn_jax import evaluate  # pylint: disable=g-import-not-at-top
  if data['qf'].shape[1] % 2:
    raise ValueError(f'--dim must be even for the pipeline part (g and l get half each), got '
                     f'{data["qf"].shape[1]}')
  qf, gf = pipeline_features(data, config.model.alpha)
  query = types.SimpleNamespace(pids=data['q_pids'], camids=data['q_camids'])
  gallery = types.SimpleNamespace(pids=data['g_pids'], camids=data['g_camids'])
  out = []
  name = 'evaluate_features: GRN, LAN, FMN + FMN re-ranking'
  res = {name: benchmark_train.timed(lambda: evaluate.evaluate_features(qf, gf, query, gallery, config,
                                                         rerank=True), repeats, out)}
  res[name]['summary'] = out[0]['FMN+rerank']
  return res


EVAL_PARTS = {'distances': bench_distances, 'evaluation': bench_evaluation,
              'rerank': bench_rerank, 'rerank_features': bench_rerank_features,
              'pipeline': bench_pipeline}












def _run_child(part: str) -> dict:
  """Runs one part in this process; returns its measurements plus the process's peaks."""
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  data = market_like_data(FLAGS.num_query, FLAGS.num_gallery, FLAGS.dim, FLAGS.seed)
  data_seconds = time.perf_counter() - t0
  steps = EVAL_PARTS[part](data, FLAGS.repeats, FLAGS.config)
  return {'part': part, 'steps': steps, 'peak_rss_gib': _peak_rss_gib(),
          'device_peak_gib': _device_peak_gib(), 'data_seconds': data_seconds,
          'device': str(jax.devices()[0].device_kind), 'backend': jax.default_backend()}


def _config_args() -> List[str]:
  """This command's --config and --config.KEY=VALUE arguments (passed on to the eval parts)."""
  return [a for a in sys.argv[1:] if a.startswith(('--config=', '--config.'))]


def run_eval(parts: List[str]) -> dict:
  """Runs each part in a subprocess (separate peak memory); returns all results."""
  unknown = [p for p in parts if p not in EVAL_PARTS]
  if unknown:
    raise ValueError(f'--parts: unknown part(s) {unknown}; known: {sorted(EVAL_PARTS)}')
  results = {'what': 'eval', 'num_query': FLAGS.num_query, 'num_gallery': FLAGS.num_gallery,
             'dim': FLAGS.dim, 'seed': FLAGS.seed, 'cpu_count': os.cpu_count(),
             'rerank': _rerank_params(FLAGS.config), 'parts': {}}
  for part in parts:
    cmd = [sys.executable, '-m', 'fmn_jax.benchmark', '--what=eval', f'--child={part}',
           *_config_args(),
           f'--num_query={FLAGS.num_query}', f'--num_gallery={FLAGS.num_gallery}',
           f'--dim={FLAGS.dim}', f'--seed={FLAGS.seed}', f'--repeats={FLAGS.repeats}']
    # The parent may hold most of a GPU's memory already (JAX preallocates 75% of it when the
    # training part ran first): the child allocates what it needs instead of 75% of the rest.
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false')
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
    if proc.returncode != 0 or not lines:
      raise RuntimeError(f'benchmark part {part!r} failed (exit {proc.returncode}):\n'
                         f'{proc.stderr[-4000:]}')
    r = json.loads(lines[-1])
    results['parts'][part] = r
    results['device'], results['backend'] = r['device'], r['backend']
    _print_part(r)
  return results


def _print_part(r: dict) -> None:
  dev = '' if r['device_peak_gib'] is None else f', device peak {r["device_peak_gib"]:.2f} GiB'
  print(f'[{r["part"]}] process peak RSS {r["peak_rss_gib"]:.2f} GiB{dev} '
        f'({r["backend"]}: {r["device"]})')
  for name, m in r['steps'].items():
    secs = ', '.join(f'{s:.2f}' for s in m['seconds'])
    print(f'  {name:52s} {secs} s   (RSS before: {m["rss_before_gib"]:.2f} GiB)')
    if 'summary' in m:
      s = m['summary']
      print(f'  {"":52s} rank-1 {s["rank1"]:.2f}  mAP {s["mAP"]:.2f}  '
            f'mAP_trapezoid {s["mAP_trapezoid"]:.2f}  mINP {s["mINP"]:.2f}')
  sys.stdout.flush()


def define_flags() -> None:
  """The command-line flags (defined when run as a command, so importing this module is free)."""
  flags.DEFINE_enum('what', 'eval', ['eval', 'train', 'cpu', 'all'], 'Which benchmark to run.')
  config_flags.DEFINE_config_file(
      'config', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             'configs', 'market.py'),
      'Training config whose model, input sizes, batch sizes and dtype --what=train uses.',
      lock_config=True)
  flags.DEFINE_integer('train_steps', 20, 'Timed steps per training benchmark (after warm-up).')
  flags.DEFINE_integer('warmup_steps', 3, 'Untimed steps before timing (compilation included).')
  flags.DEFINE_integer('num_images', 2048, 'Synthetic training images held on the device.')
  flags.DEFINE_integer('rounds', 3, 'Interleaved timed windows per training step (median kept).')
  flags.DEFINE_list('parts', ['distances', 'evaluation', 'rerank', 'rerank_features', 'pipeline'],
                    'Parts of --what=eval to run (each in its own process).')
  flags.DEFINE_integer('num_query', 3368, 'Queries (Market-1501: 3,368).')
  flags.DEFINE_integer('num_gallery', 19732, 'Gallery items (Market-1501: 19,732).')
  flags.DEFINE_integer('dim', 4096, 'Feature dimension (FMN descriptor: 4096; pipeline: g and l '
                       'get half each).')
  flags.DEFINE_integer('seed', 0, 'Seed of the random features.')
  flags.DEFINE_integer('repeats', 2, 'Calls per timed step (the first includes compilation).')
  flags.DEFINE_string('out', None, 'Also write the results as JSON to this file.')
  flags.DEFINE_string('child', None, 'Internal: run this one part in this process, print JSON.')


def main(argv):
  cpu.configure()
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.child:
    if FLAGS.child not in EVAL_PARTS:
      raise app.UsageError(f'--child: unknown part {FLAGS.child!r}')
    print(json.dumps(_run_child(FLAGS.child)))
    return
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  results = {'what': FLAGS.what, 'jax_version': jax.__version__,
             'jaxlib_version': jaxlib.__version__, 'config_args': _config_args()}

  def save():   # after each part, so a run cut short keeps what it measured
    if FLAGS.out:
      with open(FLAGS.out + '.tmp', 'w') as f:
        json.dump(results, f, indent=1)
      os.replace(FLAGS.out + '.tmp', FLAGS.out)
      print(f'wrote {FLAGS.out}')

  if FLAGS.what in ('train', 'all'):
    results['train'] = benchmark_train.bench_training(FLAGS.config, FLAGS.train_steps, FLAGS.warmup_steps,
                                      FLAGS.num_images, FLAGS.rounds)
    benchmark_train.print_training(results['train'])
    save()
  if FLAGS.what == 'cpu':
    results['cpu'] = benchmark_cpu.bench_cpu(rounds=FLAGS.rounds)
    benchmark_cpu.print_cpu(results['cpu'])
    save()
  if FLAGS.what in ('eval', 'all'):
    print(f'--what=eval: {FLAGS.num_query} queries x {FLAGS.num_gallery} gallery, '
          f'{FLAGS.dim}-d, {os.cpu_count()} CPUs')
    results['eval'] = run_eval(FLAGS.parts)
    save()


if __name__ == '__main__':
  define_flags()
  app.run(main)
