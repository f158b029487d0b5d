"""`python -m fmn_jax.benchmark`: the training part reports sane numbers, the evaluation pipeline
part times what `fmn_jax.evaluate` runs."""

import os
import types

import pytest

from fmn_jax import benchmark
from fmn_jax import benchmark_cpu
from fmn_jax import benchmark_train
from fmn_jax import cli
from fmn_jax import cpu
from fmn_jax import evaluate

_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def _demo_ci_config():
  return cli.load_config_file(os.path.join(_CONFIGS, 'demo.py') + ':ci')


def test_training_benchmark_reports_images_per_second_and_ratios():
  config = _demo_ci_config()
  with config.unlocked():
    config.fmn.batch_size = 2 * config.grn.batch_size   # stage 2 gets a ceiling of its own
  r = benchmark_train.bench_training(config, steps=2, warmup=1, num_images=64, rounds=2)
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


def test_cpu_part_counts_resnet50_and_builds_the_same_network_in_torch():
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from fmn_jax import models
  # ResNet-50 v1 (stride on the 1x1) at 224x224 with the 1000-class head: 3.86 G multiply-adds,
  # the paper's "3.8 billion FLOPs" (v1.5, stride on the 3x3, has 4.09).
  assert 3.80e9 < benchmark_cpu.resnet50_forward_flops(224, 224, 1000) / 2 < 3.90e9
  assert benchmark_cpu.resnet50_forward_flops(128, 64) < benchmark_cpu.resnet50_forward_flops(
      256, 128) / 3.5
  net = models.ResNet(stage_sizes=benchmark_cpu.STAGE_SIZES, num_classes=751)
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 32, 3)))['params']
  jax_count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
  torch_net = benchmark_cpu._torch_resnet50(751)  # pylint: disable=protected-access
  torch_count = sum(p.numel() for p in torch_net.parameters())
  assert jax_count == torch_count
  with torch.no_grad():
    out = torch_net.eval()(torch.zeros(2, 3, 128, 64).to(memory_format=torch.channels_last))
  assert tuple(out.shape) == (2, 751)


def test_cpu_part_measures_against_the_matmul_ceiling():
  c = benchmark_cpu.matmul_ceiling(n=256, calls=2)
  assert set(c) == {'jax', 'torch'} and all(v > 0 for v in c.values())


def test_cpu_part_runs_every_implementation_in_interleaved_windows(monkeypatch):
  # A one-block-per-stage ResNet at 32x16, batch 2: the same code path as the ResNet-50 run
  # (the training step donates its state while the forward keeps reading the weights).
  monkeypatch.delenv('FMN_JAX_CPU_FAST', raising=False)
  # As after cpu.configure(): the switch-off column then compiles with XLA's own flag values.
  monkeypatch.setattr(cpu, 'applied_xla_flags', cpu.fast_xla_flags())
  r = benchmark_cpu.bench_cpu(rounds=2, calls=1, sizes=((32, 16),), batch=2,
                              stage_sizes=(1, 1, 1, 1), ceiling_n=128)
  assert 'FMN_JAX_CPU_FAST' not in os.environ  # the switch is put back
  rows = r['sizes']['32x16']
  assert set(rows) == {'forward', 'train'} and 1 <= r['warmup_rounds']['32x16'] <= 5
  for task in ('forward', 'train'):
    for impl in ('jax', 'jax_switch_off', 'torch'):
      cell = rows[task][impl]
      assert cell['seconds_range'][0] <= cell['seconds_per_batch'] <= cell['seconds_range'][1]
      assert cell['images_per_second'] == 2 / cell['seconds_per_batch'] and cell['gflops'] > 0
      assert cell['page_faults_per_call'] >= 0
    assert rows[task]['jax_over_torch'] == (rows[task]['jax']['images_per_second']
                                            / rows[task]['torch']['images_per_second'])
  assert r['stage_sizes'] == [1, 1, 1, 1] and r['batch_size'] == 2
  assert r['omp_wait_policy']   # PASSIVE, the user's value, or why neither
  assert r['xla_flags_set'] == cpu.applied_xla_flags
  benchmark_cpu.print_cpu(r)


def test_cpu_part_without_torch_says_so(monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, 'torch', None)   # `import torch` raises ImportError
  with pytest.raises(SystemExit, match='--what=cpu compares with PyTorch, which is not installed'):
    benchmark_cpu.bench_cpu()
