"""Tests of fmn_jax.metrics: distances, CMC / mAP / mINP against the golden fixtures and by hand."""

import numpy as np
import pytest

import conftest

from fmn_jax import metrics


@pytest.fixture(scope='module')
def golden():
  return conftest.golden('golden_public_seed0.npz')


def _ids(g, junk_is_negative=False):
  g_pids = g['g_pids'].copy()
  if junk_is_negative:
    # torchreid's eval_market1501 treats pid -1 as an ordinary negative: relabel it so that it
    # is no junk and matches no query.
    g_pids[g_pids == -1] = -2
  return g['q_pids'], g_pids, g['q_camids'], g['g_camids']


def _brute_force(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
  """Per-query loop: stable argsort, junk removal, the official MATLAB compute_AP recurrence."""
  nq = distmat.shape[0]
  cmc = np.zeros(max_rank)
  ap_std, ap_trap, inp = np.full(nq, np.nan), np.full(nq, np.nan), []
  for i in range(nq):
    order = np.argsort(distmat[i], kind='stable')
    same = g_pids[order] == q_pids[i]
    junk = (g_pids[order] == -1) | (same & (g_camids[order] == q_camids[i]))
    match = same[~junk]
    if not match.any():
      continue
    hits = np.nonzero(match)[0]
    ngood = hits.size
    ap_std[i] = np.mean(np.arange(1, ngood + 1) / (hits + 1.0))
    ap, old_recall, old_precision, found = 0.0, 0.0, 1.0, 0
    for j, m in enumerate(match):
      found += int(m)
      recall, precision = found / ngood, found / (j + 1.0)
      ap += (recall - old_recall) * (old_precision + precision) / 2
      old_recall, old_precision = recall, precision
    ap_trap[i] = ap
    inp.append(ngood / (hits[-1] + 1.0))
    cmc[hits[0]:] += 1
  valid = ~np.isnan(ap_std)
  return {'cmc': cmc / valid.sum(), 'standard': ap_std, 'trapezoid': ap_trap,
          'mINP': np.mean(inp), 'num_valid': int(valid.sum())}


# ----------------------------------------------------------------------------------------------
# Distances.


def test_pairwise_distances_match_golden(golden):
  g = golden
  np.testing.assert_allclose(metrics.pairwise_distances(g['qf'], g['gf'], squared=True),
                             g['distmat_sq'], rtol=1e-5)
  d = metrics.pairwise_distances(g['qf'], g['gf'])
  assert d.dtype == np.float32 and d.shape == (60, 400)
  np.testing.assert_allclose(d, g['distmat'], rtol=1e-5)
  d_l2 = metrics.pairwise_distances(g['qf_l2'].astype(np.float32), g['gf_l2'].astype(np.float32))
  np.testing.assert_allclose(d_l2, g['distmat_l2'], rtol=1e-5, atol=1e-6)
  # Any chunking (the last chunk overlaps the previous one) gives the same numbers.
  np.testing.assert_array_equal(metrics.pairwise_distances(g['qf'], g['gf'], chunk_size=7), d)


def test_pairwise_distances_bad_inputs():
  with pytest.raises(ValueError, match='different feature dimensions'):
    metrics.pairwise_distances(np.ones((3, 4)), np.ones((5, 6)))
  with pytest.raises(ValueError, match=r'\[N, D\]'):
    metrics.pairwise_distances(np.ones(4), np.ones((5, 4)))
  with pytest.raises(ValueError, match='chunk_size'):
    metrics.pairwise_distances(np.ones((3, 4)), np.ones((5, 4)), chunk_size=0)


# ----------------------------------------------------------------------------------------------
# Golden metrics.


@pytest.mark.parametrize('suffix', ['', '_l2'])
def test_standard_ap_matches_torchreid_without_junk(golden, suffix):
  g = golden
  r = metrics.evaluate_ranking(g['distmat' + suffix], *_ids(g))
  assert r['num_valid'] == g['num_valid_q'] == 57
  assert r['cmc'].shape == (50,)
  np.testing.assert_array_equal(r['cmc'].astype(np.float32), g['tr_cmc_dropjunk' + suffix])
  assert abs(r['mAP'] - g['tr_mAP_dropjunk' + suffix]) < 1e-12
  np.testing.assert_array_equal(np.isnan(r['ap_per_query']), ~g['valid_query_mask'])
  # Squared distances rank identically.
  r_sq = metrics.evaluate_ranking(g['distmat' + suffix + '_sq'], *_ids(g))
  np.testing.assert_array_equal(r_sq['cmc'], r['cmc'])
  assert r_sq['mAP'] == r['mAP']


@pytest.mark.parametrize('suffix', ['', '_l2'])
def test_standard_ap_matches_torchreid_per_query(golden, suffix):
  """With pid -1 as an ordinary negative this is torchreid's eval_market1501 exactly."""
  g = golden
  r = metrics.evaluate_ranking(g['distmat' + suffix], *_ids(g, junk_is_negative=True))
  np.testing.assert_array_equal(r['cmc'].astype(np.float32), g['tr_cmc' + suffix])
  assert abs(r['mAP'] - g['tr_mAP' + suffix]) < 1e-12
  np.testing.assert_allclose(r['ap_per_query'], g['tr_ap_per_query' + suffix], rtol=0,
                             atol=1e-12)


@pytest.mark.parametrize('suffix', ['', '_l2'])
def test_trapezoid_ap_matches_official_code(golden, suffix):
  g = golden
  valid = g['valid_query_mask']
  r = metrics.evaluate_ranking(g['distmat' + suffix], *_ids(g), max_rank=400, ap='trapezoid')
  np.testing.assert_allclose(r['ap_per_query'][valid], g['ly_ap_per_query' + suffix][valid],
                             rtol=0, atol=1e-12)
  assert np.all(np.isnan(r['ap_per_query'][~valid]))
  assert abs(r['mAP'] - np.mean(g['ly_ap_per_query' + suffix][valid])) < 1e-12
  # layumi divides by all 60 queries (the invalid ones count as misses); we divide by 57.
  hits = np.round(r['cmc'] * 57).astype(int)
  np.testing.assert_array_equal(hits, np.round(g['ly_cmc' + suffix] * 60).astype(int))
  np.testing.assert_allclose(r['cmc'][:50] * 57 / 60, g['ly_cmc' + suffix][:50], atol=1e-7)
  assert abs(np.nansum(r['ap_per_query']) / 60 - g['ly_mAP' + suffix]) < 1e-12


def test_trapezoid_never_above_standard(golden):
  g = golden
  std = metrics.evaluate_ranking(g['distmat'], *_ids(g))['ap_per_query']
  trap = metrics.evaluate_ranking(g['distmat'], *_ids(g), ap='trapezoid')['ap_per_query']
  valid = ~np.isnan(std)
  assert np.all(trap[valid] <= std[valid] + 1e-15)
  assert np.mean(trap[valid]) < np.mean(std[valid])


def test_ranking_summary(golden):
  g = golden
  s = metrics.ranking_summary(g['distmat_l2'], *_ids(g))
  assert set(s) == {'rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mAP_trapezoid', 'mINP',
                    'num_valid'}
  assert isinstance(s['num_valid'], int) and s['num_valid'] == 57
  assert all(isinstance(v, float) for k, v in s.items() if k != 'num_valid')
  cmc = g['tr_cmc_dropjunk_l2'].astype(np.float64)
  for k in (1, 5, 10, 20):
    assert abs(s[f'rank{k}'] - 100 * cmc[k - 1]) < 1e-5
  assert abs(s['mAP'] - 100 * g['tr_mAP_dropjunk_l2']) < 1e-10
  valid = g['valid_query_mask']
  assert abs(s['mAP_trapezoid'] - 100 * np.mean(g['ly_ap_per_query_l2'][valid])) < 1e-10
  r = metrics.evaluate_ranking(g['distmat_l2'], *_ids(g))
  assert abs(s['mINP'] - 100 * r['mINP']) < 1e-12


# ----------------------------------------------------------------------------------------------
# Hand-made cases.


def _one_query(distances, g_pids, g_camids, q_pid=1, q_camid=1, **kw):
  return metrics.evaluate_ranking(np.asarray([distances], np.float64), [q_pid], g_pids, [q_camid],
                                  g_camids, **kw)


def test_miss_then_hit():
  # Ranked list [miss, hit]: AP 0.5 (standard) vs 0.25 (trapezoid: (0 + 1/2) / 2).
  args = ([0.1, 0.2], [2, 1], [2, 2])
  std = _one_query(*args, max_rank=5)
  trap = _one_query(*args, max_rank=5, ap='trapezoid')
  assert std['mAP'] == 0.5 and trap['mAP'] == 0.25
  assert std['mINP'] == 0.5
  np.testing.assert_array_equal(std['cmc'], [0, 1, 1, 1, 1])   # padded past the gallery
  np.testing.assert_array_equal(trap['cmc'], std['cmc'])


def test_junk_and_same_camera_at_rank_one_are_removed():
  # pid -1 junk, then the query's pid in the query's camera, then the true match (camera 2).
  r = _one_query([0.1, 0.2, 0.3, 0.4], [-1, 1, 1, 5], [3, 1, 2, 2], max_rank=3)
  assert r['mAP'] == 1.0 and r['mINP'] == 1.0
  np.testing.assert_array_equal(r['cmc'], [1, 1, 1])
  # A distractor (pid 0) is an ordinary negative.
  r = _one_query([0.1, 0.2], [0, 1], [2, 2], max_rank=2)
  assert r['mAP'] == 0.5


def test_queries_without_a_true_match_are_skipped():
  distmat = np.array([[0.1, 0.2, 0.3],    # pid 1: matches only in its own camera -> skipped
                      [0.3, 0.1, 0.2],    # pid 9: not in the gallery -> skipped
                      [0.2, 0.3, 0.1]])   # pid 2: one true match at rank 1
  r = metrics.evaluate_ranking(distmat, [1, 9, 2], [1, 1, 2], [1, 2, 1], [1, 1, 2], max_rank=3)
  assert r['num_valid'] == 1
  assert np.isnan(r['ap_per_query'][0]) and np.isnan(r['ap_per_query'][1])
  assert r['ap_per_query'][2] == 1.0 and r['mAP'] == 1.0
  np.testing.assert_array_equal(r['cmc'], [1, 1, 1])
  with pytest.raises(ValueError, match='none of the 1 queries'):
    metrics.evaluate_ranking(distmat[:1], [1], [1, 1, 2], [1], [1, 1, 2])


def test_ties_are_ranked_by_gallery_index():
  # All distances equal: the order is the gallery order [neg, hit, junk, neg, hit].
  r = _one_query([1.0] * 5, [3, 1, -1, 4, 1], [2, 2, 2, 2, 2], max_rank=4)
  # Junk-free list: neg, hit, neg, hit -> hits at positions 1 and 3.
  assert abs(r['mAP'] - (1 / 2 + 2 / 4) / 2) < 1e-15
  assert r['mINP'] == 2 / 4
  np.testing.assert_array_equal(r['cmc'], [0, 1, 1, 1])
  t = _one_query([1.0] * 5, [3, 1, -1, 4, 1], [2, 2, 2, 2, 2], ap='trapezoid')
  assert abs(t['mAP'] - ((0 + 1 / 2) / 2 + (1 / 3 + 2 / 4) / 2) / 2) < 1e-15


@pytest.mark.parametrize('quantise', [False, True])
def test_matches_brute_force(quantise):
  rng = np.random.default_rng(1)
  nq, ng = 37, 150
  distmat = rng.random((nq, ng)) * 10
  if quantise:   # many exact ties, between hits, negatives and junk
    distmat = np.round(distmat)
  q_pids = rng.integers(1, 12, nq)
  g_pids = rng.integers(-1, 12, ng)
  q_camids, g_camids = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
  ids = (q_pids, g_pids, q_camids, g_camids)
  want = _brute_force(distmat, *ids, max_rank=ng + 10)
  for r in (metrics._evaluate(distmat, *ids, max_rank=ng + 10, block_rows=5, num_threads=2),
            metrics._evaluate(distmat.astype(np.float32), *ids, max_rank=ng + 10,
                              num_threads=1, short_limit=0),        # every row sorted whole
            metrics._evaluate(distmat, *ids, max_rank=ng + 10, short_limit=120),  # mixed
            metrics._evaluate(distmat, *ids, max_rank=ng + 10, short_limit=ng)):
    assert r['num_valid'] == want['num_valid'] > 25
    np.testing.assert_allclose(r['cmc'], want['cmc'], rtol=0, atol=1e-15)
    for ap in ('standard', 'trapezoid'):
      np.testing.assert_allclose(r['ap_per_query'][ap], want[ap], rtol=0, atol=1e-14)
    assert abs(r['mINP'] - want['mINP']) < 1e-14


def test_small_gallery_summary():
  # Fewer gallery items than rank 20 (the demo dataset's situation): ranks are padded.
  s = metrics.ranking_summary([[0.3, 0.1, 0.2]], [1], [1, 2, 3], [1], [2, 2, 2])
  assert s['rank1'] == 0.0 and s['rank5'] == s['rank20'] == 100.0
  assert s['num_valid'] == 1 and abs(s['mAP'] - 100 / 3) < 1e-12


def test_max_rank_is_the_cmc_length():
  rng = np.random.default_rng(3)
  d = rng.random((6, 30))
  ids = (np.arange(6) % 3, np.arange(30) % 3, np.zeros(6, int), np.ones(30, int))
  curves = {k: metrics.evaluate_ranking(d, *ids, max_rank=k)['cmc'] for k in (1, 7, 50, 80)}
  for k, cmc in curves.items():
    assert cmc.shape == (k,)
    np.testing.assert_array_equal(cmc, curves[80][:k])
  np.testing.assert_array_equal(curves[80][30:], 1.0)  # past the gallery: the last value
  s50 = metrics.ranking_summary(d, *ids)
  assert metrics.ranking_summary(d, *ids, max_rank=20) == s50
  assert s50['rank5'] == 100 * curves[7][4]
  for bad in (0, -1, 2.5, '5', True, None):
    with pytest.raises(ValueError, match=r'^max_rank must be a positive integer, got '):
      metrics.evaluate_ranking(d, *ids, max_rank=bad)
  with pytest.raises(ValueError, match=r'^max_rank must be an integer >= 20, got 10$'):
    metrics.ranking_summary(d, *ids, max_rank=10)
  assert metrics.check_max_rank(np.int64(9)) == 9 and metrics.check_max_rank(9.0) == 9


def test_bad_inputs():
  d = np.zeros((2, 3))
  ids = ([1, 2], [1, 2, 3], [1, 1], [2, 2, 2])
  with pytest.raises(ValueError, match='q_pids'):
    metrics.evaluate_ranking(d, [1], *ids[1:])
  with pytest.raises(ValueError, match='g_camids'):
    metrics.evaluate_ranking(d, *ids[:3], [1, 2])
  with pytest.raises(ValueError, match='ap must be one of'):
    metrics.evaluate_ranking(d, *ids, ap='interpolated')
  with pytest.raises(ValueError, match='max_rank'):
    metrics.evaluate_ranking(d, *ids, max_rank=0)
  bad = d.copy()
  bad[1, 2] = np.nan
  with pytest.raises(ValueError, match=r'non-finite value at \[1, 2\]'):
    metrics.evaluate_ranking(bad, *ids)
  with pytest.raises(ValueError, match='num_query, num_gallery'):
    metrics.evaluate_ranking(np.zeros(3), *ids)
