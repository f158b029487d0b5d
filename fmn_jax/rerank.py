"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), jitted and sparse, for Market-1501 scale and beyond.

It computes what the reference `re_ranking_ranklist.re_ranking(q_g_dist, q_q_dist, g_g_dist,
k1, k2, lambda_value)` computes, step for step, without its dense N x N work arrays
(N = num_query + num_gallery):

1. O = [[qq, qg], [qg^T, gg]] is squared in the input dtype and cast to float32 (T); each row
   of T is divided by its maximum over all N items (the reference divides by `max(axis=0)` and
   transposes, the same for the symmetric qq and gg that distance matrices are).
2. Only the max(k1+1, k2) nearest neighbours of every row are needed: they are found block by
   block with `lax.top_k` (ties to the lower index), so no N x N array is ever formed.
3. R(i) = members of top-(k1+1)(i) that have i in their own top-(k1+1). For every c in R(i),
   R_half(c) (the same with the top round(k1/2)+1) is added when
   |R_half(c) & R(i)| > 2/3 |R_half(c)|. V[i, e] = exp(-d[i, e]) / sum over the expanded set,
   d = the row-normalised T.
4. Query expansion: V[i] = mean of V over the first k2 neighbours of i (i itself included).
5. Jaccard for the query rows: S[i, j] = sum_k min(V[i, k], V[j, k]), jaccard = 1 - S / (2 - S).
6. final = (1 - lambda) jaccard + lambda d, query rows x gallery columns, float32.

The rows of V are fixed-width index/value arrays whose width is the exact largest row count
(nothing is ever truncated), so every step is a static-shape jitted function; the Jaccard
sum runs over the (query entry, column entry) pairs of an inverted index and accumulates, like
the reference, in float32 in ascending column order. Divisions are IEEE float32 divisions, as
NumPy's. Inputs are non-squared distances, like the reference's; `rerank_features` starts from
features instead (the reference MATLAB pipeline: L2-normalised features, squared Euclidean
distance).

