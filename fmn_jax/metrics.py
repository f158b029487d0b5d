"""Re-identification metrics: pairwise distances, CMC, mAP (two conventions) and mINP.

Protocol (Market-1501, DukeMTMC-reID, CUHK03-NP): for every query, gallery items with
pid -1 (junk) and items with the query's pid seen by the query's camera are removed from its
ranked list; pid 0 (distractors) stays as an ordinary negative. A query without a true match
left is skipped and does not count in `num_valid`.

Two AP conventions:
  * 'standard' (torchreid, fast-reid): the non-interpolated AP, mean over hits of precision@hit.
  * 'trapezoid' (the official Market-1501 MATLAB code, layumi's Person_reID_baseline): at every
    hit, ap += (old_precision + precision) / 2 / num_good, with old_precision = 1 before a hit at
    rank 1. Never higher than the standard AP: the ranked list [miss, hit] gives 0.5 vs 0.25.

Ties (equal distances) are ranked by gallery index, as `np.argsort(..., kind='stable')` would.
"""

import concurrent.futures
import functools
import os
from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

AP_TYPES = ('standard', 'trapezoid')


# ----------------------------------------------------------------------------------------------
# Distances.


def _check_features(name: str, x) -> None:
  if x.ndim != 2:
    raise ValueError(f'{name} must be a [N, D] feature array, got shape {tuple(x.shape)}')
  if x.shape[0] == 0:
    raise ValueError(f'{name} is empty (shape {tuple(x.shape)})')


