"""Feature extraction (batching, flip-averaging, Eq. 6) and the evaluation of the four rows."""

import importlib.util
import os

import ml_collections
import numpy as np
import pytest

from fmn_jax import initialization
from fmn_jax import models
from fmn_jax import data
from fmn_jax import evaluate
from fmn_jax import features
from fmn_jax import reporting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ci_config():
  spec = importlib.util.spec_from_file_location(
      'demo_config', os.path.join(REPO, 'configs', 'demo.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config('ci')
  c.progress = False
  return c


@pytest.fixture(scope='module')
def tiny():
  c = _ci_config()
  model = models.create_fmn(c.model, 5)
  return c, model, initialization.init_variables(model, c)


def test_descriptors_independent_of_batching_and_flip_is_eq6(tiny):
  c, model, variables = tiny
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(11, 64, 32, 3), dtype=np.uint8)
  a = features.compute_descriptors(model, variables, images, c, batch_size=4, flip=True)
  b = features.compute_descriptors(model, variables, images, c, batch_size=16, flip=True)
  for key in ('g', 'l', 'descriptor'):
    assert a[key].shape[0] == 11 and a[key].dtype == np.float32
    # Another batch size changes the matrix products' blocking: float32 rounding of the
    # largest value (g reaches ~100) is the scale of the absolute tolerance.
    np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6 * np.abs(b[key]).max())
  # Flip-averaging: g and l are the means over the image and its mirror image; D is Eq. 6.
  plain = features.compute_descriptors(model, variables, images, c, flip=False)
  mirror = features.compute_descriptors(model, variables, images[:, :, ::-1], c, flip=False)
  np.testing.assert_allclose(a['g'], 0.5 * (plain['g'] + mirror['g']), rtol=1e-4, atol=1e-5)
  alpha = c.model.alpha
  expected = np.concatenate([alpha * features.l2_normalize(a['g']),
                             (1 - alpha) * features.l2_normalize(a['l'])], axis=1)
  np.testing.assert_allclose(a['descriptor'], expected, rtol=1e-4, atol=1e-6)
  assert a['descriptor'].shape[1] == a['g'].shape[1] + a['l'].shape[1]


def _split(pids, camids):
  n = len(pids)
  return data.Split(paths=tuple(f'{i}.jpg' for i in range(n)), pids=np.asarray(pids, np.int64),
                    camids=np.asarray(camids, np.int64), junk=np.asarray(pids) == -1)


def test_evaluate_features_rows():
  # 3 query identities; the gallery holds each identity once from another camera, plus a
  # distractor. GRN features match perfectly; LAN features are shuffled (no match first).
  rng = np.random.default_rng(1)
  centers = rng.normal(size=(4, 6)).astype(np.float32)
  q_g, g_g = centers[:3], centers[[0, 1, 2, 3]]
  q_l, g_l = centers[:3], centers[[1, 2, 0, 3]]
  alpha = 0.5
  desc = lambda g, l: np.concatenate([alpha * features.l2_normalize(g),
                                      (1 - alpha) * features.l2_normalize(l)], 1)
  qf = {'g': q_g, 'l': q_l, 'descriptor': desc(q_g, q_l)}
  gf = {'g': g_g, 'l': g_l, 'descriptor': desc(g_g, g_l)}
  query = _split([1, 2, 3], [1, 1, 1])
  gallery = _split([1, 2, 3, 0], [2, 2, 2, 2])
  eval_config = dict(rerank=False, k1=2, k2=1, lambda_value=0.3)
  config = ml_collections.ConfigDict(dict(eval=eval_config))
  results = evaluate.evaluate_features(qf, gf, query, gallery, config)
  assert set(results) == {'GRN', 'LAN', 'FMN'}
  assert results['GRN']['rank1'] == 100.0 and results['GRN']['mAP'] == 100.0
  assert results['LAN']['rank1'] < 100.0
  for row in results.values():
    assert set(row) >= {'rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mAP_trapezoid', 'mINP'}
  with_rerank = evaluate.evaluate_features(qf, gf, query, gallery, config, rerank=True)
  assert 0.0 <= with_rerank['FMN+rerank']['mAP'] <= 100.0
  # config.eval.max_rank is the CMC length: any valid one gives the same reported ranks.
  for max_rank in (20, 50, 400):
    config = ml_collections.ConfigDict(dict(eval=dict(eval_config, max_rank=max_rank)))
    assert evaluate.evaluate_features(qf, gf, query, gallery, config, rerank=True) == with_rerank
  for bad in (0, -3, 19, 2.5, '50', True, None):
    config = ml_collections.ConfigDict(dict(eval=dict(eval_config, max_rank=bad)))
    with pytest.raises(ValueError, match=r'^config\.eval\.max_rank must be an integer >= 20, got '):
      evaluate.evaluate_features(qf, gf, query, gallery, config)


def test_results_table():
  row = {'rank1': 85.99, 'rank5': 94.0, 'rank10': 96.0, 'rank20': 97.5, 'mAP': 67.12,
         'mAP_trapezoid': 66.0, 'mINP': 30.0}
  text = reporting.format_results_table({'FMN': row, 'GRN': row})
  lines = text.splitlines()
  assert lines[0].split() == ['method', 'R-1', 'R-5', 'R-10', 'R-20', 'mAP', 'mAP(trap)', 'mINP']
  assert lines[2].startswith('GRN') and lines[3].startswith('FMN')
  assert '85.99' in lines[3] and '67.12' in lines[3]
  assert 'mAP(trap)' not in reporting.format_results_table({'FMN': row}, ap='standard')
  with pytest.raises(ValueError, match="'median'"):
    reporting.format_results_table({'FMN': row}, ap='median')


def test_rows_not_recomputed_are_kept_with_a_note():
  row = {'rank1': 50.0, 'rank5': 60.0, 'rank10': 70.0, 'rank20': 80.0, 'mAP': 40.0,
         'mAP_trapezoid': 39.0, 'mINP': 20.0}
  previous = {'GRN': row, 'FMN': row, 'FMN+rerank': dict(row, mAP=45.0),
              'fmn_step': {'step': 90, 'total_steps': 90}, 'config': {}}
  fresh = dict(row, rank1=55.0)
  rows = evaluate.merge_rows(previous, {'GRN': fresh, 'LAN': fresh, 'FMN': fresh})
  assert list(rows) == ['GRN', 'LAN', 'FMN', 'FMN+rerank']
  assert rows['FMN'] == fresh
  kept = dict(rows['FMN+rerank'])
  note = kept.pop('note')
  assert kept == dict(row, mAP=45.0)
  assert note == ('not recomputed: the last evaluation ran without re-ranking; the values of an '
                  'earlier evaluation (stage-2 checkpoint at step 90)')
  # Kept again by a later evaluation without re-ranking: the first note stays; recomputed: none.
  assert evaluate.merge_rows(dict(previous, **rows), {'FMN': fresh})['FMN+rerank']['note'] == note
  assert 'note' not in evaluate.merge_rows(rows, {'FMN+rerank': fresh})['FMN+rerank']
  text = evaluate.format_rows(rows).splitlines()
  assert [l.split()[0] for l in text[2:5]] == ['GRN', 'LAN', 'FMN']
  assert text[5] == f'FMN+rerank: {note} (see results.json)'