The steps are `_nearest_neighbours` (2), `_k_reciprocal_sets` (3), `_query_expansion` (4),
`_pair_index` and `_jaccard_and_mix` (5, 6); `fmn_jax.rerank_blocks` reads T block by block.
"""

import functools
from typing import NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from fmn_jax import metrics
from fmn_jax import rerank_blocks

_F32 = jnp.float32
_I32 = jnp.int32


# ----------------------------------------------------------------------------------------------
# Sparse steps (rows in batches, to bound memory and compilation).


@functools.partial(jax.jit, static_argnames=('kh',))
def _half_sets(top, *, kh):
  """R_half of every row as a mask over top[:, :kh], and its size."""
  top_h = top[:, :kh]
  rows = jnp.arange(top.shape[0], dtype=_I32)
  half_mask = jnp.any(top_h[top_h] == rows[:, None, None], axis=-1)
  return half_mask, jnp.sum(half_mask, axis=-1).astype(_I32)


@jax.jit
def _expansion_rows(top, half_mask, half_count, rows):
  """Sorted unique members of the expanded k-reciprocal sets of `rows`, padded with N.

  Args:
    top: [N, k] nearest neighbours (k = k1 + 1), nearest first.
    half_mask, half_count: `_half_sets` (kh = round(k1 / 2) + 1 columns).
    rows: [B] row indices.
  Returns:
    ([B, k + k * kh] int32 members then N, [B] int32 counts).
  """
  n = top.shape[0]
  kh = half_mask.shape[1]

  def one_row(i):
    nb = top[i]
    recip = jnp.any(top[nb] == i, axis=-1)                               # nb in R(i)
    hc, hm = top[nb, :kh], half_mask[nb]                                 # R_half(nb), [k, kh]
    in_r = jnp.any((hc[:, :, None] == nb[None, None, :]) & recip[None, None, :], axis=-1)
    inter = jnp.sum(hm & in_r, axis=-1)
    # |R_half(c) & R(i)| > 2/3 |R_half(c)|, exact in integers.
    take = recip & (3 * inter > 2 * half_count[nb])
    cand = jnp.concatenate([jnp.where(recip, nb, n),
                            jnp.where(take[:, None] & hm, hc, n).reshape(-1)])
    s = jnp.sort(cand)
    dup = jnp.concatenate([jnp.zeros((1,), bool), s[1:] == s[:-1]])
    s = jnp.sort(jnp.where(dup, n, s))
    return s, jnp.sum(s < n).astype(_I32)

  return jax.vmap(one_row)(rows)


@jax.jit
def _kr_weights(t_vals, rowmax, valid):
  """V rows: exp(-T[i, e] / rowmax[i]) normalised over the valid entries."""
  d = rerank_blocks.div(t_vals, rowmax[:, None])
  w = jnp.where(valid, jnp.exp(-d), 0.0)
  s = jnp.sum(w, axis=1, keepdims=True)
  return jnp.where(valid, rerank_blocks.div(w, jnp.where(s > 0, s, 1.0)), 0.0)


@functools.partial(jax.jit, static_argnames=('kq',))
def _qe_rows(top, idx, val, rows, *, kq):
  """V_qe[i] = mean of V over top[i, :kq] for i in rows; sorted, width kq * W, padded with N."""
  n, w = idx.shape
  length = kq * w

  def one_row(i):
    nb = top[i, :kq]
    keys, vals = rerank_blocks.sort_with_payload(idx[nb].reshape(-1), val[nb].reshape(-1), n)
    start = jnp.concatenate([jnp.ones((1,), bool), keys[1:] != keys[:-1]])
    seg = jnp.cumsum(start) - 1
    out_idx = jnp.full((length,), n, _I32).at[seg].set(keys)
    # Entries of one column are added in neighbour order (the sort is stable), as the
    # reference's float32 mean does.
    out_val = jnp.zeros((length,), _F32).at[seg].add(vals)
    return out_idx, rerank_blocks.div(out_val, kq), jnp.sum(start & (keys < n)).astype(_I32)

  return jax.vmap(one_row)(rows)


@jax.jit
def _inverted_index(idx, val):
  """Entries of V grouped by column, rows ascending: (rows, values, col_start, col_count)."""
  n, w = idx.shape
  cols = idx.reshape(-1)
  order = jnp.argsort(cols, stable=True)
  col_count = jnp.zeros((n + 1,), _I32).at[cols].add(1)[:n]
  col_start = jnp.cumsum(col_count) - col_count
  return (order // w).astype(_I32), val.reshape(-1)[order], col_start, col_count


@jax.jit
def _pair_counts(q_idx, col_count):
  n = col_count.shape[0]
  return jnp.where(q_idx < n, col_count[jnp.minimum(q_idx, n - 1)], 0)


@functools.partial(jax.jit, static_argnames=('qb', 'num_pairs'))
def _jaccard_final_block(q_idx, q_val, counts, col_start, ent_rows, ent_vals, rowmax, t_qg,
                         start, w_jaccard, w_dist, *, qb, num_pairs):
  """Final distances [qb, ng] and Jaccard distances [qb, N] of query rows start .. start+qb.

  Args:
    q_idx, q_val: [nq, W] rows of V (after query expansion) of the queries.
    counts: [nq, W] entries in each query entry's column (its pairs).
    col_start, ent_rows, ent_vals: `_inverted_index`.
    rowmax: [nq] row maxima of T.
    t_qg: [qb, ng] T of the block's query-gallery distances.
    start: first query row of the block.
  """
  n = col_start.shape[0]
  nq = q_idx.shape[0]
  q_idx = lax.dynamic_slice_in_dim(q_idx, start, qb)
  q_val = lax.dynamic_slice_in_dim(q_val, start, qb)
  counts = lax.dynamic_slice_in_dim(counts, start, qb).reshape(-1)
  w = q_idx.shape[1]
  offsets = jnp.cumsum(counts) - counts
  e = jnp.repeat(jnp.arange(qb * w, dtype=_I32), counts, total_repeat_length=num_pairs)
  p = jnp.arange(num_pairs, dtype=_I32)
  ok = p < jnp.sum(counts)
  col = jnp.minimum(q_idx.reshape(-1)[e], n - 1)
  src = jnp.clip(col_start[col] + p - offsets[e], 0, ent_rows.shape[0] - 1)
  contrib = jnp.where(ok, jnp.minimum(q_val.reshape(-1)[e], ent_vals[src]), 0.0)
  # Pairs come in ascending column order for each (query, row): the float32 sums accumulate
  # in the reference's order.
  s = jnp.zeros((qb, n), _F32).at[e // w, ent_rows[src]].add(contrib)
  jaccard = 1.0 - s / (2.0 - s)
  d = rerank_blocks.div(t_qg, lax.dynamic_slice_in_dim(rowmax, start, qb)[:, None])
  return jaccard[:, nq:] * w_jaccard + d * w_dist, jaccard


# ----------------------------------------------------------------------------------------------
# Driver.


def _check_params(k1, k2, lambda_value):
  for name, v in (('k1', k1), ('k2', k2)):
    if isinstance(v, bool) or int(v) != v or v < 1:
      raise ValueError(f'{name} must be a positive integer, got {v!r}')
  if not 0.0 <= float(lambda_value) <= 1.0:
    raise ValueError(f'lambda_value must lie in [0, 1], got {lambda_value!r}')


def _nearest_neighbours(src, nq: int, ng: int, kt: int, block_rows: int):
  """Step 2: the kt nearest neighbours [N, kt] and the row maxima [N] of T, block by block.

  Raises a ValueError naming the first item whose distances are non-finite or all zero.
  """
  n = nq + ng
  top = np.empty((n, kt), np.int32)
  rowmax = np.empty((n,), np.float32)
  finite = np.empty((n,), bool)
  pending = []

  def collect():
    s, b, (idx, m, f) = pending.pop(0)
    top[s:s + b] = np.asarray(idx)
    rowmax[s:s + b] = np.asarray(m)
    finite[s:s + b] = np.asarray(f)

  for offset, size, gallery in ((0, nq, False), (nq, ng, True)):
    b = min(block_rows, size)
    for s in rerank_blocks.block_starts(size, b):
      # Dispatched asynchronously; at most two blocks in flight bound the memory.
      pending.append((offset + s, b, src.pass1(s, b, gallery, kt)))
      if len(pending) > 2:
        collect()
  while pending:
    collect()
  for bad, what in ((~finite, 'a non-finite distance'), (~(rowmax > 0), 'only zero distances')):
    if bad.any():
      r = int(np.argmax(bad))
      row = f'query {r}' if r < nq else f'gallery item {r - nq}'
      raise ValueError(f'k-reciprocal re-ranking: the distances of {row} contain {what}')
  return top, rowmax


def _k_reciprocal_sets(src, top_k1, rowmax, kh: int):
  """Step 3: the expanded k-reciprocal set of every item and its weights V.

  Args:
    src: the T source.
    top_k1: [N, k1 + 1] nearest neighbours (device).
    rowmax: [N] row maxima of T (device).
    kh: round(k1 / 2) + 1, the neighbours of the half-size sets R_half.
  Returns:
    (idx [N, W] int32 members then N, val [N, W] float32 weights, 0 past the members).
  """
  n = top_k1.shape[0]
  half_mask, half_count = _half_sets(top_k1, kh=kh)
  cand, count = rerank_blocks.map_rows(_expansion_rows, n, 2048, top_k1, half_mask, half_count)
  width = min(rerank_blocks.round_up(int(jnp.max(count))), cand.shape[1])
  idx = cand[:, :width]
  rows = np.broadcast_to(np.arange(n, dtype=np.int32)[:, None], (n, width))
  t_vals = src.gather(rows, np.minimum(np.asarray(idx), n - 1))
  return idx, _kr_weights(t_vals, rowmax, idx < n)


def _query_expansion(top, idx, val, kq: int):
  """Step 4: V[i] = mean of V over the first kq neighbours of i, as sparse rows (idx, val)."""
  qe_idx, qe_val, qe_count = rerank_blocks.map_rows(_qe_rows, top.shape[0], 1024, top, idx, val,
                                                    kq=kq)
  width = min(rerank_blocks.round_up(int(jnp.max(qe_count))), qe_idx.shape[1])
  return qe_idx[:, :width], qe_val[:, :width]


class _PairIndex(NamedTuple):
  """The (query entry, column entry) pairs of the Jaccard sums, per block of query rows."""
  ent_rows: jax.Array   # `_inverted_index`
  ent_vals: jax.Array
  col_start: jax.Array
  counts: jax.Array     # [nq, W] pairs of each query entry (device)
  num_pairs: int        # pairs per block, rounded up (one static shape)
  qb: int               # query rows per block
  starts: list          # first query row of each block
  total_pairs: int


def _pair_index(idx, val, nq: int) -> _PairIndex:
  """The inverted index of V and the pair counts of the query rows (step 5's work list)."""
  n = idx.shape[0]
  ent_rows, ent_vals, col_start, col_count = _inverted_index(idx, val)
  counts_d = _pair_counts(idx[:nq], col_count)
  counts = np.asarray(counts_d)
  qb = max(1, min(nq, rerank_blocks.block_elements() // n))
  starts = rerank_blocks.block_starts(nq, qb)
  num_pairs = rerank_blocks.round_up(max(int(counts[s:s + qb].sum()) for s in starts), 1024)
  return _PairIndex(ent_rows, ent_vals, col_start, counts_d, num_pairs, qb, starts,
                    int(counts.sum()))


def _jaccard_and_mix(src, idx, val, pairs: _PairIndex, rowmax, lambda_value: float, nq: int,
                     keep_jaccard: bool):
  """Steps 5 and 6, block by block of query rows: the Jaccard distances of the query rows and
  the final mix (1 - lambda) jaccard + lambda d with the gallery columns.

  Returns:
    (final [nq, ng] float32, jaccard [nq, N] float32 or None unless ``keep_jaccard``).
  """
  n = idx.shape[0]
  q_idx, q_val = idx[:nq], val[:nq]
  w_jaccard, w_dist = np.float32(1 - lambda_value), np.float32(lambda_value)
  final = np.empty((nq, n - nq), np.float32)
  jaccard = np.empty((nq, n), np.float32) if keep_jaccard else None
  qb = pairs.qb
  for s in pairs.starts:
    fin, jac = _jaccard_final_block(q_idx, q_val, pairs.counts, pairs.col_start, pairs.ent_rows,
                                    pairs.ent_vals, rowmax, src.qg_rows(s, qb), np.int32(s),
                                    w_jaccard, w_dist, qb=qb, num_pairs=pairs.num_pairs)
    final[s:s + qb] = np.asarray(fin)
    if keep_jaccard:
      jaccard[s:s + qb] = np.asarray(jac)
  return final, jaccard


def _rerank(src, nq: int, ng: int, k1: int, k2: int, lambda_value: float,
            block_rows: Optional[int] = None, intermediates: bool = False,
            timings: Optional[dict] = None):
  """Runs the re-ranking on a `rerank_blocks` source; the steps of the module docstring.

  timings: if a dict, receives the seconds of each phase (the phases are synchronised anyway).
  """
  timer = rerank_blocks.PhaseTimer(timings)
  n = nq + ng
  k = min(int(k1) + 1, n)
  kh = min(int(np.around(k1 / 2.)) + 1, n)
  kq = min(int(k2), n)
  # The table holds the first max(k1 + 1, k2) neighbours: the reciprocal sets read its first
  # k1 + 1 columns, the query expansion its first k2 (which may be more, e.g. k1=3, k2=6).
  kt = max(k, kq)
  if block_rows is None:
    block_rows = max(1, min(1024, rerank_blocks.block_elements() // n))

  top, rowmax = _nearest_neighbours(src, nq, ng, kt, block_rows)
  timer.mark('neighbours')
  top_d, rowmax_d = jnp.asarray(top), jnp.asarray(rowmax)
  idx1, val1 = _k_reciprocal_sets(src, top_d[:, :k], rowmax_d, kh)
  timer.mark('k-reciprocal sets', val1)
  # Skipped for k2 == 1, as in the reference.
  idx2, val2 = _query_expansion(top_d, idx1, val1, kq) if k2 != 1 else (idx1, val1)
  timer.mark('query expansion', idx2, val2)
  pairs = _pair_index(idx2, val2, nq)
  timer.mark('inverted index')
  if timings is not None:
    timings['widths'] = (int(idx1.shape[1]), int(idx2.shape[1]), pairs.num_pairs, pairs.qb)
  final, jaccard = _jaccard_and_mix(src, idx2, val2, pairs, rowmax_d, lambda_value, nq,
                                    keep_jaccard=intermediates)
  timer.mark('jaccard + final')
  if not intermediates:
    return final
  return final, {
      'initial_rank_top': top, 'rowmax': rowmax,
      'V_kr': (np.asarray(idx1), np.asarray(val1)), 'V_qe': (np.asarray(idx2), np.asarray(val2)),
      'jaccard': jaccard, 'num_pairs': pairs.total_pairs,
  }


def k_reciprocal_rerank(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6,
                        lambda_value=0.3) -> np.ndarray:
  """k-reciprocal re-ranked distances, as the reference `re_ranking(q_g, q_q, g_g, ...)`.

  The inputs are NON-squared distances (the reference squares them, then row-normalises). To
  reproduce the reference MATLAB pipeline, pass Euclidean distances of L2-normalised features
  (or use `rerank_features`).

  Memory: the inputs are read block by block (numpy arrays are streamed to the device, jax
  arrays are sliced in place); besides the output, the work arrays are O(N * (k1 + 1) * k2)
  plus one block of rows. Market-1501 scale (N = 23,100) stays within a few GB on the CPU.

  Args:
    q_g_dist: [nq, ng] query-gallery distances (numpy or jax array).
    q_q_dist: [nq, nq] query-query distances.
    g_g_dist: [ng, ng] gallery-gallery distances. If it is a jax array, all three are read on
      its device.
    k1, k2, lambda_value: the reference's parameters (paper: 20, 6, 0.3).
  Returns:
    [nq, ng] float32 numpy array, values in [0, 1].
  """
  _check_params(k1, k2, lambda_value)
  src, nq, ng = rerank_blocks.make_source(q_g_dist, q_q_dist, g_g_dist, squared_inputs=False)
  return _rerank(src, nq, ng, int(k1), int(k2), float(lambda_value))


@jax.jit
def _l2_normalize(x):
  """Rows of x over their norms with IEEE division (`rerank_blocks.div`), so that the features
  re-ranked on the device equal NumPy's normalisation bit for bit (`models.l2_normalize` lets
  XLA multiply by the reciprocal instead)."""
  x = x.astype(_F32)
  return rerank_blocks.div(x, jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12))


def rerank_features(qf, gf, k1=20, k2=6, lambda_value=0.3) -> np.ndarray:
  """Re-ranked distances from query and gallery features (the reference MATLAB pipeline).

  Features are L2-normalised (x / max(|x|, 1e-12), float32); the squared Euclidean distances
  between them (self-distances exactly 0) are computed on the device in chunks and re-ranked
  there, the same as `k_reciprocal_rerank` on their non-squared distances.

  Args:
    qf: [nq, D] query features.
    gf: [ng, D] gallery features.
    k1, k2, lambda_value: the reference's parameters (paper: 20, 6, 0.3).
  Returns:
    [nq, ng] float32 numpy array.
  """
  _check_params(k1, k2, lambda_value)
  qf, gf = jnp.asarray(qf), jnp.asarray(gf)
  for name, a in (('qf', qf), ('gf', gf)):
    metrics._check_features(name, a)  # pylint: disable=protected-access
    # Checked here: one bad feature makes every row's distances non-finite, so the distance
    # check below could not tell which item it was.
    bad = ~np.asarray(jnp.all(jnp.isfinite(a), axis=1))
    if bad.any():
      raise ValueError(f'k-reciprocal re-ranking: {name} row {int(np.argmax(bad))} has a '
                       f'non-finite value ({int(bad.sum())} such rows)')
  if qf.shape[1] != gf.shape[1]:
    raise ValueError(f'qf {tuple(qf.shape)} and gf {tuple(gf.shape)} have different feature '
                     'dimensions')
  qn, gn = _l2_normalize(qf), _l2_normalize(gf)
  sq = functools.partial(metrics.pairwise_distances_device, squared=True)
  q_g = sq(qn, gn)
  q_q = sq(qn, qn, zero_diagonal=True)
  g_g = sq(gn, gn, zero_diagonal=True)
  src = rerank_blocks.DeviceSource(q_g, q_q, g_g, squared_inputs=True)
  return _rerank(src, q_g.shape[0], q_g.shape[1], int(k1), int(k2), float(lambda_value))