def default_chunk_size(num_rows: int, num_cols: int) -> int:
  """Rows per chunk such that one chunk of the output holds about 2**25 floats (128 MiB)."""
  return int(max(1, min(num_rows, 2**25 // max(num_cols, 1))))


@functools.partial(jax.jit, static_argnames=('chunk', 'squared', 'zero_diagonal'))
def _pairwise_jit(x, y, *, chunk: int, squared: bool, zero_diagonal: bool = False):
  """Chunked expansion-form Euclidean distances; output [nx, ny] float32.

  Rows are processed `chunk` at a time inside one loop that writes into the preallocated output,
  so the largest temporary is one [chunk, ny] block. The last chunk starts at nx - chunk (it
  overlaps the previous one), which keeps every block the same static shape.
  """
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)
  nx = x.shape[0]
  yy = jnp.sum(y * y, axis=1)

  def body(c, out):
    start = jnp.minimum(c * chunk, nx - chunk)
    xc = lax.dynamic_slice_in_dim(x, start, chunk, axis=0)
    xx = jnp.sum(xc * xc, axis=1)
    # HIGHEST: full float32 products on GPUs that would otherwise use TF32.
    xy = jnp.dot(xc, y.T, precision=lax.Precision.HIGHEST)
    d = jnp.maximum(xx[:, None] + yy[None, :] - 2.0 * xy, 0.0)
    if zero_diagonal:
      rows = start + jnp.arange(chunk)
      d = jnp.where(rows[:, None] == jnp.arange(d.shape[1])[None, :], 0.0, d)
    if not squared:
      d = jnp.sqrt(d)
    return lax.dynamic_update_slice_in_dim(out, d, start, axis=0)

  out = jnp.zeros((nx, y.shape[0]), jnp.float32)
  return lax.fori_loop(0, -(-nx // chunk), body, out)


def pairwise_distances_device(x, y, *, squared: bool = False, chunk_size: Optional[int] = None,
                              zero_diagonal: bool = False) -> jax.Array:
  """Like `pairwise_distances` but returns the device array (no host copy).

  zero_diagonal: set d[i, i] to exactly 0 (for x is y, where the expansion form leaves a small
  rounding residue).
  """
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  _check_features('x', x)
  _check_features('y', y)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f'x {tuple(x.shape)} and y {tuple(y.shape)} have different feature '
                     'dimensions')
  if chunk_size is None:
    chunk_size = default_chunk_size(x.shape[0], y.shape[0])
  if int(chunk_size) < 1:
    raise ValueError(f'chunk_size must be positive, got {chunk_size}')
  chunk = min(int(chunk_size), x.shape[0])
  return _pairwise_jit(x, y, chunk=chunk, squared=bool(squared),
                       zero_diagonal=bool(zero_diagonal))


def pairwise_distances(x, y, *, squared: bool = False,
                       chunk_size: Optional[int] = None) -> np.ndarray:
  """Euclidean distances between the rows of x [nx, D] and y [ny, D].

  Jitted and chunked over the rows of x (the expansion form |x|^2 + |y|^2 - 2 x.y, clamped at 0,
  float32), so that Market-1501 scale (3,368 x 19,732 at 4,096-d) needs little more memory than
  its output on the CPU and on the GPU.

  Args:
    x: [nx, D] query features (any float dtype; computed in float32).
    y: [ny, D] gallery features.
    squared: return squared distances (no square root).
    chunk_size: rows of x per chunk; default: about 2**25 output floats per chunk.
  Returns:
    [nx, ny] float32 numpy array (read-only when it shares the CPU device buffer).
  """
  return np.asarray(pairwise_distances_device(x, y, squared=squared, chunk_size=chunk_size))


# ----------------------------------------------------------------------------------------------
# Ranking metrics.
#
# NumPy rather than jnp: per query block, the work is a few elementwise passes over the
# distances, a sort of the (few) kept items no farther than each query's last true match, and a
# binary search for the true matches. NumPy's SIMD sort is about 5x faster than np.argsort and
# far faster than XLA's comparator sort on the CPU, and no full-row sort is needed for most
# queries; Market scale takes well under a second per CPU core. Blocks run on a few threads
# (NumPy releases the GIL in its array loops and sorts).


def _row_searchsorted(sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray,
                      side: str) -> np.ndarray:
  """Vectorised per-row `np.searchsorted(sorted_rows[r], v, side)` for pairs (r, v)."""
  n = sorted_rows.shape[1]
  lo = np.zeros(rows.shape, np.int64)
  hi = np.full(rows.shape, n, np.int64)
  for _ in range(int(n).bit_length() + 1):
    active = lo < hi
    if not active.any():
      break
    mid = (lo + hi) // 2
    x = sorted_rows[rows, np.minimum(mid, n - 1)]
    right = (x < values) if side == 'left' else (x <= values)
    right &= active
    lo = np.where(right, mid + 1, lo)
    hi = np.where(active & ~right, mid, hi)
  return lo


def _block_hits(d: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray,
                g_camids: np.ndarray, g_junk: np.ndarray, short_limit: Optional[int] = None):
  """Positions of the true matches of a block of queries in their junk-free ranked lists.

  Only kept items no farther than a query's last true match can precede one of its matches, so
  for most queries just those few candidates are sorted; queries with more than `short_limit`
  candidates (default ng / 8) sort their whole kept row.

  Returns (rows, positions): the query row (within the block) and 0-based position among the
  query's kept gallery items of every true match, ties ranked by gallery index.
  """
  num_rows, ng = d.shape
  same_pid = q_pids[:, None] == g_pids[None, :]
  junk = g_junk[None, :] | (same_pid & (q_camids[:, None] == g_camids[None, :]))
  good = same_pid & ~junk
  rows, cols = np.nonzero(good)
  if rows.size == 0:
    return rows, rows.astype(np.int64)
  values = d[rows, cols]
  last = np.full(num_rows, -np.inf, d.dtype)
  np.maximum.at(last, rows, values)
  cand = (d <= last[:, None]) & ~junk
  count = cand.sum(axis=1)
  short = count <= (max(64, ng // 8) if short_limit is None else short_limit)
  local = np.cumsum(short) - 1                       # row -> row within its group
  local_long = np.cumsum(~short) - 1
  pos = np.empty(rows.size, np.int64)
  n_equal = np.empty(rows.size, np.int64)
  for in_group, sorted_rows, where in (
      (short[rows], _sorted_candidates(d, cand, short, count), local),
      (~short[rows], None, local_long)):
    if not in_group.any():
      continue
    if sorted_rows is None:                           # long rows: sort the whole kept row
      sorted_rows = np.where(junk[~short], np.inf, d[~short])
      sorted_rows.sort(axis=1)
    r, v = where[rows[in_group]], values[in_group]
    pos[in_group] = _row_searchsorted(sorted_rows, r, v, 'left')
    n_equal[in_group] = _row_searchsorted(sorted_rows, r, v, 'right') - pos[in_group]
  tied = np.nonzero(n_equal > 1)[0]
  # Kept items at exactly the same distance come before this match iff their index is lower.
  gidx = np.arange(ng)
  for s in range(0, tied.size, 256):
    t = tied[s:s + 256]
    r, c = rows[t], cols[t]
    before = (d[r] == values[t, None]) & ~junk[r] & (gidx[None, :] < c[:, None])
    pos[t] += before.sum(axis=1)
  return rows, pos


def _sorted_candidates(d: np.ndarray, cand: np.ndarray, short: np.ndarray,
                       count: np.ndarray) -> Optional[np.ndarray]:
  """Candidate distances of the short rows, sorted, padded with +inf: [num_short, max count]."""
  if not short.any():
    return None
  rows = np.nonzero(short)[0]
  cr, cc = np.nonzero(cand[rows])
  start = np.cumsum(count[rows]) - count[rows]
  out = np.full((rows.size, max(1, int(count[rows].max()))), np.inf, d.dtype)
  out[cr, np.arange(cr.size) - start[cr]] = d[rows[cr], cc]
  out.sort(axis=1)
  return out


def _as_labels(name: str, x, n: int) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 1 or x.shape[0] != n:
    raise ValueError(f'{name} must be a 1-D array of length {n}, got shape {x.shape}')
  if not np.issubdtype(x.dtype, np.integer):
    if not np.all(np.equal(np.mod(x, 1), 0)):
      raise ValueError(f'{name} must hold integer ids, got dtype {x.dtype}')
    x = x.astype(np.int64)
  return x


def _as_distmat(distmat) -> np.ndarray:
  d = np.asarray(distmat)
  if d.ndim != 2:
    raise ValueError(f'distmat must be [num_query, num_gallery], got shape {d.shape}')
  if d.shape[0] == 0 or d.shape[1] == 0:
    raise ValueError(f'distmat is empty (shape {d.shape})')
  if d.dtype not in (np.float32, np.float64):
    d = d.astype(np.float32 if d.dtype == np.float16 else np.float64)
  return d


SUMMARY_RANKS = (1, 5, 10, 20)


def check_max_rank(max_rank, name: str = 'max_rank', minimum: int = 1) -> int:
  """``max_rank`` as an int; a ValueError naming ``name`` unless it is an integer >= minimum."""
  if (isinstance(max_rank, bool) or not isinstance(max_rank, (int, float, np.integer, np.floating))
      or int(max_rank) != max_rank or max_rank < minimum):
    what = 'a positive integer' if minimum == 1 else f'an integer >= {minimum}'
    raise ValueError(f'{name} must be {what}, got {max_rank!r}')
  return int(max_rank)


def _evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
              block_rows: int = 256, num_threads: Optional[int] = None,
              short_limit: Optional[int] = None) -> dict:
  """Both AP conventions in one pass; see `evaluate_ranking`."""
  d = _as_distmat(distmat)
  nq, ng = d.shape
  q_pids = _as_labels('q_pids', q_pids, nq)
  g_pids = _as_labels('g_pids', g_pids, ng)
  q_camids = _as_labels('q_camids', q_camids, nq)
  g_camids = _as_labels('g_camids', g_camids, ng)
  max_rank = check_max_rank(max_rank)
  g_junk = g_pids == -1

  def run_block(r0):
    block = d[r0:r0 + block_rows]
    if not np.isfinite(block).all():
      bad = np.argwhere(~np.isfinite(block))[0]
      raise ValueError(f'distmat has a non-finite value at [{r0 + bad[0]}, {bad[1]}]: '
                       f'{block[bad[0], bad[1]]}')
    rows, pos = _block_hits(block, q_pids[r0:r0 + block_rows], q_camids[r0:r0 + block_rows],
                            g_pids, g_camids, g_junk, short_limit)
    return rows + r0, pos

  starts = range(0, nq, block_rows)
  if num_threads is None:
    num_threads = min(4, os.cpu_count() or 1)
  if num_threads > 1 and len(starts) > 1:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      parts = list(pool.map(run_block, starts))
  else:
    parts = [run_block(s) for s in starts]
  rows = np.concatenate([p[0] for p in parts])
  pos = np.concatenate([p[1] for p in parts])

  order = np.lexsort((pos, rows))
  rows, pos = rows[order], pos[order]
  num_good = np.bincount(rows, minlength=nq)
  valid = num_good > 0
  num_valid = int(valid.sum())
  if num_valid == 0:
    raise ValueError(
        f'none of the {nq} queries has a true match in the gallery once junk (pid -1) and '
        'same-pid same-camera items are removed; check the pids and camera ids')
  first = np.cumsum(num_good) - num_good                # index of each query's first hit
  hit = np.arange(rows.size) - first[rows]              # 0-based hit number within its query
  precision = (hit + 1) / (pos + 1.0)
  old_precision = np.where(pos > 0, hit / np.maximum(pos, 1.0), 1.0)
  with np.errstate(invalid='ignore', divide='ignore'):
    ap_std = np.bincount(rows, weights=precision, minlength=nq) / num_good
    ap_trap = np.bincount(rows, weights=(old_precision + precision) / 2.0, minlength=nq) / num_good
  ap_std[~valid] = np.nan
  ap_trap[~valid] = np.nan
  first_pos = pos[first[valid]]
  last_pos = pos[(first + num_good - 1)[valid]]
  inp = num_good[valid] / (last_pos + 1.0)
  # Rank r (0-based) is a hit iff the first true match sits at position <= r. For r beyond the
  # number of kept gallery items this stays at the last value (1 for every valid query).
  first_hits = np.bincount(np.minimum(first_pos, max_rank), minlength=max_rank + 1)[:max_rank]
  cmc = np.cumsum(first_hits) / num_valid
  return {
      'cmc': cmc,
      'ap_per_query': {'standard': ap_std, 'trapezoid': ap_trap},
      'mAP': {'standard': float(np.mean(ap_std[valid])),
              'trapezoid': float(np.mean(ap_trap[valid]))},
      'mINP': float(np.mean(inp)),
      'num_valid': num_valid,
  }


def evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50,
                     ap='standard') -> dict:
  """CMC, mAP and mINP of a query x gallery distance matrix (smaller = more similar).

  Gallery pid -1 is junk; items with the query's pid and camera are removed; pid 0 stays as a
  negative; queries without a true match left are skipped. Ties are ranked by gallery index.
  Vectorised over the gallery (a sort of the candidates, a binary search of the true matches),
  blocked over queries: Market-1501 scale takes well under a second on a 2-core CPU.

  Args:
    distmat: [nq, ng] distances (numpy or jax array; squared or not gives identical results).
    q_pids, g_pids, q_camids, g_camids: integer ids, 1-D of length nq / ng.
    max_rank: length of the returned CMC curve. Ranks beyond the number of gallery items left
      keep the last value (every valid query has its hit by then), so small galleries give a
      full-length curve.
    ap: 'standard' (torchreid / fast-reid) or 'trapezoid' (official MATLAB code, layumi).
  Returns:
    {'cmc': float64 [max_rank], 'mAP': float, 'mINP': float, 'num_valid': int,
     'ap_per_query': float64 [nq] (NaN for skipped queries)}, values as fractions (0..1).
  """
  if ap not in AP_TYPES:
    raise ValueError(f'ap must be one of {AP_TYPES}, got {ap!r}')
  r = _evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
  return {'cmc': r['cmc'], 'mAP': r['mAP'][ap], 'mINP': r['mINP'],
          'num_valid': r['num_valid'], 'ap_per_query': r['ap_per_query'][ap]}


def ranking_summary(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50) -> dict:
  """The numbers a results table reports, in percent (one evaluation pass).

  Args:
    distmat, q_pids, g_pids, q_camids, g_camids: as `evaluate_ranking`.
    max_rank: length of the CMC curve computed; at least 20, the last rank reported.
  Returns:
    {'rank1', 'rank5', 'rank10', 'rank20', 'mAP' (standard AP), 'mAP_trapezoid', 'mINP'} as
    Python floats in percent, plus 'num_valid' (int, queries with a true match). With fewer than
    20 gallery items left, rank-k beyond them equals the last rank (see `evaluate_ranking`).
  """
  max_rank = check_max_rank(max_rank, minimum=SUMMARY_RANKS[-1])
  r = _evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
  cmc = r['cmc']
  return {
      **{f'rank{k}': 100.0 * float(cmc[k - 1]) for k in SUMMARY_RANKS},
      'mAP': 100.0 * r['mAP']['standard'],
      'mAP_trapezoid': 100.0 * r['mAP']['trapezoid'],
      'mINP': 100.0 * r['mINP'],
      'num_valid': r['num_valid'],
  }
