"""`python -m fmn_jax.benchmark`: the training part reports sane numbers, the evaluation pipeline
part times what `fmn_jax.evaluate` runs."""

import os
import types

import pytest

from fmn_jax import benchmark
from fmn_jax import cli
from fmn_jax import evaluate

_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def _demo_ci_config():
  return cli.load_config_file(os.path.join(_CONFIGS, 'demo.py') + ':ci')


def test_training_benchmark_reports_images_per_second_and_ratios():
  config = _demo_ci_config()
  with config.unlocked():
    config.fmn.batch_size = 2 * config.grn.batch_size   # stage 2 gets a ceiling of its own
  r = benchmark.bench_training(config, steps=2, warmup=1, num_images=64, rounds=2)
  b1, b2 = config.grn.batch_size, config.fmn.batch_size
  for name in (f'ceiling_b{b1}', f'ceiling_b{b2}', 'stage1', 'stage2', 'features'):
    lo, hi = r[name]['images_per_second_range']
    assert 0 < lo <= r[name]['images_per_second'] <= hi, name
  assert r['ceiling'] == r[f'ceiling_b{b1}']
  for name, bs in (('stage1', b1), ('stage2', b2)):
    assert r[name]['batch_size'] == bs
    expected = r[name]['images_per_second'] / r[f'ceiling_b{bs}']['images_per_second']
    assert abs(r[name]['ratio_to_ceiling'] - expected) < 1e-9
    # A compilation inside a timed window shows as a ratio of tens (warm-up is one step here).
    assert 0.1 < r[name]['ratio_to_ceiling'] < 10, (name, r[name])
  assert r['image_size'] == list(config.input.image_size)
  assert r['stage_sizes'] == list(config.model.stage_sizes) and r['rounds'] == 2
  assert r['features']['batch_size'] == config.eval.batch_size
  assert r['features']['num_images'] == 64


def test_pipeline_part_is_what_evaluate_runs():
  config = _demo_ci_config()
  data = benchmark.market_like_data(num_query=30, num_gallery=300, dim=32, num_ids=20)
  res = benchmark.bench_pipeline(data, 1, config)
  (name, m), = res.items()
  assert len(m['seconds']) == 1 and 'GRN, LAN, FMN' in name
  # The same numbers as evaluate_features on the halves of the features (g, l) and Eq. 6.
  qf, gf = benchmark.pipeline_features(data, config.model.alpha)
  assert qf['g'].shape == (30, 16) and qf['descriptor'].shape == (30, 32)
  split = lambda p, c: types.SimpleNamespace(pids=data[p], camids=data[c])
  want = evaluate.evaluate_features(qf, gf, split('q_pids', 'q_camids'),
                                    split('g_pids', 'g_camids'), config, rerank=True)
  assert m['summary'] == want['FMN+rerank']
  with pytest.raises(ValueError, match='--dim must be even'):
    benchmark.bench_pipeline(benchmark.market_like_data(5, 40, 9, num_ids=4), 1, config)
