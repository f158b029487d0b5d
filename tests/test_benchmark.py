"""The training part of `python -m fmn_jax.benchmark` runs and reports sane numbers."""

import importlib.util
import os

from fmn_jax import benchmark

_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def _demo_ci_config():
  spec = importlib.util.spec_from_file_location('demo_cfg', os.path.join(_CONFIGS, 'demo.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config('ci')


def test_training_benchmark_reports_images_per_second_and_ratios():
  config = _demo_ci_config()
  r = benchmark.bench_training(config, steps=2, warmup=1, num_images=64)
  for name in ('ceiling', 'stage1', 'stage2', 'features'):
    assert r[name]['images_per_second'] > 0, name
  for name in ('stage1', 'stage2'):
    expected = r[name]['images_per_second'] / r['ceiling']['images_per_second']
    assert abs(r[name]['ratio_to_ceiling'] - expected) < 1e-9
  assert r['image_size'] == list(config.input.image_size)
  assert r['features']['batch_size'] == config.eval.batch_size
