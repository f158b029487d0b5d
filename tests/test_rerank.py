"""Tests of fmn_jax.rerank against the golden fixtures and a dense transcription of the method."""

import jax.numpy as jnp
import numpy as np
import pytest

import conftest

from fmn_jax import metrics
from fmn_jax import rerank
from fmn_jax import rerank_blocks


def _euclidean64(a, b):
  """Float64 Euclidean distances in the difference form (exactly symmetric, zero diagonal)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.sqrt(np.sum((a[:, None, :] - b[None, :, :])**2, axis=-1))


@pytest.fixture(scope='module')
def golden():
  g = dict(conftest.golden('golden_public_seed0.npz'))
  for tag, (q, gal) in {'': ('qf', 'gf'), '_l2': ('qf_l2', 'gf_l2')}.items():
    g['qq_dist' + tag] = _euclidean64(g[q], g[q])
    g['gg_dist' + tag] = _euclidean64(g[gal], g[gal])
  return g


@pytest.fixture(scope='module')
def extra():
  return conftest.golden('golden_public_seed0_extra.npz')


# The four re-ranking variants of the golden file: (q_g, q_q, g_g) as passed to the reference.
_VARIANTS = {
    'rr_l2': lambda g: (g['distmat_l2'], g['qq_dist_l2'], g['gg_dist_l2']),
    'rr_raw': lambda g: (g['distmat'], g['qq_dist'], g['gg_dist']),
    'rr_sqin_raw': lambda g: (g['distmat_sq'], g['qq_dist']**2, g['gg_dist']**2),
    'rr_sqin_l2': lambda g: (g['distmat_l2_sq'], g['qq_dist_l2']**2, g['gg_dist_l2']**2),
}


def _ids(g, junk_is_negative=False):
  g_pids = g['g_pids'].copy()
  if junk_is_negative:
    # The golden `<rr>_tr_*` metrics are torchreid's, which treats pid -1 as a plain negative.
    g_pids[g_pids == -1] = -2
  return g['q_pids'], g_pids, g['q_camids'], g['g_camids']


def _check_metrics(g, key, distmat, map_atol):
  r = metrics.evaluate_ranking(distmat, *_ids(g, junk_is_negative=True))
  np.testing.assert_array_equal(r['cmc'].astype(np.float32), g[key + '_tr_cmc'])
  assert abs(r['mAP'] - g[key + '_tr_mAP']) <= map_atol
  np.testing.assert_allclose(r['ap_per_query'], g[key + '_tr_ap_per_query'], rtol=0,
                             atol=map_atol)
  valid = g['valid_query_mask']
  t = metrics.evaluate_ranking(distmat, *_ids(g), max_rank=400, ap='trapezoid')
  np.testing.assert_allclose(t['ap_per_query'][valid], g[key + '_ly_ap_per_query'][valid],
                             rtol=0, atol=map_atol)
  # layumi divides CMC and mAP by all 60 queries (a query without a match counts as a miss).
  nq = len(valid)
  assert abs(np.nansum(t['ap_per_query']) / nq - g[key + '_ly_mAP']) <= map_atol
  np.testing.assert_allclose(t['cmc'] * t['num_valid'] / nq, g[key + '_ly_cmc'], rtol=0,
                             atol=1e-6)


@pytest.mark.parametrize('key', sorted(_VARIANTS))
def test_golden_metrics_of_reranked_matrices(golden, key):
  _check_metrics(golden, key, golden[key], map_atol=1e-12)


@pytest.mark.parametrize('key', sorted(_VARIANTS))
def test_rerank_matches_golden(golden, key):
  params = {k: golden[k].item() for k in ('k1', 'k2', 'lambda_value')}
  assert params == {'k1': 20, 'k2': 6, 'lambda_value': pytest.approx(0.3)}  # the paper's
  out = rerank.k_reciprocal_rerank(*_VARIANTS[key](golden), **params)
  assert out.dtype == np.float32 and out.shape == (60, 400)
  np.testing.assert_allclose(out, golden[key], rtol=0, atol=1e-6)
  _check_metrics(golden, key, out, map_atol=1e-5)


def test_intermediates_and_float64_run(golden, extra):
  for tag in ('', '_l2'):   # the recomputed inputs are the stored ones (every 10th g-g row)
    for name, rows in (('qq_dist', slice(None)), ('gg_dist', slice(None, None, 10))):
      np.testing.assert_allclose(golden[name + tag][rows], extra[name + tag], rtol=1e-13,
                                 atol=1e-13)
  for key, make in _VARIANTS.items():
    out = rerank.k_reciprocal_rerank(*make(golden))
    np.testing.assert_allclose(out, extra[key + '_f64'], rtol=0, atol=1e-6)
  src, nq, ng = rerank_blocks.make_source(*_VARIANTS['rr_l2'](golden), squared_inputs=False)
  _, inter = rerank._rerank(src, nq, ng, 20, 6, 0.3, intermediates=True)
  np.testing.assert_array_equal(inter['initial_rank_top'], extra['rr_l2_initial_rank_top'])
  n = nq + ng
  for name in ('V_kr', 'V_qe'):
    idx, val = inter[name]
    dense = np.zeros((n, n + 1), np.float32)
    np.put_along_axis(dense, idx, val, axis=1)
    want = extra['rr_l2_' + name]
    np.testing.assert_array_equal(dense[:, :n] != 0, want != 0)     # the same sets
    np.testing.assert_allclose(dense[:, :n], want, rtol=0, atol=1e-7)
  np.testing.assert_allclose(inter['jaccard'], extra['rr_l2_jaccard'], rtol=0, atol=1e-6)
  # lambda = 0 leaves the Jaccard distance alone.
  out = rerank.k_reciprocal_rerank(*_VARIANTS['rr_l2'](golden), lambda_value=0.0)
  np.testing.assert_allclose(out, extra['rr_l2_jaccard'][:, nq:], rtol=0, atol=1e-6)


def test_lambda_one_is_the_row_normalised_squared_distance(golden):
  q_g, q_q, g_g = _VARIANTS['rr_raw'](golden)
  out = rerank.k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=1.0)
  sq = np.square(np.concatenate([q_q, q_g], axis=1)).astype(np.float32)
  np.testing.assert_array_equal(out, sq[:, 60:] / sq.max(axis=1, keepdims=True))


def test_features_and_device_inputs(golden):
  out = rerank.rerank_features(golden['qf'], golden['gf'])
  assert out.dtype == np.float32 and out.shape == (60, 400)
  np.testing.assert_allclose(out, golden['rr_l2'], rtol=0, atol=2e-5)
  _check_metrics(golden, 'rr_l2', out, map_atol=1e-5)
  # Distances already on the device are read there (float32 inputs).
  dev = [jnp.asarray(a, jnp.float32) for a in _VARIANTS['rr_l2'](golden)]
  np.testing.assert_allclose(rerank.k_reciprocal_rerank(*dev), golden['rr_l2'], rtol=0,
                             atol=1e-6)


def test_blocking_does_not_change_the_result(golden, monkeypatch):
  args = _VARIANTS['rr_l2'](golden)
  want = rerank.k_reciprocal_rerank(*args)
  monkeypatch.setattr(rerank_blocks, 'block_elements', lambda: 460 * 7)   # 7 query rows per block
  src, nq, ng = rerank_blocks.make_source(*args, squared_inputs=False)
  got = rerank._rerank(src, nq, ng, 20, 6, 0.3, block_rows=9)
  np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------------------------
# A dense, loop-based transcription of the method (the golden README's steps 1-7).


def _reciprocal(rank, i, k):
  return {int(c) for c in rank[i, :k] if i in rank[c, :k]}


def _dense_rerank(q_g, q_q, g_g, k1, k2, lambda_value):
  nq = q_g.shape[0]
  o = np.square(np.block([[q_q, q_g], [q_g.T, g_g]])).astype(np.float32)
  o = o / o.max(axis=1, keepdims=True)
  n = o.shape[0]
  rank = np.argsort(o, axis=1, kind='stable')
  v = np.zeros((n, n), np.float32)
  for i in range(n):
    r = _reciprocal(rank, i, k1 + 1)
    expanded = set(r)
    for c in r:
      half = _reciprocal(rank, c, int(np.around(k1 / 2)) + 1)
      if 3 * len(half & r) > 2 * len(half):
        expanded |= half
    idx = np.array(sorted(expanded))
    w = np.exp(-o[i, idx])
    v[i, idx] = w / np.sum(w)
  if k2 != 1:
    v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
  s = np.minimum(v[:nq, None, :], v[None, :, :]).sum(axis=-1, dtype=np.float32)
  jaccard = 1 - s / (2 - s)
  return (jaccard * np.float32(1 - lambda_value) + o[:nq] * np.float32(lambda_value))[:, nq:]


@pytest.mark.parametrize('nq,ng,k1,k2,lambda_value', [
    (5, 40, 20, 6, 0.3),     # the paper's parameters
    (3, 9, 20, 6, 0.3),      # fewer items than k1 + 1
    (6, 30, 5, 1, 0.5),      # odd k1 (round(2.5) = 2), no query expansion
    (4, 30, 3, 6, 0.3),      # k2 > k1 + 1: the expansion reads past the reciprocal sets
    (4, 30, 4, 10, 0.3),
])
def test_matches_dense_transcription(nq, ng, k1, k2, lambda_value):
  rng = np.random.default_rng(nq * 100 + ng)
  centres = rng.normal(size=(4, 8))
  x = centres[rng.integers(0, 4, nq + ng)] + 0.7 * rng.normal(size=(nq + ng, 8))
  d = _euclidean64(x, x)
  args = (d[:nq, nq:], d[:nq, :nq], d[nq:, nq:])
  got = rerank.k_reciprocal_rerank(*args, k1=k1, k2=k2, lambda_value=lambda_value)
  np.testing.assert_allclose(got, _dense_rerank(*args, k1, k2, lambda_value), rtol=0, atol=1e-6)


def test_bad_inputs():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 4))
  d = _euclidean64(x, x)
  q_g, q_q, g_g = d[:3, 3:], d[:3, :3], d[3:, 3:]
  with pytest.raises(ValueError, match='g_g_dist must be'):
    rerank.k_reciprocal_rerank(q_g, q_q, g_g[:5, :5])
  with pytest.raises(ValueError, match='q_q_dist must be'):
    rerank.k_reciprocal_rerank(q_g, q_q[:2], g_g)
  with pytest.raises(ValueError, match='g_g_dist must be a symmetric'):
    rerank.k_reciprocal_rerank(q_g, q_q, g_g + np.triu(np.ones_like(g_g)))
  with pytest.raises(ValueError, match='k1'):
    rerank.k_reciprocal_rerank(q_g, q_q, g_g, k1=0)
  with pytest.raises(ValueError, match='lambda_value'):
    rerank.k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=1.5)
  bad = q_g.copy()
  bad[1, 4] = np.nan
  with pytest.raises(ValueError, match='query 1 contain a non-finite'):
    rerank.k_reciprocal_rerank(bad, q_q, g_g)
  with pytest.raises(ValueError, match='different feature dimensions'):
    rerank.rerank_features(np.ones((2, 3)), np.ones((4, 5)))
  qf, gf = x[:3].copy(), x[3:].copy()
  qf[2, 1] = np.inf
  with pytest.raises(ValueError, match=r'qf row 2 has a non-finite value \(1 such rows\)'):
    rerank.rerank_features(qf, gf)
  gf[5, 0] = np.nan
  with pytest.raises(ValueError, match='gf row 5'):
    rerank.rerank_features(x[:3], gf)
